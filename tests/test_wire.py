"""The wire fast paths of pymap_admin._wire: the production codec through an
injected channel, write coalescing, and the switch off of append's fast exit."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pymap_admin import AdminClient, ConnectionSettings
from pymap_admin._wire import CoalescingChannel, CoalescingTransport, channel_for

from .fake_admin import FakeAdmin, RunningFake
from .test_tokens import admin_token


async def test_an_injected_channel_keeps_the_production_codec(tmp_path: Path) -> None:
    """AdminClient(channel=...) sends Append hand-serialized, as in
    production: the server parses it back to the message and its prefix."""
    fake = FakeAdmin()
    settings = ConnectionSettings(token=admin_token(), login_tokens=False)
    async with channel_for([fake]) as channel:
        client = AdminClient(settings, channel=channel)
        result = await client.append("alice", b"body\r\n", prefix=b"X-Trace: 1\r\n",
                                     sender="s@x", mailbox="Box")
    assert result.uid == 1
    (call,) = fake.calls
    assert call.request.data == b"X-Trace: 1\r\nbody\r\n"
    assert call.request.user == "alice" and call.request.mailbox == "Box"


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return f"info:{name}"


async def test_writes_of_one_loop_turn_leave_in_one_send() -> None:
    raw = _Recorder()
    transport = CoalescingTransport(raw)
    transport.write(b"headers")
    transport.write(b"data")
    assert raw.sent == []
    await asyncio.sleep(0)
    assert raw.sent == [b"headersdata"]
    # Large writes are not held back (nor copied into a join).
    big = b"x" * CoalescingTransport.COALESCE_LIMIT
    transport.write(big)
    assert raw.sent[-1] is big
    # Everything else is the real transport's; closing sends what is pending.
    assert transport.get_extra_info("socket") == "info:socket"
    transport.write(b"last")
    transport.close()
    assert raw.sent[-1] == b"last" and raw.closed


async def test_a_call_is_one_send(tmp_path: Path) -> None:
    """Through the production channel, an Append's HEADERS and DATA frames
    go out in one send (grpclib writes them separately)."""
    token = tmp_path / "token"
    token.write_text(admin_token())
    async with RunningFake(FakeAdmin(), tmp_path / "s.sock"), \
            AdminClient(ConnectionSettings(path=tmp_path / "s.sock", token_file=token,
                                           login_tokens=False)) as client:
        await client.append("alice", b"warm")
        channel = client.pool.endpoints[0].channel
        assert isinstance(channel, CoalescingChannel) and channel.transport is not None
        writes, sends = channel.transport.writes, channel.transport.sends
        for _ in range(5):
            await client.append("alice", b"x" * 4000)
        assert channel.transport.writes - writes >= 10  # grpclib: two writes a call
        assert channel.transport.sends - sends <= 5


def _finalizes(env: dict[str, str]) -> bool:
    """Whether ``pymap-admin`` (as its console script) ran the interpreter's
    finalization: an atexit handler prints a line."""
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('finalized', file=sys.stderr))\n"
            "from pymap_admin.cli.main import main\n"
            "sys.argv = ['pymap-admin', 'token', 'show', '--stdin']\n"
            "sys.exit(main())\n")
    done = subprocess.run([sys.executable, "-c", code], input=admin_token(), text=True,
                          capture_output=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return "finalized" in done.stderr


def test_the_fast_exit_can_be_switched_off() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYMAP_ADMIN")}
    assert not _finalizes(env)
    assert _finalizes({**env, "PYMAP_ADMIN_FAST_EXIT": "no"})
