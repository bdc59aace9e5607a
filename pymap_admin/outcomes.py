"""Every reply this project sends, in one table: protocol replies and
delivery outcomes side by side.

A reply is a :class:`Reply` value (code, enhanced status code, text), built
here and nowhere else; it becomes bytes only in :meth:`Reply.to_bytes`, the
one place that makes a line safe for the wire and caps it at RFC 5321's 512
octets. :mod:`pymap_deliver.protocol` decides *when* each protocol reply is
sent; this module says *what* each one is.

Delivery outcomes: ``pymap-deliver`` sends :attr:`Outcome.reply` per LMTP
recipient; ``pymap-admin append`` prints :attr:`Outcome.status_text` as its
first line of output and exits with :attr:`Outcome.exit_status`. postfix's
pipe(8) reads a leading ``4.x.x``/``5.x.x`` before the exit status, so both
come from the same row.

The rule: a permanent (5xx) failure only when the recipient or the content is
definitively refused; everything else is temporary so the MTA keeps the
message and retries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from enum import IntEnum
from functools import lru_cache
from typing import Final

from . import errors

__all__ = [
    "ExitStatus",
    "Outcome",
    "Replies",
    "Reply",
    "delivered",
    "outcome_for_error",
    "too_big",
]


class ExitStatus(IntEnum):
    """Every exit status of ``pymap-admin`` and ``pymap-deliver``: sysexits(3)
    values, which an MTA understands, and the shell's conventions."""

    OK = 0
    #: A command that ran and failed (``check``: not serving).
    FAILURE = 1
    #: EX_USAGE: a mistake on the command line (``append`` uses TEMPFAIL).
    USAGE = 64
    DATAERR = 65
    NOUSER = 67
    #: EX_SOFTWARE: our own bug, found at start-up.
    SOFTWARE = 70
    #: EX_OSERR: the system refused (a listener that cannot be bound).
    OSERR = 71
    #: EX_CANTCREAT: an output file cannot be written (install-contrib).
    CANTCREAT = 73
    TEMPFAIL = 75
    NOPERM = 77
    #: EX_CONFIG: the configuration is wrong.
    CONFIG = 78
    #: Interrupted by SIGINT (128 + 2), as a shell reports it.
    INTERRUPTED = 130


# RFC 5321 section 4.5.3.1.5: a reply line is at most 512 octets, code and
# CRLF included.
MAX_REPLY_LINE: Final = 512
_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
# Anything that could end a line or confuse a client: C0 controls and DEL.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _capped(line: bytes) -> bytes:
    """A reply line without its CRLF, cut to fit 512 octets with it, on a
    character boundary (a client must get valid UTF-8)."""
    if len(line) <= MAX_REPLY_LINE - 2:
        return line
    return line[:MAX_REPLY_LINE - 2].decode("utf-8", "ignore").encode("utf-8")


def _one_line(text: str) -> str:
    # The text goes into a single reply line: never let a server's reason
    # (or anything else) smuggle a line break or a control into the protocol.
    return " ".join(_CONTROL.sub(" ", text).split())


@dataclass(frozen=True, slots=True)
class Reply:
    """One reply: ``code``, RFC 3463 ``enhanced`` code ("" where RFC 2034
    puts none: the greeting, 354 and LHLO) and ``text``. ``more`` holds the
    lines of a multi-line reply after the first (LHLO's keywords).

    Construction validates the code and its enhanced code, and makes the text
    one line; so a Reply value can always be sent.
    """

    code: int
    enhanced: str
    text: str
    more: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code out of range: {self.code}")
        if self.enhanced and (not _ENHANCED.fullmatch(self.enhanced)
                              or self.enhanced[0] != str(self.code)[0]):
            raise ValueError(f"bad enhanced code {self.enhanced!r} for {self.code}")
        object.__setattr__(self, "text", _one_line(self.text))
        object.__setattr__(self, "more", tuple(_one_line(line) for line in self.more))

    def format(self, **values: str | int) -> Reply:
        """The reply with ``{name}`` fields of its text filled in."""
        return _formatted(self, tuple(values.items()))

    @property
    def positive(self) -> bool:
        return self.code < 400

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        """``550 5.1.1 User unknown`` (the first line)."""
        return " ".join(part for part in (str(self.code), self.enhanced, self.text) if part)

    def to_bytes(self) -> bytes:
        """The reply as sent: CRLF-terminated lines, each capped at 512 octets."""
        return _encode(self)

    def _encode(self) -> bytes:
        lines = (self.text, *self.more)
        last = len(lines) - 1
        out = []
        for index, text in enumerate(lines):
            separator = " " if index == last else "-"
            prefix = f"{self.code}{separator}{self.enhanced + ' ' if self.enhanced else ''}"
            out.append(_capped((prefix + text).encode("utf-8")) + b"\r\n")
        return b"".join(out)


# Most replies are the same few values (the table's): encode each once.
@lru_cache(maxsize=1024)
def _encode(reply: Reply) -> bytes:
    return reply._encode()


class Replies:
    """The protocol's replies, by name. ``{host}`` and other fields are filled
    in with :meth:`Reply.format` by the protocol core."""

    GREETING: Final = Reply(220, "", "{host} LMTP pymap-deliver ready")
    # RFC 2034 puts no enhanced code on the LHLO keywords.
    CAPABILITIES: Final = Reply(250, "", "{host}", (
        "PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", "SIZE {size}", "SMTPUTF8"))
    HELP: Final = Reply(214, "2.0.0", "Commands: LHLO MAIL RCPT DATA RSET NOOP QUIT VRFY")
    BYE: Final = Reply(221, "2.0.0", "{host} Bye")
    OK: Final = Reply(250, "2.0.0", "OK")
    SENDER_OK: Final = Reply(250, "2.1.0", "Sender OK")
    RECIPIENT_OK: Final = Reply(250, "2.1.5", "Recipient OK")
    # RFC 5321 section 3.5.3: 252 when not verifying; never a user oracle.
    CANNOT_VRFY: Final = Reply(252, "2.5.0",
                               "Cannot VRFY user, but will accept message and attempt delivery")
    # Exempt from enhanced codes, as in postfix and Dovecot.
    START_DATA: Final = Reply(354, "", "End data with <CR><LF>.<CR><LF>")

    TIMEOUT: Final = Reply(421, "4.4.2", "{host} Error: timeout exceeded, closing connection")
    SHUTTING_DOWN: Final = Reply(421, "4.3.2",
                                 "{host} Service shutting down, closing connection")
    TOO_MANY_CONNECTIONS: Final = Reply(421, "4.3.2",
                                        "{host} Too many connections, try again later")
    TOO_MANY_ERRORS: Final = Reply(421, "4.7.0", "{host} Too many errors, closing connection")
    INTERNAL_ERROR_CLOSING: Final = Reply(421, "4.3.0",
                                          "{host} Internal error, closing connection")
    INTERNAL_ERROR: Final = Reply(451, "4.3.0", "Internal error, try again later")
    # RFC 5321 section 4.5.3.1.10: 452, and the client sends the rest later.
    TOO_MANY_RECIPIENTS: Final = Reply(452, "4.5.3", "Too many recipients")

    NOT_RECOGNIZED: Final = Reply(500, "5.5.2", "Error: command not recognized")
    LINE_TOO_LONG: Final = Reply(500, "5.5.2", "Line too long")
    NOT_UTF8: Final = Reply(500, "5.5.2", "Command is not valid UTF-8")
    USE_LHLO: Final = Reply(500, "5.5.1", "Error: this is an LMTP server, use LHLO")
    LHLO_SYNTAX: Final = Reply(501, "5.5.4", "Syntax: LHLO hostname")
    MAIL_SYNTAX: Final = Reply(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]")
    RCPT_SYNTAX: Final = Reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
    DATA_SYNTAX: Final = Reply(501, "5.5.4", "Syntax: DATA")
    BAD_SENDER: Final = Reply(501, "5.1.7", "Bad sender address syntax")
    BAD_RECIPIENT: Final = Reply(501, "5.1.3", "Bad recipient address syntax")
    BAD_BODY: Final = Reply(501, "5.5.4", "BODY must be 7BIT or 8BITMIME")
    SMTPUTF8_VALUE: Final = Reply(501, "5.5.4", "SMTPUTF8 takes no value")
    SIZE_SYNTAX: Final = Reply(501, "5.5.4", "Syntax: SIZE=<number>")
    NO_EXPN: Final = Reply(502, "5.5.1", "EXPN not implemented")
    NEED_LHLO: Final = Reply(503, "5.5.1", "Error: send LHLO first")
    NESTED_MAIL: Final = Reply(503, "5.5.1", "Error: nested MAIL command")
    NEED_MAIL: Final = Reply(503, "5.5.1", "Error: need MAIL command")
    NO_RECIPIENTS: Final = Reply(503, "5.5.1", "Error: no valid recipients")
    UNSUPPORTED_PARAMETER: Final = Reply(555, "5.5.4", "Unsupported {verb} parameter {names}")
    TOO_BIG: Final = Reply(552, "5.3.4", "Message too big")
    LONG_DATA_LINE: Final = Reply(554, "5.6.0", "Message has a line longer than {limit} bytes")
    UNDECLARED_8BIT: Final = Reply(554, "5.6.0", "Message contains undeclared 8-bit data")


# --- delivery outcomes ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """One row of the delivery table: the reply, with the server's detail
    where it matters, and the exit status of ``pymap-admin append``."""

    reply: Reply
    exit_status: ExitStatus

    # What ``pymap-admin append`` reports; the daemon sends ``reply`` itself.

    @property
    def code(self) -> int:
        return self.reply.code

    @property
    def enhanced(self) -> str:
        return self.reply.enhanced

    @property
    def status_text(self) -> str:
        """``2.0.0 Message delivered``: the enhanced code and text, capped
        like a reply line (pipe(8) puts it into the DSN)."""
        text = f"{self.reply.enhanced} {self.reply.text}"
        return _capped(text.encode("utf-8")).decode("utf-8")

    @property
    def delivered(self) -> bool:
        return self.reply.positive


@lru_cache(maxsize=256)
def _formatted(reply: Reply, values: tuple[tuple[str, str | int], ...]) -> Reply:
    # The same few (a session's greeting, capabilities and goodbye, with
    # the server's name) again and again: each made and checked once.
    fields = dict(values)
    return replace(reply, text=reply.text.format(**fields),
                   more=tuple(line.format(**fields) for line in reply.more))


def _row(code: int, enhanced: str, text: str, exit_status: ExitStatus) -> Outcome:
    return Outcome(Reply(code, enhanced, text), exit_status)


def delivered(*, discarded: bool = False, queue_id: str = "") -> Outcome:
    """Stored by pymap (including where the user's Sieve script filed it), or
    discarded by the user's own Sieve script: both are final for the MTA.
    ``queue_id`` follows "Message delivered", as the MTA logs the reply: the
    key that joins its log line to ours."""
    text = " ".join(part for part in ("Message delivered", queue_id,
                                      "(discarded by Sieve)" if discarded else "") if part)
    return _row(250, "2.0.0", text, ExitStatus.OK)


def too_big() -> Outcome:
    return Outcome(Replies.TOO_BIG, ExitStatus.DATAERR)


def outcome_for_error(exc: BaseException) -> Outcome:
    """The row for a failed delivery. Anything unforeseen is temporary."""
    match exc:
        case errors.UserNotFound():
            return _row(550, "5.1.1", "User unknown", ExitStatus.NOUSER)
        case errors.AppendFailure():
            reason = _one_line(exc.reason) or "Message rejected"
            return _row(550, "5.7.1", reason, ExitStatus.NOPERM)
        case errors.MailboxNotFound():
            return _row(450, "4.2.0", "Mailbox not found", ExitStatus.TEMPFAIL)
        case errors.MailboxReadOnly():
            return _row(450, "4.2.0", "Mailbox is read-only", ExitStatus.TEMPFAIL)
        case errors.TokenExpired():
            return _row(451, "4.3.5", f"Delivery agent's admin token expired at "
                           f"{exc.expired_at}", ExitStatus.TEMPFAIL)
        case errors.AuthError():
            return _row(451, "4.3.5", "Delivery agent not authorized by the mail store",
                           ExitStatus.TEMPFAIL)
        case errors.IncompatibleVersion():
            return _row(451, "4.3.5", "Mail store speaks an incompatible admin protocol",
                           ExitStatus.TEMPFAIL)
        case errors.ConfigurationError():
            # Not the detail: it names local files, and replies end up in
            # DSNs to strangers. The agent logs it (or append's stderr).
            return _row(451, "4.3.5", "Delivery agent misconfigured (see its log)",
                        ExitStatus.TEMPFAIL)
        case errors.DeadlineExceeded():
            return _row(451, "4.4.2", "Mail store did not answer in time", ExitStatus.TEMPFAIL)
        case errors.TransportError():
            return _row(451, "4.4.1", "Mail store unreachable", ExitStatus.TEMPFAIL)
        case _:
            # TemporaryFailure, keys we have never seen, unimplemented
            # operations, unexpected statuses and our own bugs: the MTA keeps
            # the message and tries again.
            return _row(451, "4.3.0", "Temporary failure, try again later",
                           ExitStatus.TEMPFAIL)
