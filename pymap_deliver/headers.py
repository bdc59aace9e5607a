"""The trace header lines pymap-deliver prepends to each delivered copy.

Each recipient of a message gets its own copy with its own ``Delivered-To``,
so these are built per recipient. The module is pure (no I/O, no clock): the
caller passes the arrival time, which keeps the output reproducible in tests.
"""

from __future__ import annotations

import ipaddress
import re
from email.utils import formatdate
from functools import lru_cache

__all__ = ["MAX_ADDRESS_LENGTH", "is_header_safe", "trace_headers"]

# CR and LF would start a new header line (header injection); NUL is refused
# by most mail stores and is never legitimate in an address.
_UNSAFE = frozenset("\r\n\x00")

# What may appear inside a Received comment or as the "from" domain: printable
# ASCII without the comment delimiters and the quoting backslash. Anything else
# from the client (LHLO argument, peer) is replaced, never copied through.
_COMMENT_UNSAFE = re.compile(r"[^!-'*-\[\]-~]")

# RFC 5321 section 4.5.3.1.3 allows paths of 256 octets; be lenient but
# bounded, so that "for <address>;" always fits one header line (RFC 5322's
# hard limit is 998 octets and an address cannot be folded).
MAX_ADDRESS_LENGTH = 900
# Client-supplied names in the trace header are cut to a domain's maximum.
_MAX_NAME = 255


def is_header_safe(address: str) -> bool:
    """True when an envelope address may be copied into a header field: no
    CR, LF or NUL, and not longer than :data:`MAX_ADDRESS_LENGTH` octets.

    This is the one place holding the rule: the LMTP layer refuses MAIL and
    RCPT addresses for which it is False, and :func:`trace_headers` relies on it.
    """
    return _UNSAFE.isdisjoint(address) and len(address.encode("utf-8", "replace")) <= (
        MAX_ADDRESS_LENGTH
    )


def _comment_text(text: str) -> str:
    cleaned = _COMMENT_UNSAFE.sub("_", text[:_MAX_NAME])
    return cleaned or "unknown"


def _tcp_info(peer: str) -> str:
    """RFC 5321 TCP-info for a peer given as ``host:port``: the address as an
    address literal (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``) and the port after
    it, as most MTAs write it. A peer that is not an IP (``unix``) stays as is.
    """
    host, sep, port = peer.rpartition(":")
    if sep and port.isdigit():
        host = host.removeprefix("[").removesuffix("]")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            literal = f"[IPv6:{ip.compressed}]" if ip.version == 6 else f"[{ip}]"
            return f"{literal}:{port}"
    return _comment_text(peer)


# Every recipient of a message shares its time of receipt and its session:
# these parts are built once per message, not once per recipient (the date,
# to the second as RFC 5322 writes it, once per second).
@lru_cache(maxsize=256)
def _date(second: int) -> str:
    return formatdate(second, localtime=True)


@lru_cache(maxsize=256)
def _received_from(lhlo_name: str, peer: str, hostname: str, protocol: str,
                   session_id: str) -> str:
    return (f"Received: from {_comment_text(lhlo_name)} ({_tcp_info(peer)})\r\n"
            f"\tby {_comment_text(hostname)} (pymap-deliver) with {protocol}"
            f" id {_comment_text(session_id)}\r\n")


def trace_headers(
    *,
    sender: str,
    recipient: str,
    lhlo_name: str,
    peer: str,
    hostname: str,
    session_id: str,
    received_at: float,
    smtputf8: bool = False,
) -> bytes:
    """The ``Return-Path``, ``Delivered-To`` and ``Received`` lines for one
    recipient, CRLF-terminated, ready to be prepended to the message.

    ``sender`` is ``""`` for the null reverse-path and is written ``<>``.
    Raises :class:`ValueError` for an address that :func:`is_header_safe`
    refuses: the LMTP layer never lets one through, so this is a bug guard.
    """
    for address in (sender, recipient):
        if not is_header_safe(address):
            raise ValueError(f"address not safe for a header: {address!r}")
    # RFC 6531 section 4.3: "UTF8LMTP" marks a transaction that used SMTPUTF8.
    protocol = "UTF8LMTP" if smtputf8 else "LMTP"
    # Folded the way postfix writes it: one line per clause group, which
    # keeps every line short unless an address itself is long.
    received = (
        f"{_received_from(lhlo_name, peer, hostname, protocol, session_id)}"
        f"\tfor <{recipient}>; {_date(int(received_at))}\r\n"
    )
    text = f"Return-Path: <{sender}>\r\nDelivered-To: {recipient}\r\n{received}"
    # Without SMTPUTF8 an address is ASCII in practice, but a sloppy client may
    # still send UTF-8; keeping it as UTF-8 is what the body would carry too.
    return text.encode("utf-8")


_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.I | re.M)


def message_id(data: bytes, limit: int = 64 * 1024) -> str | None:
    """The Message-ID of a message (for logs), from its header section only."""
    end = data.find(b"\r\n\r\n", 0, limit)
    header = data[:end if end >= 0 else limit]
    match = _MESSAGE_ID.search(b"\n" + header if header.startswith(b"\r\n") else header)
    if match is None:
        return None
    value = b" ".join(match.group(1).split()).decode("utf-8", "replace")
    return value[:256] or None
