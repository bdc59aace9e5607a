"""pymap_admin._http2 without a socket: the frames a server could send,
byte for byte, and what the client sends back.

Each test builds the server's frames by hand (RFC 9113, section 4.1), so
they can be malformed on purpose; ``tests/test_channel.py`` and
``tests/test_channel_peer.py`` drive the same code through real sockets.
"""

from __future__ import annotations

import struct

import pytest
from hpack import Decoder, Encoder
from hypothesis import given, settings
from hypothesis import strategies as st

from pymap_admin import _http2 as h
from pymap_admin._http2 import Http2Client, Http2Error, Stream, TooManyStreams

Frame = tuple[int, int, int, bytes]
REQUEST = [(b":method", b"POST"), (b":path", b"/pymap.admin.grpc.Mailbox/Append")]


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">IBI", len(payload) << 8 | kind, flags, stream_id) + payload


def frames(data: bytes) -> list[Frame]:
    """Split what the client sent (after its preface) into frames."""
    if data.startswith(h.PREFACE):
        data = data[len(h.PREFACE):]
    out = []
    while data:
        word, flags, stream_id = struct.unpack_from(">IBI", data)
        length = word >> 8
        out.append((word & 0xFF, flags, stream_id, data[9:9 + length]))
        data = data[9 + length:]
    return out


class Recorder(Http2Client[Stream]):
    """Records the hooks' calls."""

    def __init__(self) -> None:
        super().__init__()
        self.ended: list[int] = []
        self.reset: list[tuple[int, int]] = []
        self.unprocessed: list[Stream] = []
        self.goaway_code: int | None = None

    def on_stream_ended(self, stream_id: int, stream: Stream) -> None:
        self.ended.append(stream_id)

    def on_stream_reset(self, stream_id: int, stream: Stream, code: int) -> None:
        self.reset.append((stream_id, code))

    def on_goaway(self, code: int, unprocessed: list[Stream]) -> None:
        self.goaway_code = code
        self.unprocessed = unprocessed


def connected(*, server_settings: bytes = b"") -> tuple[Recorder, Encoder]:
    """A client past its preface that has read the server's SETTINGS."""
    client = Recorder()
    client.initiate()
    client.receive(frame(h.SETTINGS, 0, 0, server_settings))
    client.take_output()
    return client, Encoder()


def open_stream(client: Recorder) -> tuple[int, Stream]:
    stream = Stream()
    stream_id = client.open_stream(stream, REQUEST)
    client.send_data(stream_id, stream, b"\0\0\0\0\0", end=True)
    client.take_output()
    return stream_id, stream


def answer(encoder: Encoder, stream_id: int, body: bytes = b"\0\0\0\0\2\x08\x01") -> bytes:
    return (frame(h.HEADERS, h.END_HEADERS, stream_id,
                  encoder.encode([(b":status", b"200"), (b"content-type", b"application/grpc")]))
            + frame(h.DATA, 0, stream_id, body)
            + frame(h.HEADERS, h.END_HEADERS | h.END_STREAM, stream_id,
                    encoder.encode([(b"grpc-status", b"0")])))


def assert_connection_error(client: Recorder, data: bytes, code: int) -> None:
    with pytest.raises(Http2Error) as raised:
        client.receive(data)
    assert raised.value.code == code
    kind, _, stream_id, payload = frames(client.take_output())[-1]
    assert (kind, stream_id) == (h.GOAWAY, 0)
    assert struct.unpack(">II", payload) == (0, code)


def test_the_client_opens_with_its_preface_settings_and_window() -> None:
    client = Recorder()
    client.initiate()
    data = client.take_output()
    assert data.startswith(h.PREFACE)
    (settings, window) = frames(data)
    assert settings[:3] == (h.SETTINGS, 0, 0)
    values = dict(struct.iter_unpack(">HI", settings[3]))
    assert values[h.ENABLE_PUSH] == 0 and values[h.INITIAL_WINDOW_SIZE] == h.WINDOW
    # The header list size our HPACK decoder enforces, said (as h2 did).
    assert values[h.MAX_HEADER_LIST_SIZE] == client.decoder.max_header_list_size == 65_536
    assert window[:3] == (h.WINDOW_UPDATE, 0, 0)
    assert struct.unpack(">I", window[3])[0] == h.WINDOW - 65_535


def test_an_answer_in_single_bytes_is_read_whole() -> None:
    client, encoder = connected()
    stream_id, stream = open_stream(client)
    for byte in answer(encoder, stream_id):
        client.receive(bytes([byte]))
    assert client.ended == [stream_id] and stream_id not in client.streams
    assert stream.headers is not None and (b":status", b"200") in stream.headers
    assert stream.trailers == [(b"grpc-status", b"0")]
    assert stream.data == b"\0\0\0\0\2\x08\x01"


def test_headers_over_continuation_padding_and_priority_are_read() -> None:
    client, encoder = connected()
    stream_id, stream = open_stream(client)
    block = encoder.encode([(b":status", b"200"), (b"x-long", b"v" * 40)])
    padded_priority = (bytes([3]) + b"\0\0\0\0\x10" + block[:10] + b"\0\0\0")
    client.receive(frame(h.HEADERS, h.PADDED | h.PRIORITY_FLAG, stream_id, padded_priority)
                   + frame(h.CONTINUATION, 0, stream_id, block[10:20])
                   + frame(h.CONTINUATION, h.END_HEADERS, stream_id, block[20:]))
    client.receive(frame(h.DATA, h.PADDED | h.END_STREAM, stream_id, b"\2ab\0\0"))
    assert stream.headers == [(b":status", b"200"), (b"x-long", b"v" * 40)]
    assert stream.data == b"ab" and client.ended == [stream_id]


def test_an_informational_answer_is_skipped() -> None:
    client, encoder = connected()
    stream_id, stream = open_stream(client)
    client.receive(frame(h.HEADERS, h.END_HEADERS, stream_id,
                         encoder.encode([(b":status", b"100")])) + answer(encoder, stream_id))
    assert stream.headers is not None and stream.headers[0] == (b":status", b"200")


def test_ping_and_settings_are_acknowledged_and_applied() -> None:
    client, _ = connected()
    _, stream = open_stream(client)
    assert stream.send_window == 65_535 - 5
    client.receive(frame(h.PING, 0, 0, b"12345678")
                   + frame(h.SETTINGS, 0, 0, struct.pack(
                       ">HIHIHIHI", h.INITIAL_WINDOW_SIZE, 1_000, h.MAX_FRAME_SIZE, 20_000,
                       h.HEADER_TABLE_SIZE, 0, h.MAX_CONCURRENT_STREAMS, 1))
                   + frame(h.PING, h.ACK, 0, b"ignored!"))
    sent = frames(client.take_output())
    assert sent == [(h.PING, h.ACK, 0, b"12345678"), (h.SETTINGS, h.ACK, 0, b"")]
    # The window of a stream already open moves by the difference.
    assert stream.send_window == 1_000 - 5
    assert client.peer_max_frame == 20_000 and client.encoder.header_table_size == 0
    with pytest.raises(TooManyStreams):
        client.open_stream(Stream(), REQUEST)


def test_until_the_servers_settings_arrive_100_streams_may_open() -> None:
    client = Recorder()
    client.initiate()
    for _ in range(100):
        client.open_stream(Stream(), REQUEST)
    with pytest.raises(TooManyStreams):
        client.open_stream(Stream(), REQUEST)
    # SETTINGS without a limit: none.
    client.receive(frame(h.SETTINGS, 0, 0))
    client.open_stream(Stream(), REQUEST)


def test_a_header_block_beyond_the_frame_size_goes_in_continuations() -> None:
    client, _ = connected()
    headers = [*REQUEST, (b"auth-token", b"t" * 40_000)]
    client.open_stream(Stream(), headers)
    sent = frames(client.take_output())
    kinds = [(kind, flags) for kind, flags, _, _ in sent]
    assert len(sent) >= 2 and kinds == [(h.HEADERS, 0)] + [(h.CONTINUATION, 0)] * (
        len(sent) - 2) + [(h.CONTINUATION, h.END_HEADERS)]
    assert all(len(payload) <= 16_384 for *_, payload in sent)
    decoded = Decoder().decode(b"".join(payload for *_, payload in sent), raw=True)
    assert list(decoded) == headers


def test_data_within_the_windows_and_frame_size() -> None:
    client, _ = connected(server_settings=struct.pack(">HI", h.INITIAL_WINDOW_SIZE, 100))
    stream = Stream()
    stream_id = client.open_stream(stream, REQUEST)
    assert client.sendable(stream) == 100
    client.send_data(stream_id, stream, b"x" * 100, end=False)
    assert client.sendable(stream) == 0
    client.receive(frame(h.WINDOW_UPDATE, 0, stream_id, struct.pack(">I", 50_000)))
    # Now the connection's window (65535 - 100) and the frame size bound it.
    assert client.sendable(stream) == 16_384
    client.receive(frame(h.WINDOW_UPDATE, 0, 0, struct.pack(">I", 1)))
    assert client.send_window == 65_535 - 100 + 1


def test_received_data_is_given_back_in_window_updates() -> None:
    client, encoder = connected()
    stream_id, stream = open_stream(client)
    client.receive(frame(h.HEADERS, h.END_HEADERS, stream_id,
                         encoder.encode([(b":status", b"200")])))
    chunk = frame(h.DATA, 0, stream_id, b"d" * 16_384)
    for _ in range(h.WINDOW // 2 // 16_384):
        assert not client.output
        client.receive(chunk)
    updates = frames(client.take_output())
    assert updates == [(h.WINDOW_UPDATE, 0, 0, struct.pack(">I", h.WINDOW // 2)),
                       (h.WINDOW_UPDATE, 0, stream_id, struct.pack(">I", h.WINDOW // 2))]
    assert len(stream.data) == h.WINDOW // 2


def test_data_on_a_stream_we_reset_is_ignored_but_counted() -> None:
    client, _ = connected()
    stream_id, _ = open_stream(client)
    assert client.reset_stream(stream_id)
    assert frames(client.take_output()) == [
        (h.RST_STREAM, 0, stream_id, struct.pack(">I", h.CANCEL))]
    assert not client.reset_stream(stream_id)  # closed: no second RST_STREAM
    chunk = frame(h.DATA, 0, stream_id, b"d" * 16_384)
    for _ in range(h.WINDOW // 2 // 16_384):
        client.receive(chunk)
    assert frames(client.take_output()) == [
        (h.WINDOW_UPDATE, 0, 0, struct.pack(">I", h.WINDOW // 2))]


def test_rst_stream_and_goaway_from_the_server() -> None:
    client, _ = connected()
    first, _ = open_stream(client)
    second, _ = open_stream(client)
    third, third_stream = open_stream(client)
    client.receive(frame(h.RST_STREAM, 0, first, struct.pack(">I", h.REFUSED_STREAM)))
    assert client.reset == [(first, h.REFUSED_STREAM)]
    client.receive(frame(h.GOAWAY, 0, 0, struct.pack(">II", second, 0) + b"debug"))
    assert client.goaway_code == 0 and client.unprocessed == [third_stream]
    assert list(client.streams) == [second] and third not in client.streams


@pytest.mark.parametrize(("data", "code"), [
    (frame(h.DATA, 0, 1, b"x" * 16_385), h.FRAME_SIZE_ERROR),
    (frame(h.PUSH_PROMISE, h.END_HEADERS, 1, b"\0\0\0\2"), h.PROTOCOL_ERROR),
    (frame(h.CONTINUATION, h.END_HEADERS, 1, b""), h.PROTOCOL_ERROR),
    (frame(h.HEADERS, 0, 1, b"") + frame(h.DATA, 0, 1, b"x"), h.PROTOCOL_ERROR),
    (frame(h.DATA, 0, 7, b"x"), h.PROTOCOL_ERROR),  # a stream never opened
    (frame(h.DATA, 0, 0, b"x"), h.PROTOCOL_ERROR),
    (frame(h.DATA, h.PADDED, 1, b"\5ab"), h.PROTOCOL_ERROR),
    (frame(h.HEADERS, h.END_HEADERS, 1, b"\xff\xff\xff\xff"), h.COMPRESSION_ERROR),
    (frame(h.SETTINGS, 0, 0, b"\0\4\0\0"), h.FRAME_SIZE_ERROR),
    (frame(h.SETTINGS, 0, 0, struct.pack(">HI", h.MAX_FRAME_SIZE, 100)), h.PROTOCOL_ERROR),
    (frame(h.SETTINGS, 0, 0, struct.pack(">HI", h.INITIAL_WINDOW_SIZE, 2**31)),
     h.FLOW_CONTROL_ERROR),
    (frame(h.PING, 0, 0, b"short"), h.FRAME_SIZE_ERROR),
    (frame(h.WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1)), h.FLOW_CONTROL_ERROR),
    (frame(h.WINDOW_UPDATE, 0, 0, struct.pack(">I", 0)), h.PROTOCOL_ERROR),
    (frame(h.GOAWAY, 0, 0, b"\0\0"), h.FRAME_SIZE_ERROR),
])
def test_a_protocol_violation_ends_the_connection(data: bytes, code: int) -> None:
    client, _ = connected()
    open_stream(client)  # stream 1
    assert_connection_error(client, data, code)


def test_data_beyond_our_connection_window_is_a_flow_control_error() -> None:
    """Before our WINDOW_UPDATE the connection window is the default 65,535
    bytes: a server that sends more has broken flow control."""
    client = Recorder()
    client.receive(frame(h.SETTINGS, 0, 0))
    stream_id = client.open_stream(Stream(), REQUEST)
    client.receive(frame(h.HEADERS, h.END_HEADERS, stream_id,
                         Encoder().encode([(b":status", b"200")])))
    chunk = frame(h.DATA, 0, stream_id, b"d" * 16_384)
    client.receive(chunk * 3 + frame(h.DATA, 0, stream_id, b"d" * (65_535 - 3 * 16_384)))
    assert_connection_error(client, frame(h.DATA, 0, stream_id, b"d"), h.FLOW_CONTROL_ERROR)


def test_stream_errors_reset_only_that_stream() -> None:
    client, encoder = connected()
    stream_id, _ = open_stream(client)
    other, _ = open_stream(client)
    # DATA before the answer's headers.
    client.receive(frame(h.DATA, 0, stream_id, b"x"))
    assert client.reset == [(stream_id, h.PROTOCOL_ERROR)]
    assert frames(client.take_output()) == [
        (h.RST_STREAM, 0, stream_id, struct.pack(">I", h.PROTOCOL_ERROR))]
    client.receive(answer(encoder, other))
    assert client.ended == [other]


def test_priority_and_unknown_frames_are_ignored() -> None:
    client, encoder = connected()
    stream_id, _ = open_stream(client)
    client.receive(frame(h.PRIORITY, 0, stream_id, b"\0\0\0\0\x10")
                   + frame(0xFA, 0xFF, 0, b"whatever") + answer(encoder, stream_id))
    assert client.ended == [stream_id] and not client.output


def test_goaway_takes_unprocessed_streams_out_of_what_is_still_to_be_sent() -> None:
    """Streams 3 and 5 opened in this loop turn, not yet written, when a
    GOAWAY naming 1 as the last arrives: their frames are not sent here (the
    calls will be sent again elsewhere), stream 1's reset still is."""
    client, _ = connected()
    first, _ = open_stream(client)
    window = client.send_window
    for _ in range(2):
        stream = Stream()
        client.send_data(client.open_stream(stream, REQUEST), stream, b"x" * 100, end=True)
    client.reset_stream(first)
    assert client.send_window == window - 200
    client.receive(frame(h.GOAWAY, 0, 0, struct.pack(">II", first, 0)))
    assert len(client.unprocessed) == 2
    assert frames(client.take_output()) == [
        (h.RST_STREAM, 0, first, struct.pack(">I", h.CANCEL))]
    assert client.send_window == window and client.output_data == 0


def test_the_same_header_table_size_twice_still_sends_its_update() -> None:
    """hpack drops a pending table size update when told the same size
    again; a second SETTINGS with the same value must not lose it."""
    client, _ = connected()
    table_zero = struct.pack(">HI", h.HEADER_TABLE_SIZE, 0)
    client.receive(frame(h.SETTINGS, 0, 0, table_zero) + frame(h.SETTINGS, 0, 0, table_zero))
    client.take_output()
    client.open_stream(Stream(), REQUEST)
    (_, _, _, block), = frames(client.take_output())
    assert block[0] == 0x20  # "dynamic table size update" to 0, first in the block


_frames_from_a_server = st.lists(st.tuples(
    st.sampled_from([h.DATA, h.HEADERS, h.PRIORITY, h.RST_STREAM, h.SETTINGS, h.PUSH_PROMISE,
                     h.PING, h.GOAWAY, h.WINDOW_UPDATE, h.CONTINUATION, 0x0A, 0xFA]),
    st.integers(0, 255), st.sampled_from([0, 1, 2, 3, 5, 7, 2**31 - 1]),
    st.one_of(st.binary(max_size=40), st.sampled_from([
        b"", b"\0\0\0\0", b"\0\0\0\1", b"\x88", b"\x82\x84", b"\0" * 8,
        struct.pack(">HI", h.INITIAL_WINDOW_SIZE, 0),
        struct.pack(">HI", h.HEADER_TABLE_SIZE, 0)]))), max_size=12)


@settings(max_examples=300, deadline=None)
@given(_frames_from_a_server, st.lists(st.integers(1, 60), max_size=6))
def test_whatever_a_server_sends_is_read_or_refused_cleanly(
        sent: list[tuple[int, int, int, bytes]], cuts: list[int]) -> None:
    """Any sequence of frames, valid or not, cut anywhere: the client reads
    it or stops with Http2Error and a GOAWAY, never another exception, and
    its streams stay its own (odd ids it opened)."""
    client, _ = connected()
    for _ in range(3):
        open_stream(client)
    data = b"".join(frame(kind, flags, stream_id, payload)
                    for kind, flags, stream_id, payload in sent)
    pieces, start = [], 0
    for cut in cuts:
        pieces.append(data[start:start + cut])
        start += cut
    pieces.append(data[start:])
    try:
        for piece in pieces:
            client.receive(piece)
    except Http2Error:
        assert frames(client.take_output())[-1][0] == h.GOAWAY
    assert all(stream_id & 1 and stream_id < client.next_stream_id
               for stream_id in client.streams)
