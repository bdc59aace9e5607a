"""The asyncio adapter: runs one :class:`~pymap_deliver.protocol.Connection`
per LMTP connection.

Every protocol decision is the sans-I/O core's (:mod:`.protocol`). This
module owns only what needs a loop: the transport (reading, writing,
flushing before every wait on the backend), the read and write deadlines,
the backend calls as tasks (a batch of RCPT lookups concurrently, the
delivery shielded from the client going away), shutdown and abort.

aiosmtpd is not used at runtime. Its public surface is the ``SMTP`` class
with its command loop, ``smtp_*`` verbs and handler hooks; RFC 2033 needs
one reply per recipient on the DATA paths that loop answers itself (size,
line length), concurrent RCPT lookups the sequential loop cannot start,
control of flushing under pipelining, and deadlines the idle timer does not
offer; each of those lived in private names (``_handle_client``,
``_timeout_cb``, ``StreamReader._buffer``). What remained public (a
``StreamReaderProtocol`` and a greeting) is less than asyncio.Protocol
gives. It stays the anchor of the load benchmark (``benchmarks/``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol, cast

from pymap_admin.outcomes import Reply

from .logfmt import event as log_event
from .logfmt import session_context
from .protocol import (
    FLUSH,
    NEED_DATA,
    CheckRecipients,
    Close,
    Connection,
    Deliver,
    IncomingMessage,
    LMTPOptions,
)

__all__ = [
    "DeliveryBackend",
    "IncomingMessage",
    "LMTPOptions",
    "LMTPSession",
]

log = logging.getLogger("pymap_deliver.lmtp")

# Input received but not processed yet (pipelined commands arriving while
# the backend works) above which we stop reading from the client.
_INPUT_HIGH_WATER: Final = 256 * 1024


class DeliveryBackend(Protocol):
    """What the protocol layer needs from the delivery layer."""

    async def check_recipient(self, address: str) -> Reply | None:
        """None accepts the RCPT; otherwise the 4xx/5xx reply refusing it."""
        ...

    async def deliver(self, message: IncomingMessage) -> Sequence[Reply]:
        """One reply per element of ``message.recipients``, in order."""
        ...


class KnownVerdicts(Protocol):
    """Optional for a backend: the verdicts it can give without waiting
    (all of them, or None), as :meth:`DeliveryBackend.check_recipient`
    would give them."""

    def known_verdicts(self, addresses: Sequence[str]) -> Sequence[Reply | None] | None:
        ...


def _peer_text(peername: Any) -> str:
    if isinstance(peername, tuple) and len(peername) >= 2:
        host, port = peername[0], peername[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return "unix"


class LMTPSession(asyncio.Protocol):
    """One LMTP connection (an asyncio protocol: create one per connection).
    ``on_closed`` is called once the connection is gone *and* any delivery it
    started has finished, so a server can wait for both."""

    def __init__(
        self,
        backend: DeliveryBackend,
        options: LMTPOptions,
        *,
        loop: asyncio.AbstractEventLoop,
        on_closed: Callable[[LMTPSession], None] | None = None,
    ) -> None:
        self.backend = backend
        self.options = options
        self.loop = loop
        self.session_id = secrets.token_hex(6)
        self.peer = "unknown"
        self._on_closed = on_closed
        self._transport: asyncio.Transport | None = None
        self._conn: Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._delivering = False
        self._lost = False
        self._closing = False
        #: Why we closed (None: the client went away first).
        self._close_reason: str | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._last_input = loop.time()
        self._read_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        # The session's tasks run in a context naming it: every line they
        # (and the backend) log says session=.
        self._log_context = session_context(self.session_id)
        # A backend that can answer known recipients at once (optional).
        self._known = (cast(KnownVerdicts, backend) if hasattr(backend, "known_verdicts")
                       else None)

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.peer = _peer_text(transport.get_extra_info("peername"))
        self._conn = Connection(self.options, session_id=self.session_id, peer=self.peer)
        log.info(log_event("session open", session=self.session_id, peer=self.peer))
        self._pump()

    def data_received(self, data: bytes) -> None:
        if self._conn is None:
            return
        self._last_input = self.loop.time()
        self._conn.receive_data(data)
        self._pump()

    def eof_received(self) -> bool:
        # The client shut its side: commands it pipelined before are still
        # answered (the core closes once they are), so keep the transport.
        if self._conn is not None:
            self._conn.receive_data(b"")
            self._pump()
        return True

    def pause_writing(self) -> None:
        # The client does not take our replies: stop processing (and reading)
        # its commands, and give it the idle timeout to start reading again.
        self._writing_paused = True
        self._write_timer = self.loop.call_later(self.options.idle_timeout,
                                                 self._write_timeout)
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        self._pump()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._closing = True
        self._transport = None
        for timer in (self._read_timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        task = self._task
        if task is not None and not task.done() and not self._delivering:
            # RCPT lookups nobody will read the answers of.
            task.cancel()
        if task is not None and not task.done() and self._delivering:
            # The client went away during a delivery. The delivery runs to its
            # end (what was stored stays stored; the MTA will retry the
            # rest); the session counts as closed after it.
            log.info(log_event("session closed during delivery, letting it finish",
                           session=self.session_id))
            task.add_done_callback(lambda _: self._report_closed())
        else:
            self._report_closed()

    # -- the server's interface ---------------------------------------------------------

    def shutdown(self) -> None:
        """Begin a graceful close: between commands a 421 and close now (even
        between MAIL and DATA: nothing has been accepted for delivery yet, the
        MTA simply retries); a message being received or delivered is
        finished first, with its replies, then 421 and close."""
        if self._conn is not None:
            self._conn.shutdown()
            self._pump()

    def abort(self) -> None:
        """Drop the connection at once (after a shutdown grace period)."""
        if self._transport is not None:
            self._transport.abort()

    # -- driving the core -----------------------------------------------------------------

    def _pump(self) -> None:
        """Run the core until it needs the client, the backend or a flush;
        write its replies before any wait."""
        conn, transport = self._conn, self._transport
        if conn is None or transport is None or self._closing:
            return
        if self._task is not None or self._writing_paused:
            self._update_reading()
            return
        try:
            while True:
                event = conn.next_event()
                if event is FLUSH:
                    self._write(conn.data_to_send())
                    if self._writing_paused or self._transport is None:
                        break
                    continue
                if event is NEED_DATA:
                    break
                if isinstance(event, CheckRecipients):
                    known = (self._known.known_verdicts(event.addresses)
                             if self._known is not None else None)
                    if known is not None:
                        self._log_refusals(event.addresses, known)
                        conn.recipients_checked(known)
                        continue
                    self._task = self.loop.create_task(self._check(event.addresses),
                                                       context=self._log_context)
                    break
                if isinstance(event, Deliver):
                    self._delivering = True
                    self._task = self.loop.create_task(self._deliver(event.message),
                                                       context=self._log_context)
                    break
                assert isinstance(event, Close)
                self._close(event)
                return
        except Exception:
            log.exception(log_event("internal error", session=self.session_id))
            self._close(conn.internal_error())
            return
        self._write(conn.data_to_send())
        self._update_reading()
        self._arm_read_timer()

    def _write(self, data: bytes) -> None:
        if data and self._transport is not None:
            self._transport.write(data)

    def _close(self, event: Close) -> None:
        assert self._conn is not None
        self._closing = True
        self._close_reason = event.reason
        # After QUIT the "session closed" line says it; anything else (a
        # timeout, errors, shutdown) is worth a line of its own at once.
        log.log(logging.DEBUG if event.reason == "quit" else logging.INFO,
                log_event("session closing", session=self.session_id, reason=event.reason))
        self._write(self._conn.data_to_send())
        if self._transport is not None:
            self._transport.close()

    def _update_reading(self) -> None:
        """Read while the client is heard and its input is bounded."""
        transport, conn = self._transport, self._conn
        if transport is None or conn is None or transport.is_closing():
            return
        stop = self._writing_paused or conn.buffered > _INPUT_HIGH_WATER
        if stop and not self._reading_paused:
            transport.pause_reading()
            self._reading_paused = True
        elif not stop and self._reading_paused:
            transport.resume_reading()
            self._reading_paused = False

    # -- deadlines ----------------------------------------------------------------------------

    def _arm_read_timer(self) -> None:
        # Armed once and re-armed from the last input when it fires, which
        # costs nothing per packet; only time waiting for the client counts.
        if self._read_timer is None:
            self._read_timer = self.loop.call_later(self.options.idle_timeout,
                                                    self._read_timeout)

    def _read_timeout(self) -> None:
        self._read_timer = None
        conn = self._conn
        if conn is None or self._closing:
            return
        waiting = conn.waiting_for_client and self._task is None and not self._writing_paused
        if not waiting:
            # Busy (the backend, or the client not reading): not idleness.
            self._last_input = self.loop.time()
        idle = self.loop.time() - self._last_input
        if idle < self.options.idle_timeout:
            self._read_timer = self.loop.call_later(self.options.idle_timeout - idle,
                                                    self._read_timeout)
            return
        self._close(conn.timed_out())

    def _write_timeout(self) -> None:
        self._write_timer = None
        # A 421 would not be read either: drop the connection, so that the
        # client cannot hold a slot (and a graceful stop) for ever.
        self._close_reason = "write timeout, the client does not read"
        log.info(log_event("session closing", session=self.session_id,
                           reason=self._close_reason))
        self._closing = True
        self.abort()

    # -- the backend ----------------------------------------------------------------------------

    async def _check(self, addresses: tuple[str, ...]) -> None:
        # All RCPTs the client pipelined are looked up at once; the core
        # answers them in order.
        verdicts: list[Reply | BaseException | None]
        if len(addresses) == 1:
            # The common case (a client that waits for each reply): no
            # gather, no task per lookup.
            try:
                verdicts = [await self.backend.check_recipient(addresses[0])]
            except Exception as exc:
                verdicts = [exc]
        else:
            verdicts = await asyncio.gather(
                *(self.backend.check_recipient(address) for address in addresses),
                return_exceptions=True)
        self._log_refusals(addresses, verdicts)
        self._task = None
        if self._conn is not None and not self._lost:
            self._conn.recipients_checked(verdicts)
            self._pump()

    def _log_refusals(self, addresses: Sequence[str],
                      verdicts: Sequence[Reply | BaseException | None]) -> None:
        sender = self._conn.sender if self._conn is not None else None
        for address, verdict in zip(addresses, verdicts, strict=True):
            if isinstance(verdict, BaseException):
                log.error(log_event("rcpt check failed", session=self.session_id,
                                rcpt=f"<{address}>", error=repr(verdict)))
            elif verdict is not None:
                log.info(log_event("rcpt refused", {"from": f"<{sender}>"},
                               session=self.session_id, rcpt=f"<{address}>",
                               status=str(verdict)))

    async def _deliver(self, message: IncomingMessage) -> None:
        # Not cancelled when the client goes away: pymap may be storing.
        replies: Sequence[Reply] | BaseException
        try:
            replies = await self.backend.deliver(message)
        except Exception as exc:
            log.exception(log_event("delivery failed", session=self.session_id))
            replies = exc
        else:
            if len(replies) != len(message.recipients):
                log.error(log_event("backend returned a wrong number of replies",
                                session=self.session_id, replies=len(replies),
                                recipients=len(message.recipients)))
        self._task = None
        self._delivering = False
        if self._lost:
            return
        assert self._conn is not None
        self._conn.delivered(replies)
        self._pump()

    def _report_closed(self) -> None:
        log.info(log_event("session closed", session=self.session_id,
                           reason=self._close_reason))
        if self._on_closed is not None:
            self._on_closed(self)
