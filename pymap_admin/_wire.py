"""What goes on the wire besides plain protobuf: the fast paths, fenced in.

- :class:`SerializedAppend`: an AppendRequest serialized by hand around its
  ``data`` field, so a large message is not copied into a protobuf message
  and out again;
- :class:`Codec`: grpclib's protobuf codec that also sends a
  :class:`SerializedAppend` as it is;
- :class:`StatusDetailsCodec`: error details decoded without importing their
  types on every start-up;
- :func:`make_channel`: the one place the client's channel is built with them
  (an :class:`~pymap_admin._channel.H2Channel`).

A channel given to :class:`~pymap_admin.AdminClient` must carry :class:`Codec`
(tests use :func:`channel_for`, which does), so every Append goes through the
production serialization.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from grpclib.const import Status
from grpclib.encoding.proto import ProtoCodec, ProtoStatusDetailsCodec

if TYPE_CHECKING:
    from grpclib.testing import ChannelFor

    from ._channel import H2Channel
    from .grpc import admin_pb2
    from .settings import ConnectionSettings

__all__ = [
    "Codec",
    "SerializedAppend",
    "StatusDetailsCodec",
    "channel_for",
    "make_channel",
]


def _data_tag() -> bytes:
    """The key of AppendRequest's ``data`` field (number << 3 | wire type 2,
    length-delimited), read from the descriptor rather than written down."""
    from google.protobuf.descriptor import FieldDescriptor

    from .grpc.admin_pb2 import AppendRequest

    field = AppendRequest.DESCRIPTOR.fields_by_name["data"]
    assert field.type == FieldDescriptor.TYPE_BYTES
    return _varint(field.number << 3 | 2)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_DATA_TAG: bytes | None = None


class SerializedAppend:
    """An AppendRequest serialized by hand around its ``data`` field.

    Building the protobuf message would copy the message into it, and
    serializing would copy it again, on top of grpclib's framing copy: for a
    50 MB message that is three copies besides the caller's. Here the other
    fields are serialized by protobuf and the data field is appended after
    them (the wire format allows fields in any order; a test checks that the
    result parses back to the same request), in one join.
    """

    __slots__ = ("payload",)

    def __init__(self, request: admin_pb2.AppendRequest, prefix: bytes, data: bytes) -> None:
        global _DATA_TAG
        if _DATA_TAG is None:
            _DATA_TAG = _data_tag()
        self.payload = b"".join((request.SerializeToString(), _DATA_TAG,
                                 _varint(len(prefix) + len(data)), prefix, data))


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


def make_channel(settings: ConnectionSettings) -> H2Channel:
    """The channel :class:`~pymap_admin.AdminClient` uses unless given one."""
    from ._channel import H2Channel
    from .settings import DEFAULT_PORT

    details = StatusDetailsCodec()
    if settings.uses_tcp:
        # Connecting to one address of a name: the certificate is the name's.
        return H2Channel(
            host=settings.host or "localhost", port=settings.port or DEFAULT_PORT,
            ssl=settings.ssl_context() if settings.uses_tls else None,
            server_hostname=settings.server_name if settings.uses_tls else None,
            codec=Codec(), status_details_codec=details)
    return H2Channel(path=str(settings.socket_path()), codec=Codec(),
                     status_details_codec=details)


def channel_for(services: Collection[Any]) -> ChannelFor:
    """An in-memory channel to ``services`` (grpclib's testing helper) that
    keeps the production codecs: what a test hands to AdminClient."""
    from grpclib.testing import ChannelFor

    return ChannelFor(services, codec=Codec(), status_details_codec=StatusDetailsCodec())
