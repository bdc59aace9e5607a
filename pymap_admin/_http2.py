"""The client side of HTTP/2 (RFC 9113) that unary gRPC calls need, sans I/O.

:class:`Http2Client` turns what the server sent into calls of a few hooks
and queues what we send as bytes; the channel (:mod:`pymap_admin._channel`)
moves the bytes and turns the hooks into the ends of calls. HPACK is the
``hpack`` library's.

Why not h2: under pymap-deliver's load, h2 spent more CPU per call than all
of the rest of the client (an event object per frame, a stream state
machine of generality this client never uses, frames formatted for a trace
log nobody reads). A unary call is three frames each way; this module reads
them with one ``struct`` unpack each and calls the hook directly.

What it does, as the RFC asks of a client:

- the preface and our SETTINGS (no push, a 4 MiB initial window), and an
  acknowledgement of every SETTINGS of the server's, applying them: header
  table size (to our HPACK encoder), concurrent streams, initial window
  size (to every open stream), frame size;
- flow control both ways: what we send stays within the connection's and
  the stream's windows and the server's frame size; what we receive is
  counted against ours and given back in WINDOW_UPDATE frames at half a
  window; a server overrunning our connection window is a
  FLOW_CONTROL_ERROR;
- header blocks over HEADERS and CONTINUATION frames, padding and
  priority fields skipped, every block decoded (also for a stream we
  dropped: HPACK state is the connection's), informational (1xx) answers
  skipped;
- PING answered, PRIORITY and unknown frame types ignored, frames on a
  stream we closed ignored (their DATA still counted);
- a protocol violation by the server (a frame too long or malformed, a
  stream we never opened, PUSH_PROMISE, which our SETTINGS forbid, an
  HPACK error) ends the connection with GOAWAY and the error code:
  :class:`Http2Error` is raised to the caller of :meth:`Http2Client.receive`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from hpack import Decoder, Encoder
from hpack.exceptions import HPACKError

__all__ = ["Http2Client", "Http2Error", "Stream", "TooManyStreams"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types.
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

# Flags.
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# Settings.
HEADER_TABLE_SIZE = 0x1
ENABLE_PUSH = 0x2
MAX_CONCURRENT_STREAMS = 0x3
INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME_SIZE = 0x5
MAX_HEADER_LIST_SIZE = 0x6

# Error codes.
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
FLOW_CONTROL_ERROR = 0x3
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

ERROR_NAMES = {
    0x0: "NO_ERROR", 0x1: "PROTOCOL_ERROR", 0x2: "INTERNAL_ERROR",
    0x3: "FLOW_CONTROL_ERROR", 0x4: "SETTINGS_TIMEOUT", 0x5: "STREAM_CLOSED",
    0x6: "FRAME_SIZE_ERROR", 0x7: "REFUSED_STREAM", 0x8: "CANCEL",
    0x9: "COMPRESSION_ERROR", 0xA: "CONNECT_ERROR", 0xB: "ENHANCE_YOUR_CALM",
    0xC: "INADEQUATE_SECURITY", 0xD: "HTTP_1_1_REQUIRED",
}

#: Length and type in one word, then flags and stream id.
_HEAD = struct.Struct(">IBI")
_SETTING = struct.Struct(">HI")
_WORD = struct.Struct(">I")
_TWO_WORDS = struct.Struct(">II")

_DEFAULT_WINDOW = 65_535
_MAX_WINDOW = 2**31 - 1
_MAX_STREAM_ID = 2**31 - 1
#: The frame size we accept: the default, which we do not raise.
_MAX_FRAME = 16_384
#: Our receive windows, connection and stream (grpclib's default).
WINDOW = 4 * 1024 * 1024
#: A header block spread over CONTINUATION frames may not grow past this
#: (a server that never ends one would otherwise fill memory).
_MAX_HEADER_BLOCK = 256 * 1024


def error_name(code: int) -> str:
    return ERROR_NAMES.get(code, f"0x{code:x}")


class Http2Error(Exception):
    """The server broke HTTP/2: the connection is over (GOAWAY is queued)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"HTTP/2 {error_name(code)}: {reason}")
        self.code = code


class TooManyStreams(Exception):
    """The server's limit of concurrent streams is reached: wait for one to end."""


class Stream:
    """One stream of ours: what the server sent on it, and its windows."""

    __slots__ = ("data", "headers", "local_ended", "remote_ended", "send_window",
                 "trailers", "unacked")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] | None = None
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.data = bytearray()
        self.send_window = 0
        #: Received bytes not yet given back in a WINDOW_UPDATE.
        self.unacked = 0
        self.local_ended = False
        self.remote_ended = False


S = TypeVar("S", bound=Stream)


class Http2Client(Generic[S]):
    """One HTTP/2 connection, client side, without I/O.

    Subclasses get the hooks (``on_...``), called while :meth:`receive`
    runs; what is to be sent collects in :attr:`output` until taken."""

    def __init__(self, encoder: Encoder | None = None) -> None:
        self.encoder = encoder if encoder is not None else Encoder()
        self.decoder = Decoder()
        #: Frames to send, in order (bytes-like pieces).
        self.output: list[Any] = []
        #: Bytes of DATA payload in :attr:`output`.
        self.output_data = 0
        #: Our streams not yet closed, by id.
        self.streams: dict[int, S] = {}
        self.next_stream_id = 1
        self.send_window = _DEFAULT_WINDOW
        self.peer_initial_window = _DEFAULT_WINDOW
        self.peer_max_frame = 16_384
        #: Unbounded by default, but until the server's SETTINGS say so,
        #: as many as grpclib's server (pymap's) allows: the first calls
        #: are often started before its SETTINGS have arrived.
        self.peer_max_streams = 100
        self._peer_settings_seen = False
        self._recv_window = _DEFAULT_WINDOW
        self._recv_unacked = 0
        self._pending = b""
        #: The stream whose header block continues in CONTINUATION frames.
        self._continuing = 0
        self._block = bytearray()
        self._block_ends_stream = False
        self._handlers: dict[int, Callable[[int, int, bytes, int, int], None]] = {
            DATA: self._data, HEADERS: self._headers, WINDOW_UPDATE: self._window_update,
            SETTINGS: self._settings, PING: self._ping, RST_STREAM: self._rst_stream,
            GOAWAY: self._goaway, CONTINUATION: self._continuation,
            PUSH_PROMISE: self._push_promise,
        }

    # -- sending -------------------------------------------------------------

    def _frame(self, kind: int, flags: int, stream_id: int, payload: Any) -> None:
        out = self.output
        out.append(_HEAD.pack(len(payload) << 8 | kind, flags, stream_id))
        out.append(payload)

    def initiate(self) -> None:
        """The preface, our SETTINGS and our connection window."""
        self.output.append(PREFACE)
        self._frame(SETTINGS, 0, 0, b"".join(
            _SETTING.pack(code, value) for code, value in (
                (ENABLE_PUSH, 0), (MAX_CONCURRENT_STREAMS, 0),
                (INITIAL_WINDOW_SIZE, WINDOW),
                # What our HPACK decoder enforces, said.
                (MAX_HEADER_LIST_SIZE, self.decoder.max_header_list_size))))
        self._frame(WINDOW_UPDATE, 0, 0, _WORD.pack(WINDOW - _DEFAULT_WINDOW))
        self._recv_window = WINDOW

    def open_stream(self, stream: S, headers: Any) -> int:
        """Send a request's headers on a new stream; its id.

        Raises :class:`TooManyStreams` at the server's limit and
        :class:`Http2Error` when stream ids are used up (nothing is sent
        then)."""
        if len(self.streams) >= self.peer_max_streams:
            raise TooManyStreams
        stream_id = self.next_stream_id
        if stream_id > _MAX_STREAM_ID:
            raise Http2Error(NO_ERROR, "stream ids used up")
        self.next_stream_id = stream_id + 2
        block = self.encoder.encode(headers)
        size = self.peer_max_frame
        if len(block) <= size:
            self._frame(HEADERS, END_HEADERS, stream_id, block)
        else:
            view = memoryview(block)
            self._frame(HEADERS, 0, stream_id, view[:size])
            for start in range(size, len(view), size):
                last = start + size >= len(view)
                self._frame(CONTINUATION, END_HEADERS if last else 0, stream_id,
                            view[start:start + size])
        stream.send_window = self.peer_initial_window
        self.streams[stream_id] = stream
        return stream_id

    def sendable(self, stream: S) -> int:
        """How much of a message may go in the next DATA frame."""
        return min(self.send_window, stream.send_window, self.peer_max_frame)

    def send_data(self, stream_id: int, stream: S, data: Any, *, end: bool) -> None:
        """One DATA frame; the caller keeps it within :meth:`sendable`."""
        size = len(data)
        self.send_window -= size
        stream.send_window -= size
        self.output_data += size
        if end:
            stream.local_ended = True
            if stream.remote_ended:
                del self.streams[stream_id]
        self._frame(DATA, END_STREAM if end else 0, stream_id, data)

    def reset_stream(self, stream_id: int, code: int = CANCEL) -> bool:
        """RST_STREAM for a stream of ours that is not closed yet; whether
        it was sent."""
        if self.streams.pop(stream_id, None) is None:
            return False
        self._frame(RST_STREAM, 0, stream_id, _WORD.pack(code))
        return True

    def goaway(self, code: int) -> None:
        # The server opens no streams: the last one we processed is 0.
        self._frame(GOAWAY, 0, 0, _TWO_WORDS.pack(0, code))

    def take_output(self) -> bytes:
        data = b"".join(self.output)
        self.output.clear()
        self.output_data = 0
        return data

    # -- hooks -------------------------------------------------------------

    def on_stream_ended(self, stream_id: int, stream: S) -> None:
        """The server ended a stream: its answer is whole."""

    def on_stream_reset(self, stream_id: int, stream: S, code: int) -> None:
        """The server reset a stream (RST_STREAM), or broke its protocol."""

    def on_window(self) -> None:
        """A send window grew, or the settings changed: senders may go on."""

    def on_goaway(self, code: int, unprocessed: list[S]) -> None:
        """The server will start no new stream. ``unprocessed`` are ours
        above its last stream id, which it did not and will not act on
        (closed here: they may be sent again elsewhere)."""

    # -- receiving -------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Read what the server sent, calling the hooks as frames complete.

        Raises :class:`Http2Error` for a protocol violation (its GOAWAY is
        queued); the connection is then unusable."""
        if self._pending:
            data = self._pending + data
        end = len(data)
        pos = 0
        head = _HEAD.unpack_from
        while end - pos >= 9:
            word, flags, stream_id = head(data, pos)
            length = word >> 8
            if length > _MAX_FRAME:
                self._fail(FRAME_SIZE_ERROR, f"a frame of {length} bytes")
            start = pos + 9
            stop = start + length
            if stop > end:
                break
            pos = stop
            kind = word & 0xFF
            stream_id &= _MAX_STREAM_ID
            if self._continuing and kind != CONTINUATION:
                self._fail(PROTOCOL_ERROR, "a header block left unfinished")
            handler = self._handlers.get(kind)
            if handler is not None:
                handler(stream_id, flags, data, start, stop)
            # PRIORITY and unknown types: ignored, as the RFC says.
        self._pending = data[pos:] if pos < end else b""

    def _fail(self, code: int, reason: str) -> None:
        self.goaway(code)
        self._pending = b""
        raise Http2Error(code, reason)

    def _known(self, stream_id: int) -> S | None:
        """The open stream, or None for one we closed; a stream we never
        opened (or stream 0) is the server's error."""
        stream = self.streams.get(stream_id)
        if stream is None and (stream_id >= self.next_stream_id or not stream_id & 1):
            self._fail(PROTOCOL_ERROR, f"a frame on stream {stream_id}, which we did not open")
        return stream

    def _unpadded(self, data: bytes, start: int, stop: int) -> int:
        """The end of the payload without its padding (the pad length byte
        is at ``start``)."""
        if start >= stop:
            self._fail(PROTOCOL_ERROR, "padding longer than its frame")
        stop -= data[start]
        if stop <= start:
            self._fail(PROTOCOL_ERROR, "padding longer than its frame")
        return stop

    def _data(self, stream_id: int, flags: int, data: bytes, start: int, stop: int) -> None:
        size = stop - start
        # Counted against the connection window whatever the stream.
        self._recv_window -= size
        if self._recv_window < 0:
            self._fail(FLOW_CONTROL_ERROR, "DATA beyond our connection window")
        self._recv_unacked += size
        if self._recv_unacked >= WINDOW // 2:
            self._frame(WINDOW_UPDATE, 0, 0, _WORD.pack(self._recv_unacked))
            self._recv_window += self._recv_unacked
            self._recv_unacked = 0
        if stream_id == 0:
            self._fail(PROTOCOL_ERROR, "DATA on stream 0")
        if flags & PADDED:
            stop = self._unpadded(data, start, stop)
            start += 1
        stream = self._known(stream_id)
        if stream is None or stream.remote_ended:
            return
        if stream.headers is None:
            self._stream_error(stream_id, stream, PROTOCOL_ERROR)
            return
        stream.data += memoryview(data)[start:stop]
        if flags & END_STREAM:
            self._remote_end(stream_id, stream)
            return
        stream.unacked += size
        if stream.unacked >= WINDOW // 2:
            self._frame(WINDOW_UPDATE, 0, stream_id, _WORD.pack(stream.unacked))
            stream.unacked = 0

    def _headers(self, stream_id: int, flags: int, data: bytes, start: int, stop: int) -> None:
        if stream_id == 0:
            self._fail(PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & PADDED:
            stop = self._unpadded(data, start, stop)
            start += 1
        if flags & PRIORITY_FLAG:
            start += 5
            if start > stop:
                self._fail(FRAME_SIZE_ERROR, "HEADERS shorter than its priority fields")
        if flags & END_HEADERS:
            self._header_block(stream_id, bool(flags & END_STREAM), data[start:stop])
        else:
            self._continuing = stream_id
            self._block = bytearray(data[start:stop])
            self._block_ends_stream = bool(flags & END_STREAM)

    def _continuation(self, stream_id: int, flags: int, data: bytes, start: int,
                      stop: int) -> None:
        if not self._continuing or stream_id != self._continuing:
            self._fail(PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        self._block += data[start:stop]
        if len(self._block) > _MAX_HEADER_BLOCK:
            self._fail(ENHANCE_YOUR_CALM, "a header block without end")
        if flags & END_HEADERS:
            self._continuing = 0
            block, self._block = bytes(self._block), bytearray()
            self._header_block(stream_id, self._block_ends_stream, block)

    def _header_block(self, stream_id: int, ends_stream: bool, block: bytes) -> None:
        try:
            headers: Any = self.decoder.decode(block, raw=True)
        except HPACKError as exc:
            self._fail(COMPRESSION_ERROR, f"a header block HPACK cannot decode: {exc}")
        stream = self._known(stream_id)
        if stream is None or stream.remote_ended:
            return
        if stream.headers is None:
            if headers and headers[0][0] == b":status" and headers[0][1][:1] == b"1" \
                    and not ends_stream:
                return  # informational: the answer's headers come later
            stream.headers = headers
        elif ends_stream:
            stream.trailers = headers
        else:
            self._stream_error(stream_id, stream, PROTOCOL_ERROR)
            return
        if ends_stream:
            self._remote_end(stream_id, stream)

    def _remote_end(self, stream_id: int, stream: S) -> None:
        stream.remote_ended = True
        if stream.local_ended:
            del self.streams[stream_id]
        self.on_stream_ended(stream_id, stream)

    def _stream_error(self, stream_id: int, stream: S, code: int) -> None:
        self.reset_stream(stream_id, code)
        self.on_stream_reset(stream_id, stream, code)

    def _window_update(self, stream_id: int, flags: int, data: bytes, start: int,
                       stop: int) -> None:
        if stop - start != 4:
            self._fail(FRAME_SIZE_ERROR, "WINDOW_UPDATE not of 4 bytes")
        increment = _WORD.unpack_from(data, start)[0] & _MAX_WINDOW
        if stream_id == 0:
            if not increment:
                self._fail(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > _MAX_WINDOW:
                self._fail(FLOW_CONTROL_ERROR, "the connection window beyond 2^31-1")
        else:
            stream = self._known(stream_id)
            if stream is None:
                return
            if not increment:
                self._stream_error(stream_id, stream, PROTOCOL_ERROR)
                return
            stream.send_window += increment
            if stream.send_window > _MAX_WINDOW:
                self._stream_error(stream_id, stream, FLOW_CONTROL_ERROR)
                return
        self.on_window()

    def _settings(self, stream_id: int, flags: int, data: bytes, start: int,
                  stop: int) -> None:
        if stream_id:
            self._fail(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if stop != start:
                self._fail(FRAME_SIZE_ERROR, "a SETTINGS acknowledgement with a payload")
            return
        if (stop - start) % 6:
            self._fail(FRAME_SIZE_ERROR, "SETTINGS not a multiple of 6 bytes")
        if not self._peer_settings_seen:
            self._peer_settings_seen = True
            self.peer_max_streams = 2**31
        for offset in range(start, stop, 6):
            code, value = _SETTING.unpack_from(data, offset)
            if code == HEADER_TABLE_SIZE:
                # Only a change: hpack forgets a pending size update when
                # told the same size again.
                if value != self.encoder.header_table_size:
                    self.encoder.header_table_size = value
            elif code == MAX_CONCURRENT_STREAMS:
                self.peer_max_streams = value
            elif code == INITIAL_WINDOW_SIZE:
                if value > _MAX_WINDOW:
                    self._fail(FLOW_CONTROL_ERROR, "an initial window beyond 2^31-1")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > _MAX_WINDOW:
                        self._fail(FLOW_CONTROL_ERROR, "a stream window beyond 2^31-1")
            elif code == MAX_FRAME_SIZE:
                if not 16_384 <= value <= 2**24 - 1:
                    self._fail(PROTOCOL_ERROR, f"a frame size of {value}")
                self.peer_max_frame = value
            # ENABLE_PUSH, MAX_HEADER_LIST_SIZE (advisory) and unknown
            # settings: nothing to do.
        self._frame(SETTINGS, ACK, 0, b"")
        self.on_window()

    def _ping(self, stream_id: int, flags: int, data: bytes, start: int, stop: int) -> None:
        if stream_id:
            self._fail(PROTOCOL_ERROR, "PING on a stream")
        if stop - start != 8:
            self._fail(FRAME_SIZE_ERROR, "PING not of 8 bytes")
        if not flags & ACK:
            self._frame(PING, ACK, 0, data[start:stop])

    def _push_promise(self, stream_id: int, flags: int, data: bytes, start: int,
                      stop: int) -> None:
        self._fail(PROTOCOL_ERROR, "PUSH_PROMISE, which our SETTINGS forbid")

    def _rst_stream(self, stream_id: int, flags: int, data: bytes, start: int,
                    stop: int) -> None:
        if stream_id == 0:
            self._fail(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if stop - start != 4:
            self._fail(FRAME_SIZE_ERROR, "RST_STREAM not of 4 bytes")
        stream = self._known(stream_id)
        if stream is None:
            return
        del self.streams[stream_id]
        self.on_stream_reset(stream_id, stream, _WORD.unpack_from(data, start)[0])

    def _goaway(self, stream_id: int, flags: int, data: bytes, start: int,
                stop: int) -> None:
        if stream_id:
            self._fail(PROTOCOL_ERROR, "GOAWAY on a stream")
        if stop - start < 8:
            self._fail(FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
        last, code = _TWO_WORDS.unpack_from(data, start)
        last &= _MAX_STREAM_ID
        unprocessed = [stream_id for stream_id in self.streams if stream_id > last]
        if unprocessed:
            self._unqueue(set(unprocessed))
        self.on_goaway(code, [self.streams.pop(stream_id) for stream_id in unprocessed])

    def _unqueue(self, stream_ids: set[int]) -> None:
        """Take the frames of streams the server will not process out of
        what is still to be sent: they may be sent again elsewhere, and the
        server must not see them here as well. (Their header blocks are the
        last encoded: no new stream follows a GOAWAY, so HPACK stays in step.)"""
        kept: list[Any] = []
        pieces = iter(self.output)
        for head in pieces:
            if head is PREFACE:
                kept.append(head)
                continue
            payload = next(pieces)
            word, _, stream_id = _HEAD.unpack(head)
            if stream_id in stream_ids:
                if word & 0xFF == DATA:
                    self.output_data -= len(payload)
                    self.send_window += len(payload)
                continue
            kept += (head, payload)
        self.output[:] = kept
