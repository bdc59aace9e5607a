"""The trace header lines pymap-deliver prepends to each delivered copy.

Each recipient of a message gets its own copy with its own ``Delivered-To``,
so these are built per recipient. The module is pure (no I/O, no clock): the
caller passes the arrival time, which keeps the output reproducible in tests.
"""

from __future__ import annotations

import ipaddress
import re
from email.utils import formatdate

__all__ = ["is_header_safe", "trace_headers"]

# CR and LF would start a new header line (header injection); NUL is refused
# by most mail stores and is never legitimate in an address.
_UNSAFE = frozenset("\r\n\x00")

# What may appear inside a Received comment or as the "from" domain: printable
# ASCII without the comment delimiters and the quoting backslash. Anything else
# from the client (LHLO argument, peer) is replaced, never copied through.
_COMMENT_UNSAFE = re.compile(r"[^!-'*-\[\]-~]")

# RFC 5322 recommends lines of at most 78 characters; longer clauses are
# still emitted whole (an address cannot be folded), the hard limit is 998.
_FOLD_AT = 78


def is_header_safe(address: str) -> bool:
    """True when an envelope address may be copied into a header field.

    This is the one place holding the rule: the LMTP layer refuses MAIL and
    RCPT addresses for which it is False, and :func:`trace_headers` relies on it.
    """
    return _UNSAFE.isdisjoint(address)


def _comment_text(text: str) -> str:
    cleaned = _COMMENT_UNSAFE.sub("_", text)
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


def _fold(name: str, clauses: list[str]) -> str:
    """Join clauses into one header field, folding with CRLF + TAB between
    clauses whenever the line would pass :data:`_FOLD_AT` characters."""
    out = [f"{name}:"]
    line_len = len(out[0])
    for clause in clauses:
        if line_len + 1 + len(clause) > _FOLD_AT and line_len > len(name) + 1:
            out.append("\r\n\t")
            line_len = 1
        else:
            out.append(" ")
            line_len += 1
        out.append(clause)
        line_len += len(clause)
    out.append("\r\n")
    return "".join(out)


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
    received = _fold(
        "Received",
        [
            f"from {_comment_text(lhlo_name)} ({_tcp_info(peer)})",
            f"by {_comment_text(hostname)} (pymap-deliver)",
            f"with {protocol} id {_comment_text(session_id)}",
            f"for <{recipient}>;",
            formatdate(received_at, localtime=True),
        ],
    )
    text = f"Return-Path: <{sender}>\r\nDelivered-To: {recipient}\r\n{received}"
    # Without SMTPUTF8 an address is ASCII in practice, but a sloppy client may
    # still send UTF-8; keeping it as UTF-8 is what the body would carry too.
    return text.encode("utf-8")
