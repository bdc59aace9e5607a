"""The lean gRPC channel (pymap_admin._channel) against grpclib's server:
what it must do on the wire besides the plain call the other tests make."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pymap_admin import AdminClient, ConnectionSettings, DeadlineExceeded
from pymap_admin._channel import H2Channel
from pymap_admin.grpc import admin_pb2 as pb

from .fake_admin import FakeAdmin, RunningFake
from .test_tokens import admin_token


def _client(tmp_path: Path, **kw: Any) -> AdminClient:
    token = tmp_path / "token"
    token.write_text(admin_token())
    return AdminClient(ConnectionSettings(path=tmp_path / "s.sock", token_file=token,
                                          login_tokens=False, **kw))


async def test_a_call_given_up_is_cancelled_on_the_server(tmp_path: Path) -> None:
    """A passed deadline sends RST_STREAM: grpclib's server cancels the
    handler (it would otherwise work on for nobody)."""
    cancelled = asyncio.Event()

    async def slow(request: Any) -> Any:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("unreachable")

    fake = FakeAdmin(script={"Append": slow})
    async with RunningFake(fake, tmp_path / "s.sock"), _client(tmp_path, timeout=0.3) as client:
        with pytest.raises(DeadlineExceeded):
            await client.append("alice", b"x")
        await asyncio.wait_for(cancelled.wait(), 5)
        # The connection stays usable for the next call.
        fake.script.clear()
        assert (await client.append("alice", b"y")).uid == 1


async def test_a_message_beyond_the_flow_control_windows_arrives_whole(tmp_path: Path) -> None:
    """grpclib's server opens 4 MiB windows: a larger message is sent in
    frames as the windows grow, interleaved with other calls."""
    fake = FakeAdmin()
    big = bytes(range(256)) * (6 * 1024 * 1024 // 256) + b"end"
    async with RunningFake(fake, tmp_path / "s.sock"), _client(tmp_path) as client:
        results = await asyncio.gather(client.append("alice", big),
                                       client.append("bob", b"small"))
    assert all(result.uid for result in results)
    by_user = {call.request.user: call.request.data for call in fake.calls}
    assert by_user == {"alice": big, "bob": b"small"}


async def test_only_unary_calls() -> None:
    from grpclib.const import Cardinality

    channel = H2Channel(path="/nonexistent", codec=None)  # type: ignore[arg-type]
    with pytest.raises(NotImplementedError):
        channel.request("/pymap.admin.grpc.Mailbox/Append", Cardinality.UNARY_STREAM,
                        pb.AppendRequest, pb.AppendResponse)


async def test_header_blocks_of_indexes_are_reused_and_decode_right(tmp_path: Path) -> None:
    """Once a call's headers are all in the HPACK table, the same block is
    sent again without encoding; the server still reads each call's own
    token (users interleaved, and a new user's token inserted midway)."""
    from pymap_admin import inspect_token

    fake = FakeAdmin()
    users = ["alice", "bob", "carol"]
    async with RunningFake(fake, tmp_path / "s.sock"), _client(tmp_path) as client:
        for round_ in range(4):
            await asyncio.gather(*(client.append(user, b"x") for user in users))
            if round_ == 1:
                await client.append("dave", b"x")
        channel = client.pool.endpoints[0].channel
        assert isinstance(channel, H2Channel) and channel.connection is not None
        # Round 1 makes the blocks, dave's token changes the table, round 2
        # makes them again, round 3 reuses them.
        assert channel.connection.encoder.reused == 3  # type: ignore[attr-defined]
    assert len(fake.calls) == 13
    for call in fake.calls:
        assert inspect_token(call.metadata["auth-token"]).authzid == call.request.user


async def test_calls_beyond_the_servers_stream_limit_wait_for_a_free_stream(
        tmp_path: Path) -> None:
    """grpclib's server (pymap's) allows 100 concurrent streams; the daemon
    allows more calls in flight. The ones over the limit wait for a stream
    to end instead of failing."""
    release = asyncio.Event()
    fake = FakeAdmin()

    async def held(request: Any) -> Any:
        await release.wait()
        return pb.AppendResponse(result=pb.Result(code=pb.SUCCESS), mailbox="INBOX", uid=1)

    fake.script["Append"] = held
    async with RunningFake(fake, tmp_path / "s.sock"), _client(tmp_path) as client:
        calls = [asyncio.create_task(client.append(f"u{i}", b"x")) for i in range(130)]
        while fake.in_flight < 100:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert fake.in_flight == 100 and not any(call.done() for call in calls)
        release.set()
        results = await asyncio.gather(*calls)
    assert len(results) == 130 and fake.max_in_flight == 100
