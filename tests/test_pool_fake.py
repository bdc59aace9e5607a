"""The endpoint pool against in-process servers, for what a real pymap
cannot be made to do on demand: drop a connection right after a request
arrived, stay slow, be absent then appear. The real cluster is in
test_cluster.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from grpclib.health.check import ServiceStatus
from grpclib.health.service import Health
from grpclib.server import Server

from pymap_admin import AdminClient, ConnectionReset, ConnectionSettings, ServerUnreachable
from pymap_admin.grpc import admin_pb2 as pb
from pymap_admin.outcomes import outcome_for_error
from pymap_admin.settings import EndpointAddress

from .fake_admin import DroppingServer, FakeAdmin, RunningFake, _default_append
from .test_tokens import admin_token

#: In every message these tests append: how a dropping server tells an
#: Append from a health check (header values are Huffman-coded, data is not).
BODY = b"Subject: x\r\n\r\nx\r\n"


class DropAfterRequest(DroppingServer):
    """Reads what the client sends until it pauses (the whole request is
    in), then aborts the connection: the call was sent and gets no answer.
    ``requests`` counts the connections that carried an Append of BODY."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.requests = 0

    async def _on_connect(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        received = b""
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 0.2)
            except TimeoutError:
                break
            if not chunk:
                break
            received += chunk
        if BODY in received:
            self.requests += 1
        writer.transport.abort()


class HealthyFake(RunningFake):
    """A FakeAdmin that also serves the standard health service, like pymap
    (whose backend's status is its overall health): ``status.set(False)``
    makes it answer NOT_SERVING."""

    def __init__(self, fake: FakeAdmin, path: Path) -> None:
        super().__init__(fake, path)
        self.status = ServiceStatus()
        self.status.set(True)
        # Checked under one of the fake's services; "" (what the pool asks)
        # is the overall status of all of them.
        self._server = Server([fake, Health({_ServiceOf(fake): [self.status]})])

    async def __aenter__(self) -> HealthyFake:
        await super().__aenter__()
        return self


class _ServiceOf:
    """A hashable stand-in for the fake (a dataclass) as a health check key."""

    def __init__(self, fake: FakeAdmin) -> None:
        self._fake = fake

    def __mapping__(self) -> dict[str, Any]:
        return self._fake.__mapping__()


def pool_settings(tmp_path: Path, *paths: Path, **kw: Any) -> ConnectionSettings:
    token = tmp_path / "token"
    token.write_text(admin_token())
    return ConnectionSettings(endpoints=tuple(EndpointAddress(path=p) for p in paths),
                              token_file=token, timeout=10.0, **kw)


@contextlib.asynccontextmanager
async def dropping_first(fake: FakeAdmin, tmp_path: Path
                         ) -> AsyncIterator[tuple[DropAfterRequest, AdminClient]]:
    """A client of two endpoints: ``a.sock`` drops every call once its
    request is in, ``b.sock`` serves ``fake`` (and the health service)."""
    first, second = tmp_path / "a.sock", tmp_path / "b.sock"
    async with DropAfterRequest(first) as dropper, HealthyFake(fake, second), \
            AdminClient(pool_settings(tmp_path, first, second)) as client:
        yield dropper, client


def appends(fake: FakeAdmin) -> int:
    return sum(1 for call in fake.calls if call.method == "Append")


async def test_a_call_refused_before_sending_goes_to_another_member(tmp_path: Path) -> None:
    fake = FakeAdmin()
    missing = tmp_path / "gone.sock"
    async with HealthyFake(fake, tmp_path / "b.sock"), \
            AdminClient(pool_settings(tmp_path, missing, tmp_path / "b.sock")) as client:
        for _ in range(3):
            result = await client.append("alice", BODY)
            assert result.uid == 1
        first, second = client.pool.endpoints
        assert not first.healthy and second.healthy
        assert appends(fake) == 3
        # Only the call that met the dead member first moved; the rest went
        # straight to the healthy one.
        assert client.pool.stats.failovers == 1
        assert client.pool.stats.ambiguous == 0


async def test_a_call_lost_after_sending_is_retried_once_elsewhere_and_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeAdmin()
    caplog.set_level(logging.INFO, "pymap_admin.pool")
    async with dropping_first(fake, tmp_path) as (dropper, client):
        # Equal load: the first endpoint comes first.
        result = await client.append("alice", BODY)
        assert result.uid == 1
        assert dropper.requests == 1 and appends(fake) == 1
        stats = client.pool.stats
        assert (stats.ambiguous, stats.ambiguous_retried, stats.failovers) == (1, 1, 0)
    lines = [r.getMessage() for r in caplog.records if "status=ambiguous" in r.getMessage()]
    assert len(lines) == 1 and "op=Append" in lines[0] and "user=alice" in lines[0]
    assert "action=retried" in lines[0]


async def test_a_connection_lost_while_sending_is_not_ambiguous(tmp_path: Path) -> None:
    """A message larger than HTTP/2's first flow-control window (64 KiB):
    the dropping server never opens the window, so the client is still
    sending when the connection goes. pymap cannot have stored it."""
    fake = FakeAdmin()
    big = BODY + b"x" * 300_000
    async with dropping_first(fake, tmp_path) as (dropper, client):
        assert (await client.append("alice", big)).uid == 1
        assert dropper.requests == 1 and appends(fake) == 1
        stats = client.pool.stats
        assert (stats.failovers, stats.ambiguous) == (1, 0)


async def test_a_second_lost_call_is_a_temporary_failure(tmp_path: Path) -> None:
    async with DropAfterRequest(tmp_path / "a.sock") as a, \
            DropAfterRequest(tmp_path / "b.sock") as b, \
            AdminClient(pool_settings(tmp_path, tmp_path / "a.sock", tmp_path / "b.sock")
                        ) as client:
        with pytest.raises(ConnectionReset) as caught:
            await client.append("alice", BODY)
        # Tried on each member once: never a third time.
        assert (a.requests, b.requests) == (1, 1)
        reply = outcome_for_error(caught.value).reply
        assert (reply.code, reply.enhanced) == (451, "4.4.1")
        stats = client.pool.stats
        assert (stats.ambiguous, stats.ambiguous_retried) == (2, 1)
        assert client.pool.status() == ("members_up=0/2 failovers=0 ambiguous=2 "
                                        "ambiguous_retried=1 no_healthy=0")


async def test_a_changing_call_is_not_repeated_after_a_lost_connection(tmp_path: Path) -> None:
    fake = FakeAdmin()
    async with dropping_first(fake, tmp_path) as (_, client):
        with pytest.raises(ConnectionReset):
            await client.set_user("alice", password="pw")
        assert fake.calls == []
        assert client.pool.stats.ambiguous == 1


async def test_calls_go_to_the_member_with_fewest_in_flight(tmp_path: Path) -> None:
    async def slow_append(request: pb.AppendRequest) -> pb.AppendResponse:
        await asyncio.sleep(0.2)
        return await _default_append(request)

    fakes = [FakeAdmin(script={"Append": slow_append}) for _ in range(2)]
    async with HealthyFake(fakes[0], tmp_path / "a.sock"), \
            HealthyFake(fakes[1], tmp_path / "b.sock"), \
            AdminClient(pool_settings(tmp_path, tmp_path / "a.sock", tmp_path / "b.sock")
                        ) as client:
        await asyncio.gather(*(client.append(f"u{i}", BODY) for i in range(10)))
        assert [appends(f) for f in fakes] == [5, 5]
        assert [f.max_in_flight for f in fakes] == [5, 5]


async def test_no_healthy_member_then_one_comes_back(tmp_path: Path) -> None:
    paths = (tmp_path / "a.sock", tmp_path / "b.sock")
    async with AdminClient(pool_settings(tmp_path, *paths)) as client:
        with pytest.raises(ServerUnreachable):
            await client.append("alice", BODY)
        assert client.pool.healthy() == []
        with pytest.raises(ServerUnreachable, match="no healthy"):
            await client.append("alice", BODY)
        assert client.pool.stats.no_healthy >= 1
        fake = FakeAdmin()
        async with HealthyFake(fake, paths[1]):
            # The down member is re-probed with backoff (0.1 s doubling, 2 s at most).
            deadline = time.monotonic() + 15
            while not client.pool.healthy() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert [e.target for e in client.pool.healthy()] == [f"unix:{paths[1]}"]
            assert (await client.append("alice", BODY)).uid == 1


async def test_one_endpoint_is_used_as_before(tmp_path: Path) -> None:
    settings = pool_settings(tmp_path)  # no endpoints: path from the settings
    settings = ConnectionSettings(path=tmp_path / "gone.sock", token_file=settings.token_file)
    async with AdminClient(settings) as client:
        assert client.pool.single
        for _ in range(2):
            # Never "no healthy endpoint": the one endpoint is always tried.
            with pytest.raises(ServerUnreachable, match="cannot connect"):
                await client.append("alice", BODY)
        assert all(e.watcher is None for e in client.pool.endpoints)


class DropFirstConnection(DropAfterRequest):
    """The first connection is dropped as DropAfterRequest drops it; later
    ones are passed through to the server at ``target``."""

    def __init__(self, path: Path, target: Path) -> None:
        super().__init__(path)
        self.target = target
        self.connections = 0

    async def __aenter__(self) -> DropFirstConnection:
        await super().__aenter__()
        return self

    async def _on_connect(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.connections == 1:
            await super()._on_connect(reader, writer)
            return
        up_reader, up_writer = await asyncio.open_unix_connection(str(self.target))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer),
                             return_exceptions=True)


async def test_one_endpoint_tries_a_call_not_sent_once_more(tmp_path: Path) -> None:
    """The one endpoint's connection goes while a message larger than the
    first flow-control window is still being sent: nothing was done, so it
    is sent again on a new connection, not deferred."""
    fake = FakeAdmin()
    big = BODY + b"x" * 300_000
    async with HealthyFake(fake, tmp_path / "real.sock"), \
            DropFirstConnection(tmp_path / "a.sock", tmp_path / "real.sock") as dropper, \
            AdminClient(pool_settings(tmp_path, tmp_path / "a.sock")) as client:
        assert client.pool.single
        assert (await client.append("alice", big)).uid == 1
        assert dropper.requests == 1 and dropper.connections == 2 and appends(fake) == 1
        stats = client.pool.stats
        assert (stats.failovers, stats.ambiguous) == (1, 0)


async def test_one_endpoint_defers_a_call_lost_after_sending(tmp_path: Path) -> None:
    """Sent in full, then the connection went: it may have been stored, and
    with no other member it is not repeated (the MTA's retry decides)."""
    fake = FakeAdmin()
    async with HealthyFake(fake, tmp_path / "real.sock"), \
            DropFirstConnection(tmp_path / "a.sock", tmp_path / "real.sock") as dropper, \
            AdminClient(pool_settings(tmp_path, tmp_path / "a.sock")) as client:
        with pytest.raises(ConnectionReset):
            await client.append("alice", BODY)
        assert dropper.requests == 1 and appends(fake) == 0
        stats = client.pool.stats
        assert (stats.failovers, stats.ambiguous) == (0, 1)
        assert (await client.append("alice", BODY)).uid == 1


async def test_a_member_not_serving_is_taken_out_and_comes_back(tmp_path: Path) -> None:
    fakes = [FakeAdmin(), FakeAdmin()]
    async with HealthyFake(fakes[0], tmp_path / "a.sock") as first, \
            HealthyFake(fakes[1], tmp_path / "b.sock"), \
            AdminClient(pool_settings(tmp_path, tmp_path / "a.sock", tmp_path / "b.sock"),
                        health_interval=0.1) as client:
        await client.append("alice", BODY)  # starts the health checks
        first.status.set(False)  # e.g. its Redis went away
        deadline = time.monotonic() + 15
        while client.pool.endpoints[0].healthy and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert not client.pool.endpoints[0].healthy
        before = appends(fakes[0])
        await asyncio.gather(*(client.append("alice", BODY) for _ in range(6)))
        assert appends(fakes[0]) == before and appends(fakes[1]) >= 6

        first.status.set(True)
        while not client.pool.endpoints[0].healthy and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert client.pool.endpoints[0].healthy
        await asyncio.gather(*(client.append("alice", BODY) for _ in range(6)))
        assert appends(fakes[0]) > before


async def test_the_pool_shows_in_the_daemons_metrics(tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    from pymap_deliver.metrics import MetricsServer, Stats
    from pymap_deliver.server import TcpEndpoint

    from .test_daemon_ops import samples

    fake = FakeAdmin()
    async with dropping_first(fake, tmp_path) as (_, client):
        await client.append("alice", BODY)  # cut off on a, retried on b
        metrics = MetricsServer.for_daemon(
            TcpEndpoint(port=0), Stats(), sessions=lambda: 0, in_flight=lambda: 0,
            token_reads=lambda: 0, token_mints=lambda: 0, serving=lambda: True,
            pool=client.pool)
        found = samples(generate_latest(metrics.registry).decode())
    a, b = (f"unix:{tmp_path / name}" for name in ("a.sock", "b.sock"))
    assert found[("pymap_deliver_member_up", (("member", a),))] == 0
    assert found[("pymap_deliver_member_up", (("member", b),))] == 1
    assert found[("pymap_deliver_member_calls_total", (("member", b),))] == 1
    assert found[("pymap_deliver_calls_ambiguous_total", (("action", "retried"),))] == 1
    assert found[("pymap_deliver_calls_ambiguous_total", (("action", "deferred"),))] == 0
    assert found[("pymap_deliver_member_failovers_total", ())] == 0
