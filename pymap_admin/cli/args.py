"""The command line of ``pymap-admin``, parsed into typed options.

Every command and option of the published pymap-admin 0.12.1 keeps its
spelling and meaning; ``--json``, ``--timeout``, ``--debug``, ``append
--max-size`` and the ``token`` commands are ours.

This module holds what all commands share: the global options (generated
from the connection table, :data:`pymap_admin.options.CONNECTION_OPTIONS`)
and the registry of commands, name -> the module that declares the
command's arguments beside its implementation (``SPECS`` there). Only the
named command's module is imported, so ``append`` pays for nothing else.

A mistake on the command line raises :class:`UsageError`; ``pymap-admin``
exits 64 (EX_USAGE) for it, or 75 (EX_TEMPFAIL) when the command is
``append`` or cannot be told: an MTA that runs ``pymap-admin append`` with a
typo in its configuration defers the mail instead of bouncing it.

The option types are NamedTuples rather than dataclasses: they cost a tenth
as much to define, and every ``append`` pays for their definition (also
why this module does without ``from __future__ import annotations``: string
annotations would be compiled one by one into ForwardRefs).
"""

import argparse
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from ..options import CONNECTION_OPTIONS, add_arguments, valued_flags, version_action
from .connection import add_connection_arguments, connection_options

if TYPE_CHECKING:
    from .config import SaveArgsOptions
    from .mailbox import DEFAULT_MAX_SIZE, AppendOptions
    from .system import CheckOptions, LoginOptions, PingOptions
    from .token import TokenAttenuateOptions, TokenShowOptions
    from .user import ChangePasswordOptions, DeleteUserOptions, GetUserOptions, SetUserOptions

__all__ = [
    "COMMANDS",
    "DEFAULT_MAX_SIZE",
    "AppendOptions",
    "ChangePasswordOptions",
    "CheckOptions",
    "CommandSpec",
    "DeleteUserOptions",
    "GetUserOptions",
    "GlobalOptions",
    "LoginOptions",
    "Options",
    "PingOptions",
    "SaveArgsOptions",
    "SetUserOptions",
    "TokenAttenuateOptions",
    "TokenShowOptions",
    "UsageError",
    "build_parser",
    "command_name",
    "parse_args",
]

PROG = "pymap-admin"


class UsageError(Exception):
    """The command line is wrong; ``command`` is the command it was for, if known."""

    def __init__(self, message: str, command: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.command = command


class GlobalOptions(NamedTuple):
    """The options before the command name: ``given``, the flags of the
    connection table by option name as parsed (None: not given), and
    ``--json`` and ``--debug``."""

    given: Mapping[str, Any]
    json: bool = False
    debug: bool = False

    @property
    def config(self) -> Path | None:
        """``--config``."""
        config: Path | None = self.given.get("config")
        return config

    def connection(self) -> dict[str, object | None]:
        """The connection settings given on the command line (None: not given)."""
        return connection_options(self.given)


class Options(NamedTuple):
    """A parsed command line: the command's name (``token show`` for the
    token commands), the global options, the command's own, and the class
    that runs it."""

    command: str
    globals: GlobalOptions
    options: Any
    runner: Any = None


class CommandSpec(NamedTuple):
    """One command, as its module declares it beside its implementation."""

    help: str
    description: str
    #: Adds the command's arguments to its sub-parser; the second argument
    #: is the parents a nested sub-parser needs (the ``token`` actions).
    arguments: Callable[[argparse.ArgumentParser, Sequence[argparse.ArgumentParser]], None]
    #: The parsed namespace -> (command name, typed options, runner class);
    #: usage errors through the callable given.
    options: Callable[[argparse.Namespace, Callable[[str], NoReturn]], tuple[str, Any, Any]]


#: command -> module in pymap_admin.cli whose ``SPECS`` declares it.
COMMANDS: dict[str, str] = {
    "save-args": "config",
    "login": "system",
    "ping": "system",
    "check": "system",
    "append": "mailbox",
    "get-user": "user",
    "set-user": "user",
    "change-password": "user",
    "delete-user": "user",
    "token": "token",
}

#: Where the option types live, for ``from pymap_admin.cli.args import AppendOptions``.
_EXPORTS = {"SaveArgsOptions": "config", "AppendOptions": "mailbox",
            "DEFAULT_MAX_SIZE": "mailbox", "CheckOptions": "system", "LoginOptions": "system",
            "PingOptions": "system", "TokenAttenuateOptions": "token",
            "TokenShowOptions": "token", "ChangePasswordOptions": "user",
            "DeleteUserOptions": "user", "GetUserOptions": "user", "SetUserOptions": "user"}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__package__}.{module}"), name)


def spec(name: str) -> CommandSpec:
    found: CommandSpec = import_module(f"{__package__}.{COMMANDS[name]}").SPECS[name]
    return found


#: >0 while help or usage text is being made (see _Parser).
_for_display = 0


@contextmanager
def _terminal_width() -> Iterator[None]:
    global _for_display
    _for_display += 1
    try:
        yield
    finally:
        _for_display -= 1


def _formatter(prog: str) -> argparse.HelpFormatter:
    """argparse's own formatter, at the terminal's width only for display;
    otherwise at the width argparse takes off a terminal (80 - 2), which
    also keeps the generated man pages the same wherever they are built."""
    return argparse.HelpFormatter(prog, width=None if _for_display else 78)


class _Parser(argparse.ArgumentParser):
    """Raises UsageError instead of printing and exiting with status 2;
    never accepts an abbreviated option (a landmine in scripts).

    argparse makes a help formatter for every ``add_argument`` (to check the
    metavar), and each looks up the terminal's width, importing shutil: a
    few ms of every delivery. Those get a fixed width; only help and usage
    text made by :meth:`format_help` and :meth:`format_usage` get the
    terminal's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _formatter)
        super().__init__(*args, **kwargs)

    def format_help(self) -> str:
        with _terminal_width():
            return super().format_help()

    def format_usage(self) -> str:
        with _terminal_width():
            return super().format_usage()

    def error(self, message: str) -> NoReturn:
        name = self.prog.removeprefix(PROG).strip() or None
        raise UsageError(message, name)


def _protocol() -> str:
    from ..client import PROTOCOL_VERSION

    return f" (admin protocol {PROTOCOL_VERSION})"


def timestamp(value: str) -> float:
    """UNIX seconds, or an ISO-8601 date and time (UTC unless it says otherwise)."""
    try:
        return float(value)
    except ValueError:
        pass
    from datetime import UTC, datetime

    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a UNIX time or ISO-8601 date: {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration(value: str) -> float:
    """Seconds, or a number with a unit: ``90s``, ``30m``, ``12h``, ``1d``, ``2w``."""
    text = value.strip().lower()
    scale = _DURATION_UNITS.get(text[-1:], 0)
    number = text[:-1] if scale else text
    try:
        seconds = float(number) * (scale or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration (like 3600, 30m, 12h, 1d): {value!r}") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {value!r}")
    return seconds


def size(value: str) -> int:
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size in bytes: {value!r}") from None
    if size < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value!r}")
    return size


def param(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VAL: {value!r}")
    return key, val


def _common(suppress: bool) -> _Parser:
    """``--json``, ``--timeout``, ``--debug``: accepted before and after the
    command name. After it, their defaults are suppressed so that they do not
    undo what was given before it."""
    parent = _Parser(add_help=False)
    group = parent.add_argument_group("output and behaviour")

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    group.add_argument("--json", action="store_true", default=default(False),
                       help="print one JSON object on stdout, for scripts and monitoring")
    timeout = next(o for o in CONNECTION_OPTIONS if o.name == "timeout")
    add_arguments(group, [timeout], default=default(None),
                  help_suffix=lambda o: f" (or ${o.env})")
    group.add_argument("--debug", action="store_true", default=default(False),
                       help="log what happens and show tracebacks")
    return parent


_TOP_LEVEL = frozenset(COMMANDS)

#: Global options that take a value: skipped when looking for the command name.
_VALUED = valued_flags(CONNECTION_OPTIONS)
#: The connection options given by a flag.
_FLAGGED = tuple(o.name for o in CONNECTION_OPTIONS if o.flag)


def command_name(argv: Sequence[str]) -> str | None:
    """The command named in ``argv``, if it can be told without parsing."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--":
            return None
        elif arg.startswith("-"):
            skip = arg in _VALUED
        else:
            return arg if arg in _TOP_LEVEL else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, just that command's sub-parser (a
    delivery should not pay for the definition of every other command)."""
    parser = _Parser(
        prog=PROG,
        description="Administer a running pymap server through its admin API. Connection "
                    "options may also come from $PYMAP_ADMIN_* environment variables or "
                    "the config file (see save-args).",
        parents=[_common(False)],
    )
    parser.add_argument("--version", action=version_action(PROG, _protocol),
                        help="show the version and exit")
    add_connection_arguments(parser)

    common = [_common(True)]
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS if only is None else (only,):
        declared = spec(name)
        command: argparse.ArgumentParser = sub.add_parser(
            name, help=declared.help, description=declared.description, parents=common)
        declared.arguments(command, common)
    return parser


def parse_args(argv: Sequence[str]) -> Options:
    """Parse ``argv`` (without the program name). Raises :class:`UsageError`;
    ``--help`` and ``--version`` print to ``sys.stdout`` and raise SystemExit(0)."""
    parser = build_parser(command_name(argv))
    try:
        ns = parser.parse_args(list(argv))
    except UsageError:
        # Whatever confused the short cut, the full parser says it properly.
        parser = build_parser()
        ns = parser.parse_args(list(argv))
    if ns.command is None:
        parser.error("expected a command name")
    glob = GlobalOptions({name: getattr(ns, name) for name in _FLAGGED}, ns.json, ns.debug)
    if glob.given["key"] is not None and glob.given["cert"] is None:
        parser.error("--key needs --cert")

    def error(message: str) -> NoReturn:
        raise UsageError(message, ns.command)

    name, options, runner = spec(ns.command).options(ns, error)
    return Options(name, glob, options, runner)
