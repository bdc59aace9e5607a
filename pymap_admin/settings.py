"""Connection settings: command line > environment > config file, and file discovery.

The conventions are those pymap users already have (environment variables
``PYMAP_ADMIN_*``, ``~/.config/pymap/``, ``$TMPDIR/pymap/``), with one
deliberate difference from the published client: a path the user names
explicitly (option, environment or config file) is used as given, and its
absence is reported, instead of silently falling back to another server's
socket.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigurationError
from .options import CONNECTION_OPTIONS, Option, read_ini
from .options import port as parse_port

if TYPE_CHECKING:
    import ssl

__all__ = [
    "CONFIG_NAME",
    "CONFIG_SECTION",
    "DEFAULT_PORT",
    "DEFAULT_TIMEOUT",
    "SOCKET_NAME",
    "TOKEN_NAME",
    "ConnectionSettings",
    "EndpointAddress",
    "config_home",
    "discover",
    "load_settings",
]

SOCKET_NAME = "pymap-admin.sock"
TOKEN_NAME = "pymap-admin.token"
CONFIG_NAME = "pymap-admin.conf"
CONFIG_SECTION = "pymap-admin"
DEFAULT_PORT = 50051
#: Per-call deadline in seconds. A real pymap spends ~0.3 s per authenticated
#: call; this leaves room for a loaded server while staying far below
#: postfix's 600 s LMTP data-done timeout.
DEFAULT_TIMEOUT = 60.0

_TOKEN_ENV = next(o.env for o in CONNECTION_OPTIONS if o.name == "token")
_CONFIG_ENV = next(o.env for o in CONNECTION_OPTIONS if o.name == "config")


def config_home() -> Path:
    """``$XDG_CONFIG_HOME/pymap`` (default ``~/.config/pymap``): where login -s
    and save-args write."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "pymap"


def _temp_home() -> Path:
    folder = os.environ.get("TMPDIR") or _temp_folder()
    return Path(folder) / "pymap"


def _temp_folder() -> str:
    """Where ``tempfile.gettempdir()`` (and so pymap) puts its files: the
    first of $TEMP, $TMP (after $TMPDIR), /tmp, /var/tmp, /usr/tmp that we
    may write to. Looked up without importing tempfile, which would cost
    every delivery by ``pymap-admin append`` ~5 ms (random, shutil); left
    to tempfile when none of them will do."""
    candidates = [os.environ.get(name) for name in ("TEMP", "TMP")]
    for folder in [*candidates, "/tmp", "/var/tmp", "/usr/tmp"]:
        if folder and os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK):
            return os.path.abspath(folder)
    import tempfile

    return tempfile.gettempdir()


def discover(name: str) -> Path | None:
    """The first existing default location for ``name``, or None."""
    for folder in (config_home(), _temp_home()):
        candidate = folder / name
        try:
            if candidate.exists():
                return candidate
        except OSError:
            # A folder we may not enter (another user's home, say): not ours to use.
            continue
    return None


@dataclass(frozen=True, kw_only=True, slots=True)
class EndpointAddress:
    """One admin endpoint of several: a TCP ``host``/``port`` or a socket ``path``."""

    host: str | None = None
    port: int | None = None
    path: Path | None = None

    def __post_init__(self) -> None:
        if (self.host is None) == (self.path is None):
            raise ConfigurationError("an endpoint is a host or a socket path")
        if self.port is not None and not 0 < self.port < 65536:
            raise ConfigurationError(f"port out of range: {self.port}")


@dataclass(frozen=True, kw_only=True, slots=True)
class ConnectionSettings:
    """Where and how to reach the pymap admin service.

    With neither ``host`` nor ``port`` the client uses the UNIX socket
    ``path`` (discovered when not given). TCP means TLS, as pymap's admin TCP
    listener always speaks it (without ``--cert`` it can complete no
    handshake at all); ``tls=False`` is there for a plaintext service behind
    a proxy.
    """

    host: str | None = None
    port: int | None = None
    path: Path | None = None
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    cafile: Path | None = None
    capath: Path | None = None
    no_verify_cert: bool = False
    tls: bool | None = None
    timeout: float = DEFAULT_TIMEOUT
    endpoints: tuple[EndpointAddress, ...] = ()
    #: Every address a host name resolves to is a member (:meth:`members`).
    all_addresses: bool = False
    #: The name TLS checks the certificate against, when ``host`` is one of
    #: the addresses of that name (set by :meth:`members`).
    server_name: str | None = None
    #: Use a login token per user where the admin token would cost 0.3 s a
    #: call (pymap_admin.logintokens).
    login_tokens: bool = True
    #: Where login tokens are kept between processes: a folder, or "none"
    #: for memory only. None: ``$XDG_CACHE_HOME/pymap/login-tokens``.
    token_cache: str | None = None

    def __post_init__(self) -> None:
        if self.port is not None and not 0 < self.port < 65536:
            raise ConfigurationError(f"port out of range: {self.port}")
        if self.timeout <= 0:
            raise ConfigurationError(f"timeout must be positive: {self.timeout}")
        if self.key is not None and self.cert is None:
            raise ConfigurationError("a client key was given without its certificate (--cert)")

    @property
    def uses_tcp(self) -> bool:
        return self.host is not None or self.port is not None

    @property
    def uses_tls(self) -> bool:
        return self.uses_tcp and self.tls is not False

    def members(self, *, strict: bool = False) -> tuple[ConnectionSettings, ...]:
        """One settings value per endpoint: this one, or one per ``endpoints``
        (with ``all_addresses``, one per address of the name: ``strict``
        raises :class:`OSError` when the name does not resolve now, instead
        of leaving it to the channel).

        With several socket endpoints and no token given, each member uses
        the admin token pymap writes beside its socket: a member's admin
        token is trusted by the other members only once SWIM has converged
        (and changes at each restart), so it is used with that member only.
        """
        from dataclasses import replace

        if not self.endpoints:
            members: tuple[ConnectionSettings, ...] = (self,)
        else:
            own_tokens = self.token is None and self.token_file is None
            members = tuple(
                replace(self, host=e.host, port=e.port, path=e.path, endpoints=(),
                        token_file=e.path.parent / TOKEN_NAME if own_tokens and e.path else
                        self.token_file)
                for e in self.endpoints)
        if self.all_addresses:
            members = tuple(address for member in members
                            for address in member._addresses(strict=strict))
        return members

    def _addresses(self, *, strict: bool) -> tuple[ConnectionSettings, ...]:
        """This TCP endpoint once per address its host name resolves to, TLS
        checking the name; as it is if it is an address or a socket. A name
        that does not resolve now stays as it is (the channel resolves it
        when connecting), or with ``strict`` raises :class:`OSError`."""
        import ipaddress
        import socket
        from dataclasses import replace

        if not self.uses_tcp:
            return (self,)
        host = self.host or "localhost"
        try:
            ipaddress.ip_address(host)
            return (self,)
        except ValueError:
            pass
        try:
            found = socket.getaddrinfo(host, self.port or DEFAULT_PORT,
                                       type=socket.SOCK_STREAM)
        except OSError:
            if strict:
                raise
            return (self,)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
        return tuple(replace(self, host=address, server_name=host, all_addresses=False)
                     for address in addresses)

    @property
    def own_member_tokens(self) -> bool:
        """True when each member uses its own admin token (see :meth:`members`)."""
        return (len(self.endpoints) > 1 and self.token is None and self.token_file is None
                and all(e.path is not None for e in self.endpoints))

    @property
    def target(self) -> str:
        """Where we connect, for messages."""
        if self.endpoints:
            return ", ".join(member.target for member in self.members())
        if self.uses_tcp:
            scheme = "https" if self.uses_tls else "http"
            host = self.host or "localhost"
            host = f"[{host}]" if ":" in host else host
            name = f" ({self.server_name})" if self.server_name else ""
            return f"{scheme}://{host}:{self.port or DEFAULT_PORT}{name}"
        return f"unix:{self.socket_path()}"

    def socket_path(self) -> Path:
        """The UNIX socket: as named, or the first one found."""
        if self.path is not None:
            return self.path
        found = discover(SOCKET_NAME)
        if found is None:
            raise ConfigurationError(
                f"no pymap admin socket found in {config_home()} or {_temp_home()}; "
                "use --host/--port or --path"
            )
        return found

    def token_path(self) -> Path | None:
        """The token file: as named, or the first one found."""
        return self.token_file if self.token_file is not None else discover(TOKEN_NAME)

    def token_cache_path(self) -> Path | None:
        """The login-token cache folder, or None when switched off."""
        if self.token_cache is None:
            from .logintokens import default_cache_folder

            return default_cache_folder()
        if self.token_cache.strip().lower() in ("", "none", "off", "no"):
            return None
        return Path(self.token_cache).expanduser()

    def ssl_context(self) -> ssl.SSLContext:
        import ssl

        for name, value in (("cafile", self.cafile), ("capath", self.capath),
                            ("cert", self.cert), ("key", self.key)):
            if value is not None and not value.exists():
                # ssl's own error says "No such file or directory" and no name.
                raise ConfigurationError(f"TLS {name} not found: {value}")
        try:
            context = ssl.create_default_context(
                cafile=str(self.cafile) if self.cafile else None,
                capath=str(self.capath) if self.capath else None,
            )
            if self.cert is not None:
                context.load_cert_chain(str(self.cert), str(self.key) if self.key else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"cannot load TLS files: {exc}") from exc
        if self.no_verify_cert:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        # HTTP/2 over TLS requires ALPN "h2".
        context.set_alpn_protocols(["h2"])
        return context


#: The options that become ConnectionSettings fields (the rest of the table:
#: the config file's own path and the token, which has its own precedence).
_FIELDS = tuple(o for o in CONNECTION_OPTIONS if o.name not in ("config", "token"))

#: The keys of the config file, in the order save-args writes them; also the
#: names of the command line's connection options.
CONFIG_KEYS = tuple(o.name for o in CONNECTION_OPTIONS if o.saved)


def _convert(option: Option, raw: object, where: str) -> object:
    if not isinstance(raw, str):
        return raw
    try:
        return option.convert(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None


def find_config_file(option: str | Path | None, environ: Mapping[str, str]) -> Path | None:
    """The config file: as named (must exist), else the first one found."""
    named = option if option is not None else environ.get(_CONFIG_ENV)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise ConfigurationError(f"config file not found: {path}")
        return path
    return discover(CONFIG_NAME)


def read_config_file(path: Path) -> dict[str, str]:
    """The ``[pymap-admin]`` section. Unknown keys and sections are warned
    about, naming the line, and ignored (the published client ignores them
    silently; a misspelt key should not go unnoticed)."""
    try:
        sections, headers = read_ini(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigurationError(f"cannot read config file {path}: {exc}") from exc
    known = {o.name for o in CONNECTION_OPTIONS if o.saved}
    problems = [f"line {line}: unknown section [{name}]"
                for name, line in headers.items() if name != CONFIG_SECTION]
    section = sections.get(CONFIG_SECTION, {})
    problems += [f"line {item.line}: unknown key {key!r}"
                 for key, item in section.items() if key not in known]
    if problems:
        import logging

        for problem in problems:
            logging.getLogger("pymap_admin.settings").warning(
                "config file %s %s (ignored)", path, problem)
    return {key: item.value for key, item in section.items() if key in known}


def load_settings(
    options: Mapping[str, object | None] | None = None,
    *,
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> ConnectionSettings:
    """Resolve settings: ``options`` (the command line; None means not given)
    > ``environ`` (default ``os.environ``) > the config file."""
    env = os.environ if environ is None else environ
    given = {k: v for k, v in (options or {}).items() if v is not None}
    unknown = set(given) - {o.name for o in CONNECTION_OPTIONS}
    if unknown:
        raise ConfigurationError(f"unknown settings: {', '.join(sorted(unknown))}")
    path = find_config_file(config_file, env)
    from_file = read_config_file(path) if path is not None else {}
    values: dict[str, object] = {}
    for option in _FIELDS:
        name = option.name
        sources = ((given.get(name), option.flag or name),
                   (env.get(option.env) or None, f"${option.env}"),
                   (from_file.get(name) or None, f"config file {path}: {name}"))
        for raw, where in sources:
            if raw is not None:
                values[name] = _convert(option, raw, where)
                break
    # A token given directly wins over token files found by discovery, but a
    # token file named on the command line is the user's explicit choice.
    token = given.get("token") or (None if "token_file" in given else env.get(_TOKEN_ENV))
    if token:
        values["token"] = str(token).strip()
    _split_endpoints(values)
    known = {f.name for f in fields(ConnectionSettings)}
    return ConnectionSettings(**{k: v for k, v in values.items() if k in known})  # type: ignore[arg-type]


def split_list(value: object) -> list[str]:
    """A list setting: items separated by commas or line breaks (a config
    file may put one per line)."""
    return [item.strip() for item in str(value).replace("\n", ",").split(",") if item.strip()]


def parse_host(text: str, default_port: int | None) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address."""
    host, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigurationError(f"host: unclosed bracket in {text!r}")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ConfigurationError(f"host: not [ADDRESS]:PORT: {text!r}")
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, number = text.split(":")
        port = _port(number, text)
    if not host:
        raise ConfigurationError(f"host: no host name in {text!r}")
    return host, port


def _port(number: str, text: str) -> int:
    try:
        return parse_port(number)
    except ValueError as exc:
        raise ConfigurationError(f"host: {exc} in {text!r}") from None


def _split_endpoints(values: dict[str, object]) -> None:
    """Turn list-valued ``host``/``path`` into ``endpoints``. One endpoint
    stays in ``host``/``port``/``path`` exactly as before."""
    hosts = split_list(values["host"]) if "host" in values else []
    paths = split_list(values["path"]) if "path" in values else []
    default_port = values.get("port")
    assert default_port is None or isinstance(default_port, int)
    if hosts:
        # TCP wins over a socket path, as it does for a single endpoint.
        parsed = [parse_host(item, default_port) for item in hosts]
        if len(parsed) == 1:
            values["host"], values["port"] = parsed[0]
            return
        values["endpoints"] = tuple(EndpointAddress(host=h, port=p) for h, p in parsed)
    elif len(paths) > 1:
        values["endpoints"] = tuple(EndpointAddress(path=Path(p).expanduser()) for p in paths)
    elif paths:
        values["path"] = Path(paths[0]).expanduser()
        return
    else:
        return
    for name in ("host", "port", "path"):
        values.pop(name, None)
