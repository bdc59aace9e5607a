"""The LMTP server driven by a real client: swaks (Debian package).

swaks in LMTP mode reads one reply per accepted recipient after the dot and
then sends QUIT; that the QUIT gets its 221 proves no reply was left over.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from pymap_admin.outcomes import Reply
from pymap_deliver.server import UnixEndpoint

from ._require import require_tool
from .lmtp_client import ScriptedBackend, run_tool, running_server, tcp_port

pytestmark = pytest.mark.swaks

_REPLY = re.compile(r"^<(?:-|\*\*) +(\d{3})([ -])(.*)$")


async def _swaks(*args: str, exit_status: int = 0) -> list[tuple[str, list[str]]]:
    """Run swaks; return its transcript as (command, [reply lines]) pairs.
    swaks exits 0 when at least one recipient got its message, 26 when the
    message was refused after the dot."""
    swaks = require_tool("swaks")
    proc = await asyncio.create_subprocess_exec(
        swaks,
        "--protocol", "LMTP",
        "--from", "sender@example.com",
        "--helo", "client.example",
        "--h-Subject", "swaks test",
        "--body", "Hello from swaks.",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await run_tool(proc)
    transcript: list[tuple[str, list[str]]] = [("", [])]
    for line in stdout.decode().splitlines():
        if line.startswith(" -> "):
            transcript.append((line[4:], []))
        elif match := _REPLY.match(line):
            transcript[-1][1].append(f"{match[1]} {match[3]}")
    assert proc.returncode == exit_status, stdout.decode() + stderr.decode()
    return transcript


def _replies_after(transcript: list[tuple[str, list[str]]], command: str) -> list[str]:
    (replies,) = [replies for sent, replies in transcript if sent == command]
    return replies


@pytest.mark.parametrize("pipeline", [False, True], ids=["lockstep", "pipelined"])
async def test_single_recipient(pipeline: bool) -> None:
    backend = ScriptedBackend()
    async with running_server(backend) as server:
        transcript = await _swaks(
            "--server", "127.0.0.1",
            "--port", str(tcp_port(server)),
            "--to", "alice@example.com",
            *(["--pipeline"] if pipeline else []),
        )
    final = _replies_after(transcript, ".")
    assert len(final) == 1
    assert final[0].startswith("250 2.0.0 ")
    assert _replies_after(transcript, "QUIT") == ["221 2.0.0 lmtp.test Bye"]
    (msg,) = backend.messages
    assert msg.recipients == ("alice@example.com",)
    assert msg.sender == "sender@example.com"
    assert msg.lhlo_name == "client.example"
    assert b"Subject: swaks test\r\n" in msg.data
    assert b"\r\nHello from swaks.\r\n" in msg.data


@pytest.mark.parametrize("pipeline", [False, True], ids=["lockstep", "pipelined"])
async def test_multi_recipient_with_failures(pipeline: bool) -> None:
    backend = ScriptedBackend(
        rcpt={"nobody@example.com": Reply(550, "5.1.1", "User unknown")},
        delivery={"bob@example.com": Reply(451, "4.3.0", "Temporary failure")},
    )
    rcpts = ["alice@example.com", "nobody@example.com", "bob@example.com", "carol@example.com"]
    async with running_server(backend) as server:
        transcript = await _swaks(
            "--server", "127.0.0.1",
            "--port", str(tcp_port(server)),
            "--to", ",".join(rcpts),
            *(["--pipeline"] if pipeline else []),
        )
    final = _replies_after(transcript, ".")
    assert [reply[:9] for reply in final] == ["250 2.0.0", "451 4.3.0", "250 2.0.0"]
    assert _replies_after(transcript, "QUIT") == ["221 2.0.0 lmtp.test Bye"]
    (msg,) = backend.messages
    assert msg.recipients == ("alice@example.com", "bob@example.com", "carol@example.com")


async def test_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "lmtp.sock"
    backend = ScriptedBackend()
    async with running_server(backend, tcp=[], unix=[UnixEndpoint(path=str(path))]):
        transcript = await _swaks("--socket", str(path), "--to", "a@example.com,b@example.com")
    assert [r[:9] for r in _replies_after(transcript, ".")] == ["250 2.0.0"] * 2
    assert backend.messages[0].peer == "unix"


async def test_message_too_big_for_every_recipient() -> None:
    backend = ScriptedBackend()
    async with running_server(backend, data_size_limit=1024) as server:
        transcript = await _swaks(
            "--server", "127.0.0.1",
            "--port", str(tcp_port(server)),
            "--to", "a@example.com,b@example.com,c@example.com",
            "--body", "x" * 2000,
            exit_status=26,
        )
    assert _replies_after(transcript, ".") == ["552 5.3.4 Message too big"] * 3
    assert _replies_after(transcript, "QUIT") == ["221 2.0.0 lmtp.test Bye"]
    assert backend.messages == []
