"""Run a local pymap server (0.36.7, in its own virtual environment).

Used by the local stack (``make run``), the tests and the benchmarks. Each
server gets a private ``TMPDIR`` (its admin socket and token land in
``$TMPDIR/pymap/``) and free loopback ports for IMAP, admin and managesieve,
so runs never collide with each other or with a machine's own pymap.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The checkout this package runs from (an editable install): where the
#: Makefile puts the server's environment.
REPO = Path(__file__).resolve().parent.parent
DEMO_USER = "demouser"
DEMO_PASSWORD = "demopass"


def pymap_executable() -> Path | None:
    """The ``pymap`` program of the server's own environment, if installed."""
    venv = Path(os.environ.get("PYMAP_SERVER_VENV", REPO / ".venv-pymap"))
    program = venv / "bin" / "pymap"
    return program if program.exists() else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class TLSFiles:
    cert: Path
    key: Path
    ca: Path


@dataclass
class PymapServer:
    """One pymap process; ``start()``/``stop()``/``restart()`` on the same state."""

    workdir: Path
    backend: Sequence[str] = ("dict", "--demo-data")
    #: Global pymap options (before the backend), e.g. its SWIM settings.
    options: Sequence[str] = ()
    #: Extra environment of the process (e.g. SWIM_SECRET_FILE).
    environment: Mapping[str, str] = field(default_factory=dict)
    tls: TLSFiles | None = None
    debug: bool = False
    #: The admin service's TCP interface (a loopback address).
    admin_host: str = "127.0.0.1"
    imap_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    sieve_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def tmpdir(self) -> Path:
        return self.workdir / "tmp"

    @property
    def socket_path(self) -> Path:
        return self.tmpdir / "pymap" / "pymap-admin.sock"

    @property
    def token_path(self) -> Path:
        return self.tmpdir / "pymap" / "pymap-admin.token"

    @property
    def log_path(self) -> Path:
        return self.workdir / "pymap.log"

    def token(self) -> str:
        return self.token_path.read_text().strip()

    def command(self) -> list[str]:
        program = pymap_executable()
        if program is None:
            raise RuntimeError("the pymap server is not installed: run 'make pymap-venv' "
                               "or set PYMAP_SERVER_VENV")
        args = [str(program)]
        if self.debug:
            args.append("--debug")
        args += ["--host", "127.0.0.1", "--port", str(self.imap_port),
                 "--admin-host", self.admin_host, "--admin-port", str(self.admin_port),
                 "--sieve-host", "127.0.0.1", "--sieve-port", str(self.sieve_port)]
        if self.tls is not None:
            args += ["--cert", str(self.tls.cert), "--key", str(self.tls.key)]
        args += ["--no-tls"]
        args += list(self.options)
        args += list(self.backend)
        return args

    def start(self, timeout: float = 30.0) -> None:
        assert self.process is None, "already running"
        # As contrib/systemd/pymap.service does before every start.
        self.remove_stale_locks()
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        # A new token file is the sign that this process is up: drop the old one.
        with contextlib.suppress(FileNotFoundError):
            self.token_path.unlink()
        env = {**os.environ, **self.environment, "TMPDIR": str(self.tmpdir)}
        for name in [k for k in env if k.startswith("PYMAP_ADMIN")]:
            del env[name]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.command(), env=env, stdout=log, stderr=log,
                                        stdin=subprocess.DEVNULL, cwd=self.workdir)
        log.close()
        self.starts += 1
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pymap exited with {self.process.returncode}:\n"
                                   + self.log_path.read_text(errors="replace")[-3000:])
            # The admin TCP port too: pymap may open it after the others,
            # and a first call to it would be refused.
            if self.token_path.exists() and self.socket_path.exists() and \
                    _listening("127.0.0.1", self.imap_port) and \
                    _listening(self.admin_host, self.admin_port):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("pymap did not start in time:\n"
                           + self.log_path.read_text(errors="replace")[-3000:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def remove_stale_locks(self) -> None:
        """Delete the lock files a killed maildir server left behind (no
        server of ours runs on this folder before it starts).

        pymap 0.36.7's maildir backend locks with files it creates and
        deletes (``dovecot-uidlist.lock``, ``subscriptions.lock``,
        ``pymap-etc-passwd.lock``, ...). A SIGKILL while one is held leaves it
        on disk, and the next process treats it as held until it is 600 s
        old: a SELECT of that mailbox waits ~10 s and fails, an Append to it
        fails the same way. Nothing holds them once the process is dead, so
        they go, as an operator's restart after a crash would do.
        """
        assert not self.running, "only a stopped server's locks are stale"
        if len(self.backend) < 2 or self.backend[0] != "maildir":
            return
        for lock in Path(self.backend[1]).rglob("*.lock"):
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # --- reading back over IMAP -------------------------------------------

    def imap(self, user: str = DEMO_USER, password: str = DEMO_PASSWORD) -> imaplib.IMAP4:
        conn = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=30)
        conn.login(user, password)
        return conn

    def fetch_all(self, mailbox: str = "INBOX", user: str = DEMO_USER,
                  password: str = DEMO_PASSWORD) -> list[bytes]:
        """Every message in ``mailbox``, as stored (RFC822), in UID order."""
        conn = self.imap(user, password)
        try:
            status, exists = conn.select(_quote(mailbox), readonly=True)
            if status != "OK":
                raise AssertionError(f"cannot select {mailbox}")
            if exists and exists[0] == b"0":
                return []
            status, data = conn.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
            assert status == "OK"
            return [body for _, body in sorted(_fetched(data).items())]
        finally:
            with contextlib.suppress(Exception):
                conn.logout()

    def fetch_uid(self, uid: int, mailbox: str = "INBOX", user: str = DEMO_USER,
                  password: str = DEMO_PASSWORD) -> bytes:
        conn = self.imap(user, password)
        try:
            conn.select(_quote(mailbox), readonly=True)
            _, parts = conn.uid("FETCH", str(uid), "(UID BODY.PEEK[])")
            found = _fetched(parts).get(uid)
            if found is None:
                raise AssertionError(f"no message with UID {uid} in {mailbox}")
            return found
        finally:
            with contextlib.suppress(Exception):
                conn.logout()


def _fetched(parts: list[Any]) -> dict[int, bytes]:
    """UID -> message of a FETCH answer: each literal is matched to the UID
    its response names, so a read-back of hundreds of messages takes one
    command and no unsolicited FETCH response is taken for another message."""
    found: dict[int, bytes] = {}
    for part in parts:
        if isinstance(part, tuple):
            match = re.search(rb"\bUID (\d+)", part[0])
            if match is not None:
                found[int(match.group(1))] = bytes(part[1])
    return found


def _quote(mailbox: str) -> str:
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


def make_maildir_server(workdir: Path, **kwargs: object) -> PymapServer:
    maildir = workdir / "maildir"
    maildir.mkdir(parents=True, exist_ok=True)
    return PymapServer(workdir=workdir, backend=("maildir", str(maildir)), **kwargs)  # type: ignore[arg-type]


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def cleanup(server: PymapServer) -> None:
    server.stop()
    shutil.rmtree(server.tmpdir, ignore_errors=True)
