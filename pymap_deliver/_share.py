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
from collections.abc import Callable
from importlib import import_module
from pathlib import Path

__all__ = ["COMMANDS", "build_share", "completion", "manpage", "shipped_share"]

#: command -> (module with ``build_parser()``, man section, manual title,
#: the one-line summary in NAME)
COMMANDS: dict[str, tuple[str, int, str, str]] = {
    "pymap-deliver": ("pymap_deliver.config", 8, "System Manager's Manual",
                      "LMTP delivery agent storing mail into pymap"),
    "pymap-admin": ("pymap_admin.cli.args", 1, "User Commands",
                    "command line client of pymap's admin API"),
}
SHELLS = {"bash": "{prog}", "zsh": "_{prog}"}


def _parser(command: str) -> argparse.ArgumentParser:
    module = COMMANDS[command][0]
    build_parser: Callable[[], argparse.ArgumentParser] = import_module(module).build_parser
    return build_parser()


def manpage(command: str, version: str) -> str:
    """The man page of ``command`` (roff), from its argument parser."""
    from argparse_manpage.manpage import Manpage

    _, section, title, summary = COMMANDS[command]
    page = Manpage(_parser(command), _data={
        "project_name": "pymap-deliver", "version": version,
        "manual_section": section, "manual_title": title, "description": summary,
    })
    return str(page)


def completion(command: str, shell: str) -> str:
    """The ``shell`` completion script of ``command``, from its parser."""
    import shtab

    script: str = shtab.complete(_parser(command), shell=shell)
    return script


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
    for command, (_, section, _, _) in COMMANDS.items():
        (target / "man" / f"{command}.{section}").write_text(manpage(command, version))
        for shell, name in SHELLS.items():
            (target / "completion" / shell).mkdir(exist_ok=True)
            (target / "completion" / shell / name.format(prog=command)).write_text(
                completion(command, shell))


def shipped_share() -> Path | None:
    """``share/`` inside the installed package, if this is a built install."""
    path = Path(__file__).resolve().parent / "share"
    return path if (path / "man").is_dir() else None
