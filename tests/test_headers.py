"""Trace headers: exact form, sanitising of client-supplied text, and that the
output always parses back into the same header values."""

from __future__ import annotations

import email.utils
from email import message_from_bytes, policy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pymap_deliver.headers import is_header_safe, trace_headers

# 2024-01-02 03:04:05 UTC
WHEN = 1704164645.0


def build(**overrides: object) -> bytes:
    args: dict[str, object] = {
        "sender": "alice@example.com",
        "recipient": "bob@example.org",
        "lhlo_name": "mx.example.net",
        "peer": "192.0.2.7:40000",
        "hostname": "store.example.org",
        "session_id": "abc123",
        "received_at": WHEN,
    }
    args.update(overrides)
    return trace_headers(**args)  # type: ignore[arg-type]


def test_exact_form() -> None:
    date = email.utils.formatdate(WHEN, localtime=True)
    assert build() == (
        "Return-Path: <alice@example.com>\r\n"
        "Delivered-To: bob@example.org\r\n"
        "Received: from mx.example.net ([192.0.2.7]:40000)\r\n"
        "\tby store.example.org (pymap-deliver) with LMTP id abc123\r\n"
        f"\tfor <bob@example.org>; {date}\r\n"
    ).encode()


def test_null_sender_is_angle_brackets() -> None:
    assert build(sender="").startswith(b"Return-Path: <>\r\n")


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("[2001:db8::1]:25", b"([IPv6:2001:db8::1]:25)"),
        ("unix", b"(unix)"),
        ("198.51.100.1:1", b"([198.51.100.1]:1)"),
        ("not(an)ip:7", b"(not_an_ip:7)"),
    ],
)
def test_peer_as_tcp_info(peer: str, expected: bytes) -> None:
    assert expected in build(peer=peer)


def test_client_text_cannot_break_the_comment() -> None:
    out = build(lhlo_name="evil) (by fake", session_id="x\r\nInjected: 1")
    assert b"from evil__(by_fake " not in out  # parentheses are replaced
    assert b"from evil___by_fake" in out
    assert b"Injected: 1" not in out.replace(b"_Injected:_1", b"")
    assert b"\r\nInjected" not in out


def test_utf8lmtp_for_smtputf8() -> None:
    assert b"with UTF8LMTP id" in build(smtputf8=True)
    assert b"with LMTP id" in build(smtputf8=False)


@pytest.mark.parametrize("bad", ["a\r@x", "a\n@x", "a\x00@x"])
def test_unsafe_addresses(bad: str) -> None:
    assert not is_header_safe(bad)
    with pytest.raises(ValueError, match="not safe"):
        build(recipient=bad)
    with pytest.raises(ValueError, match="not safe"):
        build(sender=bad)


def test_overlong_address_is_unsafe() -> None:
    assert is_header_safe("a" * 890 + "@example")
    assert not is_header_safe("a" * 900 + "@example")


def test_safe_addresses() -> None:
    assert is_header_safe("")
    assert is_header_safe('"odd local\tpart"@example.com')
    assert is_header_safe("jürgen@bücher.example")


_address = st.text(min_size=1, max_size=60).filter(is_header_safe).filter(lambda s: s.strip() == s)


@given(sender=_address | st.just(""), recipient=_address, lhlo=st.text(max_size=80))
def test_output_parses_back(sender: str, recipient: str, lhlo: str) -> None:
    out = build(sender=sender, recipient=recipient, lhlo_name=lhlo)
    # every line ends in CRLF, no bare CR or LF anywhere
    assert out.endswith(b"\r\n")
    assert out.count(b"\r") == out.count(b"\n") == out.count(b"\r\n")
    for line in out.split(b"\r\n")[:-1]:
        assert len(line) <= 998
    # Unfold and split by hand: the stdlib parser mangles non-ASCII values.
    fields = out.decode("utf-8").replace("\r\n\t", " ").split("\r\n")[:-1]
    names = [f.split(": ", 1)[0] for f in fields]
    assert names == ["Return-Path", "Delivered-To", "Received"]
    assert fields[0] == f"Return-Path: <{sender}>"
    assert fields[1] == f"Delivered-To: {recipient}"
    assert f" for <{recipient}>; " in fields[2]
    # and the stdlib reads the same three fields
    msg = message_from_bytes(out + b"\r\nbody\r\n", policy=policy.compat32)
    assert msg.keys() == names
