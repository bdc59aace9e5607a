"""The delivery backend: one ``Mailbox.Append`` per accepted recipient.

All recipients of a message are appended concurrently on the client's one
HTTP/2 channel, under a global bound on calls in flight. Each recipient's
reply comes from the outcome table (:mod:`pymap_admin.outcomes`); nothing is
answered 2xx before pymap has answered SUCCESS for it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial

from pymap_admin import AdminClient, AppendResult, errors
from pymap_admin.outcomes import Outcome, Reply, delivered, outcome_for_error

from .headers import message_id, trace_headers
from .logfmt import event
from .metrics import Stats
from .protocol import IncomingMessage
from .recipients import RecipientRules, Target

__all__ = ["ByteBudget", "DeliveryOptions", "PymapBackend"]

log = logging.getLogger("pymap_deliver.delivery")


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryOptions:
    hostname: str
    rules: RecipientRules = field(default_factory=RecipientRules)
    #: Look the user up at RCPT time, so an unknown user is refused before DATA.
    check_recipients: bool = True
    #: At RCPT time, defer (451) when pymap cannot be asked; False accepts
    #: the recipient and lets the delivery decide after DATA.
    defer_unreachable_at_rcpt: bool = True
    #: How long a recipient lookup is remembered, in seconds.
    lookup_cache_ttl: float = 30.0
    #: The most Append/GetUser calls in flight on the channel at once.
    max_in_flight: int = 256
    #: The most message bytes in Append calls in flight at once, all sessions
    #: together; more calls wait their turn. Each call holds its encoded
    #: request (about twice the message: the request and its gRPC frame)
    #: until pymap answers, so this bounds the memory of deliveries rather
    #: than recipients x size. A message larger than this is sent alone.
    max_bytes_in_flight: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be positive")
        if self.max_bytes_in_flight < 1:
            raise ValueError("max_bytes_in_flight must be positive")
        if self.lookup_cache_ttl < 0:
            raise ValueError("lookup_cache_ttl must not be negative")


@lru_cache(maxsize=64)
def _delivered(discarded: bool, queue_id: str) -> Outcome:
    # Every recipient of a message stored: one reply, made and checked once.
    return delivered(discarded=discarded, queue_id=queue_id)


class ByteBudget:
    """A semaphore counted in bytes, first come first served (so a large
    request is not starved by a stream of small ones). A request larger than
    the whole budget waits until nothing else holds any, then runs alone."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def reserve(self, size: int) -> _Reservation:
        """``async with budget.reserve(n):`` holds ``n`` bytes of the budget."""
        return _Reservation(self, min(size, self.limit))

    async def _acquire(self, size: int) -> None:
        if not self._waiters and self.used + size <= self.limit:
            self.used += size
            return
        waiter = asyncio.get_running_loop().create_future()
        entry = (size, waiter)
        self._waiters.append(entry)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release(size)  # granted, then cancelled: give it back
            else:
                self._waiters.remove(entry)
                self._wake()
            raise

    def _release(self, size: int) -> None:
        self.used -= size
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used + self._waiters[0][0] <= self.limit:
            size, waiter = self._waiters.popleft()
            if not waiter.done():
                self.used += size
                waiter.set_result(None)


class _Reservation:
    """What :meth:`ByteBudget.reserve` returns (a plain async context
    manager: one per Append, so not a generator-based one)."""

    __slots__ = ("_budget", "_size")

    def __init__(self, budget: ByteBudget, size: int) -> None:
        self._budget = budget
        self._size = size

    async def __aenter__(self) -> None:
        await self._budget._acquire(self._size)

    async def __aexit__(self, *exc_info: object) -> None:
        self._budget._release(self._size)


class PymapBackend:
    """Implements :class:`pymap_deliver.lmtp.DeliveryBackend` on an AdminClient."""

    def __init__(self, client: AdminClient, options: DeliveryOptions) -> None:
        self._client = client
        self._options = options
        self._slots = asyncio.Semaphore(options.max_in_flight)
        self._budget = ByteBudget(options.max_bytes_in_flight)
        # user -> (time looked up, None if it exists or the refusal reply)
        self._lookups: dict[str, tuple[float, Reply | None]] = {}
        self._pending_lookups: dict[str, asyncio.Task[Reply | None]] = {}
        #: Admin calls under way (for the status line and metrics).
        self.in_flight = 0
        #: What deliveries and lookups count (the daemon shares it with the server).
        self.stats = Stats()
        self._serial = itertools.count(1)

    def reconfigure(self, options: DeliveryOptions) -> None:
        """New options for calls from now on (SIGHUP). Calls under way keep
        their slot in the old bound, which they release when they finish."""
        if options.max_in_flight != self._options.max_in_flight:
            self._slots = asyncio.Semaphore(options.max_in_flight)
        if options.max_bytes_in_flight != self._options.max_bytes_in_flight:
            self._budget = ByteBudget(options.max_bytes_in_flight)
        if options.rules != self._options.rules:
            self._lookups.clear()
        self._options = options

    def replace_client(self, client: AdminClient) -> AdminClient:
        """Calls from now on go through ``client`` (SIGHUP with new connection
        settings); calls under way finish on the old one, which is returned
        for the caller to close once they are done."""
        old, self._client = self._client, client
        self._lookups.clear()  # what another store says may differ
        return old

    # --- RCPT ------------------------------------------------------------

    async def check_recipient(self, address: str) -> Reply | None:
        if not self._options.check_recipients:
            return None
        reply = await self._check_recipient(address)
        self._count_lookup(reply)
        return reply

    def _count_lookup(self, reply: Reply | None) -> None:
        # hit: the user exists; miss: no such user; refused: not asked (4xx).
        self.stats.lookups["hit" if reply is None else
                           "miss" if reply.permanent else "refused"] += 1

    def known_verdicts(self, addresses: Sequence[str]) -> list[Reply | None] | None:
        """What :meth:`check_recipient` would answer for every address, when
        no call is needed for any (checks off, or each user looked up within
        the cache's lifetime); None otherwise. The session then answers at
        once, without a task and a loop turn per RCPT."""
        if not self._options.check_recipients:
            return [None] * len(addresses)
        now = time.monotonic()
        resolve = self._options.rules.resolve
        verdicts: list[Reply | None] = []
        for address in addresses:
            cached = self._fresh_lookup(resolve(address).user, now)
            if cached is None:
                return None
            verdicts.append(cached[1])
        for verdict in verdicts:
            self._count_lookup(verdict)
        self.stats.lookups_known += len(verdicts)
        return verdicts

    def _fresh_lookup(self, user: str, now: float) -> tuple[float, Reply | None] | None:
        """The cached lookup of ``user``, if still within the cache's lifetime."""
        cached = self._lookups.get(user)
        if cached is not None and now - cached[0] < self._options.lookup_cache_ttl:
            return cached
        return None

    async def _check_recipient(self, address: str) -> Reply | None:
        user = self._options.rules.resolve(address).user
        cached = self._fresh_lookup(user, time.monotonic())
        if cached is not None:
            return cached[1]
        pending = self._pending_lookups.get(user)
        if pending is None:
            # Many sessions asking for the same user at once share one call.
            # It runs as a task of its own, so that no single caller (a
            # session whose client went away, which cancels it) can cancel
            # the lookup the others are waiting for.
            pending = asyncio.get_running_loop().create_task(self._look_up(address, user))
            self._pending_lookups[user] = pending
            pending.add_done_callback(partial(self._lookup_done, user))
        return await asyncio.shield(pending)

    def _lookup_done(self, user: str, task: asyncio.Task[Reply | None]) -> None:
        if self._pending_lookups.get(user) is task:
            del self._pending_lookups[user]
        # Retrieved here too: every caller may have gone before it ended.
        if not task.cancelled() and task.exception() is not None:
            log.debug("lookup failed: %r", task.exception())

    async def _look_up(self, address: str, user: str) -> Reply | None:
        try:
            async with self._slots:
                self.in_flight += 1
                try:
                    await self._client.get_user(user)
                finally:
                    self.in_flight -= 1
        except errors.UserNotFound as exc:
            reply: Reply | None = outcome_for_error(exc).reply
            self.stats.pymap_reachable = True
        except errors.AdminError as exc:
            outcome = outcome_for_error(exc)
            self._note_reachable(exc)
            log.warning(event("rcpt lookup failed", rcpt=f"<{address}>", user=user,
                              status=str(outcome.reply), reason=" ".join(str(exc).split())))
            # Not remembered: the next RCPT asks again.
            return outcome.reply if self._options.defer_unreachable_at_rcpt else None
        else:
            reply = None
            self.stats.pymap_reachable = True
        self._remember(user, reply)
        return reply

    def _remember(self, user: str, reply: Reply | None) -> None:
        if len(self._lookups) > 10000:
            self._lookups.clear()
        self._lookups[user] = (time.monotonic(), reply)

    # --- DATA ------------------------------------------------------------

    async def deliver(self, message: IncomingMessage) -> Sequence[Reply]:
        # The message's id: in the Received: header, the 250 reply (so the
        # MTA's status=sent line names it) and our log lines.
        queue_id = f"{message.session_id}.{next(self._serial)}"
        self.stats.bytes_received += len(message.data)
        about: dict[str, object] = {"id": queue_id, "from": f"<{message.sender}>",
                                    "msgid": message_id(message.data),
                                    "size": len(message.data)}
        targets = [self._options.rules.resolve(rcpt) for rcpt in message.recipients]
        if len(targets) == 1:
            # The common case: no gather, no task of its own.
            return [(await self._deliver_one(message, targets[0], queue_id, about)).reply]
        outcomes = await asyncio.gather(*(self._deliver_one(message, t, queue_id, about)
                                          for t in targets))
        return [outcome.reply for outcome in outcomes]

    def _note_reachable(self, exc: BaseException) -> None:
        """What a failed call says about pymap: unreachable, or there."""
        if isinstance(exc, errors.TransportError | errors.DeadlineExceeded):
            self.stats.pymap_reachable = False
        elif isinstance(exc, errors.AdminError):
            self.stats.pymap_reachable = True

    async def _deliver_one(self, message: IncomingMessage, target: Target, queue_id: str,
                           about: dict[str, object]) -> Outcome:
        started = time.monotonic()
        mailbox = target.mailbox
        result: AppendResult | None = None
        error: str | None = None
        error_cause: BaseException | None = None
        try:
            headers = trace_headers(
                sender=message.sender, recipient=target.address,
                lhlo_name=message.lhlo_name, peer=message.peer,
                hostname=self._options.hostname, session_id=queue_id,
                received_at=message.received_at, smtputf8=message.smtputf8,
            )
            try:
                result = await self._append(message, target, headers, mailbox)
            except errors.MailboxNotFound:
                if mailbox is None:
                    raise
                # A +detail naming a folder that does not exist goes to INBOX.
                mailbox = None
                result = await self._append(message, target, headers, mailbox)
            outcome = _delivered(result.discarded, queue_id)
            self.stats.pymap_reachable = True
        except errors.UserNotFound as exc:
            # A user deleted between RCPT and DATA: forget the cached "exists".
            self._lookups.pop(target.user, None)
            outcome = outcome_for_error(exc)
            self.stats.pymap_reachable = True
        except Exception as exc:
            outcome = outcome_for_error(exc)
            self._note_reachable(exc)
            if not isinstance(exc, errors.AdminError):
                log.exception(event("internal error", session=message.session_id,
                                    id=queue_id, rcpt=f"<{target.address}>"))
            # The reply says little on purpose (no local paths); the log has it all.
            error, error_cause = " ".join(str(exc).split()), exc
        elapsed = time.monotonic() - started
        self.stats.delivered(outcome.reply.code, elapsed)
        if outcome.reply.positive:
            what = "delivered"
        elif outcome.reply.permanent:
            what = "refused"
        elif getattr(error_cause, "request_sent", False):
            # pymap had the whole message and may have stored it: the MTA's
            # retry can make a duplicate (at-least-once delivery).
            what = "deferred-after-send"
        else:
            what = "deferred"
        log.info(event(what, about, session=message.session_id, rcpt=f"<{target.address}>",
                       user=target.user,
                       mailbox=result.mailbox if result else (mailbox or "INBOX"),
                       uid=result.uid if result else None, status=str(outcome.reply),
                       error=error, ms=round(elapsed * 1000)))
        return outcome

    async def _append(self, message: IncomingMessage, target: Target, headers: bytes,
                      mailbox: str | None) -> AppendResult:
        # The budget is taken before the call, so the wait for it is not
        # part of the call's deadline.
        async with self._budget.reserve(len(headers) + len(message.data)), self._slots:
            self.in_flight += 1
            try:
                # The headers go as a prefix: the message is not copied for them.
                return await self._client.append(
                    target.user, message.data, prefix=headers, sender=message.sender,
                    recipient=target.address, mailbox=mailbox, when=message.received_at)
            finally:
                self.in_flight -= 1
