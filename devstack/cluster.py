"""A local pymap cluster: a private redis-server and N pymap members on it.

The members share users and mail through Redis (pymap's ``redis`` backend)
and form one SWIM cluster. Used by the cluster tests, the cluster benchmark
and ``python -m devstack.stack --cluster N``.

What ``shared/interop/cluster.md`` found the hard way is built in here:

- ``--swim-name`` is ``host:port`` (a plain name kills pymap's SWIM task
  silently and the member runs alone);
- SWIM binds its port for UDP and TCP, so the port must be free for both;
- every member names every other member with ``--swim-peer``;
- the SWIM settings come from the environment (``SWIM_NAME``,
  ``SWIM_PEERS``, ``SWIM_SECRET_FILE``), as in contrib/cluster/pymap@.service,
  and the secret from a 0600 file, never from a command line;
- each member's admin token is trusted by the others only after SWIM has
  converged (30 s for two), so a member's own token is used only with that
  member; what works everywhere at once is a *login* token, which lives in
  Redis (:meth:`PymapCluster.login_token`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .localpymap import PymapServer, free_port

__all__ = [
    "PymapCluster",
    "RedisServer",
    "free_udp_tcp_port",
    "redis_executable",
]


def redis_executable() -> str | None:
    """The ``redis-server`` program (Debian's package), if installed."""
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)


def free_udp_tcp_port(attempts: int = 50) -> int:
    """A loopback port free for both TCP and UDP (SWIM binds both)."""
    for _ in range(attempts):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port free for both TCP and UDP")


@dataclass
class RedisServer:
    """A private redis-server: loopback, a free port, no persistence, its own dir."""

    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    def command(self) -> list[str]:
        program = redis_executable()
        if program is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        # No RDB snapshots, no AOF: a test's data dies with the process.
        return [program, "--bind", "127.0.0.1", "--port", str(self.port),
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
                "--daemonize", "no", "--protected-mode", "yes"]

    def start(self, timeout: float = 15.0) -> None:
        assert self.process is None, "already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=log,
                                        stdin=subprocess.DEVNULL, cwd=self.workdir)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n"
                                   + self.log_path.read_text(errors="replace")[-2000:])
            if self.ping():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start in time")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass
class PymapCluster:
    """A redis-server and ``size`` pymap members in one SWIM cluster.

    Member ``i`` keeps its ports across a restart (the others name its SWIM
    port as a peer), its own ``TMPDIR`` (its admin socket and token) and
    its own log.
    """

    workdir: Path
    size: int = 2
    debug: bool = False
    redis: RedisServer = field(init=False)
    members: list[PymapServer] = field(init=False)
    swim_ports: list[int] = field(init=False)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError("a cluster needs at least one member")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(workdir=self.workdir / "redis")
        self.swim_ports = [free_udp_tcp_port() for _ in range(self.size)]
        secret_file = self.workdir / "swim-secret"
        secret_file.touch(mode=0o600)
        secret_file.write_text(secrets.token_hex(16))
        self.secret_file = secret_file
        self.members = [self._member(i) for i in range(self.size)]

    def _member(self, index: int) -> PymapServer:
        return PymapServer(workdir=self.workdir / f"member{index}", debug=self.debug,
                           backend=("redis", "--address", self.redis.url),
                           environment=self.swim_environment(index))

    def swim_environment(self, index: int) -> dict[str, str]:
        """Member ``index``'s SWIM settings, as swim-protocol reads them from
        the environment (the way contrib/cluster/pymap@.service sets them):
        the secret from a file, not the command line where ps(1) shows it."""
        return {
            "SWIM_NAME": f"127.0.0.1:{self.swim_ports[index]}",
            "SWIM_PEERS": ",".join(f"127.0.0.1:{port}" for other, port in
                                   enumerate(self.swim_ports) if other != index),
            "SWIM_SECRET_FILE": str(self.secret_file),
        }

    def start(self) -> None:
        self.redis.start()
        try:
            for member in self.members:
                member.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for member in self.members:
            member.stop()
        self.redis.stop()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def running(self) -> list[PymapServer]:
        return [member for member in self.members if member.running]

    def socket_paths(self) -> list[Path]:
        return [member.socket_path for member in self.members]

    def redis_keys(self, pattern: str = "*") -> int:
        """How many keys match ``pattern`` (a quick look into the shared store)."""
        return len(_redis_command(self.redis.port, "KEYS", pattern))


def _redis_command(port: int, *args: str) -> Sequence[bytes]:
    """Send one command in RESP and return a flat list of the bulk strings."""
    payload = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(payload)
        reader = conn.makefile("rb")
        return _read_reply(reader)


def _read_reply(reader: object) -> list[bytes]:
    readline = reader.readline  # type: ignore[attr-defined]
    read = reader.read  # type: ignore[attr-defined]
    line: bytes = readline()
    kind, rest = line[:1], line[1:].rstrip(b"\r\n")
    if kind in (b"+", b":"):
        return [rest]
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b"$":
        length = int(rest)
        if length < 0:
            return []
        data: bytes = read(length + 2)[:-2]
        return [data]
    if kind == b"*":
        items: list[bytes] = []
        for _ in range(max(int(rest), 0)):
            items.extend(_read_reply(reader))
        return items
    raise RuntimeError(f"unexpected redis reply {line!r}")
