"""Listeners and lifecycle: connection limit, idle timeout, UNIX sockets,
systemd socket inheritance, graceful stop, and many concurrent sessions
driven by postfix's smtp-source."""

from __future__ import annotations

import asyncio
import grp
import os
import signal
import socket
import stat
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

from pymap_admin.outcomes import Reply as ServerReply
from pymap_deliver.lmtp import IncomingMessage
from pymap_deliver.protocol import LMTPOptions
from pymap_deliver.server import (
    DeliveryServer,
    ServerConfig,
    TcpEndpoint,
    UnixEndpoint,
    systemd_listen_sockets,
)

from ._require import require_tool
from .lmtp_client import (
    DELIVERED,
    LMTPClient,
    ScriptedBackend,
    connected,
    message,
    run_tool,
    running_server,
    tcp_port,
)


async def _expect_closed(client: LMTPClient) -> None:
    assert await client.reader.read() == b""
    await client.close()


class Gate:
    """A delivery that waits until the test opens it."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.finished: list[IncomingMessage] = []

    async def __call__(self, message: IncomingMessage) -> Sequence[ServerReply]:
        self.started.set()
        await self.release.wait()
        self.finished.append(message)
        return [DELIVERED] * len(message.recipients)


async def _start_data(client: LMTPClient, recipients: Sequence[str]) -> None:
    await client.command("MAIL FROM:<s@example.com>")
    for rcpt in recipients:
        assert (await client.command(f"RCPT TO:<{rcpt}>")).code == 250
    assert (await client.command("DATA")).code == 354
    await client.send(message() + b".\r\n")


# -- connection limit and idle timeout -----------------------------------------


async def test_connection_limit() -> None:
    async with running_server(ScriptedBackend(), max_connections=2) as server:
        port = tcp_port(server)
        async with connected(server) as first, connected(server):
            extra = await LMTPClient.tcp("127.0.0.1", port)
            reply = await extra.read_reply()
            assert (reply.code, reply.enhanced) == (421, "4.3.2")
            assert "Too many connections" in reply.text
            await _expect_closed(extra)
            assert server.session_count == 2
            await first.quit()
            # the freed slot is usable again
            again = await LMTPClient.tcp("127.0.0.1", port)
            assert (await again.start()).code == 250
            await again.quit()


async def test_idle_timeout_sends_421() -> None:
    async with running_server(ScriptedBackend(), idle_timeout=0.2) as server:
        client = await LMTPClient.tcp("127.0.0.1", tcp_port(server))
        await client.start()
        reply = await client.read_reply()
        assert (reply.code, reply.enhanced) == (421, "4.4.2")
        await _expect_closed(client)


async def test_slow_delivery_is_not_an_idle_timeout() -> None:
    async def slow(message: IncomingMessage) -> Sequence[ServerReply]:
        await asyncio.sleep(0.6)
        return [DELIVERED] * len(message.recipients)

    backend = ScriptedBackend(deliver_hook=slow)
    async with running_server(backend, idle_timeout=0.2) as server, connected(server) as client:
        _, replies = await client.transaction("s@example.com", ["a@example.com"], message())
        assert [r.code for r in replies] == [250]


async def test_client_stalling_in_data_times_out() -> None:
    backend = ScriptedBackend()
    async with (
        running_server(backend, idle_timeout=0.2) as server,
        connected(server) as client,
    ):
        await client.command("MAIL FROM:<s@example.com>")
        await client.command("RCPT TO:<a@example.com>")
        assert (await client.command("DATA")).code == 354
        await client.send(b"Subject: half a message\r\n")
        reply = await client.read_reply()
        assert (reply.code, reply.enhanced) == (421, "4.4.2")
        await _expect_closed(client)
    assert backend.messages == []


# -- UNIX sockets ----------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o600, 0o660, 0o666])
async def test_unix_socket(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "lmtp.sock"
    backend = ScriptedBackend()
    group = grp.getgrgid(os.getgid()).gr_name
    endpoint = UnixEndpoint(path=str(path), mode=mode, owner=os.getuid(), group=group)
    async with running_server(backend, tcp=[], unix=[endpoint]):
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == mode
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
        client = await LMTPClient.unix(str(path))
        await client.start()
        _, replies = await client.transaction("s@example.com", ["a@example.com"], message())
        await client.quit()
    assert [r.code for r in replies] == [250]
    assert backend.messages[0].peer == "unix"
    assert not path.exists()  # removed at stop


async def test_stale_unix_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "lmtp.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, as after a crash
    async with running_server(ScriptedBackend(), tcp=[], unix=[UnixEndpoint(path=str(path))]):
        client = await LMTPClient.unix(str(path))
        assert (await client.start()).code == 250
        await client.quit()


async def test_unix_path_that_is_not_a_socket_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "important.txt"
    path.write_text("keep me")
    server = DeliveryServer(
        ScriptedBackend(), ServerConfig(unix=[UnixEndpoint(path=str(path))],
                                   lmtp=LMTPOptions(hostname="x"))
    )
    with pytest.raises(FileExistsError):
        await server.start()
    assert path.read_text() == "keep me"


async def test_nothing_to_listen_on() -> None:
    server = DeliveryServer(ScriptedBackend(), ServerConfig(lmtp=LMTPOptions(hostname="x")))
    with pytest.raises(ValueError, match="nothing to listen on"):
        await server.start()


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        ServerConfig(max_connections=0)
    with pytest.raises(ValueError, match="hostname"):
        ServerConfig(lmtp=LMTPOptions(hostname="bad\r\nname"))
    with pytest.raises(ValueError, match="line_length_limit"):
        LMTPOptions(hostname="x", line_length_limit=100)


# -- systemd socket activation ---------------------------------------------------


def test_systemd_env_for_another_process_is_ignored() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "lmtp"}
    assert systemd_listen_sockets(env) == []
    assert env == {}  # unset, so children do not inherit it


def test_systemd_without_env() -> None:
    assert systemd_listen_sockets({}) == []
    assert systemd_listen_sockets({"LISTEN_PID": "x", "LISTEN_FDS": "1"}) == []


_CHILD = """
import asyncio, logging, sys
from pymap_admin.outcomes import Reply
from pymap_deliver.protocol import LMTPOptions
from pymap_deliver.server import DeliveryServer, ServerConfig, install_signal_handlers

class Backend:
    async def check_recipient(self, address):
        return None
    async def deliver(self, message):
        print("delivered", *message.recipients, flush=True)
        return [Reply(250, "2.0.0", "Message delivered")] * len(message.recipients)

async def main():
    config = ServerConfig(use_systemd_sockets=True, lmtp=LMTPOptions(hostname="child.test"))
    server = DeliveryServer(Backend(), config)
    await server.start()
    install_signal_handlers(asyncio.get_running_loop(), server)
    await server.wait_closed()

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
asyncio.run(main())
print("exited cleanly", flush=True)
"""


@pytest.mark.parametrize("family", ["tcp", "unix"])
async def test_systemd_socket_inherited_and_sigterm(tmp_path: Path, family: str) -> None:
    if family == "tcp":
        listener = socket.create_server(("127.0.0.1", 0))
    else:
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(tmp_path / "activated.sock"))
        listener.listen()
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(_CHILD))
    fd = listener.fileno()
    # As systemd does: the socket on fd 3, LISTEN_PID set to the pid of the
    # program that is exec'd (exec keeps the pid).
    launcher = (
        "import os, sys\n"
        f"os.dup2({fd}, 3)\n"
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1')\n"
        "os.execv(sys.executable, [sys.executable, sys.argv[1]])\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        launcher,
        str(script),
        pass_fds=(fd,),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        if family == "tcp":
            client = await LMTPClient.tcp("127.0.0.1", listener.getsockname()[1])
        else:
            client = await LMTPClient.unix(str(tmp_path / "activated.sock"))
        listener.close()  # the child has its own copy
        assert (await client.start()).code == 250
        assert client.greeting is not None
        assert client.greeting.lines[0].startswith("child.test ")
        _, replies = await client.transaction(
            "s@example.com", ["a@example.com", "b@example.com"], message()
        )
        assert [r.code for r in replies] == [250, 250]
        proc.send_signal(signal.SIGTERM)
        reply = await client.read_reply()
        assert (reply.code, reply.enhanced) == (421, "4.3.2")
        await _expect_closed(client)
        stdout, stderr = await run_tool(proc)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
        print((await run_tool(proc))[1].decode())
        raise
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, stderr.decode()
    assert stdout.decode().splitlines() == [
        "delivered a@example.com b@example.com",
        "exited cleanly",
    ]


# -- graceful stop -----------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3])
async def test_graceful_stop_finishes_delivery_in_flight(n: int) -> None:
    gate = Gate()
    backend = ScriptedBackend(deliver_hook=gate)
    rcpts = [f"r{i}@example.com" for i in range(n)]
    async with running_server(backend) as server:
        port = tcp_port(server)
        busy = await LMTPClient.tcp("127.0.0.1", port)
        await busy.start()
        idle = await LMTPClient.tcp("127.0.0.1", port)
        await idle.start()
        await _start_data(busy, rcpts)
        await gate.started.wait()

        server.stop()
        closing = asyncio.create_task(server.wait_closed())

        # the idle session is told and closed at once
        reply = await idle.read_reply()
        assert (reply.code, reply.enhanced) == (421, "4.3.2")
        await _expect_closed(idle)
        # no new connections
        with pytest.raises(ConnectionRefusedError):
            await LMTPClient.tcp("127.0.0.1", port)
        # still waiting for the delivery in flight
        for _ in range(5):
            await asyncio.sleep(0)
        assert not closing.done()

        gate.release.set()
        replies = await busy.read_replies(n)
        assert [(r.code, r.enhanced) for r in replies] == [(250, "2.0.0")] * n
        bye = await busy.read_reply()
        assert (bye.code, bye.enhanced) == (421, "4.3.2")
        await _expect_closed(busy)
        await closing
    assert len(gate.finished) == 1


async def test_graceful_stop_while_receiving_data() -> None:
    backend = ScriptedBackend()
    async with running_server(backend) as server, connected(server) as client:
        await client.command("MAIL FROM:<s@example.com>")
        await client.command("RCPT TO:<a@example.com>")
        await client.command("RCPT TO:<b@example.com>")
        assert (await client.command("DATA")).code == 354
        server.stop()
        # the transaction under way is completed, then the session is closed
        replies = await client.send_data(message(), 2)
        assert [r.code for r in replies] == [250, 250]
        bye = await client.read_reply()
        assert (bye.code, bye.enhanced) == (421, "4.3.2")
        await _expect_closed(client)
        await server.wait_closed()
    assert len(backend.messages) == 1


async def test_stop_waits_for_delivery_of_a_vanished_client() -> None:
    gate = Gate()
    async with running_server(ScriptedBackend(deliver_hook=gate)) as server:
        client = await LMTPClient.tcp("127.0.0.1", tcp_port(server))
        await client.start()
        await _start_data(client, ["a@example.com"])
        await gate.started.wait()
        await client.close()  # the MTA gives up; the delivery must not be cut
        server.stop()
        closing = asyncio.create_task(server.wait_closed())
        for _ in range(5):
            await asyncio.sleep(0)
        assert not closing.done()
        gate.release.set()
        await closing
    assert len(gate.finished) == 1


async def test_stop_with_no_sessions() -> None:
    server = DeliveryServer(
        ScriptedBackend(), ServerConfig(tcp=[TcpEndpoint(port=0)], lmtp=LMTPOptions(hostname="x"))
    )
    await server.start()
    server.stop()
    server.stop()  # idempotent
    await server.wait_closed()


# -- many sessions at once: postfix's smtp-source ------------------------------------


@pytest.mark.postfix
@pytest.mark.parametrize("recipients", [1, 5])
async def test_smtp_source_concurrent_sessions(recipients: int) -> None:
    smtp_source = require_tool("smtp-source", "/usr/sbin/smtp-source")
    backend = ScriptedBackend()
    async with running_server(backend) as server:
        proc = await asyncio.create_subprocess_exec(
            smtp_source,
            "-L",
            "-s", "5",
            "-m", "20",
            "-r", str(recipients),
            "-l", "4096",
            "-f", "sender@example.com",
            "-t", "rcpt@example.com",
            f"127.0.0.1:{tcp_port(server)}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await run_tool(proc)
    assert proc.returncode == 0, stderr.decode()
    assert len(backend.messages) == 20
    assert all(len(m.recipients) == recipients for m in backend.messages)
    assert len({m.session_id for m in backend.messages}) == 20


# -- the skip-or-fail helper the tool-driven tests rely on ---------------------------


def test_missing_tool_skips_locally_but_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_tool("swaks")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_tool("swaks")
    assert require_tool("swaks", sys.executable) == sys.executable
