"""Options declared once: name, flag, config-file key, environment variable,
type, default and help in one row; everything else is generated from the rows.

:data:`CONNECTION_OPTIONS` are the settings pymap users know (cli-surface:
``--host``, ``--port``, ``--path``, ``--token-file`` and the TLS options). From
this table come :func:`pymap_admin.settings.load_settings` (environment and
config file), the argparse flags of ``pymap-admin`` and ``pymap-deliver``,
the keys ``save-args`` writes and the list of flags that take a value.
``pymap-deliver`` declares its own options with the same :class:`Option`.

Config files are INI (the format of the published client's
``pymap-admin.conf``): ``[section]``, ``key = value``, ``#``/``;`` comments,
indented continuation lines. :func:`read_ini` keeps line numbers so that an
error can name the line.

Rows are NamedTuples, not dataclasses: ``pymap-admin append`` imports this
module on every delivery, and a NamedTuple costs a tenth as much to define.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import argparse

__all__ = [
    "CONNECTION_OPTIONS",
    "IniValue",
    "Option",
    "add_arguments",
    "parse_bool",
    "read_ini",
    "valued_flags",
    "version_action",
]


class Option(NamedTuple):
    """One option. ``name`` is the field it fills and its config-file key."""

    name: str
    #: str -> value; raises ValueError with a message that needs no option name.
    parse: Callable[[str], Any]
    help: str
    #: The command-line flag; "" for an option with none (a secret, say).
    flag: str = ""
    #: The environment variable, if any.
    env: str = ""
    metavar: str = ""
    #: Used when given nowhere; also what --print-config compares against.
    default: Any = None
    #: A yes/no option given on the command line as a bare switch; with
    #: ``negated`` the switch sets it to False (``--no-tls``).
    switch: bool = False
    negated: bool = False
    #: Given several times on the command line, a list in a config file
    #: (comma or white space separated, as in postfix's main.cf).
    repeatable: bool = False
    #: A repeatable option kept as one comma-separated value of its type,
    #: the form the environment uses too; given once, exactly that value.
    joined: bool = False
    #: Argparse group title; for the daemon also the config-file section.
    section: str = ""
    #: Written by save-args to pymap-admin.conf.
    saved: bool = True
    choices: tuple[str, ...] = ()

    @property
    def takes_value(self) -> bool:
        return not self.switch

    def convert(self, raw: str) -> Any:
        """A config-file or environment value; repeatable ones split into a list."""
        if self.repeatable and not self.joined:
            return [self.parse(item) for item in raw.replace(",", " ").split()]
        if self.switch:
            return parse_bool(raw)
        if self.choices and raw not in self.choices:
            raise ValueError(f"expected one of {', '.join(self.choices)}: {raw!r}")
        return self.parse(raw)


# --- value parsers: ValueError says what is wrong with the value --------------

_TRUE = frozenset({"1", "yes", "true", "on"})
_FALSE = frozenset({"0", "no", "false", "off", ""})


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected yes or no: {value!r}")


def text(value: str) -> str:
    return value


def path(value: str) -> Path:
    if not value:
        raise ValueError("empty path")
    return Path(value).expanduser()


def port(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"not a port number: {value!r}") from None
    if not 0 < number < 65536:
        raise ValueError(f"port out of range: {value}")
    return number


def positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"not a number: {value!r}") from None
    if not number > 0:
        raise ValueError(f"must be positive: {value!r}")
    return number


def at_least(minimum: int) -> Callable[[str], int]:
    def integer(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"not a whole number: {value!r}") from None
        if number < minimum:
            raise ValueError(f"must be at least {minimum}: {value!r}")
        return number

    return integer


# --- the connection options ----------------------------------------------------

CONNECTION_OPTIONS: tuple[Option, ...] = (
    Option("config", path, "connection config file "
           "(default: ~/.config/pymap/pymap-admin.conf)", flag="--config",
           env="PYMAP_ADMIN_CONFIG", metavar="PATH", saved=False),
    Option("host", text, "server host (TCP, always TLS); repeat it for the members of a "
           "pymap cluster", flag="--host", env="PYMAP_ADMIN_HOST", metavar="HOST[:PORT]",
           repeatable=True, joined=True),
    Option("port", port, "server port (default: 50051)", flag="--port",
           env="PYMAP_ADMIN_PORT", metavar="PORT"),
    Option("path", path, "server socket file (used as given: no fallback); repeat it for "
           "the members of a pymap cluster", flag="--path", env="PYMAP_ADMIN_SOCKET",
           metavar="PATH", repeatable=True, joined=True),
    Option("token", text, "the admin or login token (never on the command line)",
           env="PYMAP_ADMIN_TOKEN", saved=False),
    Option("token_file", path, "auth token file", flag="--token-file",
           env="PYMAP_ADMIN_TOKEN_FILE", metavar="PATH"),
    Option("cert", path, "client certificate", flag="--cert", env="PYMAP_ADMIN_CERT",
           metavar="FILE", section="tls options"),
    Option("key", path, "client private key", flag="--key", env="PYMAP_ADMIN_KEY",
           metavar="FILE", section="tls options"),
    Option("cafile", path, "CA cert file", flag="--cafile", env="PYMAP_ADMIN_CAFILE",
           metavar="FILE", section="tls options"),
    Option("capath", path, "CA cert path", flag="--capath", env="PYMAP_ADMIN_CAPATH",
           metavar="PATH", section="tls options"),
    Option("no_verify_cert", parse_bool, "disable TLS certificate verification",
           flag="--no-verify-cert", env="PYMAP_ADMIN_NO_VERIFY_CERT", switch=True,
           section="tls options"),
    Option("tls", parse_bool, "plain TCP, for a service behind a TLS proxy "
           "(pymap's own admin port always speaks TLS)", flag="--no-tls",
           env="PYMAP_ADMIN_TLS", switch=True, negated=True, section="tls options"),
    Option("all_addresses", parse_bool, "treat every address the --host name resolves to "
           "as one member of a pymap cluster (TLS still checks the name)",
           flag="--all-addresses", env="PYMAP_ADMIN_ALL_ADDRESSES", switch=True),
    Option("timeout", positive, "deadline of each call to the server (default: 60)",
           flag="--timeout", env="PYMAP_ADMIN_TIMEOUT", metavar="SECONDS"),
    Option("login_tokens", parse_bool, "deliver with the admin token only, not with a "
           "login token per user (which pymap answers 0.3 s sooner per call)",
           flag="--no-login-tokens", env="PYMAP_ADMIN_LOGIN_TOKENS", switch=True,
           negated=True, section="login tokens"),
    Option("token_cache", text, "folder keeping the login tokens between processes, or "
           "'none' (default: ~/.cache/pymap/login-tokens)", flag="--login-token-cache",
           env="PYMAP_ADMIN_TOKEN_CACHE", metavar="PATH", section="login tokens"),
)


def valued_flags(options: Iterable[Option]) -> frozenset[str]:
    """The flags that take a value: skipped when looking for a command name."""
    return frozenset(o.flag for o in options if o.flag and o.takes_value)


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                  options: Iterable[Option], *, groups: bool = True,
                  dest: Callable[[Option], str] = lambda o: o.name,
                  help_suffix: Callable[[Option], str] = lambda o: "",
                  default: Any = None) -> None:
    """Add ``options`` as flags. Every default is None ("not given", or
    ``default``), so that what comes from elsewhere (environment, config
    file) still applies."""
    import argparse

    made: dict[str, Any] = {}
    for option in options:
        if not option.flag:
            continue
        target: Any = parser
        if groups and option.section and isinstance(parser, argparse.ArgumentParser):
            if option.section not in made:
                made[option.section] = parser.add_argument_group(option.section)
            target = made[option.section]
        text = option.help + help_suffix(option)
        if option.switch:
            target.add_argument(option.flag, dest=dest(option),
                                action="store_false" if option.negated else "store_true",
                                default=default, help=text)
            continue
        action: Any = "store"
        if option.repeatable:
            action = _joined_action() if option.joined else "append"
        target.add_argument(option.flag, dest=dest(option), metavar=option.metavar or None,
                            type=_argparse_type(option.parse), default=default,
                            action=action, choices=option.choices or None, help=text)


def _joined_action() -> type:
    import argparse

    class Joined(argparse.Action):
        def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                     values: Any, option_string: str | None = None) -> None:
            current = getattr(namespace, self.dest, None)
            if current is not None:
                values = type(values)(f"{current},{values}")
            setattr(namespace, self.dest, values)

    return Joined


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """argparse prints an ArgumentTypeError's message after the option's name."""

    def convert(value: str) -> Any:
        import argparse

        try:
            return parse(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def version_action(prog: str, detail: Callable[[], str] = lambda: "") -> type:
    """An argparse action for ``--version``: ``prog``, the installed
    version of pymap-deliver (the distribution both programs ship in) and
    ``detail()``, looked up only when asked for (importlib.metadata is slow)."""
    import argparse

    class Version(argparse.Action):
        def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                     default: str = argparse.SUPPRESS, help: str | None = None) -> None:
            super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

        def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                     values: object, option_string: str | None = None) -> None:
            from importlib.metadata import PackageNotFoundError, version

            try:
                ours = version("pymap-deliver")
            except PackageNotFoundError:
                ours = "unknown"
            import sys

            sys.stdout.write(f"{prog} {ours}{detail()}\n")
            parser.exit()

    return Version


# --- INI files, with line numbers ---------------------------------------------


class IniValue(NamedTuple):
    value: str
    line: int


def read_ini(path: Path) -> tuple[dict[str, dict[str, IniValue]], dict[str, int]]:
    """Sections of ``key = value`` (or ``key: value``) and the line of each
    section header. Raises ValueError naming the line on anything malformed
    or repeated; keys are lower-cased, as configparser does."""
    with path.open(encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    sections: dict[str, dict[str, IniValue]] = {}
    headers: dict[str, int] = {}
    current: dict[str, IniValue] | None = None
    last: str | None = None
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if line[0] in " \t" and current is not None and last is not None:
            # A continuation line: part of the previous value.
            previous = current[last]
            current[last] = IniValue(f"{previous.value}\n{stripped}", previous.line)
            continue
        if stripped.startswith("["):
            if not stripped.endswith("]"):
                raise ValueError(f"line {number}: malformed section header: {stripped!r}")
            name = stripped[1:-1].strip()
            if name in sections:
                raise ValueError(f"line {number}: section [{name}] appears twice "
                                 f"(first on line {headers[name]})")
            current = sections[name] = {}
            headers[name] = number
            last = None
            continue
        separators = [i for i in (stripped.find("="), stripped.find(":")) if i > 0]
        if not separators:
            raise ValueError(f"line {number}: expected key = value: {stripped!r}")
        key = stripped[:min(separators)].strip().lower()
        value = stripped[min(separators) + 1:].strip()
        if current is None:
            raise ValueError(f"line {number}: {key!r} before any [section]")
        if key in current:
            section = _section_of(sections, current)
            raise ValueError(f"line {number}: {key!r} given twice in [{section}] "
                             f"(first on line {current[key].line})")
        current[key] = IniValue(value, number)
        last = key
    return sections, headers


def _section_of(sections: Mapping[str, dict[str, IniValue]],
                current: dict[str, IniValue]) -> str:
    return next(name for name, values in sections.items() if values is current)
