"""What a distribution ships besides the code: the ``contrib/`` files, and
man pages and shell completions generated from the argument parsers.

The build (``setup.py``) writes them into the package as ``share/``, so that
``--help`` and the man page come from the same parser and never disagree;
``pymap-deliver install-contrib`` puts them in place. From a source checkout
(an editable install) they are generated on the spot instead.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from pymap_admin.manual import MANUAL as ADMIN_MANUAL
from pymap_admin.manual import SHELLS, Manual

__all__ = ["MANUALS", "build_share", "shipped_share"]


def _daemon_parser() -> argparse.ArgumentParser:
    from .config import build_parser

    return build_parser()


#: The programs this distribution installs, each with its manual.
MANUALS: tuple[Manual, ...] = (
    Manual("pymap-deliver", 8, "System Manager's Manual",
           "LMTP delivery agent storing mail into pymap", _daemon_parser),
    ADMIN_MANUAL,
)


def build_share(target: Path, contrib: Path, version: str) -> None:
    """Write ``contrib/``, the man pages and the completions into ``target``."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(contrib, target / "contrib",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (target / "doc").mkdir()
    for name in ("README.md", "LICENSE"):
        shutil.copyfile(contrib.parent / name, target / "doc" / name)
    (target / "man").mkdir(parents=True)
    (target / "completion").mkdir()
    for manual in MANUALS:
        (target / "man" / manual.page_name).write_text(manual.manpage(version))
        for shell in SHELLS:
            (target / "completion" / shell).mkdir(exist_ok=True)
            (target / "completion" / shell / manual.completion_name(shell)).write_text(
                manual.completion(shell))


def shipped_share() -> Path | None:
    """``share/`` inside the installed package, if this is a built install."""
    path = Path(__file__).resolve().parent / "share"
    return path if (path / "man").is_dir() else None
