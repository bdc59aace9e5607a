"""RFC 2033 LMTP on top of :class:`aiosmtpd.lmtp.LMTP`.

The protocol layer only: it accepts a transaction, asks a
:class:`DeliveryBackend` about each recipient and for the delivery, and writes
the replies. It knows nothing about gRPC or pymap.

The one promise LMTP adds to SMTP is that after the final dot there is exactly
one reply per accepted recipient, in RCPT order. aiosmtpd's ``smtp_DATA`` sends
a single reply (and a single one for its size and line-length errors), so this
subclass replaces the command loop and every command with code that keeps that
promise on every path, and prefixes every reply with an RFC 3463 enhanced
status code. aiosmtpd still provides the asyncio stream plumbing, the
connection bookkeeping and the idle timer.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from aiosmtpd.lmtp import LMTP

from pymap_admin.message import crlf
from pymap_admin.outcomes import MAX_REPLY_LINE

from .headers import is_header_safe
from .logfmt import SESSION, event
from .syntax import address_is_safe

__all__ = [
    "DeliveryBackend",
    "IncomingMessage",
    "LMTPOptions",
    "LMTPSession",
]


log = logging.getLogger("pymap_deliver.lmtp")


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


class DeliveryBackend(Protocol):
    """What the protocol layer needs from the delivery layer."""

    async def check_recipient(self, address: str) -> str | None:
        """None accepts the RCPT; otherwise a complete reply line such as
        ``"550 5.1.1 User unknown"`` is sent for it."""
        ...

    async def deliver(self, message: IncomingMessage) -> Sequence[str]:
        """One complete reply line per element of ``message.recipients``."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class LMTPOptions:
    """Per-session protocol settings (the server builds them from its config)."""

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


# The replies of this module, in one place. Backends supply their own lines.
R_INTERNAL_ERROR: Final = "451 4.3.0 Internal error, try again later"
R_TOO_BIG: Final = "552 5.3.4 Message too big"
R_TIMEOUT: Final = "421 4.4.2 {host} Error: timeout exceeded, closing connection"
R_SHUTDOWN: Final = "421 4.3.2 {host} Service shutting down, closing connection"
R_TOO_MANY_CONNECTIONS: Final = "421 4.3.2 {host} Too many connections, try again later"

# A reply line as this server may send it: code, enhanced code of the same
# class, text. Used to vet lines coming from the backend before they reach
# the wire, since a malformed one would desynchronise the client.
_REPLY_LINE = re.compile(r"([245])\d\d ([245])\.\d{1,3}\.\d{1,3}(?: [^\r\n\x00]*)?")
_HAS_ENHANCED = re.compile(rb"\d\d\d[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")

# A command line longer than this is refused. RFC 5321 section 4.5.3.1.4 says
# 512 octets, extensions add to it (SIZE, BODY, SMTPUTF8) and long addresses
# exist, so leave room.
_COMMAND_LINE_LIMIT: Final = 2048
# After this many bad commands the client is probably not an MTA; postfix's
# smtpd_hard_error_limit is 20 as well.
_ERROR_LIMIT: Final = 20

_DATA_END: Final = b".\r\n"

# Replies queued while pipelined commands are pending are written once they
# reach this size, so that a client sending commands without reading the
# replies makes us buffer at most this much (plus the transport's own
# high-water mark) before we stop reading from it.
_OUTPUT_FLUSH_SIZE: Final = 16 * 1024


def _valid_reply(line: object, *, classes: str = "245") -> bool:
    if not isinstance(line, str):
        return False
    match = _REPLY_LINE.fullmatch(line)
    return match is not None and match[1] == match[2] and match[1] in classes


def _parse_path(arg: str) -> tuple[str, str] | None:
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
    inner, rest = arg[1:index], arg[index + 1 :]
    if rest and not rest.startswith(" "):
        return None
    if inner.startswith("@"):
        _, colon, inner = inner.partition(":")
        if not colon:
            return None
    return inner, rest.strip()


def _parse_params(text: str) -> dict[str, str | None] | None:
    """ESMTP parameters as a dict of upper-cased keyword to value (None when
    the parameter has no ``=value``); None for a syntax error."""
    params: dict[str, str | None] = {}
    for item in text.split():
        keyword, eq, value = item.partition("=")
        if not keyword.isascii() or not keyword.isalnum() or (eq and not value):
            return None
        params[keyword.upper()] = value if eq else None
    return params


def _peer_text(peername: Any) -> str:
    if isinstance(peername, tuple) and len(peername) >= 2:
        host, port = peername[0], peername[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return "unix"


class LMTPSession(LMTP):
    """One LMTP connection. Create one per connection (it is an asyncio
    protocol); ``on_closed`` is called once the connection is gone *and* any
    delivery it started has finished, so a server can wait for both."""

    def __init__(
        self,
        backend: DeliveryBackend,
        options: LMTPOptions,
        *,
        loop: asyncio.AbstractEventLoop,
        on_closed: Callable[[LMTPSession], None] | None = None,
    ) -> None:
        # aiosmtpd sizes its StreamReader from this attribute in __init__; it
        # is also the longest data line we accept (see LMTPOptions).
        self.line_length_limit = options.line_length_limit
        super().__init__(
            None,
            data_size_limit=options.data_size_limit,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=options.hostname,
            timeout=options.idle_timeout,
            loop=loop,
        )
        self.backend = backend
        self.options = options
        self.session_id = secrets.token_hex(6)
        self.peer = "unknown"
        self._on_closed = on_closed
        self._lhlo_name: str | None = None
        self._sender: str | None = None
        self._recipients: list[str] = []
        self._body_8bitmime = False
        self._smtputf8 = False
        self._out: list[bytes] = []
        self._out_size = 0
        self._last_activity = loop.time()
        self._waiting_for_command = False
        self._waiting_for_input = False
        self._waiting_for_output = False
        self._stopping = False
        self._errors = 0
        self._delivery_task: asyncio.Task[Sequence[str]] | None = None
        self._lost = False
        self._commands: dict[str, Callable[[str], Any]] = {
            "LHLO": self.smtp_LHLO,
            "HELO": self.smtp_HELO,
            "EHLO": self.smtp_EHLO,
            "MAIL": self.smtp_MAIL,
            "RCPT": self.smtp_RCPT,
            "DATA": self.smtp_DATA,
            "RSET": self.smtp_RSET,
            "NOOP": self.smtp_NOOP,
            "QUIT": self.smtp_QUIT,
            "VRFY": self.smtp_VRFY,
            "EXPN": self.smtp_EXPN,
            "HELP": self.smtp_HELP,
        }

    def __dir__(self) -> list[str]:
        # aiosmtpd's __init__ walks dir(self) with inspect.getmembers on every
        # connection to collect smtp_*/auth_* methods: ~60 us, a tenth of a
        # small delivery's CPU. This class dispatches through its own table
        # (self._commands) and offers no AUTH, so that walk finds nothing we
        # use; an empty dir() skips it.
        return []

    # -- connection lifecycle ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.peer = _peer_text(transport.get_extra_info("peername"))
        log.info(event("session open", session=self.session_id, peer=self.peer))

    def connection_lost(self, error: Exception | None) -> None:
        self._lost = True
        super().connection_lost(error)
        task = self._delivery_task
        if task is not None and not task.done():
            # The client went away during a delivery. The delivery itself is
            # shielded and runs to its end (what was stored stays stored; the
            # MTA will retry the rest); report the session closed after it.
            log.info(event("session closed during delivery, letting it finish",
                           session=self.session_id))
            task.add_done_callback(lambda _: self._report_closed())
        else:
            self._report_closed()

    def eof_received(self) -> bool | None:
        # aiosmtpd cancels the session on EOF, which would drop commands a
        # client pipelined before half-closing. Let the reader see the EOF
        # instead: buffered commands are answered, then the loop ends.
        return asyncio.StreamReaderProtocol.eof_received(self)

    def _report_closed(self) -> None:
        log.info(event("session closed", session=self.session_id))
        if self._on_closed is not None:
            self._on_closed(self)

    def shutdown(self) -> None:
        """Begin a graceful close. A session waiting for its next command is
        told 421 and closed now (even between MAIL and DATA: nothing has been
        accepted for delivery yet, the MTA simply retries). A session that is
        processing a command, receiving data or delivering finishes that
        (the data, the delivery and its replies) and is closed after it."""
        self._stopping = True
        if self._waiting_for_command:
            self._close_with(R_SHUTDOWN.format(host=self.hostname))

    def abort(self) -> None:
        """Drop the connection at once (after a shutdown grace period)."""
        transport = self.transport
        if isinstance(transport, asyncio.Transport):
            transport.abort()

    def _close_with(self, reply: str) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(reply.encode("utf-8") + b"\r\n")
        transport.close()

    def _timeout_cb(self) -> None:
        # aiosmtpd's timer only restarts on commands, so a long DATA transfer
        # or a slow backend would be cut off, and it closes without a reply.
        # Here the timer is armed once and re-armed from the last activity,
        # which costs nothing per data line; only waiting for the client counts.
        if self.transport is None:
            return
        if not (self._waiting_for_input or self._waiting_for_output):
            # Busy (our backend, or processing): not the client's idleness.
            self._reset_timeout()
            return
        idle = self.loop.time() - self._last_activity
        if idle < self._timeout_duration:
            self._reset_timeout(self._timeout_duration - idle)
            return
        if self._waiting_for_output:
            # The client does not read its replies: a 421 would not be read
            # either. Drop it, so it cannot hold a slot (and a stop) forever.
            log.info("session %s write timeout: the client does not read", self.session_id)
            self.abort()
            return
        log.info("session %s idle timeout", self.session_id)
        self._close_with(R_TIMEOUT.format(host=self.hostname))

    # -- output --------------------------------------------------------------

    async def push(self, status: str | bytes) -> None:
        """Queue a reply line; it is written at the next :meth:`_flush`.

        Any line that lacks an enhanced status code gets a generic one of its
        class, so no path (including aiosmtpd code) can send a bare reply.
        The greeting and 354 are exempt (RFC 2034 section 3, and what postfix
        and Dovecot send).
        """
        line = status.encode("utf-8") if isinstance(status, str) else status
        if not line.startswith((b"220", b"354")) and not _HAS_ENHANCED.match(line):
            code, text = line[:3], line[4:]
            cls = code[:1] if code[:1] in (b"2", b"4", b"5") else b"5"
            line = code + line[3:4] + cls + b".0.0 " + text
        if len(line) > MAX_REPLY_LINE - 2:
            # RFC 5321 section 4.5.3.1.5 (a Sieve reason can be any length);
            # cut on a character boundary so the client gets valid UTF-8.
            line = line[:MAX_REPLY_LINE - 2].decode("utf-8", "ignore").encode("utf-8")
        self._queue(line + b"\r\n")

    def _queue(self, line: bytes) -> None:
        self._out.append(line)
        self._out_size += len(line)

    async def _flush(self) -> None:
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            self._out_size = 0
            self._writer.write(data)
            # The write deadline: waiting for the client to take our replies
            # counts as its idleness, from now (see _timeout_cb).
            self._waiting_for_output = True
            self._last_activity = self.loop.time()
            try:
                await self._writer.drain()
            finally:
                self._waiting_for_output = False
                self._last_activity = self.loop.time()

    def _input_pending(self) -> bool:
        # Under PIPELINING the client may already have sent the next command;
        # answering a batch in one write then saves a syscall and a packet per
        # command. StreamReader has no public "bytes buffered" query, so peek
        # (aiosmtpd itself touches this attribute); unknown means "flush".
        buffer = getattr(self._reader, "_buffer", None)
        return isinstance(buffer, bytearray) and b"\n" in buffer

    # -- the command loop ------------------------------------------------------

    async def _handle_client(self) -> None:
        # This task's lines, and those of the tasks it starts, name the session.
        SESSION.set(self.session_id)
        await self.push(f"220 {self.hostname} LMTP pymap-deliver ready")
        try:
            while self.transport is not None and not self.transport.is_closing():
                if self._stopping:
                    await self.push(R_SHUTDOWN.format(host=self.hostname))
                    await self._flush()
                    self.transport.close()
                    return
                if not self._input_pending() or self._out_size >= _OUTPUT_FLUSH_SIZE:
                    await self._flush()
                line = await self._read_command()
                if line is None:
                    continue
                await self._dispatch(line)
        except asyncio.CancelledError:
            # connection_lost cancels us: the peer is gone.
            return
        except (ConnectionError, asyncio.IncompleteReadError):
            # EOF from the peer (possibly mid-data), or a reset while writing.
            return
        except Exception:
            log.exception("session %s internal error", self.session_id)
            # The client's view of the transaction is unknown after a bug;
            # closing makes the MTA retry rather than guess.
            self._out.clear()
            self._close_with(
                f"421 4.3.0 {self.hostname} Internal error, closing connection"
            )
        finally:
            # Whatever ended the loop, nobody reads this connection any more:
            # left open, it would hold its slot (and a graceful stop) forever.
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()

    async def _read_line(self, separator: bytes) -> bytes:
        self._waiting_for_input = True
        try:
            return await self._reader.readuntil(separator)
        finally:
            self._waiting_for_input = False
            self._last_activity = self.loop.time()

    async def _read_command(self) -> bytes | None:
        self._waiting_for_command = True
        try:
            line = await self._read_line(b"\n")
        except asyncio.LimitOverrunError as exc:
            await self._discard_long_line(exc.consumed, b"\n")
            await self._error("500 5.5.2 Line too long")
            return None
        finally:
            self._waiting_for_command = False
        if len(line) > _COMMAND_LINE_LIMIT:
            await self._error("500 5.5.2 Line too long")
            return None
        return line

    async def _discard_long_line(self, consumed: int, separator: bytes) -> None:
        await self._reader.read(consumed)
        while True:
            try:
                await self._read_line(separator)
                return
            except asyncio.LimitOverrunError as exc:
                await self._reader.read(exc.consumed)

    async def _error(self, reply: str) -> None:
        await self.push(reply)
        self._errors += 1
        if self._errors >= _ERROR_LIMIT:
            await self.push(f"421 4.7.0 {self.hostname} Too many errors, closing connection")
            await self._flush()
            if self.transport is not None:
                self.transport.close()

    async def _dispatch(self, raw: bytes) -> None:
        line = raw.rstrip(b"\r\n")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            # Addresses go on to the backend (and to gRPC) as str; invalid
            # UTF-8 cannot, so refuse it here rather than mangle it.
            await self._error("500 5.5.2 Command is not valid UTF-8")
            return
        verb, _, arg = text.partition(" ")
        handler = self._commands.get(verb.upper())
        if handler is None:
            await self._error("500 5.5.2 Error: command not recognized")
            return
        await handler(arg.strip())

    # -- commands --------------------------------------------------------------

    def _reset_transaction(self) -> None:
        self._sender = None
        self._recipients = []
        self._body_8bitmime = False
        self._smtputf8 = False

    async def smtp_LHLO(self, arg: str) -> None:
        if not arg or " " in arg or not arg.isprintable():
            await self._error("501 5.5.4 Syntax: LHLO hostname")
            return
        self._reset_transaction()
        self._lhlo_name = arg
        for keyword in (
            self.hostname,
            "PIPELINING",
            "ENHANCEDSTATUSCODES",
            "8BITMIME",
            f"SIZE {self.options.data_size_limit}",
        ):
            self._queue(f"250-{keyword}\r\n".encode())
        # Written around push(): RFC 2034 puts no enhanced code on these lines.
        self._queue(b"250 SMTPUTF8\r\n")

    async def smtp_HELO(self, arg: str) -> None:
        await self._error("500 5.5.1 Error: this is an LMTP server, use LHLO")

    async def smtp_EHLO(self, arg: str) -> None:
        await self._error("500 5.5.1 Error: this is an LMTP server, use LHLO")

    async def _need_lhlo(self) -> bool:
        if self._lhlo_name is None:
            await self._error("503 5.5.1 Error: send LHLO first")
            return True
        return False

    async def smtp_MAIL(self, arg: str) -> None:
        if await self._need_lhlo():
            return
        if self._sender is not None:
            await self._error("503 5.5.1 Error: nested MAIL command")
            return
        syntax = "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"
        if arg[:5].upper() != "FROM:":
            await self._error(syntax)
            return
        parsed = _parse_path(arg[5:])
        # An unparseable path is checked whole: a CR may come with a space, as
        # in "<a\rBcc: b>", and must still be reported as the unsafe address.
        if not address_is_safe(arg[5:] if parsed is None else parsed[0]):
            await self._error("501 5.1.7 Bad sender address syntax")
            return
        params = _parse_params(parsed[1]) if parsed is not None else None
        if parsed is None or params is None:
            await self._error(syntax)
            return
        address = parsed[0]
        body = params.pop("BODY", "7BIT")
        if body is None or body.upper() not in ("7BIT", "8BITMIME"):
            await self._error("501 5.5.4 BODY must be 7BIT or 8BITMIME")
            return
        smtputf8 = "SMTPUTF8" in params
        if params.pop("SMTPUTF8", None) is not None:
            await self._error("501 5.5.4 SMTPUTF8 takes no value")
            return
        if "SIZE" in params:
            size = params.pop("SIZE")
            if size is None or not size.isdigit():
                await self._error("501 5.5.4 Syntax: SIZE=<number>")
                return
            if int(size) > self.options.data_size_limit:
                await self._error(R_TOO_BIG)
                return
        if params:
            await self._error("555 5.5.4 Unsupported MAIL parameter " + " ".join(params))
            return
        self._sender = address
        self._body_8bitmime = body.upper() == "8BITMIME"
        self._smtputf8 = smtputf8
        await self.push("250 2.1.0 Sender OK")

    async def smtp_RCPT(self, arg: str) -> None:
        if await self._need_lhlo():
            return
        if self._sender is None:
            await self._error("503 5.5.1 Error: need MAIL command")
            return
        syntax = "501 5.5.4 Syntax: RCPT TO:<address>"
        if arg[:3].upper() != "TO:":
            await self._error(syntax)
            return
        parsed = _parse_path(arg[3:])
        if not address_is_safe(arg[3:] if parsed is None else parsed[0]):
            await self._error("501 5.1.3 Bad recipient address syntax")
            return
        params = _parse_params(parsed[1]) if parsed is not None else None
        if parsed is None or params is None or not parsed[0]:
            await self._error(syntax)
            return
        if params:
            await self._error("555 5.5.4 Unsupported RCPT parameter " + " ".join(params))
            return
        if len(self._recipients) >= self.options.max_recipients:
            # RFC 5321 section 4.5.3.1.10: 452, and the client sends the rest later.
            await self.push("452 4.5.3 Too many recipients")
            return
        address = parsed[0]
        try:
            verdict = await self._check_recipient(address)
        except Exception:
            log.exception("session %s check_recipient(%r) failed", self.session_id, address)
            verdict = R_INTERNAL_ERROR
        if verdict is None:
            self._recipients.append(address)
            await self.push("250 2.1.5 Recipient OK")
            return
        if not _valid_reply(verdict, classes="45"):
            log.error(
                "session %s check_recipient(%r) returned an invalid reply %r",
                self.session_id, address, verdict,
            )
            verdict = R_INTERNAL_ERROR
        log.info(event("rcpt refused", session=self.session_id, **{"from": f"<{self._sender}>"},
                       rcpt=f"<{address}>", status=verdict))
        if verdict.startswith("5"):
            # An unknown user counts as an error: a session cannot make
            # unbounded lookups (postfix's smtpd counts them likewise).
            await self._error(verdict)
        else:
            await self.push(verdict)

    async def _check_recipient(self, address: str) -> str | None:
        """Ask the backend, writing the replies queued so far before waiting
        for it: under PIPELINING the client may be waiting for them, and a
        slow lookup must not hold back the answers to earlier commands. An
        answer the backend has at hand (cached) costs no write."""
        if not self._out:
            return await self.backend.check_recipient(address)
        lookup = self.loop.create_task(self.backend.check_recipient(address))
        try:
            await asyncio.sleep(0)  # one step: a cached answer is done by now
            if not lookup.done():
                await self._flush()
            return await lookup
        finally:
            lookup.cancel()  # only if this session is being cancelled

    async def smtp_RSET(self, arg: str) -> None:
        self._reset_transaction()
        await self.push("250 2.0.0 OK")

    async def smtp_NOOP(self, arg: str) -> None:
        await self.push("250 2.0.0 OK")

    async def smtp_QUIT(self, arg: str) -> None:
        await self.push(f"221 2.0.0 {self.hostname} Bye")
        await self._flush()
        if self.transport is not None:
            self.transport.close()

    async def smtp_VRFY(self, arg: str) -> None:
        # RFC 5321 section 3.5.3: 252 when not verifying; never a user oracle.
        await self.push("252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery")

    async def smtp_EXPN(self, arg: str) -> None:
        await self._error("502 5.5.1 EXPN not implemented")

    async def smtp_HELP(self, arg: str) -> None:
        await self.push("214 2.0.0 Commands: LHLO MAIL RCPT DATA RSET NOOP QUIT VRFY")

    async def smtp_DATA(self, arg: str) -> None:
        if await self._need_lhlo():
            return
        if self._sender is None:
            await self._error("503 5.5.1 Error: need MAIL command")
            return
        if not self._recipients:
            await self._error("503 5.5.1 Error: no valid recipients")
            return
        if arg:
            await self._error("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        await self._flush()

        recipients = tuple(self._recipients)
        data, failure = await self._receive_data()
        received_at = time.time()
        # RFC 6152 lets a server accept undeclared 8-bit data, and Dovecot does,
        # as pymap stores bytes anyway; so this is off by default. Operators
        # who want RFC 5321 strictness can turn it on.
        if (
            failure is None
            and data is not None
            and self.options.reject_undeclared_8bit
            and not (self._body_8bitmime or self._smtputf8)
            and not data.isascii()
        ):
            failure = "554 5.6.0 Message contains undeclared 8-bit data"
        if failure is not None or data is None:
            replies: Sequence[str] = [failure or R_INTERNAL_ERROR] * len(recipients)
        else:
            message = IncomingMessage(
                session_id=self.session_id,
                peer=self.peer,
                lhlo_name=self._lhlo_name or "",
                sender=self._sender,
                recipients=recipients,
                data=crlf(bytes(data)),
                smtputf8=self._smtputf8,
                body_8bitmime=self._body_8bitmime,
                received_at=received_at,
            )
            # The bytes copy exists now; drop the buffer before the (possibly
            # long) delivery so the peak stays near two message sizes.
            del data
            self._reset_transaction()
            replies = await self._deliver(message)
        self._reset_transaction()
        # One write for all recipients' replies (RFC 2033 section 4.2).
        for reply in replies:
            await self.push(reply)
        await self._flush()

    async def _receive_data(self) -> tuple[bytearray | None, str | None]:
        """Read the message up to the final dot, dot-unstuffing into one
        buffer. On a size or line-length failure the data read so far is
        dropped at once and the rest is read and discarded, so the reply can
        come after the dot (RFC 5321 section 4.2.5)."""
        limit = self.options.data_size_limit
        buffer: bytearray | None = bytearray()
        failure: str | None = None
        size = 0
        # Two notions of "line": lengths are counted from LF to LF (a client
        # sending bare LFs has short lines, not one huge one), but only a CRLF
        # starts a line for dot-stuffing and the final dot (RFC 5321 section
        # 4.5.2; a bare-LF dot must not end the data: SMTP smuggling).
        at_line_start = True  # not in the tail of an over-long line
        after_crlf = True
        skipped_cr = False  # the part of an over-long line skipped ended in CR
        while True:
            try:
                line = await self._read_line(b"\n")
            except asyncio.LimitOverrunError as exc:
                # Longer than the StreamReader limit, which is our line limit.
                skipped = await self._reader.read(exc.consumed)
                skipped_cr = skipped.endswith(b"\r")
                if failure is None:
                    failure = (
                        f"554 5.6.0 Message has a line longer than "
                        f"{self.options.line_length_limit} bytes"
                    )
                buffer = None
                at_line_start = False
                continue
            line_start = after_crlf
            after_crlf = line.endswith(b"\r\n") or (
                not at_line_start and skipped_cr and line == b"\n")
            if not at_line_start:
                at_line_start = True  # the tail of an over-long line
                continue
            if line_start and line == _DATA_END:
                return buffer, failure
            if buffer is None:
                continue
            if line_start and line[:1] == b".":
                line = line[1:]
            size += len(line)
            if size > limit:
                failure = R_TOO_BIG
                buffer = None
                continue
            buffer += line

    async def _deliver(self, message: IncomingMessage) -> Sequence[str]:
        count = len(message.recipients)
        # Shielded so that a client closing the connection (which cancels this
        # coroutine) does not cancel a delivery pymap may already be storing.
        task = self.loop.create_task(self.backend.deliver(message))
        self._delivery_task = task
        task.add_done_callback(self._delivery_done)
        try:
            # list(): a backend returning a str or an iterator still yields
            # a countable result (and a wrong count becomes 451s below).
            replies = list(await asyncio.shield(task))
        except Exception:
            log.exception("session %s delivery failed", self.session_id)
            return [R_INTERNAL_ERROR] * count
        if len(replies) != count:
            log.error(
                "session %s backend returned %d replies for %d recipients",
                self.session_id, len(replies), count,
            )
            return [R_INTERNAL_ERROR] * count
        checked = []
        for reply in replies:
            if not _valid_reply(reply):
                log.error("session %s backend returned an invalid reply %r",
                          self.session_id, reply)
                reply = R_INTERNAL_ERROR
            checked.append(reply)
        return checked

    def _delivery_done(self, task: asyncio.Task[Sequence[str]]) -> None:
        # Retrieve the exception of a delivery nobody awaits any more (client
        # gone) so asyncio does not warn "exception was never retrieved".
        if self._lost and not task.cancelled() and task.exception() is not None:
            log.error("session %s delivery after disconnect failed: %r",
                      self.session_id, task.exception())
