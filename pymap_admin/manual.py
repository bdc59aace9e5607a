"""A program's manual: its man page and shell completions, generated from
its argument parser so that ``--help``, the man page and the completions
never disagree.

:data:`MANUAL` is ``pymap-admin``'s; ``pymap-deliver`` declares its own
with the same :class:`Manual`, and ships both (``pymap_deliver._share``)
without importing this package's command line itself: the parser is built
only when a page is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import argparse

__all__ = ["MANUAL", "SHELLS", "Manual"]

#: shell -> the completion file's name, from the program's.
SHELLS = {"bash": "{prog}", "zsh": "_{prog}"}


class Manual(NamedTuple):
    program: str
    #: The man section (1: user commands, 8: system administration).
    section: int
    #: The manual's title in the page header.
    title: str
    #: The one-line summary in NAME.
    summary: str
    #: Builds the program's argument parser.
    parser: Callable[[], argparse.ArgumentParser]

    @property
    def page_name(self) -> str:
        return f"{self.program}.{self.section}"

    def manpage(self, version: str) -> str:
        """The man page (roff)."""
        from argparse_manpage.manpage import Manpage

        page = Manpage(self.parser(), _data={
            "project_name": "pymap-deliver", "version": version,
            "manual_section": self.section, "manual_title": self.title,
            "description": self.summary,
        })
        return str(page)

    def completion(self, shell: str) -> str:
        """The completion script for ``shell`` (one of :data:`SHELLS`)."""
        import shtab

        script: str = shtab.complete(self.parser(), shell=shell)
        return script

    def completion_name(self, shell: str) -> str:
        return SHELLS[shell].format(prog=self.program)


def _admin_parser() -> argparse.ArgumentParser:
    from .cli.args import build_parser

    return build_parser()


MANUAL = Manual("pymap-admin", 1, "User Commands", "command line client of pymap's admin API",
                _admin_parser)
