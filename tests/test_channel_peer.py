"""The lean gRPC channel (pymap_admin._channel) against a scripted HTTP/2
server that does what grpclib's server never does on its own: legal but
unusual framing (CONTINUATION, padding, tiny frames, PRIORITY, unknown
frame types), settings and flow control changed under the client, PING,
GOAWAY, RST_STREAM, a dropped connection and outright protocol violations.

The peer is h2 in server mode on a UNIX socket. Each test's ``handler``
decides how a request is answered: :meth:`PeerConnection.respond` gives the
usual gRPC answer within the client's flow-control windows, and
:meth:`PeerConnection.send_raw` writes frames by hand where h2 would refuse
to (padded or split header blocks, GOAWAY while streams are still answered,
malformed frames). The peer records what h2 reports of the client's side
(every event, every complete request), so the tests check what the client
sent as well as what the call returned. The calls go through
:class:`~pymap_admin.AdminClient` (one endpoint), so their failures are the
exceptions of :mod:`pymap_admin.errors`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import gc
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec

import pytest
from grpclib.exceptions import StreamTerminatedError
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    PingAckReceived,
    RequestReceived,
    SettingsAcknowledged,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PriorityFrame,
    RstStreamFrame,
    WindowUpdateFrame,
)

from pymap_admin import AdminClient, AppendResult, ConnectionSettings, errors, inspect_token
from pymap_admin.grpc import admin_pb2 as pb

from .test_tokens import admin_token

#: Every scenario's bound: a client that hangs fails its test instead.
TIMEOUT = 10.0
APPEND_PATH = b"/pymapadmin.grpc.Mailbox/Append"
Headers = list[tuple[bytes, bytes]]
RESPONSE_HEADERS: Headers = [(b":status", b"200"), (b"content-type", b"application/grpc")]
OK_TRAILERS: Headers = [(b"grpc-status", b"0")]

P = ParamSpec("P")


def timed(test: Callable[P, Awaitable[None]]) -> Callable[P, Coroutine[Any, Any, None]]:
    """Run the test within :data:`TIMEOUT` (its peer's teardown too)."""
    @functools.wraps(test)
    async def run(*args: P.args, **kwargs: P.kwargs) -> None:
        await asyncio.wait_for(test(*args, **kwargs), TIMEOUT)
    return run


@pytest.fixture(autouse=True)
async def _no_unhandled_errors() -> AsyncIterator[None]:
    """Nothing the client does may end in asyncio's exception handler (a
    task's exception never retrieved, a callback that raised)."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:
        yield
        gc.collect()  # "never retrieved" is reported when a future is collected
        assert seen == []
    finally:
        loop.set_exception_handler(previous)


# --- the peer ---------------------------------------------------------------------


@dataclass
class Request:
    """One complete request as the peer decoded it."""

    stream_id: int
    headers: Headers
    body: bytearray = field(default_factory=bytearray)

    def header(self, name: bytes) -> bytes | None:
        return dict(self.headers).get(name)

    @property
    def message(self) -> pb.AppendRequest:
        assert self.body[:1] == b"\0", "a compressed message"
        assert int.from_bytes(self.body[1:5], "big") == len(self.body) - 5
        return pb.AppendRequest.FromString(bytes(self.body[5:]))

    @property
    def user(self) -> str:
        return self.message.user


def length_prefixed(message: Any) -> bytes:
    body: bytes = message.SerializeToString()
    return b"\0" + len(body).to_bytes(4, "big") + body


def reply_to(request: Request) -> pb.AppendResponse:
    """The usual answer; its uid is the request's stream id, so a test can
    tell which answer went to which call."""
    return pb.AppendResponse(result=pb.Result(code=pb.SUCCESS, response=b"Append OK completed."),
                             mailbox="INBOX", validity=1, uid=request.stream_id)


@dataclass
class _Body:
    """A response body waiting for the client's flow-control windows."""

    data: memoryview
    trailers: Headers
    frame_size: int
    pad: int | None


class PeerConnection(asyncio.Protocol):
    """One connection of the peer: h2 fed from the socket, requests handed
    to the peer's handler, responses sent as the client's windows allow."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.h2 = H2Connection(config=H2Configuration(client_side=False, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        #: Everything h2 reported of what the client sent, in order.
        self.events: list[Event] = []
        self.requests: dict[int, Request] = {}
        #: Streams the client opened that are not ended on our side yet.
        self.open: set[int] = set()
        self.max_open = 0
        #: All the bytes we wrote, and the writes (one per byte when trickling).
        self.sent = bytearray()
        self.writes = 0
        self.lost = asyncio.Event()
        self._bodies: dict[int, _Body] = {}
        self._trickle: asyncio.Queue[bytes] | None = None

    def of(self, kind: type[Any]) -> list[Any]:
        """The recorded events of one kind."""
        return [event for event in self.events if isinstance(event, kind)]

    # -- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.peer.trickle:
            self._trickle = asyncio.Queue()
            self.peer.spawn(self._trickle_out())
        self.h2.initiate_connection()
        if self.peer.settings:
            # A second SETTINGS frame right after the preface: it reaches the
            # client before any answer, and h2 applies it on our side when
            # the client acknowledges it.
            self.h2.update_settings(dict(self.peer.settings))
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
            for event in events:
                self._record(event)
            self._pump()
        except H2Error as exc:
            # The client broke the protocol: the test fails on peer.errors.
            self.peer.errors.append(exc)
            self.abort()
        self.flush()
        self.peer.wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()
        self.peer.wake()

    def _record(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, RequestReceived):
            assert event.stream_id is not None and event.headers is not None
            headers = [(bytes(k), bytes(v)) for k, v in event.headers]
            self.requests[event.stream_id] = Request(event.stream_id, headers)
            self.open.add(event.stream_id)
            self.max_open = max(self.max_open, len(self.open))
        elif isinstance(event, DataReceived):
            assert event.stream_id is not None and event.data is not None
            self.requests[event.stream_id].body += event.data
            assert event.flow_controlled_length is not None
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, StreamEnded):
            assert event.stream_id is not None
            request = self.requests[event.stream_id]
            self.peer.requests.append(request)
            self.peer.spawn(self.peer.handler(self, request))
        elif isinstance(event, StreamReset):
            assert event.stream_id is not None
            self.open.discard(event.stream_id)
            self._bodies.pop(event.stream_id, None)

    # -- writing -----------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not data or self.transport is None or self.transport.is_closing():
            return
        self.sent += data
        if self._trickle is not None:
            self._trickle.put_nowait(data)
        else:
            self.writes += 1
            self.transport.write(data)

    async def _trickle_out(self) -> None:
        """Write one byte at a time, giving the client's reader turns of the
        loop in between, so that it gets the answer in many small reads."""
        assert self._trickle is not None
        while True:
            data = await self._trickle.get()
            for i in range(len(data)):
                if self.transport is None or self.transport.is_closing():
                    return
                self.writes += 1
                self.transport.write(data[i:i + 1])
                for _ in range(3):
                    await asyncio.sleep(0)

    def flush(self) -> None:
        self.write(self.h2.data_to_send())

    def send_raw(self, *frames: Frame | bytes) -> None:
        """Frames h2 would not send, after what h2 has queued. h2 knows
        nothing of them: a stream answered this way stays open in its
        state (harmless under its 100-stream limit)."""
        self.flush()
        for frame in frames:
            self.write(frame if isinstance(frame, bytes) else frame.serialize())

    def encode(self, headers: Headers) -> bytes:
        """A header block from h2's own encoder, so the HPACK table the
        client decodes with stays in step with ours."""
        block: bytes = self.h2.encoder.encode(headers)
        return block

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- answers -------------------------------------------------------------------

    def respond(self, request: Request, message: Any = None, *,
                headers: Headers = RESPONSE_HEADERS, trailers: Headers = OK_TRAILERS,
                frame_size: int = 1 << 24, pad: int | None = None) -> None:
        """The usual gRPC answer: headers, the message, trailers."""
        self.h2.send_headers(request.stream_id, headers)
        self.send_body(request, message, trailers=trailers, frame_size=frame_size, pad=pad)

    def send_body(self, request: Request, message: Any = None, *,
                  trailers: Headers = OK_TRAILERS, frame_size: int = 1 << 24,
                  pad: int | None = None) -> None:
        """The message in DATA frames of at most ``frame_size`` bytes (each
        padded with ``pad`` bytes), sent as the client's windows allow, then
        the trailers."""
        data = length_prefixed(reply_to(request) if message is None else message)
        self._bodies[request.stream_id] = _Body(memoryview(data), trailers, frame_size, pad)
        self._pump()
        self.flush()

    def trailers_only(self, request: Request, headers: Headers) -> None:
        self.h2.send_headers(request.stream_id, headers, end_stream=True)
        self.open.discard(request.stream_id)
        self.flush()

    def _pump(self) -> None:
        h2 = self.h2
        for stream_id, body in list(self._bodies.items()):
            overhead = 0 if body.pad is None else body.pad + 1
            while body.data:
                room = min(h2.local_flow_control_window(stream_id),
                           h2.max_outbound_frame_size) - overhead
                size = min(len(body.data), room, body.frame_size)
                if size <= 0:
                    break  # until the client's WINDOW_UPDATE
                h2.send_data(stream_id, body.data[:size].tobytes(), pad_length=body.pad)
                body.data = body.data[size:]
            if not body.data:
                del self._bodies[stream_id]
                h2.send_headers(stream_id, body.trailers, end_stream=True)
                self.open.discard(stream_id)


#: How the peer answers one request (run as a task of its own).
Handler = Callable[[PeerConnection, Request], Coroutine[Any, Any, None]]


async def answer(conn: PeerConnection, request: Request) -> None:
    conn.respond(request)


class Peer:
    """The scripted server: a UNIX socket, its connections, every complete
    request in arrival order, and anything that went wrong on its side."""

    def __init__(self, path: Path, handler: Handler = answer, *,
                 settings: Iterable[tuple[SettingCodes, int]] = (),
                 trickle: bool = False) -> None:
        self.path = path
        self.handler = handler
        self.settings = tuple(settings)
        self.trickle = trickle
        self.connections: list[PeerConnection] = []
        self.requests: list[Request] = []
        self.errors: list[BaseException] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed: asyncio.Future[None] | None = None
        self._server: asyncio.AbstractServer | None = None

    @property
    def conn(self) -> PeerConnection:
        """The latest connection."""
        return self.connections[-1]

    async def __aenter__(self) -> Peer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(self._connect, str(self.path))
        return self

    async def __aexit__(self, exc_type: Any, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for conn in self.connections:
            conn.abort()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        if exc_type is None:
            assert self.errors == []

    def _connect(self) -> PeerConnection:
        conn = PeerConnection(self)
        self.connections.append(conn)
        return conn

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(self._run(coroutine))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, coroutine: Coroutine[Any, Any, None]) -> None:
        try:
            await coroutine
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the test fails on it at the end
            self.errors.append(exc)

    def wake(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition`` holds, checked again whenever a
        connection received something or was lost."""
        while not condition():
            if self._changed is None or self._changed.done():
                self._changed = asyncio.get_running_loop().create_future()
            await self._changed


def _client(tmp_path: Path, **kw: Any) -> AdminClient:
    token = tmp_path / "token"
    token.write_text(admin_token())
    return AdminClient(ConnectionSettings(path=tmp_path / "s.sock", token_file=token,
                                          login_tokens=False, **kw))


def _header_frames(stream_id: int, block: bytes, *, fragment: int, end_stream: bool = False,
                   pad: int | None = None) -> list[Frame]:
    """A header block as HEADERS and CONTINUATION frames of ``fragment``
    bytes each (the HEADERS frame padded with ``pad`` bytes)."""
    pieces = [block[i:i + fragment] for i in range(0, len(block), fragment)] or [b""]
    first = HeadersFrame(stream_id, pieces[0], pad_length=pad or 0)
    if pad is not None:
        first.flags.add("PADDED")
    if end_stream:
        first.flags.add("END_STREAM")
    frames: list[Frame] = [first]
    frames += [ContinuationFrame(stream_id, piece) for piece in pieces[1:]]
    frames[-1].flags.add("END_HEADERS")
    return frames


def _frames(data: bytes | bytearray) -> list[Frame]:
    """The frames in what the peer wrote (to check it wrote what a test means)."""
    frames = []
    view = memoryview(data)
    while view:
        frame, length = Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9:9 + length])
        frames.append(frame)
        view = view[9 + length:]
    return frames


# --- framing ------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["h2", "tiny-fragments"])
@timed
async def test_header_blocks_split_over_continuation_frames(tmp_path: Path, how: str) -> None:
    """Response headers and trailers each arrive as HEADERS + CONTINUATION
    frames: the client joins each block before decoding it."""
    big = bytes(range(0x21, 0x7F)) * 200  # ~19 KB: more than one 16 KiB frame

    async def handler(conn: PeerConnection, request: Request) -> None:
        if how == "h2":
            # h2 splits a block larger than the client's frame size itself.
            conn.respond(request, headers=[*RESPONSE_HEADERS, (b"x-big", big)],
                         trailers=[*OK_TRAILERS, (b"x-big-trailer", big)])
            return
        sid = request.stream_id
        conn.send_raw(*_header_frames(sid, conn.encode(RESPONSE_HEADERS), fragment=1),
                      DataFrame(sid, length_prefixed(reply_to(request))))
        conn.send_raw(*_header_frames(sid, conn.encode([*OK_TRAILERS, (b"x-t", b"trailer")]),
                                      fragment=1, end_stream=True))

    async with Peer(tmp_path / "s.sock", handler) as peer, _client(tmp_path) as client:
        for user in ("alice", "bob"):  # the HPACK table in step across calls
            result = await client.append(user, b"x")
            assert result.uid == peer.requests[-1].stream_id
        sent = _frames(peer.conn.sent)
    continuations = [f for f in sent if isinstance(f, ContinuationFrame)]
    assert len({f.stream_id for f in continuations}) == 2
    # Both the response headers and the trailers of each call were split.
    assert sum(isinstance(f, HeadersFrame) and "END_HEADERS" not in f.flags for f in sent) == 4
    assert not peer.conn.of(StreamReset) and not peer.conn.of(ConnectionTerminated)


@pytest.mark.parametrize("pad", [0, 1, 255])
@timed
async def test_padded_headers_data_and_trailers(tmp_path: Path, pad: int) -> None:
    """PADDED frames (a zero-length padding too): the padding is dropped,
    and counted in flow control."""
    async def handler(conn: PeerConnection, request: Request) -> None:
        sid = request.stream_id
        message = length_prefixed(reply_to(request))
        headers = _header_frames(sid, conn.encode(RESPONSE_HEADERS), fragment=1 << 14, pad=pad)
        data = [DataFrame(sid, message[:7], flags=["PADDED"], pad_length=pad),
                DataFrame(sid, message[7:], flags=["PADDED"], pad_length=pad)]
        trailers = _header_frames(sid, conn.encode(OK_TRAILERS), fragment=1 << 14,
                                  end_stream=True, pad=pad)
        conn.send_raw(*headers, *data, *trailers)

    async with Peer(tmp_path / "s.sock", handler) as peer, _client(tmp_path) as client:
        assert (await client.append("alice", b"x")).uid == 1
        assert (await client.append("bob", b"y")).uid == 3
    assert all("PADDED" in f.flags for f in _frames(peer.conn.sent)
               if isinstance(f, HeadersFrame | DataFrame))
    assert not peer.conn.of(ConnectionTerminated)


@timed
async def test_padding_counts_in_the_clients_receive_window(tmp_path: Path) -> None:
    """An answer of 1-byte DATA frames with 255 bytes of padding each: over
    4 MiB of flow-controlled bytes for 17 KB of message. A client that
    acknowledged only the data would close its own window and the call
    would hang."""
    async def handler(conn: PeerConnection, request: Request) -> None:
        reply = reply_to(request)
        reply.mailbox = "m" * 17_000
        conn.respond(request, reply, frame_size=1, pad=255)

    async with Peer(tmp_path / "s.sock", handler) as peer, _client(tmp_path) as client:
        result = await client.append("alice", b"x")
        assert result.mailbox == "m" * 17_000
    flow_controlled = sum(len(f.data) + f.pad_length + 1 for f in _frames(peer.conn.sent)
                          if isinstance(f, DataFrame))
    assert flow_controlled > 4 * 1024 * 1024
    assert [e for e in peer.conn.of(WindowUpdated) if e.stream_id == 0]


@timed
async def test_answer_in_one_byte_frames_and_one_byte_writes(tmp_path: Path) -> None:
    """The message in 1-byte DATA frames, and every byte the peer sends
    (its preface too) in a write of its own: the client reassembles frames
    across reads and the message across frames."""
    async with Peer(tmp_path / "s.sock", _one_byte_frames, trickle=True) as peer, \
            _client(tmp_path) as client:
        for user in ("alice", "bob", "carol"):
            result = await client.append(user, b"message for " + user.encode())
            assert (result.mailbox, result.uid) == ("INBOX", peer.requests[-1].stream_id)
        assert peer.conn.writes == len(peer.conn.sent) > 300
    assert [r.user for r in peer.requests] == ["alice", "bob", "carol"]
    data_frames = [f for f in _frames(peer.conn.sent) if isinstance(f, DataFrame)]
    assert len(data_frames) > 3 * 30 and all(len(f.data) <= 1 for f in data_frames)


async def _one_byte_frames(conn: PeerConnection, request: Request) -> None:
    conn.respond(request, frame_size=1)


@timed
async def test_unknown_frame_types_and_priority_frames_are_ignored(tmp_path: Path) -> None:
    """Extension frames (type 0xFA, any flags, on the connection and on the
    call's stream) and PRIORITY frames (on the call's stream and on one
    never opened) between the headers and the message."""
    async def handler(conn: PeerConnection, request: Request) -> None:
        sid = request.stream_id
        conn.h2.send_headers(sid, RESPONSE_HEADERS)
        unknown = b"\x00\x00\x05\xfa\xff" + (0).to_bytes(4, "big") + b"hello"
        on_stream = b"\x00\x00\x03\xfa\x01" + sid.to_bytes(4, "big") + b"abc"
        conn.send_raw(unknown, PriorityFrame(sid, depends_on=0, stream_weight=200),
                      on_stream, PriorityFrame(sid + 100, depends_on=sid, exclusive=True))
        conn.send_body(request)

    async with Peer(tmp_path / "s.sock", handler) as peer, _client(tmp_path) as client:
        assert (await client.append("alice", b"x")).uid == 1
        assert (await client.append("bob", b"x")).uid == 3
    assert len(peer.connections) == 1
    assert not peer.conn.of(StreamReset) and not peer.conn.of(ConnectionTerminated)


@timed
async def test_an_informational_response_before_the_answer_is_skipped(tmp_path: Path) -> None:
    """A 1xx response (unusual for gRPC, legal in HTTP/2) before the real
    headers: the call takes its status from the 200 that follows."""
    async def handler(conn: PeerConnection, request: Request) -> None:
        conn.h2.send_headers(request.stream_id, [(b":status", b"103"), (b"link", b"</x>")])
        conn.respond(request)

    async with Peer(tmp_path / "s.sock", handler) as peer, _client(tmp_path) as client:
        assert (await client.append("alice", b"x")).uid == 1
    assert not peer.conn.of(StreamReset) and not peer.conn.of(ConnectionTerminated)


# --- statuses ---------------------------------------------------------------------------


def _status_details(status: int, message: str) -> bytes:
    from google.protobuf.any_pb2 import Any as AnyMessage
    from google.rpc.error_details_pb2 import ErrorInfo
    from google.rpc.status_pb2 import Status as RpcStatus

    detail = AnyMessage()
    detail.Pack(ErrorInfo(reason="INCOMPATIBLE", domain="pymap-admin",
                          metadata={"client_version": "0.12.1", "server_version": "0.13.0"}))
    raw = RpcStatus(code=status, message=message, details=[detail]).SerializeToString()
    return base64.b64encode(raw).rstrip(b"=")


_GRPC = RESPONSE_HEADERS


@pytest.mark.parametrize(("headers", "error", "text"), [
    ([*_GRPC, (b"grpc-status", b"14"), (b"grpc-message", b"going%20away")],
     errors.ConnectionReset, "UNAVAILABLE: going away"),
    ([*_GRPC, (b"grpc-status", b"4")], errors.DeadlineExceeded, "DEADLINE_EXCEEDED"),
    ([*_GRPC, (b"grpc-status", b"12"), (b"grpc-message", b"no")],
     errors.Unimplemented, "operation not available: no"),
    ([*_GRPC, (b"grpc-status", b"3"), (b"grpc-message", b"bad%0Arequest")],
     errors.UnexpectedStatus, "INVALID_ARGUMENT: bad\nrequest"),
    ([*_GRPC, (b"grpc-status", b"9"), (b"grpc-message", b"Incompatible%20version"),
      (b"grpc-status-details-bin", _status_details(9, "Incompatible version"))],
     errors.IncompatibleVersion, "client 0.12.1, server 0.13.0"),
    ([*_GRPC, (b"grpc-status", b"banana")], errors.UnexpectedStatus, "Invalid grpc-status"),
    ([*_GRPC, (b"grpc-status", b"\xff")], errors.UnexpectedStatus, "Invalid grpc-status"),
    ([*_GRPC, (b"grpc-status", b"13"), (b"grpc-message", b"caf\xe9"),
      (b"grpc-status-details-bin", b"not*base64")],
     errors.UnexpectedStatus, "INTERNAL: caf\\xe9"),
    ([(b":status", b"503")], errors.ConnectionReset, "UNAVAILABLE"),
    ([(b":status", b"404"), (b"content-type", b"text/html")], errors.Unimplemented, "404"),
    ([(b":status", b"500")], errors.UnexpectedStatus, "UNKNOWN"),
    ([(b":status", b"200"), (b"content-type", b"text/plain"), (b"grpc-status", b"0")],
     errors.UnexpectedStatus, "Invalid content-type"),
], ids=["unavailable", "deadline", "unimplemented", "invalid-argument", "incompatible",
        "garbage-status", "non-ascii-status", "non-ascii-message", "http-503", "http-404",
        "http-500", "not-grpc"])
@timed
async def test_trailers_only_answers_map_to_our_errors(
        tmp_path: Path, headers: Headers, error: type[errors.AdminError], text: str) -> None:
    """A trailers-only answer (one HEADERS frame with END_STREAM): its
    :status, content-type and grpc-status / grpc-message (percent-encoded)
    / grpc-status-details-bin become the exception of pymap_admin.errors."""
    async def handler(conn: PeerConnection, request: Request) -> None:
        conn.trailers_only(request, headers)

    async with Peer(tmp_path / "s.sock", handler) as peer, _client(tmp_path) as client:
        with pytest.raises(error, match=re.escape(text)):
            await client.append("alice", b"x")
        # The stream ended normally: the connection carries the next call.
        peer.handler = answer
        assert (await client.append("alice", b"x")).uid == 3
        assert client.stats.failovers == 0
    assert len(peer.connections) == 1 and not peer.conn.of(StreamReset)


@pytest.mark.parametrize(("trailers", "error", "text"), [
    ([(b"grpc-status", b"13"), (b"grpc-message", b"boom")], errors.UnexpectedStatus,
     "INTERNAL: boom"),
    ([(b"x-no-status", b"1")], errors.UnexpectedStatus, "Missing grpc-status"),
], ids=["internal", "no-grpc-status"])
@timed
async def test_an_error_status_in_the_trailers_after_a_message(
        tmp_path: Path, trailers: Headers, error: type[errors.AdminError], text: str) -> None:
    """The status is read from the trailers even when a message came first."""
    async def handler(conn: PeerConnection, request: Request) -> None:
        conn.respond(request, trailers=trailers)

    async with Peer(tmp_path / "s.sock", handler), _client(tmp_path) as client:
        with pytest.raises(error, match=re.escape(text)):
            await client.append("alice", b"x")


# --- connection-level frames and settings -----------------------------------------------


@timed
async def test_a_ping_mid_call_is_acknowledged(tmp_path: Path) -> None:
    """The server PINGs before answering: the client ACKs with the same
    payload (the answer waits for the ACK) and the call completes."""
    async def handler(conn: PeerConnection, request: Request) -> None:
        payload = b"peer%04d" % request.stream_id
        conn.h2.ping(payload)
        conn.flush()
        await conn.peer.until(lambda: any(e.ping_data == payload
                                          for e in conn.of(PingAckReceived)))
        conn.respond(request)

    async with Peer(tmp_path / "s.sock", handler) as peer, _client(tmp_path) as client:
        assert (await client.append("alice", b"x")).uid == 1
        assert (await client.append("bob", b"x")).uid == 3
    assert [e.ping_data for e in peer.conn.of(PingAckReceived)] == [b"peer0001", b"peer0003"]


@timed
async def test_a_small_initial_window_and_a_larger_frame_size(tmp_path: Path) -> None:
    """SETTINGS mid-connection: INITIAL_WINDOW_SIZE 1000 (MAX_FRAME_SIZE
    32768 besides). The client acknowledges them; its next request, far
    larger than the window, goes out in pieces of at most 1000 bytes as the
    peer's WINDOW_UPDATEs come, and arrives whole."""
    big = bytes(range(256)) * 800  # 200 KiB: over the connection's 64 KiB window too

    async with Peer(tmp_path / "s.sock") as peer, _client(tmp_path) as client:
        await client.append("alice", b"warm-up")
        conn = peer.conn
        acked = len(conn.of(SettingsAcknowledged))
        conn.h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 1000,
                                 SettingCodes.MAX_FRAME_SIZE: 32768})
        conn.flush()
        await peer.until(lambda: len(conn.of(SettingsAcknowledged)) > acked)
        changed = conn.of(SettingsAcknowledged)[-1].changed_settings
        assert changed[SettingCodes.INITIAL_WINDOW_SIZE].new_value == 1000
        result = await client.append("bob", big)
        assert result.uid == 3
    request = peer.requests[-1]
    assert request.message.data.endswith(big) and request.user == "bob"
    sizes = [e.flow_controlled_length for e in conn.of(DataReceived) if e.stream_id == 3]
    assert max(sizes) <= 1000 and sum(sizes) == len(request.body)
    granted = [f for f in _frames(conn.sent) if isinstance(f, WindowUpdateFrame)]
    assert {f.stream_id for f in granted} == {0, 3}


@pytest.mark.parametrize("max_frame_size", [None, 20_000])
@timed
async def test_data_frames_fit_the_servers_max_frame_size(
        tmp_path: Path, max_frame_size: int | None) -> None:
    """With windows large enough for the whole message, the DATA frames are
    still no larger than the server's MAX_FRAME_SIZE (16384 when not set)."""
    big = b"z" * (600 * 1024)
    settings = [(SettingCodes.INITIAL_WINDOW_SIZE, 1 << 20)]
    if max_frame_size is not None:
        settings.append((SettingCodes.MAX_FRAME_SIZE, max_frame_size))
    async with Peer(tmp_path / "s.sock", settings=settings) as peer, \
            _client(tmp_path) as client:
        await client.append("alice", b"warm-up")  # the settings reached the client
        peer.conn.h2.increment_flow_control_window(1 << 20)
        peer.conn.flush()
        await peer.until(lambda: len(peer.conn.of(SettingsAcknowledged)) == 2)
        assert (await client.append("bob", big)).uid == 3
    sizes = [e.flow_controlled_length for e in peer.conn.of(DataReceived) if e.stream_id == 3]
    assert max(sizes) <= (max_frame_size or 16384)
    assert peer.requests[-1].message.data == big


@pytest.mark.parametrize("when", ["preface", "between-calls"])
@pytest.mark.parametrize("size", [0, 256])
@timed
async def test_a_smaller_header_table(tmp_path: Path, size: int, when: str) -> None:
    """SETTINGS_HEADER_TABLE_SIZE lowered by the server (with its first
    SETTINGS, or between calls): the client signals the smaller table in
    its next header block, and every later call's headers still decode to
    its own path and per-user token (the client reuses encoded blocks)."""
    settings = [(SettingCodes.HEADER_TABLE_SIZE, size)] if when == "preface" else []
    users = ["alice", "bob", "carol"]
    async with Peer(tmp_path / "s.sock", settings=settings) as peer, \
            _client(tmp_path) as client:
        async def one_round() -> None:
            await asyncio.gather(*(client.append(user, b"x") for user in users))

        for _ in range(3):  # the third round reuses the second's blocks
            await one_round()
        conn = peer.conn
        if when == "between-calls":
            conn.h2.update_settings({SettingCodes.HEADER_TABLE_SIZE: size})
            conn.flush()
            # The preface's SETTINGS were acknowledged once already.
            await peer.until(lambda: len(conn.of(SettingsAcknowledged)) == 2)
        await one_round()
        # The client's table size update came with its first block after the
        # change (hpack refuses one above the size we allowed).
        assert conn.h2.decoder.header_table.maxsize <= size
        for _ in range(2):
            await one_round()
    assert len(peer.connections) == 1 and len(peer.requests) == 18
    for request in peer.requests:
        assert request.header(b":path") == APPEND_PATH
        token = request.header(b"auth-token")
        assert token is not None
        assert inspect_token(token.decode()).authzid == request.user


@timed
async def test_an_answer_beyond_the_clients_receive_window(tmp_path: Path) -> None:
    """A 6 MiB answer, more than the client's 4 MiB windows: the client
    grants more (WINDOW_UPDATE on the stream and the connection) as it reads,
    and the call completes."""
    async def handler(conn: PeerConnection, request: Request) -> None:
        reply = reply_to(request)
        reply.mailbox = "b" * (6 * 1024 * 1024)
        conn.respond(request, reply)

    async with Peer(tmp_path / "s.sock", handler) as peer, _client(tmp_path) as client:
        result = await client.append("alice", b"x")
        assert len(result.mailbox) == 6 * 1024 * 1024 and result.uid == 1
    updated = {e.stream_id for e in peer.conn.of(WindowUpdated)}
    assert {0, 1} <= updated


@contextlib.asynccontextmanager
async def _stream_limit(tmp_path: Path, handler: Handler,
                        streams: int) -> AsyncIterator[tuple[Peer, AdminClient]]:
    """A peer allowing ``streams`` concurrent streams, and a client that has
    made one call on it and had its SETTINGS (the preface's and the limit)
    acknowledged: h2 enforces the limit on the peer's side from then on."""
    async with Peer(tmp_path / "s.sock", handler,
                    settings=[(SettingCodes.MAX_CONCURRENT_STREAMS, streams)]) as peer, \
            _client(tmp_path) as client:
        await client.append("warm-up", b"x")
        await peer.until(lambda: len(peer.conn.of(SettingsAcknowledged)) == 2)
        yield peer, client


@timed
async def test_the_server_limit_of_concurrent_streams(tmp_path: Path) -> None:
    """MAX_CONCURRENT_STREAMS 2 (the peer holds each answer until two calls
    are open, or the last one is): five concurrent calls all complete, and
    the client never has more than two streams open."""
    hold = False

    async def handler(conn: PeerConnection, request: Request) -> None:
        if hold:
            await conn.peer.until(lambda: len(conn.open) >= 2 or len(conn.peer.requests) == 6)
        conn.respond(request)

    async with _stream_limit(tmp_path, handler, 2) as (peer, client):
        hold = True
        users = [f"u{i}" for i in range(5)]
        results = await asyncio.gather(*(client.append(user, b"x") for user in users))
    assert sorted(result.uid or 0 for result in results) == [3, 5, 7, 9, 11]
    assert peer.conn.max_open == 2 and len(peer.connections) == 1
    assert sorted(r.user for r in peer.requests[1:]) == users


# --- streams and connections ended by the server -------------------------------------------


@pytest.mark.parametrize("code", [ErrorCodes.INTERNAL_ERROR, ErrorCodes.CANCEL])
@timed
async def test_a_stream_reset_by_the_server(tmp_path: Path, code: ErrorCodes) -> None:
    """RST_STREAM on one of two concurrent calls: that call fails, the
    other is answered, and the connection carries the next call."""
    async def handler(conn: PeerConnection, request: Request) -> None:
        await conn.peer.until(lambda: len(conn.requests) >= 2)
        if request.user == "reset-me":
            conn.h2.reset_stream(request.stream_id, code)
            conn.open.discard(request.stream_id)
            conn.flush()
        else:
            conn.respond(request)

    async with Peer(tmp_path / "s.sock", handler) as peer, _client(tmp_path) as client:
        reset, answered = await asyncio.gather(client.append("reset-me", b"x"),
                                               client.append("bob", b"x"),
                                               return_exceptions=True)
        assert isinstance(reset, errors.ConnectionReset), reset
        assert isinstance(reset.__cause__, StreamTerminatedError)
        # Possibly carried out: not sent again.
        assert reset.request_sent
        bob = next(r for r in peer.requests if r.user == "bob")
        assert isinstance(answered, AppendResult) and answered.uid == bob.stream_id
        peer.handler = answer
        assert (await client.append("carol", b"x")).uid == 5
        assert client.stats.failovers == 0
    assert len(peer.connections) == 1
    # The client answers a reset with nothing of its own.
    assert not peer.conn.of(StreamReset) and not peer.conn.of(ConnectionTerminated)


@timed
async def test_a_refused_stream_is_sent_again(tmp_path: Path) -> None:
    """REFUSED_STREAM says the server did nothing with the request (RFC
    9113, 8.7): the call is sent again at once and answered, on the same
    connection."""
    async def handler(conn: PeerConnection, request: Request) -> None:
        if request.stream_id == 1:
            conn.h2.reset_stream(request.stream_id, ErrorCodes.REFUSED_STREAM)
            conn.open.discard(request.stream_id)
            conn.flush()
        else:
            conn.respond(request)

    async with Peer(tmp_path / "s.sock", handler) as peer, _client(tmp_path) as client:
        assert (await client.append("alice", b"x")).uid == 3
        assert client.stats.failovers == 1
    assert [(r.stream_id, r.user) for r in peer.requests] == [(1, "alice"), (3, "alice")]
    assert len(peer.connections) == 1


@timed
async def test_a_stream_refused_after_its_answer_began_is_not_sent_again(
        tmp_path: Path) -> None:
    """REFUSED_STREAM after the answer's headers contradicts itself: the
    server did act on the request. The call fails as possibly carried out
    (the MTA's retry decides), not sent again at once."""
    async def handler(conn: PeerConnection, request: Request) -> None:
        conn.h2.send_headers(request.stream_id, RESPONSE_HEADERS)
        conn.h2.reset_stream(request.stream_id, ErrorCodes.REFUSED_STREAM)
        conn.open.discard(request.stream_id)
        conn.flush()

    async with Peer(tmp_path / "s.sock", handler) as peer, _client(tmp_path) as client:
        with pytest.raises(errors.ConnectionReset) as failed:
            await client.append("alice", b"x")
        assert failed.value.request_sent and client.stats.failovers == 0
    assert len(peer.requests) == 1


@timed
async def test_calls_waiting_for_a_stream_go_when_the_limit_is_raised(tmp_path: Path) -> None:
    """MAX_CONCURRENT_STREAMS 1 with a call held open: the next two calls
    wait; new SETTINGS allowing 10 let them start at once (before the held
    one ends)."""
    held = asyncio.Event()

    async def handler(conn: PeerConnection, request: Request) -> None:
        if request.user == "held":
            await held.wait()
        conn.respond(request)

    async with _stream_limit(tmp_path, handler, 1) as (peer, client):
        first = asyncio.create_task(client.append("held", b"x"))
        await peer.until(lambda: len(peer.requests) == 2)
        others = asyncio.gather(client.append("a", b"x"), client.append("b", b"x"))
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(peer.requests) == 2  # waiting for a stream
        peer.conn.h2.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 10})
        peer.conn.flush()
        await others
        assert not first.done()
        held.set()
        await first
    assert [r.user for r in peer.requests] == ["warm-up", "held", "a", "b"] or \
        [r.user for r in peer.requests] == ["warm-up", "held", "b", "a"]


@timed
async def test_a_reset_after_a_complete_answer_is_harmless(tmp_path: Path) -> None:
    """RST_STREAM (NO_ERROR) right after the answer's trailers, as servers
    may send to say they need no more of the request: the call succeeds."""
    async def handler(conn: PeerConnection, request: Request) -> None:
        conn.respond(request)
        conn.send_raw(RstStreamFrame(request.stream_id, error_code=ErrorCodes.NO_ERROR))

    async with Peer(tmp_path / "s.sock", handler) as peer, _client(tmp_path) as client:
        assert (await client.append("alice", b"x")).uid == 1
        assert (await client.append("bob", b"x")).uid == 3
    assert len(peer.connections) == 1 and not peer.conn.of(ConnectionTerminated)


@timed
async def test_an_early_answer_to_a_request_still_being_sent(tmp_path: Path) -> None:
    """The server refuses a large request as soon as its headers arrive
    (trailers-only UNAUTHENTICATED, then RST_STREAM NO_ERROR, so the client
    stops sending): the call fails with that status, not a deadline."""
    refused: set[int] = set()

    async def handler(conn: PeerConnection, request: Request) -> None:
        if request.stream_id not in refused:  # the stream is over on our side
            conn.respond(request)

    async with Peer(tmp_path / "s.sock", handler) as peer, \
            _client(tmp_path, timeout=3.0) as client:
        await client.append("alice", b"warm-up")
        conn = peer.conn

        async def refuse() -> None:
            # Each later request on its headers, long before its last DATA frame.
            while True:
                await peer.until(lambda: len(conn.requests) > 1 + len(refused))
                sid = max(conn.requests)
                refused.add(sid)
                conn.trailers_only(conn.requests[sid], [*RESPONSE_HEADERS,
                                                        (b"grpc-status", b"16")])
                conn.send_raw(RstStreamFrame(sid, error_code=ErrorCodes.NO_ERROR))

        peer.spawn(refuse())
        # 200 KiB: more than the connection's 64 KiB window the peer opened.
        with pytest.raises(errors.UnexpectedStatus, match="UNAUTHENTICATED"):
            await client.append("bob", b"y" * (200 * 1024))
        # Answered: not sent again.
        assert client.stats.failovers == 0 and len(conn.requests) == 2


def _goaway_at_three(*, goaway_first: bool) -> Handler:
    """Answer nothing on the first connection until three calls are open on
    it; then answer streams 1 and 3 and send GOAWAY saying 5 was never
    processed (first, as in a graceful shutdown, or after the answers).
    Answer at once on a later connection."""
    async def handler(conn: PeerConnection, request: Request) -> None:
        if conn is not conn.peer.connections[0]:
            conn.respond(request)
            return
        await conn.peer.until(lambda: len(conn.requests) == 3)
        if request.stream_id != 5:
            return
        goaway = GoAwayFrame(0, last_stream_id=3, error_code=ErrorCodes.NO_ERROR)
        if goaway_first:
            conn.send_raw(goaway)
        for sid in (1, 3):
            conn.respond(conn.requests[sid])
        if not goaway_first:
            conn.send_raw(goaway)

    return handler


@pytest.mark.parametrize("handler", [_goaway_at_three(goaway_first=False),
                                     _goaway_at_three(goaway_first=True)],
                         ids=["answers-then-goaway", "goaway-then-answers"])
@timed
async def test_goaway_sends_the_calls_above_its_last_stream_again(
        tmp_path: Path, handler: Handler) -> None:
    """GOAWAY with last_stream_id 3 while streams 1, 3 and 5 are open: 1 and
    3 are answered on that connection; 5, which the server says it never
    processed (RFC 9113, 6.8), is sent again on a new connection and
    answered there, as is the next call."""
    async with Peer(tmp_path / "s.sock", handler) as peer, _client(tmp_path) as client:
        users = ["u1", "u2", "u3"]
        results = await asyncio.gather(*(client.append(user, b"x") for user in users))
        first = {r.stream_id: r.user for r in peer.requests[:3]}
        assert sorted(first) == [1, 3, 5]
        # The uid is the stream id the answer came on; 5's on the new connection is 1.
        uid_of = {first[1]: 1, first[3]: 3, first[5]: 1}
        assert [result.uid for result in results] == [uid_of[user] for user in users]
        assert client.stats.failovers == 1
        # The old connection's last call is over: the client closed it.
        await peer.until(lambda: peer.connections[0].lost.is_set())
        assert (await client.append("u4", b"x")).uid == 3
    assert len(peer.connections) == 2
    assert [(r.stream_id, r.user) for r in peer.requests[3:]] == [(1, first[5]), (3, "u4")]


@timed
async def test_a_connection_going_away_is_closed_after_its_last_answer(
        tmp_path: Path) -> None:
    """GOAWAY naming the open call as processed, then its answer: the call
    succeeds and the client closes the connection then (nothing more will
    use it), without waiting for a next call or the server."""
    async def handler(conn: PeerConnection, request: Request) -> None:
        conn.send_raw(GoAwayFrame(0, last_stream_id=request.stream_id,
                                  error_code=ErrorCodes.NO_ERROR))
        conn.respond(request)

    async with Peer(tmp_path / "s.sock", handler) as peer, _client(tmp_path) as client:
        assert (await client.append("alice", b"x")).uid == 1
        await peer.until(lambda: peer.connections[0].lost.is_set())
        assert client.stats.failovers == 0


@pytest.mark.parametrize("when", ["before-answering", "after-headers", "mid-message"])
@timed
async def test_the_server_drops_the_connection_mid_call(tmp_path: Path, when: str) -> None:
    """The connection closed abruptly while a call waits for its answer:
    the call fails as a broken connection (not a hang), and the next call
    connects again."""
    async def handler(conn: PeerConnection, request: Request) -> None:
        if conn is not conn.peer.connections[0]:
            conn.respond(request)
            return
        if when != "before-answering":
            conn.h2.send_headers(request.stream_id, RESPONSE_HEADERS)
        if when == "mid-message":
            conn.h2.send_data(request.stream_id, length_prefixed(reply_to(request))[:8])
        conn.flush()
        conn.abort()

    async with Peer(tmp_path / "s.sock", handler) as peer, _client(tmp_path) as client:
        with pytest.raises(errors.ConnectionReset) as failed:
            await client.append("alice", b"x")
        assert failed.value.request_sent
        assert (await client.append("alice", b"x")).uid == 1
    assert len(peer.connections) == 2 and len(peer.requests) == 2


def _violations(sid: int) -> dict[str, list[Frame | bytes]]:
    """Frames that break HTTP/2, sent while the call on ``sid`` waits."""
    status_200 = b"\x88"  # HPACK: :status 200, from the static table
    return {
        "data-on-a-stream-never-opened": [DataFrame(sid + 98, b"x")],
        "data-on-a-server-stream": [DataFrame(2, b"x")],
        "ping-of-seven-bytes": [b"\x00\x00\x07\x06\x00" + bytes(4) + b"1234567"],
        "settings-of-five-bytes": [b"\x00\x00\x05\x04\x00" + bytes(4) + b"12345"],
        "frame-above-max-frame-size": [b"\x00\x40\x01\x00\x00" + sid.to_bytes(4, "big")
                                       + bytes(16385)],
        "window-update-of-zero": [b"\x00\x00\x04\x08\x00" + bytes(4) + bytes(4)],
        "headers-on-stream-zero": [b"\x00\x00\x01\x01\x04" + bytes(4) + status_200],
        "continuation-without-headers": [ContinuationFrame(sid, status_200,
                                                           flags=["END_HEADERS"])],
        "data-inside-a-header-block": [HeadersFrame(sid, status_200), DataFrame(sid, b"x")],
        "bad-hpack-index": [HeadersFrame(sid, b"\xff\xff\xff\xff\x0f",
                                         flags=["END_HEADERS"])],
        "bad-padding": [b"\x00\x00\x03\x00\x08" + sid.to_bytes(4, "big") + b"\x05ab"],
    }


@pytest.mark.parametrize("violation", list(_violations(1)))
@timed
async def test_a_protocol_violation_by_the_server(tmp_path: Path, violation: str) -> None:
    """A frame that breaks HTTP/2 while a call waits: the call fails as a
    broken connection (no hang, nothing unhandled), the client says GOAWAY
    with an error code and closes, and the next call connects again."""
    async def handler(conn: PeerConnection, request: Request) -> None:
        if conn is not conn.peer.connections[0]:
            conn.respond(request)
            return
        conn.send_raw(*_violations(request.stream_id)[violation])

    async with Peer(tmp_path / "s.sock", handler) as peer, _client(tmp_path) as client:
        with pytest.raises(errors.ConnectionReset):
            await client.append("alice", b"x")
        first = peer.connections[0]
        await first.lost.wait()
        assert (await client.append("bob", b"x")).uid == 1
    goaway = first.of(ConnectionTerminated)
    assert len(goaway) == 1 and goaway[0].error_code != ErrorCodes.NO_ERROR
    assert len(peer.connections) == 2 and [r.user for r in peer.requests] == ["alice", "bob"]


# --- what the client sends ----------------------------------------------------------------


@timed
async def test_the_request_as_the_server_sees_it(tmp_path: Path) -> None:
    """The request headers of a gRPC call (pseudo-headers first, te,
    content-type, grpc-timeout, the metadata) on a HEADERS frame without
    END_STREAM, then the message, ending the stream with its last DATA."""
    async with Peer(tmp_path / "s.sock") as peer, _client(tmp_path, timeout=30.0) as client:
        await client.append("alice", b"hello")
    request = peer.requests[0]
    names = [name for name, _ in request.headers]
    assert names[:4] == [b":method", b":scheme", b":path", b":authority"]
    assert not any(name.startswith(b":") for name in names[4:])
    assert request.header(b":method") == b"POST" and request.header(b":scheme") == b"http"
    assert request.header(b":path") == APPEND_PATH
    assert request.header(b"te") == b"trailers"
    assert request.header(b"content-type") == b"application/grpc"
    assert re.fullmatch(rb"\d{1,8}[HMSmun]", request.header(b"grpc-timeout") or b"")
    assert request.header(b"client-version") == b"0.12.1"
    assert request.message.data == b"hello" and request.user == "alice"
    events = [e for e in peer.conn.events if getattr(e, "stream_id", None) == 1]
    kinds = [type(e) for e in events]
    assert isinstance(events[0], RequestReceived) and events[0].stream_ended is None
    assert kinds[-1] is StreamEnded and kinds[-2] is DataReceived


@timed
async def test_a_call_past_its_deadline_is_reset_with_cancel(tmp_path: Path) -> None:
    """A call whose deadline passes sends RST_STREAM (CANCEL) on its stream
    only: the connection carries the next call."""
    async def handler(conn: PeerConnection, request: Request) -> None:
        if request.user == "slow":
            return  # never answered
        conn.respond(request)

    async with Peer(tmp_path / "s.sock", handler) as peer, _client(tmp_path) as client:
        with pytest.raises(errors.DeadlineExceeded):
            await client.append("slow", b"x", timeout=0.2)
        await peer.until(lambda: bool(peer.conn.of(StreamReset)))
        assert (await client.append("bob", b"x")).uid == 3
    resets = peer.conn.of(StreamReset)
    assert [(e.stream_id, e.error_code) for e in resets] == [(1, ErrorCodes.CANCEL)]
    assert len(peer.connections) == 1 and not peer.conn.of(ConnectionTerminated)
