"""The messages of a delivery (Append and Login), in protobuf's wire format
without protobuf's runtime.

Importing the generated ``admin_pb2`` loads protobuf's descriptor pool and
its Python helpers: about a tenth of what a delivery by ``pymap-admin
append`` costs, for four small messages. The client sends and reads these
four itself; every other call uses ``admin_pb2`` as generated.

The field numbers below are those of ``proto/admin.proto``; a test keeps
each table equal to the generated descriptor, so a change in the protocol
cannot pass unnoticed. Encoding follows proto3: a plain scalar is left out
when it has its default value, a field declared ``optional`` is sent
whenever it is set (``sender=""`` is the null sender, not "unknown").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

__all__ = [
    "APPEND_REQUEST",
    "APPEND_RESPONSE",
    "LOGIN_REQUEST",
    "LOGIN_RESPONSE",
    "RESULT",
    "AppendHead",
    "AppendResponse",
    "LoginRequest",
    "LoginResponse",
    "Result",
    "field_key",
    "varint",
]

#: Field numbers, by message (``proto/admin.proto``).
RESULT = {"code": 1, "response": 2, "key": 3}
LOGIN_REQUEST = {"authcid": 1, "secret": 2, "authzid": 3, "token_expiration": 4}
LOGIN_RESPONSE = {"result": 1, "bearer_token": 2}
APPEND_REQUEST = {"user": 1, "sender": 2, "recipient": 3, "mailbox": 4, "data": 5,
                  "flags": 6, "when": 7}
APPEND_RESPONSE = {"result": 1, "mailbox": 2, "validity": 3, "uid": 4}

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def varint(value: int) -> bytes:
    """``value`` (not negative) as a base-128 varint."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field_key(number: int, wire_type: int = _LENGTH) -> bytes:
    return varint(number << 3 | wire_type)


def _text_field(number: int, value: str) -> bytes:
    encoded = value.encode("utf-8")
    return field_key(number) + varint(len(encoded)) + encoded


def _read_varint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[offset]  # IndexError: truncated
        offset += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, offset
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of each field: an int for a varint, bytes for
    anything length-delimited; fixed-width fields are skipped (these
    messages have none). Raises ValueError for a malformed message."""
    offset, end = 0, len(data)
    try:
        while offset < end:
            key, offset = _read_varint(data, offset)
            number, wire_type = key >> 3, key & 7
            if wire_type == _VARINT:
                value, offset = _read_varint(data, offset)
                yield number, value
            elif wire_type == _LENGTH:
                length, offset = _read_varint(data, offset)
                if offset + length > end:
                    raise ValueError("field runs past the end of the message")
                yield number, data[offset:offset + length]
                offset += length
            elif wire_type in (_FIXED64, _FIXED32):
                offset += 8 if wire_type == _FIXED64 else 4
                if offset > end:
                    raise ValueError("field runs past the end of the message")
            else:
                raise ValueError(f"unsupported wire type {wire_type}")
    except IndexError:
        raise ValueError("truncated message") from None


def _text(value: int | bytes) -> str:
    if not isinstance(value, bytes):
        raise ValueError("a text field with a number")
    return value.decode("utf-8")


def _number(value: int | bytes, bits: int) -> int:
    if isinstance(value, bytes):
        raise ValueError("a number field with bytes")
    return value & ((1 << bits) - 1)


class _Message:
    """What the client reads of a response: its fields as attributes, and
    ``HasField`` for the ``optional`` ones, as on a generated message."""

    __slots__ = ("_present",)

    def __init__(self) -> None:
        self._present: frozenset[str] = frozenset()

    def HasField(self, name: str) -> bool:
        return name in self._present


class Result(_Message):
    __slots__ = ("code", "key", "response")

    def __init__(self) -> None:
        super().__init__()
        self.code = 0
        self.response = b""
        self.key = ""

    @classmethod
    def FromString(cls, data: bytes) -> Result:
        result = cls()
        for number, value in _fields(data):
            if number == RESULT["code"]:
                result.code = _number(value, 32)
            elif number == RESULT["response"]:
                if not isinstance(value, bytes):
                    raise ValueError("response is not bytes")
                result.response = value
            elif number == RESULT["key"]:
                result.key = _text(value)
        return result


def _result(value: int | bytes) -> Result:
    if not isinstance(value, bytes):
        raise ValueError("result is not a message")
    return Result.FromString(value)


class AppendResponse(_Message):
    __slots__ = ("mailbox", "result", "uid", "validity")

    def __init__(self) -> None:
        super().__init__()
        self.result = Result()
        self.mailbox = ""
        self.validity = 0
        self.uid = 0

    @classmethod
    def FromString(cls, data: bytes) -> AppendResponse:
        response = cls()
        present = set()
        for number, value in _fields(data):
            if number == APPEND_RESPONSE["result"]:
                response.result = _result(value)
            elif number == APPEND_RESPONSE["mailbox"]:
                response.mailbox = _text(value)
            elif number == APPEND_RESPONSE["validity"]:
                response.validity = _number(value, 32)
                present.add("validity")
            elif number == APPEND_RESPONSE["uid"]:
                response.uid = _number(value, 32)
                present.add("uid")
        response._present = frozenset(present)
        return response


class LoginResponse(_Message):
    __slots__ = ("bearer_token", "result")

    def __init__(self) -> None:
        super().__init__()
        self.result = Result()
        self.bearer_token = ""

    @classmethod
    def FromString(cls, data: bytes) -> LoginResponse:
        response = cls()
        for number, value in _fields(data):
            if number == LOGIN_RESPONSE["result"]:
                response.result = _result(value)
            elif number == LOGIN_RESPONSE["bearer_token"]:
                response.bearer_token = _text(value)
                response._present = frozenset({"bearer_token"})
        return response


class LoginRequest:
    """A LoginRequest for a token re-issued for ``authcid`` (no secret)."""

    __slots__ = ("payload",)

    def __init__(self, authcid: str) -> None:
        self.payload = _text_field(LOGIN_REQUEST["authcid"], authcid) if authcid else b""

    def SerializeToString(self) -> bytes:
        return self.payload


class AppendHead:
    """An AppendRequest's fields but ``data`` (which
    :class:`~pymap_admin._wire.SerializedAppend` adds), serialized."""

    __slots__ = ("payload",)

    def __init__(self, user: str, *, sender: str | None = None, recipient: str | None = None,
                 mailbox: str | None = None, flags: Iterable[str] = (), when: int = 0) -> None:
        parts = []
        if user:
            parts.append(_text_field(APPEND_REQUEST["user"], user))
        for name, value in (("sender", sender), ("recipient", recipient),
                            ("mailbox", mailbox)):
            if value is not None:
                parts.append(_text_field(APPEND_REQUEST[name], value))
        parts.extend(_text_field(APPEND_REQUEST["flags"], flag) for flag in flags)
        if when:
            parts.append(field_key(APPEND_REQUEST["when"], _VARINT) + varint(when))
        self.payload = b"".join(parts)

    def SerializeToString(self) -> bytes:
        return self.payload
