"""The pymap-deliver process as an operator runs it: privilege drop, root
refusal, sd_notify readiness, the start-up probe, SIGUSR1 (as root, like CI)."""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from devstack.localpymap import free_port

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")


def _readable_by_all(path: Path) -> bool:
    real = path.resolve()
    return all(p.stat().st_mode & 0o005 == 0o005 for p in [real, *real.parents])


def deliver_command() -> tuple[list[str], dict[str, str]]:
    """pymap-deliver as a command any user can run. The interpreter may live
    where only root can read (pyenv under /root): then the system's Python of
    the same version runs our code and the virtual environment's packages."""
    if _readable_by_all(Path(sys.executable)):
        return [str(Path(sys.executable).parent / "pymap-deliver")], {}
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not system.exists() or not _readable_by_all(system):
        pytest.skip("no Python interpreter that an unprivileged user can run")
    import site

    paths = [str(Path(__file__).parent.parent), *site.getsitepackages()]
    return [str(system), "-m", "pymap_deliver.main"], {"PYTHONPATH": ":".join(paths)}


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A folder every user may enter (pytest's own is root's only)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="pymap-deliver-test-"))
    os.chmod(folder, 0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class Notifications:
    """The receiving end of $NOTIFY_SOCKET, as systemd holds it."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        # The daemon may run as another user by the time it writes.
        os.chmod(self.path, 0o777)
        self.sock.settimeout(30)

    def wait_for(self, line: str) -> list[str]:
        seen: list[str] = []
        while line not in seen:
            seen += self.sock.recv(4096).decode().splitlines()
        return seen


@contextmanager
def daemon(argv: list[str], tmp_path: Path, **env: str) -> Iterator[
        tuple[subprocess.Popen[bytes], Path, Notifications]]:
    notifications = Notifications(tmp_path)
    log = tmp_path / "deliver.log"
    command, extra = deliver_command()
    environment = {**os.environ, "NOTIFY_SOCKET": str(notifications.path),
                   "PYMAP_ADMIN_TOKEN": "not-a-real-token", **extra, **env}
    with log.open("wb") as out:
        process = subprocess.Popen([*command, "--path", str(tmp_path / "no-pymap.sock"), *argv],
                                   stdout=out, stderr=out, env=environment)
    try:
        yield process, log, notifications
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        notifications.sock.close()


def proc_ids(pid: int) -> dict[str, list[int]]:
    ids = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            ids[key] = [int(v) for v in value.split()]
    return ids


def lmtp_greeting(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        return conn.recv(1024)


@needs_root
def test_binds_as_root_then_serves_as_the_named_user(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    port = free_port()
    unix = tmp_path / "lmtp.sock"
    # Port 24 needs root, as does a socket owned by another user.
    argv = ["--listen", f"127.0.0.1:{port}", "--unix", str(unix), "--unix-owner", "root",
            "--unix-mode", "0666", "--user", "nobody"]
    with daemon(argv, tmp_path) as (process, log, notifications):
        seen = notifications.wait_for("READY=1")
        assert f"MAINPID={process.pid}" in seen
        ids = proc_ids(process.pid)
        assert ids["Uid"] == [nobody.pw_uid] * 4, ids  # real, effective, saved, fs
        assert ids["Gid"] == [nobody.pw_gid] * 4, ids
        assert 0 not in ids["Groups"]
        assert unix.stat().st_uid == 0  # chowned while still root
        assert lmtp_greeting(port).startswith(b"220 ")
        process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while "status sessions=" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    text = log.read_text()
    assert f"uid={nobody.pw_uid}" in text
    # The start-up probe says, in one line, that pymap is not there and why.
    probe = [line for line in text.splitlines() if "pymap unreachable" in line]
    assert len(probe) == 1 and "no-pymap.sock" in probe[0], text
    assert "pymap_reachable=no" in text and "in_flight=0" in text


@needs_root
def test_refuses_to_serve_as_root_unless_allowed(tmp_path: Path) -> None:
    port = free_port()
    with daemon(["--listen", f"127.0.0.1:{port}"], tmp_path) as (process, log, _):
        assert process.wait(30) == 78
    text = log.read_text()
    assert "refusing to serve as root" in text and "--allow-root" in text
    assert "Traceback" not in text
    # The listener was closed again: the port is free.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


@needs_root
def test_socket_owner_as_non_root_names_the_socket(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o777)
    unix = tmp_path / "lmtp.sock"
    command, extra = deliver_command()
    done = subprocess.run(
        [*command, "--unix", str(unix), "--unix-owner", "root", "--path", str(tmp_path / "x"),
         "--allow-root"],
        capture_output=True, text=True, timeout=60, user="nobody",
        env={**os.environ, "PYMAP_ADMIN_TOKEN": "t", **extra})
    assert done.returncode == 71
    assert done.stderr.strip().splitlines()[-1] == (
        f"pymap-deliver: {unix}: Operation not permitted")
    assert "Traceback" not in done.stderr
