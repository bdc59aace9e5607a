"""A lean gRPC channel for unary calls: one HTTP/2 connection per server.

Profiled under pymap-deliver's load, a small grpclib call spent about as
much CPU in grpclib's own layers (a stream object with deadline wrappers,
metadata multidicts, dispatch events, several tasks' worth of awaits per
call) as in h2, and h2 as much again. This channel does without both:
HTTP/2 is :mod:`pymap_admin._http2` (framing, flow control, HPACK through
the ``hpack`` library), and the rest is one :class:`asyncio.Protocol` per
connection and one future per call.

It stands in for grpclib's ``Channel`` under the generated stubs: it has
``request()``, which ``UnaryUnaryMethod.open`` and ``__call__`` use, for
unary-unary methods (the only kind the admin API has), and it raises
grpclib's exceptions (``GRPCError``, ``StreamTerminatedError``), so errors
are still mapped in one place, :mod:`pymap_admin.errors`.

On the wire, as gRPC over HTTP/2 requires:

- the request headers (``:method``, ``:scheme``, ``:path``,
  ``:authority``, ``te: trailers``, ``content-type``, ``grpc-timeout``
  from the deadline) and the metadata, then the message as one
  length-prefixed gRPC frame, sent within the peer's flow-control windows
  and frame size, and paused while the socket's write buffer is full;
- writes made in one turn of the event loop (a call's HEADERS and DATA,
  and every other call started in that turn) leave in one ``send``;
- the answer's ``:status``, ``content-type`` and ``grpc-status`` /
  ``grpc-message`` / ``grpc-status-details-bin``, from the trailers or a
  trailers-only response;
- RST_STREAM (CANCEL) for a call abandoned before its answer (deadline,
  cancellation);
- GOAWAY: no new call on that connection (the next one opens a new
  connection); calls above the server's last stream id fail with
  :class:`UnprocessedStream` (so does a stream the server refused), which
  the pool sends again; the others are answered; a lost connection fails
  every call on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import select
import socket
import ssl as _ssl
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from grpclib.const import Status
from grpclib.encoding.base import CodecBase, StatusDetailsCodecBase
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from hpack import Encoder

from ._http2 import (
    CANCEL,
    REFUSED_STREAM,
    Http2Client,
    Http2Error,
    Stream,
    TooManyStreams,
    error_name,
)

__all__ = ["H2Channel", "UnprocessedStream"]

#: What a poll reports when the server has hung up or the socket failed.
_HANGUP = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0)
#: Buffered writes above this many bytes go out at once rather than at the
#: end of the loop turn (a large message is not held whole to be joined).
_FLUSH_LIMIT = 64 * 1024
_CONTENT_TYPE = b"application/grpc"
#: HTTP status to gRPC status (the gRPC HTTP/2 mapping), for an answer
#: that is not 200.
_HTTP_STATUS = {
    b"400": Status.INTERNAL, b"401": Status.UNAUTHENTICATED,
    b"403": Status.PERMISSION_DENIED, b"404": Status.UNIMPLEMENTED,
    b"429": Status.UNAVAILABLE, b"502": Status.UNAVAILABLE,
    b"503": Status.UNAVAILABLE, b"504": Status.UNAVAILABLE,
}

class _IndexedBlocks(Encoder):
    """An HPACK encoder that remembers header blocks made only of table
    indexes.

    A call's headers are the same few values again and again (the path,
    the authority, each user's narrowed token for its time window): once in
    the table, each is encoded as its index, and encoding them once more
    gives the same bytes for as long as the table is unchanged. Any
    insertion, eviction or size change is a new table state, and a block
    is reused only in the state it was made in.
    """

    def __init__(self) -> None:
        super().__init__()
        self._inserts = 0
        self._blocks: dict[tuple[Any, ...], tuple[tuple[int, int, int], bytes]] = {}
        add = self.header_table.add

        def counting_add(name: bytes, value: bytes) -> None:
            self._inserts += 1
            add(name, value)

        self.header_table.add = counting_add  # type: ignore[method-assign]

    def _state(self) -> tuple[int, int, int]:
        table = self.header_table
        return (self._inserts, len(table.dynamic_entries), table.maxsize)

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        key = tuple(headers)
        state = self._state()
        resized = self.header_table.resized
        cached = self._blocks.get(key)
        if cached is not None and cached[0] == state and not resized:
            self.reused += 1
            return cached[1]
        block: bytes = super().encode(key, huffman)
        if not resized and self._state() == state:
            if len(self._blocks) >= 256:
                self._blocks.clear()
            self._blocks[key] = (state, block)
        return block

    #: Blocks sent again without encoding (a test reads it).
    reused = 0


@lru_cache(maxsize=64)
def _whole_seconds(seconds: int) -> bytes:
    return f"{seconds}S".encode()


def _timeout_header(timeout: float) -> bytes:
    """``grpc-timeout`` in whole seconds, rounded up: the same value call
    after call, so that HPACK sends it as one index instead of adding a new
    entry to the server's table each time (which would push the tokens out
    of it). The client keeps the exact deadline and cancels the call
    (RST_STREAM) when it passes; the server's is only a bound."""
    return _whole_seconds(max(1, math.ceil(timeout)))


class UnprocessedStream(StreamTerminatedError):
    """The server says it did not act on the call: a stream above the last
    one its GOAWAY names, or one it refused (REFUSED_STREAM). RFC 9113
    (8.7) lets such a request be sent again, even though it was sent."""


class _Answer(Stream):
    """One call's stream: what the server sent, and the future of its end."""

    __slots__ = ("done", "window")

    def __init__(self, done: asyncio.Future[None]) -> None:
        super().__init__()
        self.done = done
        #: Set while the call waits for flow-control window to send more.
        self.window: asyncio.Future[None] | None = None

    def fail(self, error: Exception) -> None:
        for future in (self.done, self.window):
            if future is not None and not future.done():
                future.set_exception(error)
                # Marked retrieved: the call may have stopped waiting already.
                future.exception()

    def wake_sender(self) -> None:
        if self.window is not None and not self.window.done():
            self.window.set_result(None)


def _untouched(stream: _Answer) -> bool:
    """Nothing of an answer came on the stream: a server that says it did
    not process it is believed (one that answered and then says so is not)."""
    return stream.headers is None and not stream.data


class _Connection(Http2Client[_Answer], asyncio.Protocol):
    """One HTTP/2 connection: the socket's bytes through
    :class:`~pymap_admin._http2.Http2Client`, its streams' ends to calls."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(_IndexedBlocks())
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        #: Polled for a hang-up we have not read yet (None: no socket to poll).
        self._hangup_poller: select.poll | None = None
        #: Lost, or told by GOAWAY to start nothing new.
        self.lost = False
        self.going_away = False
        self._flush_scheduled = False
        self._writable: asyncio.Future[None] | None = None
        #: Calls waiting for a stream of ours to end (the server's limit).
        self._stream_waiters: list[asyncio.Future[None]] = []
        #: Writes asked for and sends made: tests and benchmarks read them.
        self.writes = 0
        self.sends = 0

    @property
    def usable(self) -> bool:
        return not self.lost and not self.going_away

    # -- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if sock is not None and hasattr(select, "poll"):
            self._hangup_poller = select.poll()
            self._hangup_poller.register(sock.fileno(), _HANGUP)
        self.initiate()
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            self.receive(data)
        except Http2Error as exc:
            # Its GOAWAY is queued: sent by close().
            self.going_away = True
            self._fail_all(str(exc))
            self._wake_stream_waiters()
            self.close()
            return
        if self.output:
            # PING and SETTINGS acknowledgements, window updates.
            self.flush()

    def pause_writing(self) -> None:
        self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.transport = None
        self._hangup_poller = None
        self._fail_all("Connection lost")
        self._wake_stream_waiters()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # -- Http2Client's hooks --------------------------------------------------

    def on_stream_ended(self, stream_id: int, stream: _Answer) -> None:
        if not stream.done.done():
            stream.done.set_result(None)
        stream.wake_sender()
        self._stream_closed()

    def on_stream_reset(self, stream_id: int, stream: _Answer, code: int) -> None:
        error = StreamTerminatedError
        if code == REFUSED_STREAM and _untouched(stream):
            error = UnprocessedStream
        stream.fail(error(f"Stream reset by remote party, error_code: {error_name(code)}"))
        self._stream_closed()

    def on_window(self) -> None:
        for stream in self.streams.values():
            stream.wake_sender()
        # SETTINGS may have raised the server's limit of streams.
        if self._stream_waiters:
            self._wake_stream_waiters()

    def on_goaway(self, code: int, unprocessed: list[_Answer]) -> None:
        self.going_away = True
        for stream in unprocessed:
            error = UnprocessedStream if _untouched(stream) else StreamTerminatedError
            stream.fail(error(
                f"Received GOAWAY frame, closing connection; error_code: {error_name(code)}"))
        self._wake_stream_waiters()
        if not self.streams:
            self.close()

    def _stream_closed(self) -> None:
        if self._stream_waiters:
            self._wake_stream_waiters()
        if self.going_away and not self.streams:
            # Its last call is over: nothing more will use it.
            self.close()

    # -- for the calls ----------------------------------------------------------------

    def _fail_all(self, reason: str) -> None:
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.fail(StreamTerminatedError(reason))

    def write_soon(self) -> None:
        """Send what is queued at the end of this loop turn (with whatever
        other calls add in it), or now when it is large."""
        self.writes += 1
        if self.output_data >= _FLUSH_LIMIT:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if not self.output:
            return
        data = self.take_output()
        if self.transport is not None and not self.transport.is_closing():
            self.sends += 1
            self.transport.write(data)

    async def stream_ended(self, timeout: float | None) -> None:
        """Wait until one of our streams ends (or the connection is lost)."""
        waiter = self.loop.create_future()
        self._stream_waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        finally:
            if waiter in self._stream_waiters:
                self._stream_waiters.remove(waiter)

    def _wake_stream_waiters(self) -> None:
        waiters, self._stream_waiters = self._stream_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def writable(self) -> None:
        if self._writable is not None:
            await self._writable

    def reset(self, stream_id: int) -> None:
        """Tell the server we gave up on a call (RST_STREAM, CANCEL), unless
        the stream is closed already."""
        if self.lost:
            self.streams.pop(stream_id, None)
            return
        if self.reset_stream(stream_id, CANCEL):
            self.write_soon()
        if self._stream_waiters:
            self._wake_stream_waiters()

    def peer_gone(self) -> bool:
        """True when the server closed its end and we did not notice yet
        (this loop was busy): a poll with no wait sees the hang-up."""
        poller, transport = self._hangup_poller, self.transport
        if poller is None or transport is None or transport.is_closing():
            return False  # not connected, or its fd may be closed already
        return any(events & _HANGUP for _, events in poller.poll(0))

    def close(self) -> None:
        if self.transport is not None:
            self.flush()
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _text(value: bytes) -> str:
    """A header value as text; a server's non-ASCII bytes shown, not raised."""
    return value.decode("ascii", "backslashreplace")


class _Call:
    """One unary call, shaped as grpclib's client ``Stream`` (the part of
    it the stubs and the pool use): ``async with``, ``send_message``,
    ``recv_message``."""

    __slots__ = ("_answer", "_channel", "_conn", "_deadline", "_finished", "_metadata",
                 "_path", "_reply_type", "_request_type", "_stream_id", "_timer")

    def __init__(self, channel: H2Channel, path: str, request_type: Any, reply_type: Any,
                 timeout: float | None, metadata: Mapping[str, str] | None) -> None:
        self._channel = channel
        self._path = path
        self._request_type = request_type
        self._reply_type = reply_type
        self._metadata = metadata
        self._deadline = None if timeout is None else channel.loop.time() + timeout
        self._conn: _Connection | None = None
        self._answer: _Answer | None = None
        self._stream_id = 0
        self._finished = False
        self._timer: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> _Call:
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if not self._finished and self._conn is not None and self._stream_id:
            self._conn.reset(self._stream_id)

    def _remaining(self) -> float | None:
        if self._deadline is None:
            return None
        remaining = self._deadline - self._channel.loop.time()
        if remaining <= 0:
            raise TimeoutError("deadline exceeded")
        return remaining

    def _expire(self) -> None:
        if self._answer is not None:
            self._answer.fail(TimeoutError("deadline exceeded"))

    async def send_message(self, message: Any, *, end: bool = False) -> None:
        channel = self._channel
        remaining = self._remaining()
        conn = channel.usable_connection()
        if conn is None:
            conn = await channel.connect(remaining)
            remaining = self._remaining()
        body = channel.codec.encode(message, self._request_type)
        frame = b"".join((b"\0", len(body).to_bytes(4, "big"), body))
        headers = channel.request_headers(self._path, remaining, self._metadata)
        answer = _Answer(channel.loop.create_future())
        while True:
            if conn._writable is not None:
                await conn.writable()
            if not conn.usable:
                # Lost (or told to go away) while we waited: nothing was sent.
                raise StreamTerminatedError("Connection lost")
            try:
                stream_id = conn.open_stream(answer, headers)
                break
            except TooManyStreams:
                # The server's limit of concurrent streams (pymap's is 100;
                # the daemon allows more calls in flight): wait for one of
                # ours to end, as grpclib does.
                await conn.stream_ended(self._remaining())
            except Http2Error as exc:
                # Stream ids used up: the next call opens a new connection.
                conn.going_away = True
                raise StreamTerminatedError(str(exc)) from exc
        self._conn = conn
        self._answer = answer
        self._stream_id = stream_id
        if self._deadline is not None:
            self._timer = channel.loop.call_at(self._deadline, self._expire)
        if len(frame) <= conn.sendable(answer):
            conn.send_data(stream_id, answer, frame, end=True)
            conn.write_soon()
        else:
            await self._send_in_windows(conn, stream_id, memoryview(frame))

    async def _send_in_windows(self, conn: _Connection, stream_id: int,
                               view: memoryview) -> None:
        answer = self._answer
        assert answer is not None
        while True:
            if conn.lost:
                raise StreamTerminatedError("Connection lost")
            if answer.done.done():
                error = answer.done.exception()
                if error is not None:
                    raise error
                # Answered before the whole request: the server needs no
                # more of it, and our side of the stream is closed.
                conn.reset(stream_id)
                return
            size = min(len(view), conn.sendable(answer))
            if size <= 0:
                answer.window = conn.loop.create_future()
                conn.write_soon()
                await answer.window
                answer.window = None
                continue
            last = size == len(view)
            conn.send_data(stream_id, answer, view[:size], end=last)
            conn.write_soon()
            if last:
                return
            view = view[size:]
            if conn._writable is not None:
                conn.flush()
                await conn.writable()

    async def recv_message(self) -> Any:
        answer = self._answer
        if answer is None:
            raise ProtocolError("Request was not sent yet")
        await answer.done
        self._finished = True
        headers = dict(answer.headers or ())
        status = headers.get(b":status")
        if status != b"200":
            raise GRPCError(_HTTP_STATUS.get(status or b"", Status.UNKNOWN),
                            f"Received :status = {_text(status or b'')!r}")
        content_type = headers.get(b"content-type")
        if content_type is None:
            raise GRPCError(Status.UNKNOWN, "Missing content-type header")
        if content_type != _CONTENT_TYPE and content_type != _CONTENT_TYPE + b"+proto":
            raise GRPCError(Status.UNKNOWN, f"Invalid content-type: {content_type!r}")
        if b"grpc-status" not in headers:
            headers = dict(answer.trailers or ())
        self._check_status(headers)
        data = answer.data
        if len(data) < 5:
            return None
        if data[0]:
            raise NotImplementedError("Compression not implemented")
        length = int.from_bytes(data[1:5], "big")
        if len(data) < 5 + length:
            raise ProtocolError("incomplete message")
        return self._channel.codec.decode(bytes(memoryview(data)[5:5 + length]),
                                          self._reply_type)

    def _check_status(self, headers: Mapping[bytes, bytes]) -> None:
        raw = headers.get(b"grpc-status")
        if raw is None:
            raise GRPCError(Status.UNKNOWN, "Missing grpc-status header")
        try:
            status = Status(int(raw))
        except ValueError:
            raise GRPCError(Status.UNKNOWN, f"Invalid grpc-status: {_text(raw)!r}") from None
        if status is Status.OK:
            return
        # Imported for an error only: grpclib.metadata loads multidict, ~10 ms
        # of every start of pymap-admin append.
        from grpclib.metadata import decode_bin_value, decode_grpc_message

        message = headers.get(b"grpc-message")
        text = decode_grpc_message(_text(message)) if message is not None else None
        details = None
        details_bin = headers.get(b"grpc-status-details-bin")
        codec = self._channel.status_details_codec
        if codec is not None and details_bin is not None:
            # Details only add to the status: unreadable ones are left out
            # rather than turning a clear error into a confusing one.
            with contextlib.suppress(Exception):
                details = codec.decode(status, text, decode_bin_value(details_bin))
        raise GRPCError(status, text, details)


class H2Channel:
    """A gRPC channel to one server (TCP, TLS or a UNIX socket) for unary
    calls, used through the generated stubs as grpclib's ``Channel`` is."""

    def __init__(self, host: str | None = None, port: int | None = None, *,
                 path: str | None = None, ssl: _ssl.SSLContext | None = None,
                 server_hostname: str | None = None, codec: CodecBase,
                 status_details_codec: StatusDetailsCodecBase | None = None) -> None:
        if path is not None and (host is not None or port is not None):
            raise ValueError("path excludes host and port")
        self._host = host or "127.0.0.1"
        self._port = port or 50051
        self._path = path
        self._ssl = ssl
        self._server_hostname = server_hostname
        self.codec = codec
        self.status_details_codec = status_details_codec
        self._scheme = b"https" if ssl is not None else b"http"
        host_text = self._host
        with contextlib.suppress(ValueError):
            host_text = f"[{ipaddress.IPv6Address(host_text)}]"
        self._authority = f"{host_text}:{self._port}".encode()
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # The headers every call sends after its own, and HPACK-friendly
        # bytes for each metadata pair seen (the same few, call after call).
        self._encoded: dict[tuple[str, str], tuple[bytes, bytes]] = {}

    def __repr__(self) -> str:
        where = self._path if self._path is not None else f"{self._host}:{self._port}"
        return f"<H2Channel {where}>"

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    @property
    def connection(self) -> _Connection | None:
        """The current connection (None before the first call)."""
        return self._connection

    # -- what the stubs call ------------------------------------------------------

    def request(self, name: str, cardinality: Any, request_type: Any, reply_type: Any, *,
                timeout: float | None = None,
                metadata: Mapping[str, str] | None = None) -> _Call:
        if cardinality.client_streaming or cardinality.server_streaming:
            raise NotImplementedError("H2Channel makes unary calls only")
        return _Call(self, name, request_type, reply_type, timeout, metadata)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    # -- connections ---------------------------------------------------------------------

    def usable_connection(self) -> _Connection | None:
        conn = self._connection
        return conn if conn is not None and conn.usable else None

    def drop_if_peer_gone(self) -> bool:
        """Abort the connection if the server has already closed its end
        (so the next call opens a new one instead of being written into a
        dead socket and failing after it was sent). True if it did."""
        conn = self.usable_connection()
        # A call already started in this loop turn (its send is pending)
        # looked: the answer holds until the loop reads from sockets again.
        if conn is None or conn._flush_scheduled or not conn.peer_gone():
            return False
        conn.lost = True
        conn.abort()
        self._connection = None
        return True

    async def connect(self, timeout: float | None) -> _Connection:
        """The usable connection, opened (once, for all callers) if need be."""
        if self._connecting is None:
            self._connecting = self.loop.create_future()
            try:
                conn = await asyncio.wait_for(self._open(), timeout)
            except BaseException as exc:
                waiters, self._connecting = self._connecting, None
                waiters.set_exception(exc if isinstance(exc, Exception) else
                                      ConnectionError("connect cancelled"))
                waiters.exception()  # retrieved: the other callers may be none
                raise
            self._connection = conn
            waiters, self._connecting = self._connecting, None
            waiters.set_result(conn)
            return conn
        return await asyncio.wait_for(asyncio.shield(self._connecting), timeout)

    async def _open(self) -> _Connection:
        loop = self.loop
        if self._connection is not None and not self._connection.lost:
            # Going away: its calls finish on it; new ones go to a new one.
            old = self._connection
            if not old.streams:
                old.close()
        if self._path is not None:
            _, protocol = await loop.create_unix_connection(
                lambda: _Connection(loop), self._path, ssl=self._ssl,
                server_hostname=self._server_hostname if self._ssl else None)
        else:
            _, protocol = await loop.create_connection(
                lambda: _Connection(loop), self._host, self._port, ssl=self._ssl,
                server_hostname=(self._server_hostname or self._host) if self._ssl else None)
        assert isinstance(protocol, _Connection)
        return protocol

    # -- requests ----------------------------------------------------------------------------

    def request_headers(self, path: str, timeout: float | None,
                        metadata: Mapping[str, str] | None) -> list[tuple[bytes, bytes]]:
        headers = [
            (b":method", b"POST"), (b":scheme", self._scheme), (b":path", path.encode()),
            (b":authority", self._authority),
        ]
        if timeout is not None:
            headers.append((b"grpc-timeout", _timeout_header(timeout)))
        headers += ((b"te", b"trailers"), (b"content-type", _CONTENT_TYPE))
        if metadata:
            headers += self._encode_metadata(metadata.items())
        return headers

    def _encode_metadata(self, items: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
        encoded = self._encoded
        out = []
        for item in items:
            pair = encoded.get(item)
            if pair is None:
                key, value = item
                if key != key.lower() or key.startswith(":") or key.endswith("-bin"):
                    raise ValueError(f"metadata key not supported: {key!r}")
                pair = (key.encode("ascii"), value.encode("ascii"))
                if len(encoded) > 1024:
                    encoded.clear()
                encoded[item] = pair
            out.append(pair)
        return out
