"""RFC 2033 LMTP as a sans-I/O state machine: bytes in, replies and events out.

A :class:`Connection` is one server-side LMTP session. It performs no I/O and
reads no clock of its own (the arrival time comes from the ``clock`` it is
given): the caller feeds it the client's bytes with :meth:`~Connection.receive_data`,
asks :meth:`~Connection.next_event` what to do next, writes
:meth:`~Connection.data_to_send` to the client, and answers the two questions
the protocol cannot answer itself:

* :class:`CheckRecipients`: look these addresses up (concurrently, if you
  like), then call :meth:`~Connection.recipients_checked`;
* :class:`Deliver`: store this message, then call :meth:`~Connection.delivered`
  with one reply per recipient.

Every protocol rule lives here: command syntax (through :mod:`.syntax`), the
order of commands, pipelining (a batch of pipelined RCPTs becomes one
:class:`CheckRecipients`; replies always go out in command order, one per
command), the DATA paths with exactly one reply per accepted recipient (too
big, line too long, undeclared 8-bit, a failing backend), the size, line and
recipient limits, and error counting. Every reply comes from the table in
:mod:`pymap_admin.outcomes`.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from pymap_admin.message import crlf
from pymap_admin.outcomes import Replies, Reply

from .headers import is_header_safe
from .syntax import Mail, parse_mail, parse_rcpt, split_command, valid_lhlo_name

__all__ = [
    "FLUSH",
    "NEED_DATA",
    "PAUSED",
    "CheckRecipients",
    "Close",
    "Connection",
    "Deliver",
    "Event",
    "IncomingMessage",
    "LMTPOptions",
    "Sentinel",
]

# A command line longer than this is refused. RFC 5321 section 4.5.3.1.4 says
# 512 octets, extensions add to it (SIZE, BODY, SMTPUTF8) and long addresses
# exist, so leave room.
COMMAND_LINE_LIMIT: Final = 2048
# After this many refused commands the client is probably not an MTA;
# postfix's smtpd_hard_error_limit is 20 as well. Permanent RCPT refusals
# (unknown users) count too, so one session cannot probe users for ever.
ERROR_LIMIT: Final = 20
# The most RCPT lookups one pipelined batch asks for at once. Above postfix's
# default of 50 recipients per LMTP transaction; it also bounds the lookups a
# session can start before its unknown users reach ERROR_LIMIT.
RCPT_BATCH_LIMIT: Final = 100
# Replies queued while pipelined commands are processed are handed out (the
# FLUSH event) once they reach this size, so a client that sends commands
# without reading replies makes its session buffer this much, not more.
FLUSH_SIZE: Final = 16 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class LMTPOptions:
    """Per-session protocol settings.

    ``data_size_limit``: 64 MiB. Above postfix's default message_size_limit
    (10 MB) and the 50 MB messages we must carry, with room for base64 growth,
    while bounding what one session may hold in memory (about twice this).

    ``line_length_limit``: 64 KiB per data line. RFC 5321 says 1000 octets,
    but real mail breaks it and refusing would bounce it for good; postfix
    reads longer lines and splits them, Dovecot's LMTP has no limit. Lines
    are counted from LF to LF.

    ``idle_timeout``: 300 s, postfix's smtpd_timeout; only time spent waiting
    for the client counts, not time spent delivering.
    """

    hostname: str
    data_size_limit: int = 64 * 1024 * 1024
    line_length_limit: int = 64 * 1024
    idle_timeout: float = 300.0
    max_recipients: int = 1000
    reject_undeclared_8bit: bool = False

    def __post_init__(self) -> None:
        if not self.hostname or not is_header_safe(self.hostname) or " " in self.hostname:
            raise ValueError(f"invalid hostname {self.hostname!r}")
        if self.data_size_limit < 1:
            raise ValueError("data_size_limit must be positive")
        # Below this a legitimate command line would not fit either.
        if self.line_length_limit < 1024:
            raise ValueError("line_length_limit must be at least 1024")
        if self.idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        if self.max_recipients < 1:
            raise ValueError("max_recipients must be positive")


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """One LMTP transaction, complete, as handed to the backend."""

    session_id: str
    peer: str
    lhlo_name: str
    sender: str
    recipients: tuple[str, ...]
    data: bytes
    smtputf8: bool
    body_8bitmime: bool
    received_at: float


class Sentinel(enum.Enum):
    #: Feed more bytes (or EOF) with receive_data.
    NEED_DATA = "NEED_DATA"
    #: Waiting for recipients_checked or delivered.
    PAUSED = "PAUSED"
    #: Replies have piled up: send data_to_send() (and let the client read
    #: them) before calling next_event again.
    FLUSH = "FLUSH"


NEED_DATA: Final = Sentinel.NEED_DATA
PAUSED: Final = Sentinel.PAUSED
FLUSH: Final = Sentinel.FLUSH


@dataclass(frozen=True, slots=True)
class CheckRecipients:
    """Look up each address; answer with :meth:`Connection.recipients_checked`."""

    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Deliver:
    """Store the message; answer with :meth:`Connection.delivered`."""

    message: IncomingMessage


@dataclass(frozen=True, slots=True)
class Close:
    """Send what :meth:`Connection.data_to_send` holds, then close. ``reason``
    is one of ``quit``, ``eof``, ``timeout``, ``shutdown``, ``errors``,
    ``internal-error``."""

    reason: str


Event = Sentinel | CheckRecipients | Deliver | Close


class _Phase(enum.Enum):
    COMMAND = enum.auto()
    CHECKING = enum.auto()
    DATA = enum.auto()
    DELIVERING = enum.auto()
    CLOSED = enum.auto()


@dataclass(slots=True)
class _Rcpt:
    """One RCPT of a batch: decided already (``reply``), or to look up."""

    address: str | None
    reply: Reply | None = None
    counts_as_error: bool = False


class _LineTooLong:
    pass


_LINE_TOO_LONG: Final = _LineTooLong()


def _has_long_line(buf: bytearray, end: int, limit: int) -> bool:
    """Whether ``buf[:end]`` (starting at a line start, ending after a LF)
    holds a line of more than ``limit`` bytes, LF included. Lines are counted
    by LF, so a bare-LF body is measured by its real lines. Jumps a window at
    a time instead of walking every line."""
    pos = 0
    while end - pos > limit:
        lf = buf.rfind(b"\n", pos, pos + limit)
        if lf < 0:
            return True
        pos = lf + 1
    return False


class Connection:
    """One LMTP session, without I/O. See the module docstring for the loop."""

    def __init__(self, options: LMTPOptions, *, session_id: str, peer: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.options = options
        self.session_id = session_id
        self.peer = peer
        self._clock = clock
        self._host = options.hostname
        self._in = bytearray()
        self._out: list[bytes] = [Replies.GREETING.format(host=self._host).to_bytes()]
        self._out_size = 0
        self._eof = False
        self._stopping = False
        self._phase = _Phase.COMMAND
        self._close_event: Close | None = None
        self._errors = 0
        self._skipping_line = False
        self._lhlo_name: str | None = None
        self._mail: Mail | None = None
        self._recipients: list[str] = []
        self._batch: list[_Rcpt] = []
        # DATA
        self._data: bytearray | None = None
        self._data_failure: Reply | None = None
        self._data_size = 0
        self._at_line_start = True
        self._delivering = 0
        self._handlers: dict[str, Callable[[str], Event | None]] = {
            "LHLO": self._lhlo,
            "HELO": self._helo,
            "EHLO": self._helo,
            "MAIL": self._mail_from,
            "RCPT": self._rcpt,
            "DATA": self._data_command,
            "RSET": self._rset,
            "NOOP": self._noop,
            "QUIT": self._quit,
            "VRFY": self._vrfy,
            "EXPN": self._expn,
            "HELP": self._help,
        }

    # -- the caller's interface ------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; ``b""`` means end of input (the client shut
        its side). Buffered commands are still answered after it."""
        if data:
            if not self._eof and self._phase is not _Phase.CLOSED:
                self._in += data
        else:
            self._eof = True

    def data_to_send(self) -> bytes:
        """The replies queued so far (taking them)."""
        out = b"".join(self._out)
        self._out.clear()
        self._out_size = 0
        return out

    @property
    def buffered(self) -> int:
        """Bytes received and not processed yet."""
        return len(self._in)

    @property
    def waiting_for_client(self) -> bool:
        """True when only more input can move the session on: the time an
        idle timer should count. Not while the backend is working."""
        return self._phase in (_Phase.COMMAND, _Phase.DATA)

    @property
    def closed(self) -> bool:
        return self._phase is _Phase.CLOSED

    @property
    def sender(self) -> str | None:
        """The current transaction's reverse-path ("" for <>), for logs."""
        return self._mail.sender if self._mail is not None else None

    def next_event(self) -> Event:
        """Process buffered input up to the next thing the caller must do."""
        while True:
            phase = self._phase
            if phase is _Phase.CLOSED:
                assert self._close_event is not None
                return self._close_event
            if phase is _Phase.CHECKING or phase is _Phase.DELIVERING:
                return PAUSED
            if phase is _Phase.DATA:
                event = self._receive_body()
                if event is not None:
                    return event
                continue
            if self._stopping:
                return self._close(Replies.SHUTTING_DOWN.format(host=self._host), "shutdown")
            if self._out_size >= FLUSH_SIZE:
                return FLUSH
            line = self._next_line()
            if line is None:
                if self._eof:
                    return self._close(None, "eof")
                return NEED_DATA
            if isinstance(line, _LineTooLong):
                event = self._refuse(Replies.LINE_TOO_LONG)
            else:
                event = self._command(line)
            if event is not None:
                return event

    def recipients_checked(self, verdicts: Sequence[Reply | BaseException | None]) -> None:
        """The answers to :class:`CheckRecipients`, in its order: None accepts
        the address, a 4xx/5xx :class:`Reply` refuses it, an exception (the
        lookup failed) defers it."""
        if self._phase is not _Phase.CHECKING:
            raise RuntimeError("recipients_checked without CheckRecipients")
        lookups = sum(1 for entry in self._batch if entry.address is not None)
        if len(verdicts) != lookups:
            raise ValueError(f"{len(verdicts)} verdicts for {lookups} lookups")
        batch, self._batch = self._batch, []
        answers = iter(verdicts)
        self._phase = _Phase.COMMAND
        for entry in batch:
            if entry.address is not None:
                verdict = next(answers)
                if verdict is None:
                    if len(self._recipients) >= self.options.max_recipients:
                        entry.reply = Replies.TOO_MANY_RECIPIENTS
                    else:
                        self._recipients.append(entry.address)
                        entry.reply = Replies.RECIPIENT_OK
                elif isinstance(verdict, Reply) and verdict.code >= 400:
                    entry.reply = verdict
                    entry.counts_as_error = verdict.permanent
                else:
                    entry.reply = Replies.INTERNAL_ERROR
            assert entry.reply is not None
            if entry.counts_as_error:
                if self._refuse(entry.reply) is not None:
                    return  # closed: the rest of the batch goes unanswered
            else:
                self._send(entry.reply)

    def delivered(self, replies: Sequence[Reply] | BaseException) -> None:
        """The answer to :class:`Deliver`: one reply per recipient, in order
        (or the exception the delivery raised: every recipient is deferred)."""
        if self._phase is not _Phase.DELIVERING:
            raise RuntimeError("delivered without Deliver")
        count = self._delivering
        self._phase = _Phase.COMMAND
        if (isinstance(replies, BaseException) or len(replies) != count
                or not all(isinstance(r, Reply) and r.code // 100 != 3 for r in replies)):
            replies = [Replies.INTERNAL_ERROR] * count
        # One write for all recipients' replies (RFC 2033 section 4.2).
        for reply in replies:
            self._send(reply)

    def timed_out(self) -> Close:
        """The client kept us waiting too long: 421 and close."""
        return self._close(Replies.TIMEOUT.format(host=self._host), "timeout")

    def shutdown(self) -> None:
        """Close at the next command boundary with 421. A transaction whose
        data is being received or delivered completes first (with its
        replies); between commands, the close is immediate (nothing has been
        accepted for delivery: the MTA retries)."""
        self._stopping = True

    def internal_error(self) -> Close:
        """The caller hit a bug: the client's view of the transaction is
        unknown, so drop what was queued, say 421 and close; the MTA retries."""
        self.data_to_send()
        return self._close(Replies.INTERNAL_ERROR_CLOSING.format(host=self._host),
                           "internal-error")

    # -- plumbing ----------------------------------------------------------------

    def _send(self, reply: Reply) -> None:
        data = reply.to_bytes()
        self._out.append(data)
        self._out_size += len(data)

    def _close(self, reply: Reply | None, reason: str) -> Close:
        if self._phase is not _Phase.CLOSED:
            if reply is not None:
                self._send(reply)
            self._phase = _Phase.CLOSED
            self._close_event = Close(reason)
            self._in.clear()
            self._data = None
        assert self._close_event is not None
        return self._close_event

    def _refuse(self, reply: Reply) -> Close | None:
        """A refused command: it counts toward the error limit."""
        self._send(reply)
        self._errors += 1
        if self._errors >= ERROR_LIMIT:
            return self._close(Replies.TOO_MANY_ERRORS.format(host=self._host), "errors")
        return None

    def _next_line(self) -> bytes | _LineTooLong | None:
        buf = self._in
        lf = buf.find(b"\n")
        if self._skipping_line:
            # The tail of a command line that was too long: drop it.
            if lf < 0:
                buf.clear()
                return None
            del buf[:lf + 1]
            self._skipping_line = False
            return _LINE_TOO_LONG
        if lf < 0:
            if len(buf) > COMMAND_LINE_LIMIT:
                # Keep memory bounded: forget it now, refuse at its end.
                buf.clear()
                self._skipping_line = True
            return None
        line = bytes(buf[:lf + 1])
        del buf[:lf + 1]
        if len(line) > COMMAND_LINE_LIMIT:
            return _LINE_TOO_LONG
        return line

    def _command(self, line: bytes) -> Event | None:
        parts = split_command(line)
        if parts is None:
            return self._refuse(Replies.NOT_UTF8)
        verb, arg = parts
        handler = self._handlers.get(verb)
        if handler is None:
            return self._refuse(Replies.NOT_RECOGNIZED)
        return handler(arg)

    def _reset_transaction(self) -> None:
        self._mail = None
        self._recipients = []

    # -- commands ------------------------------------------------------------------

    def _lhlo(self, arg: str) -> Event | None:
        if not valid_lhlo_name(arg):
            return self._refuse(Replies.LHLO_SYNTAX)
        self._reset_transaction()
        self._lhlo_name = arg
        self._send(Replies.CAPABILITIES.format(host=self._host,
                                               size=self.options.data_size_limit))
        return None

    def _helo(self, arg: str) -> Event | None:
        return self._refuse(Replies.USE_LHLO)

    def _transaction_refusal(self) -> Reply | None:
        if self._lhlo_name is None:
            return Replies.NEED_LHLO
        if self._mail is None:
            return Replies.NEED_MAIL
        return None

    def _mail_from(self, arg: str) -> Event | None:
        if self._lhlo_name is None:
            return self._refuse(Replies.NEED_LHLO)
        if self._mail is not None:
            return self._refuse(Replies.NESTED_MAIL)
        mail = parse_mail(arg)
        if isinstance(mail, Reply):
            return self._refuse(mail)
        if mail.size is not None and mail.size > self.options.data_size_limit:
            return self._refuse(Replies.TOO_BIG)
        self._mail = mail
        self._send(Replies.SENDER_OK)
        return None

    def _rcpt_entry(self, arg: str, accepted: int) -> _Rcpt:
        """One RCPT judged without the backend, ``accepted`` recipients
        counted so far (including lookups of the batch not answered yet)."""
        refusal = self._transaction_refusal()
        if refusal is not None:
            return _Rcpt(None, refusal, counts_as_error=True)
        address = parse_rcpt(arg)
        if isinstance(address, Reply):
            return _Rcpt(None, address, counts_as_error=True)
        if accepted >= self.options.max_recipients:
            return _Rcpt(None, Replies.TOO_MANY_RECIPIENTS)
        return _Rcpt(address)

    def _rcpt(self, arg: str) -> Event | None:
        first = self._rcpt_entry(arg, len(self._recipients))
        if first.address is None:
            assert first.reply is not None
            if first.counts_as_error:
                return self._refuse(first.reply)
            self._send(first.reply)
            return None
        # Pipelining: the RCPTs already received are looked up together.
        batch = [first]
        lookups = 1
        while lookups < RCPT_BATCH_LIMIT:
            lf = self._in.find(b"\n")
            if lf < 0 or lf + 1 > COMMAND_LINE_LIMIT or self._in[:5].upper() != b"RCPT ":
                break
            parts = split_command(bytes(self._in[:lf + 1]))
            if parts is None or parts[0] != "RCPT":
                break
            entry = self._rcpt_entry(parts[1], len(self._recipients) + lookups)
            if entry.reply is Replies.TOO_MANY_RECIPIENTS:
                # Whether it is one too many depends on the answers so far:
                # judge it after them.
                break
            del self._in[:lf + 1]
            batch.append(entry)
            if entry.address is not None:
                lookups += 1
        self._batch = batch
        self._phase = _Phase.CHECKING
        return CheckRecipients(tuple(e.address for e in batch if e.address is not None))

    def _data_command(self, arg: str) -> Event | None:
        refusal = self._transaction_refusal()
        if refusal is not None:
            return self._refuse(refusal)
        if not self._recipients:
            return self._refuse(Replies.NO_RECIPIENTS)
        if arg:
            return self._refuse(Replies.DATA_SYNTAX)
        self._send(Replies.START_DATA)
        self._phase = _Phase.DATA
        self._data = bytearray()
        self._data_failure = None
        self._data_size = 0
        self._at_line_start = True
        return None

    def _rset(self, arg: str) -> Event | None:
        self._reset_transaction()
        self._send(Replies.OK)
        return None

    def _noop(self, arg: str) -> Event | None:
        self._send(Replies.OK)
        return None

    def _quit(self, arg: str) -> Event | None:
        return self._close(Replies.BYE.format(host=self._host), "quit")

    def _vrfy(self, arg: str) -> Event | None:
        self._send(Replies.CANNOT_VRFY)
        return None

    def _expn(self, arg: str) -> Event | None:
        return self._refuse(Replies.NO_EXPN)

    def _help(self, arg: str) -> Event | None:
        self._send(Replies.HELP)
        return None

    # -- DATA ------------------------------------------------------------------------

    def _fail_data(self, reply: Reply) -> None:
        # Drop what was read at once; the rest is read and discarded, so the
        # replies can come after the dot (RFC 5321 section 4.2.5).
        if self._data_failure is None:
            self._data_failure = reply
        self._data = None

    def _receive_body(self) -> Event | None:
        """Consume message data: complete lines only (up to the last LF),
        dot-unstuffed into one buffer. Returns NEED_DATA, an event, or None
        when the transaction ended without a delivery (its replies queued)."""
        buf = self._in
        limit = self.options.line_length_limit
        complete = buf.rfind(b"\n") + 1
        # Only CRLF.CRLF ends the data: a dot after a bare LF does not (SMTP
        # smuggling), and neither does the tail of an over-long line.
        if self._at_line_start and buf.startswith(b".\r\n"):
            ended, body_end, consumed = True, 0, 3
        else:
            end = buf.find(b"\r\n.\r\n", 0, complete)
            ended = end >= 0
            body_end, consumed = (end + 2, end + 5) if ended else (complete, complete)
        if body_end and self._data is not None:
            if _has_long_line(buf, body_end, limit):
                self._fail_data(Replies.LONG_DATA_LINE.format(limit=limit))
            else:
                piece = buf[:body_end]
                if self._at_line_start and piece[:1] == b".":
                    del piece[:1]
                if b"\r\n." in piece:
                    piece = piece.replace(b"\r\n.", b"\r\n")
                self._data_size += len(piece)
                if self._data_size > self.options.data_size_limit:
                    self._fail_data(Replies.TOO_BIG)
                else:
                    self._data += piece
        if ended:
            del buf[:consumed]
            return self._end_of_data()
        if consumed:
            self._at_line_start = buf[consumed - 2:consumed] == b"\r\n"
            del buf[:consumed]
        if len(buf) > limit:
            # A line that is already too long: forget it (but a final CR,
            # which may start the CRLF that ends it).
            self._fail_data(Replies.LONG_DATA_LINE.format(limit=limit))
            keep = 1 if buf.endswith(b"\r") else 0
            del buf[:len(buf) - keep]
            self._at_line_start = False
        if self._eof:
            # The client went away mid-message: nothing was accepted.
            return self._close(None, "eof")
        return NEED_DATA

    def _end_of_data(self) -> Event | None:
        data, failure = self._data, self._data_failure
        mail, recipients = self._mail, tuple(self._recipients)
        assert mail is not None
        self._data = None
        self._reset_transaction()
        self._phase = _Phase.COMMAND
        # RFC 6152 lets a server accept undeclared 8-bit data, and Dovecot
        # does, as pymap stores bytes anyway; so this is off by default.
        if (failure is None and data is not None and self.options.reject_undeclared_8bit
                and not (mail.body_8bitmime or mail.smtputf8) and not data.isascii()):
            failure = Replies.UNDECLARED_8BIT
        if failure is not None or data is None:
            for _ in recipients:
                self._send(failure or Replies.INTERNAL_ERROR)
            return None
        message = IncomingMessage(
            session_id=self.session_id, peer=self.peer, lhlo_name=self._lhlo_name or "",
            sender=mail.sender, recipients=recipients, data=crlf(bytes(data)),
            smtputf8=mail.smtputf8, body_8bitmime=mail.body_8bitmime,
            received_at=self._clock())
        self._phase = _Phase.DELIVERING
        self._delivering = len(recipients)
        return Deliver(message)
