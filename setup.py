"""Build hook: the wheel ships ``contrib/``, and man pages and shell
completions generated from this source tree's own argument parsers
(``pymap_deliver/_share.py``), as ``pymap_deliver/share/``."""

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithShare(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # a checkout generates these on demand
        sys.path.insert(0, str(HERE))
        try:
            from pymap_deliver._share import build_share

            build_share(Path(self.build_lib) / "pymap_deliver" / "share", HERE / "contrib",
                        self.distribution.get_version())
        finally:
            sys.path.remove(str(HERE))


setup(cmdclass={"build_py": BuildPyWithShare})
