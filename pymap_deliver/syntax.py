"""LMTP command syntax as pure functions: paths, ESMTP parameters, and the
one parser behind MAIL and RCPT.

Nothing here knows about sessions or limits: each function takes text and
returns a value or the :class:`~pymap_admin.outcomes.Reply` that refuses it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, NamedTuple

from pymap_admin.outcomes import Replies, Reply

from .headers import is_header_safe

__all__ = [
    "Mail",
    "address_is_safe",
    "parse_mail",
    "parse_params",
    "parse_path",
    "parse_rcpt",
    "split_command",
    "valid_lhlo_name",
]

# C0 controls and DEL. CR, LF and NUL would inject header lines; the others
# (form feed, vertical tab, ...) make pymap's maildir backend fail to parse
# the Return-Path, so a message would be accepted and then deferred forever.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Mail:
    """A parsed ``MAIL FROM``: the reverse-path ("" for ``<>``) and the
    parameters this server knows."""

    sender: str
    body_8bitmime: bool = False
    smtputf8: bool = False
    #: The client's ``SIZE=`` estimate, if it gave one.
    size: int | None = None


def split_command(line: bytes) -> tuple[str, str] | None:
    """``b"MAIL FROM:<a>\\r\\n"`` -> ``("MAIL", "FROM:<a>")``, the verb
    upper-cased; None when the line is not UTF-8 (addresses go on to the
    backend as str, so a line that is not text is refused, not mangled)."""
    try:
        text = line.rstrip(b"\r\n").decode("utf-8")
    except UnicodeDecodeError:
        return None
    verb, _, arg = text.partition(" ")
    return verb.upper(), arg.strip()


def valid_lhlo_name(arg: str) -> bool:
    return bool(arg) and " " not in arg and arg.isprintable()


def address_is_safe(address: str) -> bool:
    """An envelope address may go into a header and on to pymap: no control
    characters, and within :func:`~pymap_deliver.headers.is_header_safe`'s bound."""
    return _CONTROL.search(address) is None and is_header_safe(address)


def parse_path(arg: str) -> tuple[str, str] | None:
    """Split ``<address> params`` into the address and the parameter string.

    Returns None for a syntax error. Quoted local parts may contain ``>`` and
    spaces; an RFC 5321 source route (``<@a,@b:user@c>``) is dropped, as the
    RFC says servers should. Without angle brackets the address runs to the
    first space, which is what lenient MTAs accept.
    """
    arg = arg.lstrip()
    if not arg.startswith("<"):
        address, _, rest = arg.partition(" ")
        if not address or "<" in address or ">" in address:
            return None
        return address, rest.strip()
    in_quotes = False
    escaped = False
    for index in range(1, len(arg)):
        char = arg[index]
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            in_quotes = not in_quotes
        elif char == ">" and not in_quotes:
            break
        elif char in " <" and not in_quotes:
            return None
    else:
        return None
    inner, rest = arg[1:index], arg[index + 1:]
    if rest and not rest.startswith(" "):
        return None
    if inner.startswith("@"):
        _, colon, inner = inner.partition(":")
        if not colon:
            return None
    return inner, rest.strip()


def parse_params(text: str) -> dict[str, str | None] | None:
    """ESMTP parameters as a dict of upper-cased keyword to value (None when
    the parameter has no ``=value``); None for a syntax error."""
    params: dict[str, str | None] = {}
    for item in text.split():
        keyword, eq, value = item.partition("=")
        if not keyword.isascii() or not keyword.isalnum() or (eq and not value):
            return None
        params[keyword.upper()] = value if eq else None
    return params


class _Envelope(NamedTuple):
    """What differs between the MAIL and RCPT arguments."""

    verb: str
    prefix: str
    syntax: Reply
    bad_address: Reply
    #: The null reverse-path ``<>`` is a sender, never a recipient.
    allow_empty: bool
    #: The ESMTP parameters it takes; any other is refused.
    params: frozenset[str]


_MAIL = _Envelope("MAIL", "FROM:", Replies.MAIL_SYNTAX, Replies.BAD_SENDER, allow_empty=True,
                  params=frozenset({"BODY", "SMTPUTF8", "SIZE"}))
_RCPT = _Envelope("RCPT", "TO:", Replies.RCPT_SYNTAX, Replies.BAD_RECIPIENT, allow_empty=False,
                  params=frozenset())


def _parse_envelope_command(
    arg: str, verb: _Envelope
) -> tuple[str, dict[str, str | None]] | Reply:
    """The one parser of ``FROM:<path> params`` and ``TO:<path> params``."""
    if arg[:len(verb.prefix)].upper() != verb.prefix:
        return verb.syntax
    rest = arg[len(verb.prefix):]
    parsed = parse_path(rest)
    # An unparseable path is checked whole: a CR may come with a space, as in
    # "<a\rBcc: b>", and must still be reported as the unsafe address.
    if not address_is_safe(rest if parsed is None else parsed[0]):
        return verb.bad_address
    params = parse_params(parsed[1]) if parsed is not None else None
    if parsed is None or params is None or not (parsed[0] or verb.allow_empty):
        return verb.syntax
    if unknown := [name for name in params if name not in verb.params]:
        return Replies.UNSUPPORTED_PARAMETER.format(verb=verb.verb, names=" ".join(unknown))
    return parsed[0], params


def parse_mail(arg: str) -> Mail | Reply:
    """The argument of ``MAIL`` (``FROM:<address> [BODY=..] [SMTPUTF8] [SIZE=n]``)."""
    parsed = _parse_envelope_command(arg, _MAIL)
    if isinstance(parsed, Reply):
        return parsed
    sender, params = parsed
    body = params.get("BODY", "7BIT")
    if body is None or body.upper() not in ("7BIT", "8BITMIME"):
        return Replies.BAD_BODY
    smtputf8 = "SMTPUTF8" in params
    if params.get("SMTPUTF8") is not None:
        return Replies.SMTPUTF8_VALUE
    size: int | None = None
    if "SIZE" in params:
        value = params["SIZE"]
        if value is None or not value.isascii() or not value.isdigit():
            return Replies.SIZE_SYNTAX
        size = int(value)
    return Mail(sender, body_8bitmime=body.upper() == "8BITMIME", smtputf8=smtputf8, size=size)


def parse_rcpt(arg: str) -> str | Reply:
    """The argument of ``RCPT`` (``TO:<address>``): the address, or a refusal."""
    parsed = _parse_envelope_command(arg, _RCPT)
    return parsed if isinstance(parsed, Reply) else parsed[0]
