"""The messages of a delivery without protobuf's runtime
(:mod:`pymap_admin._messages`) against protobuf's own: the field numbers
are the descriptor's, what we encode parses back to the same request, what
protobuf encodes we read the same (presence included), and a malformed
answer is an error, not a guess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devstack.localpymap import DEMO_USER, PymapServer
from pymap_admin import _messages as lean
from pymap_admin._wire import SerializedAppend
from pymap_admin.grpc import admin_grpc
from pymap_admin.grpc import admin_pb2 as pb

text = st.text(max_size=40)
u32 = st.integers(min_value=0, max_value=2**32 - 1)


@pytest.mark.parametrize(("table", "message"), [
    (lean.RESULT, pb.Result), (lean.LOGIN_REQUEST, pb.LoginRequest),
    (lean.LOGIN_RESPONSE, pb.LoginResponse), (lean.APPEND_REQUEST, pb.AppendRequest),
    (lean.APPEND_RESPONSE, pb.AppendResponse)])
def test_field_numbers_are_the_descriptors(table: dict[str, int], message: type) -> None:
    descriptor = message.DESCRIPTOR  # type: ignore[attr-defined]
    assert table == {f.name: f.number for f in descriptor.fields}


def test_method_names_are_the_stubs() -> None:
    from pymap_admin.client import _APPEND, _MINT_LOGIN
    from pymap_admin.pool import Endpoint

    endpoint = Endpoint("test", channel=None)  # type: ignore[arg-type]
    stubs: dict[str, Any] = {"Append": admin_grpc.MailboxStub(None).Append,  # type: ignore[arg-type]
             "Login": admin_grpc.SystemStub(None).Login}  # type: ignore[arg-type]
    assert _APPEND(endpoint).name == stubs["Append"].name
    assert _MINT_LOGIN(endpoint).name == stubs["Login"].name


#: AppendRequest fields but data, as AppendHead takes them (None: not set).
heads = st.fixed_dictionaries({
    "user": text, "sender": st.none() | text, "recipient": st.none() | text,
    "mailbox": st.none() | text, "flags": st.lists(text, max_size=3),
    "when": st.integers(min_value=0, max_value=2**64 - 1)})


@given(fields=heads, prefix=st.binary(max_size=300), data=st.binary(max_size=3000))
def test_append_head_parses_back(fields: dict[str, Any], prefix: bytes, data: bytes) -> None:
    head = lean.AppendHead(**fields)
    parsed = pb.AppendRequest.FromString(SerializedAppend(head, prefix, data).payload)
    expected = pb.AppendRequest(data=prefix + data,
                                **{k: v for k, v in fields.items() if v is not None})
    assert parsed == expected
    # Presence survives: an unset sender is absent, an empty one (the null sender) present.
    for name in ("sender", "recipient", "mailbox"):
        assert parsed.HasField(name) == (fields[name] is not None)
    # Byte for byte what protobuf writes (data last: it is appended after the rest).
    expected.ClearField("data")
    assert head.SerializeToString() == expected.SerializeToString()


@pytest.mark.parametrize("when", [-1, 2**64])
def test_append_head_refuses_what_protobuf_refuses(when: int) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (protobuf's is a plain ValueError too)
        pb.AppendRequest(when=when)
    with pytest.raises(ValueError, match="out of range"):
        lean.AppendHead("user", when=when)


@given(authcid=text)
def test_login_request_is_protobufs(authcid: str) -> None:
    assert lean.LoginRequest(authcid).SerializeToString() == (
        pb.LoginRequest(authcid=authcid).SerializeToString())


def _result(code: int, response: bytes, key: str) -> pb.Result:
    return pb.Result(code=code, response=response, key=key)  # type: ignore[arg-type]


@given(code=st.sampled_from([0, 1]), response=st.binary(max_size=60), key=text,
       mailbox=text, validity=st.none() | u32, uid=st.none() | u32,
       with_result=st.booleans())
def test_append_response_reads_as_protobufs(code: int, response: bytes, key: str,
                                            mailbox: str, validity: int | None,
                                            uid: int | None, with_result: bool) -> None:
    message = pb.AppendResponse(mailbox=mailbox)
    if with_result:
        message.result.CopyFrom(_result(code, response, key))
    if validity is not None:
        message.validity = validity
    if uid is not None:
        message.uid = uid
    read = lean.AppendResponse.FromString(message.SerializeToString())
    assert (read.result.code, read.result.response, read.result.key) == (
        message.result.code, message.result.response, message.result.key)
    assert (read.mailbox, read.validity, read.uid) == (
        message.mailbox, message.validity, message.uid)
    assert read.HasField("validity") == message.HasField("validity")
    assert read.HasField("uid") == message.HasField("uid")


@given(code=st.sampled_from([0, 1]), response=st.binary(max_size=60), key=text,
       token=st.none() | text)
def test_login_response_reads_as_protobufs(code: int, response: bytes, key: str,
                                           token: str | None) -> None:
    message = pb.LoginResponse(result=_result(code, response, key))
    if token is not None:
        message.bearer_token = token
    read = lean.LoginResponse.FromString(message.SerializeToString())
    assert (read.result.code, read.result.response, read.result.key) == (code, response, key)
    assert read.bearer_token == message.bearer_token
    assert read.HasField("bearer_token") == message.HasField("bearer_token")


def test_unknown_fields_are_skipped() -> None:
    known = pb.AppendResponse(mailbox="INBOX", uid=7).SerializeToString()
    # A later server's fields 9 (varint), 10 (fixed64), 11 (bytes), 12 (fixed32).
    extra = (lean.field_key(9, 0) + lean.varint(300) + lean.field_key(10, 1) + b"\0" * 8
             + lean.field_key(11) + lean.varint(3) + b"abc" + lean.field_key(12, 5) + b"\0" * 4)
    read = lean.AppendResponse.FromString(extra + known)
    assert (read.mailbox, read.uid, read.HasField("uid")) == ("INBOX", 7, True)


@pytest.mark.parametrize("data", [
    b"\x12\x05INB",  # a length past the end
    b"\x18",  # a key without its value
    b"\x18\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a varint too long
    b"\x13",  # wire type 3 (groups): not in proto3
    b"\x10\x01",  # mailbox (text) sent as a number
    b"\x12\x02\xff\xfe",  # mailbox not UTF-8
    b"\x0a\x01\x08",  # a truncated result
])
def test_malformed_responses_are_errors(data: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (any ValueError: UnicodeDecodeError too)
        lean.AppendResponse.FromString(data)


def test_a_delivery_loads_no_protobuf(pymap: PymapServer, tmp_path: Path) -> None:
    """``pymap-admin append`` into a real pymap, twice (the first mints the
    user's login token, the second uses it): neither imports protobuf, the
    generated code, grpclib's client nor h2 (``-X importtime`` lists every
    module imported)."""
    script = Path(sys.executable).parent / "pymap-admin"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", str(script), "--path", str(pymap.socket_path),
             "--token-file", str(pymap.token_path), "append", DEMO_USER],
            input=b"Subject: lean\r\n\r\nbody\r\n", capture_output=True, env=env,
            timeout=60, check=False)
        assert (done.returncode, done.stdout.splitlines()[0]) == (
            0, b"2.0.0 Message delivered"), done.stderr[-2000:]
        imported = re.findall(rb"^import time:.*\| +([\w.]+)$", done.stderr, re.M)
        assert b"pymap_admin.client" in imported
        assert [m for m in imported if b"protobuf" in m or m.endswith(b"_pb2")] == []
        # Nor grpclib's client (its streams, events, multidict): the channel is H2Channel.
        assert b"grpclib.client" not in imported and b"multidict" not in imported
        # Nor h2 or hyperframe: HTTP/2 is pymap_admin._http2.
        assert [m for m in imported if m.split(b".")[0] in (b"h2", b"hyperframe")] == []
    assert len(list((tmp_path / "cache").rglob("*"))) >= 3  # pymap/login-tokens/<entry>
