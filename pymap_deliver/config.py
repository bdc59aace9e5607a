"""The daemon's configuration: every option declared once, given on the
command line or in the config file (``/etc/pymap-deliver/pymap-deliver.conf``).

The config file is INI, like the ``pymap-admin.conf`` pymap users already
have and in the ``key = value`` spirit of postfix's main.cf: one
``[section]`` per group of options, each key the option's name
(``max_connections = 100`` for ``--max-connections 100``), lists comma or
white-space separated. Unknown sections and keys are errors that name the
line. The command line wins over the file; connection options the file does
not set come from ``$PYMAP_ADMIN_*`` and pymap-admin.conf as for pymap-admin.

:func:`load` turns a command line (and the file it names) into a
:class:`DaemonConfig`; :func:`render` writes the effective values back in the
file's own format (``--print-config``).
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from pymap_admin.errors import ConfigurationError
from pymap_admin.options import (
    CONNECTION_OPTIONS,
    Option,
    add_arguments,
    at_least,
    path,
    positive,
    read_ini,
    text,
    version_action,
)

from .delivery import DeliveryOptions
from .protocol import LMTPOptions
from .recipients import RecipientRules
from .server import ServerConfig, TcpEndpoint, UnixEndpoint

__all__ = ["DEFAULT_CONFIG", "OPTIONS", "DaemonConfig", "UsageError", "build", "build_parser",
           "find_config_file", "load", "render"]

PROG = "pymap-deliver"
DEFAULT_CONFIG = Path("/etc/pymap-deliver/pymap-deliver.conf")
CONFIG_ENV = "PYMAP_DELIVER_CONFIG"
MiB = 1024 * 1024


def endpoint(value: str) -> TcpEndpoint:
    """``[HOST:]PORT``; an IPv6 host in brackets."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"not [HOST:]PORT: {value!r}") from None
    if not 0 <= number < 65536:
        raise ValueError(f"port out of range: {number}")
    return TcpEndpoint(host=host.strip("[]") or "127.0.0.1", port=number)


def show_endpoint(value: TcpEndpoint) -> str:
    host = f"[{value.host}]" if ":" in value.host else value.host
    return f"{host}:{value.port}"


def mode(value: str) -> int:
    try:
        number = int(value, 8)
    except ValueError:
        raise ValueError(f"not an octal mode: {value!r}") from None
    if not 0 <= number <= 0o7777:
        raise ValueError(f"not a file mode: {value!r}")
    return number


def _known(lookup: Callable[[str], object], kind: str) -> Callable[[str], str]:
    """A parser of names that must exist here (a numeric id is taken as given)."""
    def name(value: str) -> str:
        if not value.isdigit():
            try:
                lookup(value)
            except KeyError:
                raise ValueError(f"no such {kind}: {value!r}") from None
        return value

    return name


user_name = _known(pwd.getpwnam, "user")
group_name = _known(grp.getgrnam, "group")


def hostname(value: str) -> str:
    if not value or any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"not a host name: {value!r}")
    return value


def delimiter(value: str) -> str:
    if "@" in value or any(c.isspace() for c in value):
        raise ValueError(f"not a recipient delimiter: {value!r}")
    return value


LISTEN, LMTP, RECIPIENTS, PYMAP, DAEMON = "listen", "lmtp", "recipients", "pymap", "daemon"

#: The daemon's own options; the [pymap] section adds the connection options.
_OWN: tuple[Option, ...] = (
    Option("listen", endpoint, "TCP listener, repeatable (host defaults to 127.0.0.1; "
           "LMTP has no authentication: listen on loopback)", flag="--listen",
           metavar="[HOST:]PORT", repeatable=True, default=[], section=LISTEN),
    Option("unix", text, "UNIX socket listener, repeatable (e.g. for postfix's lmtp:unix:)",
           flag="--unix", metavar="PATH", repeatable=True, default=[], section=LISTEN),
    Option("unix_mode", mode, "permissions of the UNIX sockets (default: 0660)",
           flag="--unix-mode", metavar="MODE", default=0o660, section=LISTEN),
    Option("unix_owner", user_name, "owner of the UNIX sockets", flag="--unix-owner",
           metavar="USER", section=LISTEN),
    Option("unix_group", group_name, "group of the UNIX sockets", flag="--unix-group",
           metavar="GROUP", section=LISTEN),
    Option("systemd", text, "also serve sockets passed by systemd (LISTEN_FDS)",
           flag="--systemd", switch=True, default=False, section=LISTEN),
    Option("hostname", hostname, "name in the greeting and Received: (default: FQDN)",
           flag="--hostname", metavar="NAME", section=LMTP),
    Option("max_size", at_least(1), "largest message accepted, announced as SIZE "
           "(default: 64 MiB)", flag="--max-size", metavar="BYTES", default=64 * MiB,
           section=LMTP),
    Option("max_connections", at_least(1), "sessions at once; more get 421 (default: 100)",
           flag="--max-connections", metavar="N", default=100, section=LMTP),
    Option("idle_timeout", positive, "close a session idle this long (default: 300, "
           "like postfix)", flag="--idle-timeout", metavar="SECONDS", default=300.0,
           section=LMTP),
    Option("max_recipients", at_least(1), "recipients per transaction (default: 1000)",
           flag="--max-recipients", metavar="N", default=1000, section=LMTP),
    Option("shutdown_timeout", positive, "on SIGTERM, abort what is still open after this "
           "long (default: 600, postfix's lmtp_data_done_timeout)", flag="--shutdown-timeout",
           metavar="SECONDS", default=600.0, section=LMTP),
    Option("local_part_only", text, "the pymap user is the local part, not the whole "
           "address", flag="--local-part-only", switch=True, default=False,
           section=RECIPIENTS),
    Option("recipient_delimiter", delimiter, "separators of an address detail, e.g. '+' "
           "(stripped for the user)", flag="--recipient-delimiter", metavar="CHARS",
           default="", section=RECIPIENTS),
    Option("detail_mailbox", text, "file user+Folder mail into Folder (INBOX if it does "
           "not exist)", flag="--detail-mailbox", switch=True, default=False,
           section=RECIPIENTS),
    Option("check_recipients", text, "accept every RCPT; unknown users are refused after "
           "DATA", flag="--no-check-recipients", switch=True, negated=True, default=True,
           section=RECIPIENTS),
    Option("accept_when_unreachable", text, "accept RCPTs when pymap cannot be asked "
           "(default: defer with 451)", flag="--accept-when-unreachable", switch=True,
           default=False, section=RECIPIENTS),
    Option("max_in_flight", at_least(1), "admin calls in flight at once, all sessions "
           "together (default: 256)", flag="--max-in-flight", metavar="N", default=256,
           section=RECIPIENTS),
    Option("max_bytes_in_flight", at_least(1), "message bytes in Append calls at once, all "
           "sessions together; more wait their turn (default: 64 MiB)",
           flag="--max-bytes-in-flight", metavar="BYTES", default=64 * MiB,
           section=RECIPIENTS),
    Option("admin_config", path, "pymap-admin.conf to read connection settings the "
           "[pymap] section does not give (default: as pymap-admin finds it)",
           flag="--admin-config", metavar="PATH", section=PYMAP),
    Option("resolve_interval", at_least(0), "seconds between lookups of the name whose "
           "addresses all_addresses makes the members (default: 60; 0: at start-up and on "
           "SIGHUP only)", flag="--resolve-interval", metavar="SECONDS", default=60,
           section=PYMAP),
    *(option._replace(section=PYMAP) for option in CONNECTION_OPTIONS
      if option.flag and option.name != "config"),
    Option("user", user_name, "after binding the listeners, run as this user",
           flag="--user", metavar="USER", section=DAEMON),
    Option("group", group_name, "after binding the listeners, run as this group "
           "(default: the user's)", flag="--group", metavar="GROUP", section=DAEMON),
    Option("allow_root", text, "serve as root (refused unless given)", flag="--allow-root",
           switch=True, default=False, section=DAEMON),
    Option("log_level", text, "logging threshold (default: INFO)", flag="--log-level",
           metavar="LEVEL", choices=("DEBUG", "INFO", "WARNING", "ERROR"), default="INFO",
           section=DAEMON),
    Option("log_target", text, "where logs go: stderr, syslog (/dev/log, facility mail) or "
           "journald (stderr with <N> priority prefixes) (default: stderr)",
           flag="--log-target", metavar="TARGET", choices=("stderr", "syslog", "journald"),
           default="stderr", section=DAEMON),
    Option("log_file", path, "append logs to this file instead (reopened on SIGHUP)",
           flag="--log-file", metavar="PATH", section=DAEMON),
    Option("metrics", endpoint, "serve Prometheus metrics and /healthz on [HOST:]PORT",
           flag="--metrics", metavar="[HOST:]PORT", section=DAEMON),
)

OPTIONS: tuple[Option, ...] = _OWN
_CONNECTION_NAMES = frozenset(o.name for o in CONNECTION_OPTIONS)
_BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
SECTIONS: tuple[str, ...] = (LISTEN, LMTP, RECIPIENTS, PYMAP, DAEMON)


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """The effective configuration, typed, and where it came from."""

    values: Mapping[str, Any]
    #: Option names set on the command line or in the file (not defaults).
    given: frozenset[str]
    config_file: Path | None
    #: The listeners, the sessions' protocol options and the backend's options.
    server: ServerConfig
    #: For :func:`pymap_admin.settings.load_settings`: None means not given.
    connection: dict[str, object | None]

    @property
    def admin_config(self) -> Path | None:
        value: Path | None = self.values["admin_config"]
        return value

    def __getitem__(self, name: str) -> Any:
        return self.values[name]


# --- the command line ---------------------------------------------------------


class UsageError(Exception):
    """The command line is wrong: one line says how."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, allow_abbrev=False,
        description="LMTP delivery agent (RFC 2033) storing mail into pymap through its "
                    "admin API. Every option may also be set in the config file, in the "
                    "section shown in brackets, under its name "
                    f"(default file: {DEFAULT_CONFIG}).",
    )
    parser.add_argument("--version", action=version_action(PROG),
                        help="show the version and exit")
    parser.add_argument("-c", "--config", metavar="PATH", type=Path,
                        help=f"the config file (default: ${CONFIG_ENV} or {DEFAULT_CONFIG} "
                             "if it exists)")
    parser.add_argument("--check-config", action="store_true",
                        help="check the configuration and exit (0: valid, 78: not)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective configuration in the config file's "
                             "format and exit")
    parser.add_argument("--debug", action="store_true",
                        help="log at DEBUG and show tracebacks of unexpected errors")
    for section in SECTIONS:
        group = parser.add_argument_group(f"[{section}]")
        add_arguments(group, [o for o in OPTIONS if o.section == section], groups=False)
    return parser


# --- the config file ----------------------------------------------------------


def find_config_file(named: Path | None, environ: Mapping[str, str]) -> Path | None:
    """As named (must exist), else the default one if it exists."""
    chosen = named if named is not None else (
        Path(environ[CONFIG_ENV]) if environ.get(CONFIG_ENV) else None)
    if chosen is not None:
        if not chosen.is_file():
            raise ConfigurationError(f"config file not found: {chosen}")
        return chosen
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def read_config_file(file: Path) -> dict[str, Any]:
    """Option name -> typed value. Every problem names the file and line."""
    try:
        sections, headers = read_ini(file)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read config file {file}: "
                                 f"{getattr(exc, 'strerror', None) or exc}") from None
    except ValueError as exc:
        raise ConfigurationError(f"{file} {exc}") from None
    values: dict[str, Any] = {}
    for name, items in sections.items():
        if name not in SECTIONS:
            raise ConfigurationError(
                f"{file} line {headers[name]}: unknown section [{name}] "
                f"(known: {', '.join(f'[{s}]' for s in SECTIONS)})")
        for key, item in items.items():
            option = _BY_NAME.get(key)
            if option is None or option.section != name:
                hint = f"; it belongs in [{option.section}]" if option else ""
                raise ConfigurationError(
                    f"{file} line {item.line}: unknown key {key!r} in [{name}]{hint}")
            try:
                values[key] = option.convert(item.value)
            except ValueError as exc:
                raise ConfigurationError(f"{file} line {item.line}: {key}: {exc}") from None
    return values


# --- putting it together ------------------------------------------------------


def load(argv: Sequence[str] | None = None, *, environ: Mapping[str, str] | None = None,
         config_file: Path | None = None) -> tuple[argparse.Namespace, DaemonConfig]:
    """Parse ``argv``, read the config file and build the typed
    configuration. Raises UsageError for the command line,
    ConfigurationError for the file or the combination."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    env = os.environ if environ is None else environ
    file = find_config_file(config_file or ns.config, env)
    return ns, build(ns, file)


def build(ns: argparse.Namespace, file: Path | None) -> DaemonConfig:
    """The configuration of a parsed command line and a config file."""
    from_file = read_config_file(file) if file is not None else {}
    values: dict[str, Any] = {}
    given: set[str] = set()
    for option in OPTIONS:
        cli = getattr(ns, option.name, None)
        if cli is not None:
            values[option.name] = cli
            given.add(option.name)
        elif option.name in from_file:
            values[option.name] = from_file[option.name]
            given.add(option.name)
        else:
            values[option.name] = option.default
    if not (values["listen"] or values["unix"] or values["systemd"]):
        raise ConfigurationError("nothing to listen on: give --listen, --unix or --systemd "
                                 "(listen, unix or systemd in [listen])")
    if values["group"] is not None and values["user"] is None:
        raise ConfigurationError("--group needs --user (group and user in [daemon])")
    if values["key"] is not None and values["cert"] is None:
        raise ConfigurationError("--key needs --cert")
    try:
        rules = RecipientRules(local_part_only=values["local_part_only"],
                               delimiter=values["recipient_delimiter"],
                               detail_mailbox=values["detail_mailbox"])
    except ValueError:
        raise ConfigurationError(
            "--detail-mailbox needs --recipient-delimiter (detail_mailbox needs "
            "recipient_delimiter in [recipients])") from None
    hostname = values["hostname"] or socket.getfqdn()
    server = ServerConfig(
        tcp=tuple(values["listen"]),
        unix=tuple(UnixEndpoint(path=p, mode=values["unix_mode"], owner=values["unix_owner"],
                                group=values["unix_group"]) for p in values["unix"]),
        use_systemd_sockets=values["systemd"],
        lmtp=LMTPOptions(
            hostname=hostname,
            data_size_limit=values["max_size"],
            idle_timeout=values["idle_timeout"],
            max_recipients=values["max_recipients"],
        ),
        delivery=DeliveryOptions(
            hostname=hostname, rules=rules,
            check_recipients=values["check_recipients"],
            defer_unreachable_at_rcpt=not values["accept_when_unreachable"],
            max_in_flight=values["max_in_flight"],
            max_bytes_in_flight=values["max_bytes_in_flight"],
        ),
        max_connections=values["max_connections"],
        shutdown_timeout=values["shutdown_timeout"],
    )
    connection: dict[str, object | None] = {
        o.name: values[o.name] for o in OPTIONS
        if o.section == PYMAP and o.name in _CONNECTION_NAMES}
    return DaemonConfig(values=values, given=frozenset(given), config_file=file, server=server,
                        connection=connection)


def _show(option: Option, value: Any) -> str:
    if option.repeatable and not option.joined:
        return ", ".join(_show(option._replace(repeatable=False), item) for item in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, TcpEndpoint):
        return show_endpoint(value)
    if option.parse is mode:
        return f"{value:04o}"
    return str(value)


def render(config: DaemonConfig) -> str:
    """The effective configuration as a config file: values set on the
    command line or in the file as ``key = value``, defaults commented out
    (``#key = value``). Read back, it gives the same configuration."""
    lines = [f"# {PROG} effective configuration"
             + (f" (config file {config.config_file})" if config.config_file else "")]
    for section in SECTIONS:
        lines.append(f"\n[{section}]")
        for option in OPTIONS:
            if option.section != section:
                continue
            value = config.values[option.name]
            if option.name in config.given:
                lines.append(f"{option.name} = {_show(option, value)}")
            elif value is None or value == []:
                lines.append(f"#{option.name} =")
            else:
                lines.append(f"#{option.name} = {_show(option, value)}")
    return "\n".join(line.rstrip() for line in lines) + "\n"
