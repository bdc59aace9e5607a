"""The wire fast paths of pymap_admin._wire and _channel: the production
codec through an injected channel, write coalescing, and the switch off of
append's fast exit."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from pymap_admin import AdminClient, ConnectionSettings
from pymap_admin._channel import H2Channel
from pymap_admin._wire import channel_for

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


async def test_calls_started_in_one_loop_turn_leave_in_one_send(tmp_path: Path) -> None:
    """Through the production channel, the HEADERS and DATA frames of the
    Appends started in one loop turn go out in one send."""
    token = tmp_path / "token"
    token.write_text(admin_token())
    fake = FakeAdmin()
    async with RunningFake(fake, tmp_path / "s.sock"), \
            AdminClient(ConnectionSettings(path=tmp_path / "s.sock", token_file=token,
                                           login_tokens=False)) as client:
        await client.append("alice", b"warm")
        channel = client.pool.endpoints[0].channel
        assert isinstance(channel, H2Channel)
        conn = channel.connection
        assert conn is not None
        writes, sends = conn.writes, conn.sends
        results = await asyncio.gather(*(client.append("alice", b"x" * 4000)
                                         for _ in range(5)))
        assert len(fake.calls) == 6 and all(r.uid for r in results)
        assert conn.writes - writes == 5
        assert conn.sends - sends == 1
        assert channel.connection is conn  # one connection throughout


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
