"""The command line of ``pymap-admin``, parsed into typed options.

Every command and option of the published pymap-admin 0.12.1 keeps its
spelling and meaning; ``--json``, ``--timeout``, ``--debug``, ``append
--max-size`` and the ``token`` commands are ours. A mistake on the command
line raises :class:`UsageError`, whose exit status is 75 (EX_TEMPFAIL): an
MTA that runs ``pymap-admin append`` with a typo in its configuration defers
the mail instead of bouncing it.

The option types are NamedTuples rather than dataclasses: they cost a tenth
as much to define, and every ``append`` pays for their definition (also
why this module does without ``from __future__ import annotations``: string
annotations would be compiled one by one into ForwardRefs).
"""

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, NoReturn

from ..options import CONNECTION_OPTIONS, add_arguments, valued_flags
from .connection import add_connection_arguments, connection_options

__all__ = [
    "COMMANDS",
    "DEFAULT_MAX_SIZE",
    "USAGE_EXIT_STATUS",
    "AppendOptions",
    "ChangePasswordOptions",
    "CheckOptions",
    "CommandOptions",
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
    "parse_args",
]

#: EX_TEMPFAIL: a command-line mistake must defer mail, not bounce it.
USAGE_EXIT_STATUS = 75
#: Largest message ``append`` sends, as pymap-deliver's LMTP SIZE limit.
DEFAULT_MAX_SIZE = 64 * 1024 * 1024

PROG = "pymap-admin"


class UsageError(Exception):
    """The command line is wrong; ``usage`` is the relevant usage text."""

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage


class GlobalOptions(NamedTuple):
    config: Path | None = None
    host: str | None = None
    port: int | None = None
    path: Path | None = None
    token_file: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    cafile: Path | None = None
    capath: Path | None = None
    no_verify_cert: bool = False
    tls: bool | None = None
    timeout: float | None = None
    json: bool = False
    debug: bool = False

    def connection(self) -> dict[str, object | None]:
        """The connection settings given on the command line (None: not given)."""
        return connection_options(self)


class SaveArgsOptions(NamedTuple):
    pass


class LoginOptions(NamedTuple):
    user: str
    token: bool = False
    password: str | None = None
    password_file: Path | None = None
    ask_password: bool = False
    save: bool = False
    authzid: str | None = None
    expiration: float | None = None


class PingOptions(NamedTuple):
    pass


class CheckOptions(NamedTuple):
    service: str = ""


class AppendOptions(NamedTuple):
    username: str
    sender: str | None = None
    recipient: str | None = None
    mailbox: str | None = None
    timestamp: float | None = None
    data: Path | None = None
    flags: tuple[str, ...] = ()
    max_size: int = DEFAULT_MAX_SIZE


class GetUserOptions(NamedTuple):
    user: str


class SetUserOptions(NamedTuple):
    user: str
    overwrite: bool = True
    password_file: Path | None = None
    no_password: bool = False
    params: tuple[tuple[str, str], ...] = ()
    roles: tuple[str, ...] = ()


class ChangePasswordOptions(NamedTuple):
    user: str
    password_file: Path | None = None
    no_password: bool = False


class DeleteUserOptions(NamedTuple):
    user: str


class TokenShowOptions(NamedTuple):
    stdin: bool = False


class TokenAttenuateOptions(NamedTuple):
    user: str | None = None
    expires: float | None = None
    lifetime: float | None = None
    stdin: bool = False
    output: Path | None = None


CommandOptions = (SaveArgsOptions | LoginOptions | PingOptions | CheckOptions | AppendOptions
                  | GetUserOptions | SetUserOptions | ChangePasswordOptions
                  | DeleteUserOptions | TokenShowOptions | TokenAttenuateOptions)


class Options(NamedTuple):
    """A parsed command line: the command's name (``token show`` for the
    token commands), the global options and the command's own."""

    command: str
    globals: GlobalOptions
    options: CommandOptions


#: command -> (module in pymap_admin.cli, class name)
COMMANDS: dict[str, tuple[str, str]] = {
    "save-args": ("config", "SaveArgsCommand"),
    "login": ("system", "LoginCommand"),
    "ping": ("system", "PingCommand"),
    "check": ("system", "CheckCommand"),
    "append": ("mailbox", "AppendCommand"),
    "get-user": ("user", "GetUserCommand"),
    "set-user": ("user", "SetUserCommand"),
    "change-password": ("user", "ChangePasswordCommand"),
    "delete-user": ("user", "DeleteUserCommand"),
    "token show": ("token", "TokenShowCommand"),
    "token attenuate": ("token", "TokenAttenuateCommand"),
}


class _Parser(argparse.ArgumentParser):
    """Raises UsageError instead of printing and exiting with status 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.format_usage())


class _VersionAction(argparse.Action):
    """``--version``, looked up only when asked for (importlib.metadata is slow)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from importlib.metadata import PackageNotFoundError, version

        from ..client import PROTOCOL_VERSION

        try:
            ours = version("pymap-deliver")
        except PackageNotFoundError:
            ours = "unknown"
        import sys

        sys.stdout.write(f"{PROG} {ours} (admin protocol {PROTOCOL_VERSION})\n")
        parser.exit()


def _timestamp(value: str) -> float:
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


def _duration(value: str) -> float:
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


def _size(value: str) -> int:
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size in bytes: {value!r}") from None
    if size < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value!r}")
    return size


def _param(value: str) -> tuple[str, str]:
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


_TOP_LEVEL = frozenset({"save-args", "login", "ping", "check", "append", "get-user",
                        "set-user", "change-password", "delete-user", "token"})

#: Global options that take a value: skipped when looking for the command name.
_VALUED = valued_flags(CONNECTION_OPTIONS)


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
    parser.add_argument("--version", action=_VersionAction, help="show the version and exit")
    add_connection_arguments(parser)

    common = [_common(True)]
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        created: argparse.ArgumentParser = sub.add_parser(
            name, help=help, description=description, parents=common)
        return created

    def wanted(name: str) -> bool:
        return only is None or only == name

    if wanted("save-args"):
        command("save-args", "save connection arguments to config file",
                "Save the connection options given before the command (--host, --port, "
                "--path, ...) to ~/.config/pymap/pymap-admin.conf (mode 0600).")

    if wanted("login"):
        login = command("login", "login as a user",
                        "Log in as a user and print a bearer token; -s saves it (mode 0600) "
                        "for later commands.")
        login.add_argument("-s", "--save", action="store_true", help="save the login token")
        login.add_argument("-z", "--authzid", metavar="NAME", help="authorization identity name")
        login.add_argument("--expiration", metavar="TIMESTAMP", type=_timestamp,
                           help="token expiration (UNIX time or ISO-8601)")
        secret = login.add_mutually_exclusive_group(required=True)
        secret.add_argument("-t", "--token", action="store_true",
                            help="use token authentication to login")
        secret.add_argument("--password", metavar="VAL", help="login password")
        secret.add_argument("--password-file", metavar="PATH", type=Path,
                            help="file containing login password (first line)")
        secret.add_argument("-i", "--ask-password", action="store_true",
                            help="read login password from terminal")
        login.add_argument("user", help="login username")

    if wanted("ping"):
        command("ping", "ping the server", "Ping the server: print its pymap version.")

    if wanted("check"):
        check = command("check", "check the server health",
                        "Check the health of the server; exit 0 when SERVING, 1 otherwise.")
        check.add_argument("service", nargs="?", default="",
                           help="the service name, if any (e.g. pymap.backend)")

    if wanted("append"):
        append = command(
            "append", "append a message to a mailbox",
            "Deliver a message to a user's mailbox, as an MTA's delivery agent. The first "
            "line on stdout is the enhanced status (2.0.0 Message delivered, 5.1.1 User "
            "unknown, 4.4.1 ...); details go to stderr; the exit status is 0, 67 (no such "
            "user), 77 (rejected), 65 (too big) or 75 (try again later, also for any "
            "mistake on this command line). A leading mbox 'From ' line is removed and "
            "UNIX line endings become CRLF.")
        append.add_argument("--from", metavar="ADDRESS", dest="sender",
                            help="the message envelope sender (MAILER-DAEMON or empty: "
                                 "the null sender)")
        append.add_argument("--to", metavar="ADDRESS", dest="recipient",
                            help="the message envelope recipient")
        append.add_argument("--mailbox", metavar="NAME", help="the mailbox name (default: INBOX)")
        append.add_argument("--timestamp", metavar="SECONDS", type=float,
                            help="the message timestamp (default: now)")
        append.add_argument("--data", metavar="FILE", type=Path,
                            help="the message data (default: stdin)")
        append.add_argument("--max-size", metavar="BYTES", type=_size, default=DEFAULT_MAX_SIZE,
                            help="refuse larger messages with 5.3.4 (default: 64 MiB; 0: no limit)")
        append.add_argument("username", help="the user name")
        flags = append.add_argument_group("message flags")
        flags.add_argument("--flag", dest="flags", action="append", metavar="VAL",
                           help="a message flag or keyword")
        for flag in ("flagged", "seen", "draft", "deleted", "answered"):
            flags.add_argument(f"--{flag}", dest="flags", action="append_const",
                               const="\\" + flag.capitalize(), help=f"the message is {flag}")

    if wanted("get-user"):
        get_user = command("get-user", "get a user", "Print a user and its metadata.")
        get_user.add_argument("user", help="the user name")

    if wanted("set-user"):
        set_user = command("set-user", "add or overwrite a user",
                           "Set the metadata for a user, creating it if it does not exist. The "
                           "password is asked on the terminal unless --password-file or "
                           "--no-password is given.")
        set_user.add_argument("--no-overwrite", action="store_false", dest="overwrite",
                              help="do not overwrite existing users")
        set_user.add_argument("--password-file", metavar="FILE", type=Path,
                              help="read the password from a file (first line)")
        set_user.add_argument("--no-password", action="store_true",
                              help="send the request with no password value")
        set_user.add_argument("--param", action="append", dest="params", default=[],
                              metavar="KEY=VAL", type=_param,
                              help="additional parameters for the request")
        set_user.add_argument("--role", action="append", dest="roles", default=[], metavar="ROLE",
                              help="assigned roles for the user")
        set_user.add_argument("user", help="the user name")

    if wanted("change-password"):
        change = command("change-password", "assign a new password to a user",
                         "Change a password for an existing user, without modifying any other "
                         "metadata; a concurrent change of the user is detected, not overwritten.")
        change.add_argument("--password-file", metavar="FILE", type=Path,
                            help="read the password from a file (first line)")
        change.add_argument("--no-password", action="store_true",
                            help="send the request with no password value")
        change.add_argument("user", help="the user name")

    if wanted("delete-user"):
        delete = command("delete-user", "delete a user", "Delete a user and its mail data.")
        delete.add_argument("user", help="the user name")

    if wanted("token"):
        token = command("token", "inspect or narrow a token",
                        "Inspect or narrow an admin or login token, without the server.")
        token_sub = token.add_subparsers(dest="token_command", metavar="ACTION",
                                         parser_class=_Parser)
        token_sub.required = True
        show = token_sub.add_parser(
            "show", parents=common, help="show what a token allows",
            description="Show a token's kind, user, caveats and expiry (never its signature). "
                        "The token is the one other commands would use, or read from stdin.")
        show.add_argument("--stdin", action="store_true", help="read the token from stdin")
        narrow = token_sub.add_parser(
            "attenuate", parents=common, help="make a narrower token",
            description="Print a narrower token: only for one user and/or only until a time. "
                        "The token is the one other commands would use, or read from stdin.")
        narrow.add_argument("--user", metavar="USER",
                            help="the token only acts as this user (authzid caveat)")
        until = narrow.add_mutually_exclusive_group()
        until.add_argument("--expires", metavar="TIMESTAMP", type=_timestamp,
                           help="the token expires at this time (UNIX time or ISO-8601)")
        until.add_argument("--lifetime", metavar="DURATION", type=_duration,
                           help="the token expires after this long (3600, 30m, 12h, 1d, ...)")
        narrow.add_argument("--stdin", action="store_true", help="read the token from stdin")
        narrow.add_argument("-o", "--output", metavar="FILE", type=Path,
                            help="write the token to FILE (mode 0600) instead of stdout")
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
    glob = GlobalOptions(
        config=ns.config, host=ns.host, port=ns.port, path=ns.path, token_file=ns.token_file,
        cert=ns.cert, key=ns.key, cafile=ns.cafile, capath=ns.capath,
        no_verify_cert=ns.no_verify_cert, tls=ns.tls, timeout=ns.timeout, json=ns.json,
        debug=ns.debug)
    if glob.key is not None and glob.cert is None:
        parser.error("--key needs --cert")
    name: str = ns.command
    options: CommandOptions
    match name:
        case "save-args":
            options = SaveArgsOptions()
        case "login":
            options = LoginOptions(user=ns.user, token=ns.token, password=ns.password,
                                   password_file=ns.password_file,
                                   ask_password=ns.ask_password, save=ns.save,
                                   authzid=ns.authzid, expiration=ns.expiration)
        case "ping":
            options = PingOptions()
        case "check":
            options = CheckOptions(service=ns.service)
        case "append":
            options = AppendOptions(username=ns.username, sender=ns.sender,
                                    recipient=ns.recipient, mailbox=ns.mailbox,
                                    timestamp=ns.timestamp, data=ns.data,
                                    flags=tuple(ns.flags or ()), max_size=ns.max_size)
        case "get-user":
            options = GetUserOptions(user=ns.user)
        case "set-user":
            if ns.password_file is not None and ns.no_password:
                parser.error("--password-file and --no-password exclude each other")
            options = SetUserOptions(user=ns.user, overwrite=ns.overwrite,
                                     password_file=ns.password_file,
                                     no_password=ns.no_password, params=tuple(ns.params),
                                     roles=tuple(ns.roles))
        case "change-password":
            if ns.password_file is not None and ns.no_password:
                parser.error("--password-file and --no-password exclude each other")
            options = ChangePasswordOptions(user=ns.user, password_file=ns.password_file,
                                            no_password=ns.no_password)
        case "delete-user":
            options = DeleteUserOptions(user=ns.user)
        case "token":
            name = f"token {ns.token_command}"
            if ns.token_command == "show":
                options = TokenShowOptions(stdin=ns.stdin)
            else:
                if ns.user is None and ns.expires is None and ns.lifetime is None:
                    parser.error("token attenuate: give --user, --expires or --lifetime")
                options = TokenAttenuateOptions(user=ns.user, expires=ns.expires,
                                                lifetime=ns.lifetime, stdin=ns.stdin,
                                                output=ns.output)
        case _:  # pragma: no cover - argparse only accepts the names above
            parser.error(f"unknown command {name!r}")
    return Options(name, glob, options)
