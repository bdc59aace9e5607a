"""Shared fixtures: real pymap servers (demo data, maildir, TLS) and their settings."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.cluster import PymapCluster
from devstack.localpymap import (
    REPO,
    PymapServer,
    TLSFiles,
    cleanup,
    make_maildir_server,
    pymap_executable,
)
from pymap_admin import AdminClient, ConnectionSettings

from ._require import require


def require_pymap() -> None:
    require(pymap_executable() is not None,
            "the pymap server is not installed (make pymap-venv)")


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
                          ) -> None:
    """No test sees the developer's own pymap settings, sockets or tokens."""
    for name in list(os.environ):
        if name.startswith("PYMAP_ADMIN"):
            monkeypatch.delenv(name)
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("TMPDIR", str(tmp_path_factory.mktemp("tmpdir")))


def _serve(server: PymapServer) -> Iterator[PymapServer]:
    require_pymap()
    server.start()
    try:
        yield server
    finally:
        cleanup(server)


@pytest.fixture(scope="session")
def pymap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PymapServer]:
    """One dict --demo-data server for the session; tests must not depend on
    the exact number of messages in a mailbox."""
    yield from _serve(PymapServer(workdir=tmp_path_factory.mktemp("pymap")))


@pytest.fixture
def fresh_pymap(tmp_path: Path) -> Iterator[PymapServer]:
    """A dict --demo-data server of this test's own (it may stop or restart it)."""
    yield from _serve(PymapServer(workdir=tmp_path / "pymap"))


@pytest.fixture
def maildir_pymap(tmp_path: Path) -> Iterator[PymapServer]:
    """A maildir server of this test's own: its mail survives a restart."""
    yield from _serve(make_maildir_server(tmp_path / "pymap"))


def certificate_for(folder: Path, *names: str) -> TLSFiles:
    """A server certificate for ``names`` (with its chain) and the CA that
    issued it, written into ``folder``."""
    import trustme

    ca = trustme.CA()
    server_cert = ca.issue_cert(*names)
    files = TLSFiles(cert=folder / "server.pem", key=folder / "server.key", ca=folder / "ca.pem")
    server_cert.private_key_pem.write_to_path(str(files.key))
    server_cert.cert_chain_pems[0].write_to_path(str(files.cert))
    with files.cert.open("ab") as chain:
        for pem in server_cert.cert_chain_pems[1:]:
            chain.write(pem.bytes())
    ca.cert_pem.write_to_path(str(files.ca))
    if names == ("localhost", "127.0.0.1"):
        client = ca.issue_cert("client@example.com")
        client.private_key_and_cert_chain_pem.write_to_path(str(folder / "client.pem"))
    return files


def write_admin_config(path: Path, *, port: int, cafile: Path, token_file: Path,
                       owner: str) -> None:
    """A pymap-admin.conf for an MTA's mailer account (``owner``), reaching
    the admin port of a local pymap over TLS; 0600, as its token's is."""
    path.write_text("[pymap-admin]\n"
                    f"host = 127.0.0.1\nport = {port}\ncafile = {cafile}\n"
                    f"token_file = {token_file}\ntimeout = 10\n")
    shutil.chown(path, owner)
    path.chmod(0o600)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return certificate_for(tmp_path_factory.mktemp("tls"), "localhost", "127.0.0.1")


@pytest.fixture(scope="session")
def tls_pymap(tmp_path_factory: pytest.TempPathFactory, tls_files: TLSFiles
              ) -> Iterator[PymapServer]:
    """A demo server whose admin TCP listener has a certificate from a test CA."""
    yield from _serve(PymapServer(workdir=tmp_path_factory.mktemp("pymap-tls"), tls=tls_files))


def socket_settings(server: PymapServer, **overrides: object) -> ConnectionSettings:
    values: dict[str, object] = {"path": server.socket_path, "token_file": server.token_path,
                                 "timeout": 30.0}
    values.update(overrides)
    return ConnectionSettings(**values)  # type: ignore[arg-type]


def tcp_settings(server: PymapServer, files: TLSFiles, **overrides: object
                 ) -> ConnectionSettings:
    values: dict[str, object] = {"host": "127.0.0.1", "port": server.admin_port,
                                 "cafile": files.ca, "token_file": server.token_path,
                                 "timeout": 30.0}
    values.update(overrides)
    return ConnectionSettings(**values)  # type: ignore[arg-type]


async def create_user(server: PymapServer, user: str, password: str = "pw") -> None:
    async with AdminClient(socket_settings(server)) as client:
        await client.set_user(user, password=password)


@pytest.fixture(scope="session")
def unprivileged_install() -> Iterator[Path]:
    """pymap-deliver installed where an unprivileged user can run it (the
    MTA tests' mailer user, "nobody").

    The project's own .venv may sit on an interpreter under /root, which that
    user cannot execute: install a copy on the system's python3 in a
    world-readable folder, as an operator would under /opt.
    """
    system_python = shutil.which("python3", path="/usr/bin:/usr/local/bin")
    require(system_python is not None, "no system python3 for an unprivileged user")
    assert system_python is not None
    root = Path(tempfile.mkdtemp(prefix="pymap-pipe-venv-"))
    root.chmod(0o755)
    try:
        subprocess.run([system_python, "-m", "venv", str(root)], check=True, timeout=300)
        subprocess.run([str(root / "bin" / "pip"), "install", "--quiet", str(REPO)],
                       check=True, timeout=600)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def require_cluster() -> None:
    from devstack.cluster import redis_executable

    require_pymap()
    require(redis_executable() is not None, "redis-server is not installed")


@pytest.fixture
def pymap_cluster(tmp_path: Path) -> Iterator[PymapCluster]:
    """A private redis-server and two pymap members in one SWIM cluster, of
    this test's own (it may kill and restart members)."""
    require_cluster()
    cluster = PymapCluster(workdir=tmp_path / "cluster", size=2)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.cleanup()
