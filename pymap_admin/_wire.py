"""What goes on the wire besides plain protobuf: the fast paths, fenced in.

- :class:`SerializedAppend`: an AppendRequest serialized by hand around its
  ``data`` field, so a large message is not copied into a protobuf message
  and out again (its other fields: :class:`~pymap_admin._messages.AppendHead`);
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

from ._messages import APPEND_REQUEST, AppendHead, field_key, varint

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
