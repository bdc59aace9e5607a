"""Listeners and lifecycle of the LMTP server.

Opens TCP endpoints, UNIX sockets (for postfix's ``lmtp:unix:``) and sockets
inherited from systemd, runs one :class:`~pymap_deliver.lmtp.LMTPSession` per
connection under a connection limit, and stops gracefully: no new
connections, idle sessions told ``421`` and closed, transactions in flight
finished (data received, delivered, replies sent) before
:meth:`DeliveryServer.wait_closed` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
import signal
import socket
import stat
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from pymap_admin.outcomes import Replies

from .delivery import DeliveryOptions
from .lmtp import DeliveryBackend, LMTPOptions, LMTPSession
from .logfmt import event
from .metrics import Stats

__all__ = [
    "DeliveryServer",
    "ServerConfig",
    "TcpEndpoint",
    "UnixEndpoint",
    "install_signal_handlers",
    "systemd_listen_sockets",
]

log = logging.getLogger("pymap_deliver.lmtp")

# sd_listen_fds(3): inherited sockets start at this descriptor.
SD_LISTEN_FDS_START = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpEndpoint:
    """A TCP listener. Loopback by default: LMTP has no authentication, so
    listening elsewhere is a decision to make explicitly."""

    host: str = "127.0.0.1"
    port: int = 24


@dataclass(frozen=True, slots=True, kw_only=True)
class UnixEndpoint:
    """A UNIX socket listener. 0o660 with a group shared with postfix is the
    usual setup; ``owner``/``group`` are names or numeric ids."""

    path: str
    mode: int = 0o660
    owner: str | int | None = None
    group: str | int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """Everything the server needs besides the backend: its listeners, the
    protocol settings of every session (``lmtp``), the delivery backend's
    options (``delivery``: for whoever builds the backend, the daemon), the
    connection limit and the shutdown deadline.

    ``shutdown_timeout``: 600 s, postfix's lmtp_data_done_timeout: the MTA
    has given up on a transaction by then anyway. That many seconds after
    :meth:`DeliveryServer.stop`, whatever is still open is aborted and the
    server counts as closed, even if a delivery is still waiting for the
    backend (nothing was acknowledged for it; the MTA retries). None waits
    however long it takes.
    """

    tcp: Sequence[TcpEndpoint] = ()
    unix: Sequence[UnixEndpoint] = ()
    use_systemd_sockets: bool = False
    lmtp: LMTPOptions = field(default_factory=lambda: LMTPOptions(hostname=socket.getfqdn()))
    delivery: DeliveryOptions | None = None
    max_connections: int = 100
    shutdown_timeout: float | None = 600.0

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError("max_connections must be positive")
        if self.shutdown_timeout is not None and self.shutdown_timeout < 0:
            raise ValueError("shutdown_timeout must not be negative")

    @property
    def hostname(self) -> str:
        return self.lmtp.hostname


def systemd_listen_sockets(
    environ: MutableMapping[str, str] | None = None,
    *,
    pid: int | None = None,
    unset_environment: bool = True,
) -> list[socket.socket]:
    """The listening sockets passed by systemd socket activation.

    Implements the sd_listen_fds(3) protocol without libsystemd: ``LISTEN_PID``
    must be our pid (otherwise the variables were meant for a parent and
    inherited by accident), ``LISTEN_FDS`` descriptors start at 3. The
    variables are removed so that child processes do not pick them up.
    """
    env = os.environ if environ is None else environ
    listen_pid = env.get("LISTEN_PID", "")
    listen_fds = env.get("LISTEN_FDS", "")
    if unset_environment:
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(name, None)
    if not listen_pid.isdigit() or not listen_fds.isdigit():
        return []
    if int(listen_pid) != (os.getpid() if pid is None else pid):
        return []
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(listen_fds)):
        os.set_inheritable(fd, False)
        # socket() with fileno detects family and type from the descriptor.
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


def _resolve_ids(owner: str | int | None, group: str | int | None) -> tuple[int, int]:
    def number(value: str | int | None, lookup: Callable[[str], int]) -> int:
        if value is None:
            return -1
        if isinstance(value, int) or value.isdigit():
            return int(value)
        return lookup(value)

    return (number(owner, lambda name: pwd.getpwnam(name).pw_uid),
            number(group, lambda name: grp.getgrnam(name).gr_gid))


def _bind_unix(endpoint: UnixEndpoint) -> tuple[socket.socket, tuple[int, int]]:
    """Bind, set mode and owner, then listen: no client can connect before the
    permissions are right (connect() is refused until listen())."""
    path = endpoint.path
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise FileExistsError(f"{path} exists and is not a socket; not replacing it")
        # A stale socket from an earlier run: bind() would fail on it.
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, endpoint.mode)
        uid, gid = _resolve_ids(endpoint.owner, endpoint.group)
        if (uid, gid) != (-1, -1):
            os.chown(path, uid, gid)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
        st = os.stat(path)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return sock, (st.st_dev, st.st_ino)


class _Refuser(asyncio.Protocol):
    """Answers a connection over the limit with 421 and closes it."""

    def __init__(self, reply: bytes) -> None:
        self._reply = reply

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(self._reply)
        transport.close()


class DeliveryServer:
    """The LMTP server: ``await start()``, then ``stop()`` and
    ``await wait_closed()``; or use it as an async context manager."""

    def __init__(self, backend: DeliveryBackend, config: ServerConfig, *,
                 stats: Stats | None = None) -> None:
        self.backend = backend
        #: What the server counts (sessions accepted and refused).
        self.stats = stats if stats is not None else Stats()
        self._servers: list[asyncio.Server] = []
        self._unix_paths: list[tuple[str, tuple[int, int]]] = []
        self._sessions: set[LMTPSession] = set()
        self._stopping = False
        self._closed: asyncio.Event | None = None
        self.reconfigure(config)

    def reconfigure(self, config: ServerConfig) -> None:
        """New settings for sessions opened from now on (SIGHUP); open
        sessions keep theirs, listeners stay as they are."""
        self.config = config
        self._refusal = Replies.TOO_MANY_CONNECTIONS.format(host=config.hostname).to_bytes()

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets (for example to learn a port bound as 0)."""
        return [sock for server in self._servers for sock in server.sockets]

    def _protocol(self) -> asyncio.BaseProtocol:
        if len(self._sessions) >= self.config.max_connections or self._stopping:
            self.stats.sessions_refused += 1
            log.warning(event("connection refused", {
                "reason": "stopping" if self._stopping else "too many sessions",
                "sessions": len(self._sessions)}))
            return _Refuser(self._refusal)
        self.stats.sessions_opened += 1
        session = LMTPSession(
            self.backend,
            self.config.lmtp,
            loop=asyncio.get_running_loop(),
            on_closed=self._session_closed,
        )
        self._sessions.add(session)
        return session

    def _session_closed(self, session: LMTPSession) -> None:
        self._sessions.discard(session)
        if self._stopping and not self._sessions and self._closed is not None:
            self._closed.set()

    async def start(self, after_bind: Callable[[], None] | None = None) -> None:
        """Bind every listener, call ``after_bind`` (to drop privileges, say:
        nothing has been accepted yet), then start accepting."""
        if self._closed is not None:
            raise RuntimeError("server already started")
        self._closed = asyncio.Event()
        loop = asyncio.get_running_loop()
        try:
            for tcp in self.config.tcp:
                try:
                    self._servers.append(await loop.create_server(
                        self._protocol, tcp.host, tcp.port, start_serving=False))
                except OSError as exc:
                    # So that the message names the listener.
                    exc.filename = exc.filename or f"{tcp.host}:{tcp.port}"
                    raise
            for unix in self.config.unix:
                try:
                    sock, ident = _bind_unix(unix)
                except OSError as exc:
                    exc.filename = exc.filename or unix.path
                    raise
                self._unix_paths.append((unix.path, ident))
                self._servers.append(await loop.create_unix_server(
                    self._protocol, sock=sock, start_serving=False))
            if self.config.use_systemd_sockets:
                for sock in systemd_listen_sockets():
                    if sock.family == socket.AF_UNIX:
                        server = await loop.create_unix_server(self._protocol, sock=sock,
                                                               start_serving=False)
                    else:
                        server = await loop.create_server(self._protocol, sock=sock,
                                                          start_serving=False)
                    self._servers.append(server)
            if not self._servers:
                raise ValueError("nothing to listen on: no TCP, UNIX or systemd sockets")
            if after_bind is not None:
                after_bind()
            for server in self._servers:
                await server.start_serving()
        except BaseException:
            self._close_listeners()
            raise
        for sock in self.sockets:
            name = sock.getsockname()
            address = f"{name[0]}:{name[1]}" if isinstance(name, tuple) else name
            log.info(event("listening", {"address": address or "unnamed socket"}))

    def _close_listeners(self) -> None:
        for server in self._servers:
            server.close()
        for path, ident in self._unix_paths:
            # Only our own socket: another instance may have replaced it.
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if (st.st_dev, st.st_ino) == ident:
                    os.unlink(path)
        self._unix_paths.clear()

    def stop(self) -> None:
        """Begin a graceful stop (idempotent, safe from a signal handler)."""
        if self._stopping:
            return
        self._stopping = True
        log.info(event("stopping listeners", {"sessions": len(self._sessions)}))
        self._close_listeners()
        for session in list(self._sessions):
            session.shutdown()
        if self._closed is not None and not self._sessions:
            self._closed.set()
        timeout = self.config.shutdown_timeout
        if timeout is not None:
            asyncio.get_running_loop().call_later(timeout, self._abort_all)

    def _abort_all(self) -> None:
        if self._sessions:
            log.warning(event(f"shutdown timeout: aborting {len(self._sessions)} sessions",
                              sessions=len(self._sessions)))
        for session in list(self._sessions):
            session.abort()
        # A session whose delivery still waits for the backend reports itself
        # closed only when the delivery ends; the deadline does not wait.
        if self._closed is not None:
            self._closed.set()

    async def wait_closed(self) -> None:
        """Return once stopped and every session (and its delivery) is over."""
        if self._closed is None:
            raise RuntimeError("server not started")
        await self._closed.wait()
        for server in self._servers:
            await server.wait_closed()
        log.info("stopped")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        await self.wait_closed()


def install_signal_handlers(
    loop: asyncio.AbstractEventLoop,
    server: DeliveryServer,
    signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> None:
    """Make SIGTERM and SIGINT stop the server gracefully, and SIGHUP harmless."""

    def on_signal(signum: signal.Signals) -> None:
        log.info("received %s, stopping", signum.name)
        server.stop()

    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    # HUP's default action kills the process: a daemon must survive it (an
    # operator's habit, a closed terminal). Reloading is not implemented yet.
    loop.add_signal_handler(signal.SIGHUP, log.info,
                            "received SIGHUP: ignored (nothing to reload yet)")
