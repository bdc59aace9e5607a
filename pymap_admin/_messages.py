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

from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, Self

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
    return _bytes(value).decode("utf-8")


def _bytes(value: int | bytes) -> bytes:
    if not isinstance(value, bytes):
        raise ValueError("a length-delimited field sent as a number")
    return value


def _uint32(value: int | bytes) -> int:
    if isinstance(value, bytes):
        raise ValueError("a number field sent length-delimited")
    return value & 0xFFFFFFFF


def _result(value: int | bytes) -> Result:
    return Result.FromString(_bytes(value))


#: How each kind of field is read, and its value when absent.
_READ: dict[str, Callable[[int | bytes], Any]] = {
    "text": _text, "bytes": _bytes, "uint32": _uint32, "result": _result}
_ABSENT: dict[str, Callable[[], Any]] = {
    "text": str, "bytes": bytes, "uint32": int, "result": lambda: Result()}


class _Message:
    """What the client reads of a response: its fields as attributes, and
    ``HasField`` for the ``optional`` ones, as on a generated message.
    A subclass names its fields' kinds (``_KINDS``), numbers (``_NUMBERS``)
    and which are ``optional`` (``_OPTIONAL``)."""

    __slots__ = ("_present",)
    _KINDS: ClassVar[dict[str, str]]
    _NUMBERS: ClassVar[dict[int, str]]
    _OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    def __init__(self) -> None:
        for name, kind in self._KINDS.items():
            setattr(self, name, _ABSENT[kind]())
        self._present: frozenset[str] = frozenset()

    @classmethod
    def FromString(cls, data: bytes) -> Self:
        message = cls()
        seen = set()
        for number, value in _fields(data):
            name = cls._NUMBERS.get(number)
            if name is not None:  # else a field of a later protocol
                setattr(message, name, _READ[cls._KINDS[name]](value))
                seen.add(name)
        message._present = cls._OPTIONAL.intersection(seen)
        return message

    def HasField(self, name: str) -> bool:
        return name in self._present


def _numbered(table: dict[str, int]) -> dict[int, str]:
    return {number: name for name, number in table.items()}


class Result(_Message):
    __slots__ = ("code", "key", "response")
    _KINDS: ClassVar = {"code": "uint32", "response": "bytes", "key": "text"}
    _NUMBERS: ClassVar = _numbered(RESULT)
    code: int
    response: bytes
    key: str


class AppendResponse(_Message):
    __slots__ = ("mailbox", "result", "uid", "validity")
    _KINDS: ClassVar = {"result": "result", "mailbox": "text", "validity": "uint32",
                        "uid": "uint32"}
    _NUMBERS: ClassVar = _numbered(APPEND_RESPONSE)
    _OPTIONAL: ClassVar = frozenset({"validity", "uid"})
    result: Result
    mailbox: str
    validity: int
    uid: int


class LoginResponse(_Message):
    __slots__ = ("bearer_token", "result")
    _KINDS: ClassVar = {"result": "result", "bearer_token": "text"}
    _NUMBERS: ClassVar = _numbered(LOGIN_RESPONSE)
    _OPTIONAL: ClassVar = frozenset({"bearer_token"})
    result: Result
    bearer_token: str


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
        if not 0 <= when < 1 << 64:
            raise ValueError(f"when out of range for uint64: {when}")
        if when:
            parts.append(field_key(APPEND_REQUEST["when"], _VARINT) + varint(when))
        self.payload = b"".join(parts)

    def SerializeToString(self) -> bytes:
        return self.payload
