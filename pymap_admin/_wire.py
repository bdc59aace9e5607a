"""What goes on the wire besides plain protobuf: the fast paths, fenced in.

- :class:`SerializedAppend`: an AppendRequest serialized by hand around its
  ``data`` field, so a large message is not copied into a protobuf message
  and out again (its other fields: :class:`~pymap_admin._messages.AppendHead`);
- :class:`Codec`: grpclib's protobuf codec that also sends a
  :class:`SerializedAppend` as it is;
- :class:`StatusDetailsCodec`: error details decoded without importing their
  types on every start-up;
- :func:`make_channel`: the one place a grpclib channel is built with them.

A channel given to :class:`~pymap_admin.AdminClient` must carry :class:`Codec`
(tests use :func:`channel_for`, which does), so every Append goes through the
production serialization.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from grpclib.client import Channel
from grpclib.const import Status
from grpclib.encoding.proto import ProtoCodec, ProtoStatusDetailsCodec

from ._messages import APPEND_REQUEST, AppendHead, field_key, varint

if TYPE_CHECKING:
    from grpclib.testing import ChannelFor

    from .grpc import admin_pb2
    from .settings import ConnectionSettings

__all__ = [
    "CoalescingChannel",
    "CoalescingTransport",
    "Codec",
    "SerializedAppend",
    "StatusDetailsCodec",
    "channel_for",
    "make_channel",
]


#: The key of AppendRequest's ``data`` field (length-delimited).
_DATA_TAG = field_key(APPEND_REQUEST["data"])


class SerializedAppend:
    """An AppendRequest serialized by hand around its ``data`` field.

    Building the protobuf message would copy the message into it, and
    serializing would copy it again, on top of grpclib's framing copy: for a
    50 MB message that is three copies besides the caller's. Here the other
    fields are serialized first (an :class:`~pymap_admin._messages.AppendHead`,
    or a generated AppendRequest without ``data``) and the data field is
    appended after them (the wire format allows fields in any order; a test
    checks that the result parses back to the same request), in one join.
    """

    __slots__ = ("payload",)

    def __init__(self, request: AppendHead | admin_pb2.AppendRequest, prefix: bytes,
                 data: bytes) -> None:
        self.payload = b"".join((request.SerializeToString(), _DATA_TAG,
                                 varint(len(prefix) + len(data)), prefix, data))


class Codec(ProtoCodec):
    """Protobuf, and the requests :class:`SerializedAppend` serialized already."""

    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, SerializedAppend):
            return message.payload
        encoded: bytes = super().encode(message, message_type)
        return encoded


class StatusDetailsCodec(ProtoStatusDetailsCodec):
    """Decodes ``google.rpc`` details (pymap's ErrorInfo) of an error status.

    grpclib can only decode detail types already imported; importing them
    here, on the first error, keeps that cost off every successful start-up.
    """

    def decode(self, status: Status, message: str | None, data: bytes) -> Sequence[Any]:
        import google.rpc.error_details_pb2  # noqa: F401  (registers ErrorInfo)

        return super().decode(status, message, data)


class CoalescingTransport:
    """A transport whose writes made in one turn of the event loop leave in
    one ``send``.

    grpclib writes a call's HEADERS frame and its DATA frame separately, and
    asyncio sends each at once: two system calls per call, and two wake-ups
    of the server. Buffered until the loop's next turn, a call (and every
    other call started in the same turn) goes out in one. Writes past
    :data:`COALESCE_LIMIT` bytes go out at once, so a large message is not
    copied again to be joined.
    """

    COALESCE_LIMIT = 64 * 1024

    def __init__(self, transport: Any) -> None:
        import asyncio

        self.transport = transport
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []
        self._size = 0
        #: Writes received and sends made: for tests and benchmarks.
        self.writes = 0
        self.sends = 0

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.writes += 1
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)
        self._size += len(data)
        if self._size >= self.COALESCE_LIMIT:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._size = 0
        if not self.transport.is_closing():
            self.sends += 1
            self.transport.write(data)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._size = 0
        self.transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class CoalescingChannel(Channel):
    """A grpclib channel writing through :class:`CoalescingTransport`.

    grpclib offers no public hook for the transport, so this overrides its
    protocol factory; should a grpclib release drop that method, the
    channel simply sends as grpclib does (a test notices the difference).
    """

    #: The transport of the current connection, once connected.
    transport: CoalescingTransport | None = None

    def _protocol_factory(self) -> Any:
        protocol = super()._protocol_factory()
        made = protocol.connection_made

        def connection_made(transport: Any) -> None:
            self.transport = CoalescingTransport(transport)
            # A proxy: everything but writing goes to the real transport.
            made(self.transport)  # type: ignore[arg-type]

        protocol.connection_made = connection_made  # type: ignore[method-assign]
        return protocol


def make_channel(settings: ConnectionSettings) -> Channel:
    """The channel :class:`~pymap_admin.AdminClient` uses unless given one."""
    from .settings import DEFAULT_PORT

    details = StatusDetailsCodec()
    if settings.uses_tcp:
        config = None
        if settings.server_name is not None and settings.uses_tls:
            from grpclib.config import Configuration

            # Connecting to one address of a name: the certificate is the name's.
            config = Configuration(ssl_target_name_override=settings.server_name)
        return CoalescingChannel(
            host=settings.host or "localhost", port=settings.port or DEFAULT_PORT,
            ssl=settings.ssl_context() if settings.uses_tls else None,
            codec=Codec(), status_details_codec=details, config=config)
    return CoalescingChannel(path=str(settings.socket_path()), codec=Codec(),
                             status_details_codec=details)


def channel_for(services: Collection[Any]) -> ChannelFor:
    """An in-memory channel to ``services`` (grpclib's testing helper) that
    keeps the production codecs: what a test hands to AdminClient."""
    from grpclib.testing import ChannelFor

    return ChannelFor(services, codec=Codec(), status_details_codec=StatusDetailsCodec())
