"""Several admin endpoints behind one :class:`~pymap_admin.AdminClient`.

Each endpoint (a pymap member) has one channel. With one endpoint
the pool only runs the call there: no health checks, no retries, the same
errors as a plain channel. With several:

* **Spreading.** A call goes to the healthy endpoint with the fewest calls
  in flight (ties in turn), so the recipients of one message may be stored
  through different members.
* **Health.** Each endpoint is checked with the standard gRPC health
  service every ``health_interval`` seconds, and at once after a connection
  error. A failed endpoint is taken out and re-probed with exponential
  backoff until its check answers SERVING again.
* **Failover before the request was sent.** A call that fails before all
  of its request went out (refused, no socket, TLS, a connect that timed
  out, a connection lost while the message was still being sent) has done
  nothing on the server: it is tried at once on another endpoint.
* **Ambiguous calls.** A call that fails after its request was sent
  (connection lost, deadline passed) may have been carried out: pymap
  stores an Append atomically but can die between storing and answering.
  Every such call is counted and logged with ``status=ambiguous``. A lost
  connection is retried **once** on another endpoint when the operation
  allows it (``retry_ambiguous``: Append, reads, Login); a passed deadline
  is not (the first member may still be working on it, so a retry would
  race it and double the load on a cluster that is already slow). See
  :class:`EndpointPool` for why the retry is right for Append.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.exceptions import ProtocolError as _H2ProtocolError

from . import errors
from .stats import ClientStats
from .tokens import TokenSource

if TYPE_CHECKING:
    from grpclib.client import Channel
    from grpclib.health.v1.health_grpc import HealthStub

    from ._channel import H2Channel
    from .grpc.admin_grpc import MailboxStub, SystemStub, UserStub

__all__ = ["DEFAULT_HEALTH_INTERVAL", "Endpoint", "EndpointPool"]

log = logging.getLogger("pymap_admin.pool")

#: Seconds between health checks of an endpoint that is up.
DEFAULT_HEALTH_INTERVAL = 5.0
#: The deadline of one health check: short, so that a host that swallows
#: packets is taken out quickly.
DEFAULT_PROBE_TIMEOUT = 2.0
#: Re-probing a failed endpoint: the first delay, doubled up to the cap.
DEFAULT_BACKOFF = (0.1, 2.0)


#: Endpoint attribute -> (module, class) of its stub.
_STUBS = {"system": ("pymap_admin.grpc.admin_grpc", "SystemStub"),
          "mailbox": ("pymap_admin.grpc.admin_grpc", "MailboxStub"),
          "user": ("pymap_admin.grpc.admin_grpc", "UserStub"),
          "health": ("grpclib.health.v1.health_grpc", "HealthStub")}


class Endpoint:
    """One admin endpoint: its channel, stubs and live state."""

    def __init__(self, target: str, channel: Channel | H2Channel,
                 tokens: TokenSource | None = None) -> None:
        self.target = target
        self.channel = channel
        #: This endpoint's own admin token, where it has one (a cluster
        #: member's, which the other members trust only once SWIM has
        #: converged); None: the client's token.
        self.tokens = tokens
        self.healthy = True
        self.in_flight = 0
        #: Calls started here, in all and per operation (tests, the
        #: benchmark and the local stack read the spread).
        self.calls = 0
        self.operations: Counter[str] = Counter()
        self.backoff = 0.0
        self.last_probe = 0.0
        self.wake = asyncio.Event()
        self.watcher: asyncio.Task[None] | None = None

    # The stubs (system, mailbox, user, health) are made on first use:
    # importing them loads protobuf's runtime, which a delivery's own calls
    # do without (pymap_admin._messages). They only call the channel's
    # request(), which H2Channel has as grpclib's Channel does.
    if TYPE_CHECKING:
        system: SystemStub
        mailbox: MailboxStub
        user: UserStub
        health: HealthStub

    def __getattr__(self, name: str) -> Any:
        where = _STUBS.get(name)
        if where is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        module, stub_class = where
        stub = getattr(importlib.import_module(module), stub_class)(self.channel)
        setattr(self, name, stub)
        return stub

    def __repr__(self) -> str:
        state = "up" if self.healthy else "down"
        return f"<Endpoint {self.target} {state} in_flight={self.in_flight}>"


#: Picks the method of an endpoint (a stub's, or one with ``open()`` like
#: it), e.g. ``lambda e: e.mailbox.Append``.
MethodOf = Callable[[Endpoint], Any]
#: The metadata of a call: the same for every endpoint, or made for the
#: endpoint the call goes to (its own admin token).
Metadata = Mapping[str, str] | Callable[[Endpoint], Mapping[str, str]]


def _drop_if_peer_gone(endpoint: Endpoint) -> None:
    """Close ``endpoint``'s connection if the server has already closed its end.

    When pymap restarts while this event loop is busy (or between two
    loop turns), the old connection still looks open: a call would be
    written into it and fail with "Connection lost" after being sent, i.e.
    as ambiguous, though no server could have read it. The channel looks
    for the hang-up first (one ``poll`` with no wait) and drops the
    connection, so this call opens a new one. (A test's in-memory grpclib
    channel has no socket to look at.)
    """
    drop = getattr(endpoint.channel, "drop_if_peer_gone", None)
    if drop is not None and drop():
        log.info("endpoint=%s closed by the server; reconnecting", endpoint.target)


class _Failed(Exception):
    """A transport failure, with whether the request had been sent."""

    def __init__(self, error: errors.AdminError, *, sent: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.sent = sent


class EndpointPool:
    """The endpoints of one client, and the rules for using them.

    Why an ambiguous Append is retried once on another member rather than
    answered 4xx: the MTA's retry of a 4xx re-sends the same message, so it
    duplicates in exactly the cases where the retry here would (the lost
    call had in fact been stored, about 1 in 170 calls cut off by a kill).
    Retrying here costs no more duplicates and spares every other case the
    MTA's queue delay (postfix: 300 s or more). One retry only, and only on
    a *different* member: if the message itself is what breaks members,
    one more member is the most it can take down before the MTA holds it.
    """

    def __init__(self, endpoints: Sequence[Endpoint], *,
                 health_interval: float = DEFAULT_HEALTH_INTERVAL,
                 probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
                 backoff: tuple[float, float] = DEFAULT_BACKOFF,
                 stats: ClientStats) -> None:
        if not endpoints:
            raise ValueError("a pool needs at least one endpoint")
        if health_interval <= 0 or probe_timeout <= 0:
            raise ValueError("health_interval and probe_timeout must be positive")
        self.endpoints = tuple(endpoints)
        #: Counted in the client's stats (failovers, ambiguous calls, ...).
        self.stats = stats
        self._health_interval = health_interval
        self._probe_timeout = probe_timeout
        self._backoff_first, self._backoff_max = backoff
        self._turn = itertools.count()
        self._started = False
        self._closed = False

    @property
    def single(self) -> bool:
        return len(self.endpoints) == 1

    @property
    def target(self) -> str:
        return ", ".join(endpoint.target for endpoint in self.endpoints)

    def healthy(self) -> list[Endpoint]:
        return [endpoint for endpoint in self.endpoints if endpoint.healthy]

    def status(self) -> str:
        """A logfmt summary for status lines: members up, and the counters."""
        stats = self.stats
        return (f"members_up={len(self.healthy())}/{len(self.endpoints)} "
                f"failovers={stats.failovers} ambiguous={stats.ambiguous} "
                f"ambiguous_retried={stats.ambiguous_retried} no_healthy={stats.no_healthy}")

    def close(self) -> None:
        self._closed = True
        for endpoint in self.endpoints:
            if endpoint.watcher is not None:
                endpoint.watcher.cancel()
            endpoint.channel.close()

    # --- calls ------------------------------------------------------------

    async def call(self, operation: str, method: MethodOf, request: Any,
                   metadata: Metadata, timeout: float, *,
                   retry_ambiguous: bool = False, subject: str | None = None) -> Any:
        """Run one unary call on the best endpoint, failing over as the
        module describes. ``subject`` (a user name) only goes into logs."""
        if self.single:
            endpoint = self.endpoints[0]
            for attempt in (1, 2):
                endpoint.operations[operation] += 1
                try:
                    return await self._attempt(endpoint, method, request, metadata, timeout)
                except _Failed as failed:
                    if failed.sent:
                        self._ambiguous(operation, subject, endpoint, failed, "deferred")
                    # Not sent: nothing was done, so once more on a new
                    # connection (the old one may be a restarted pymap's).
                    # Not after a deadline: the call's time is used up.
                    elif attempt == 1 and not isinstance(failed.error, errors.DeadlineExceeded):
                        self.stats.failovers += 1
                        log.info("op=%s endpoint=%s failed before sending (%s); trying again",
                                 operation, endpoint.target, failed.error)
                        continue
                    raise failed.error from failed.__cause__
        self._start_watchers()
        tried: set[Endpoint] = set()
        retried_ambiguous = False
        last: _Failed | None = None
        while True:
            picked = self._pick(tried)
            if picked is None:
                if last is not None:
                    raise last.error from last.__cause__
                self.stats.no_healthy += 1
                self._wake_all()
                raise errors.ServerUnreachable(
                    f"no healthy pymap admin endpoint (of {len(self.endpoints)}: "
                    f"{self.target})")
            endpoint = picked
            tried.add(endpoint)
            endpoint.operations[operation] += 1
            try:
                return await self._attempt(endpoint, method, request, metadata, timeout)
            except _Failed as failed:
                last = failed
                if isinstance(failed.error, errors.DeadlineExceeded) and failed.sent:
                    # Slow, not gone: check it, but leave it in until the check says so.
                    endpoint.wake.set()
                    self._ambiguous(operation, subject, endpoint, failed, "deferred")
                    raise failed.error from failed.__cause__
                self._take_out(endpoint, failed.error)
                if not failed.sent:
                    self.stats.failovers += 1
                    log.info("op=%s endpoint=%s failed before sending (%s); trying another",
                             operation, endpoint.target, failed.error)
                    continue
                if retry_ambiguous and not retried_ambiguous and self._pick(tried) is not None:
                    retried_ambiguous = True
                    self.stats.ambiguous_retried += 1
                    self._ambiguous(operation, subject, endpoint, failed, "retried")
                    continue
                self._ambiguous(operation, subject, endpoint, failed, "deferred")
                raise failed.error from failed.__cause__

    def _pick(self, exclude: set[Endpoint]) -> Endpoint | None:
        candidates = [e for e in self.endpoints if e.healthy and e not in exclude]
        if not candidates:
            return None
        fewest = min(e.in_flight for e in candidates)
        least = [e for e in candidates if e.in_flight == fewest]
        return least[next(self._turn) % len(least)]

    async def _attempt(self, endpoint: Endpoint, method: MethodOf, request: Any,
                       metadata: Metadata, timeout: float) -> Any:
        """One call on one endpoint. Transport failures come out as
        :class:`_Failed`, telling whether the request had been sent."""
        if callable(metadata):
            metadata = metadata(endpoint)
        _drop_if_peer_gone(endpoint)
        whole_request_sent = False
        endpoint.in_flight += 1
        endpoint.calls += 1
        try:
            async with method(endpoint).open(timeout=timeout, metadata=metadata) as stream:
                # pymap acts on a request only once it has all of it: the
                # last DATA frame carries END_STREAM, and the channel queues
                # it with no wait after it (a failure inside send_message
                # comes from a wait before it: for the connection, a stream,
                # the flow control window). Until then a failure has done
                # nothing.
                await stream.send_message(request, end=True)
                whole_request_sent = True
                reply = await stream.recv_message()
            if reply is None:
                raise _Failed(errors.ConnectionReset(
                    f"{endpoint.target} ended the call without an answer"), sent=True)
            return reply
        except GRPCError as exc:
            error = errors.map_grpc_error(exc)
            if isinstance(error, errors.TransportError | errors.DeadlineExceeded):
                error.request_sent = whole_request_sent
                raise _Failed(error, sent=whole_request_sent) from exc
            raise error from exc
        except (OSError, TimeoutError, asyncio.IncompleteReadError, StreamTerminatedError,
                _H2ProtocolError) as exc:
            from ._channel import UnprocessedStream  # loaded already: it raised

            error = errors.map_os_error(exc, endpoint.target)
            # A stream the server says it never acted on is as good as unsent.
            sent = whole_request_sent and not isinstance(exc, UnprocessedStream)
            error.request_sent = sent
            raise _Failed(error, sent=sent) from exc
        finally:
            endpoint.in_flight -= 1

    def _ambiguous(self, operation: str, subject: str | None, endpoint: Endpoint,
                   failed: _Failed, action: str) -> None:
        self.stats.ambiguous += 1
        log.warning("op=%s user=%s endpoint=%s status=ambiguous action=%s error=%r",
                    operation, subject or "-", endpoint.target, action, str(failed.error))

    # --- health -----------------------------------------------------------

    def _take_out(self, endpoint: Endpoint, error: errors.AdminError) -> None:
        if endpoint.healthy:
            endpoint.healthy = False
            endpoint.backoff = self._backoff_first
            log.warning("endpoint=%s down: %s", endpoint.target, error)
        endpoint.wake.set()

    def _wake_all(self) -> None:
        for endpoint in self.endpoints:
            endpoint.wake.set()

    def _start_watchers(self) -> None:
        if self._started or self._closed:
            return
        self._started = True
        for endpoint in self.endpoints:
            endpoint.watcher = asyncio.get_running_loop().create_task(self._watch(endpoint))

    async def _watch(self, endpoint: Endpoint) -> None:
        """Check ``endpoint`` on the interval while up, with backoff while
        down, and at once when woken (after a connection error)."""
        while True:
            delay = self._health_interval if endpoint.healthy else endpoint.backoff
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(endpoint.wake.wait(), delay)
            endpoint.wake.clear()
            if not endpoint.healthy:
                # Woken by calls finding nothing healthy: still keep the gap.
                gap = endpoint.last_probe + endpoint.backoff - time.monotonic()
                if gap > 0:
                    await asyncio.sleep(gap)
            ok = await self.probe(endpoint)
            if ok and not endpoint.healthy:
                endpoint.healthy = True
                log.info("endpoint=%s up again", endpoint.target)
            elif not ok:
                if endpoint.healthy:
                    endpoint.healthy = False
                    endpoint.backoff = self._backoff_first
                    log.warning("endpoint=%s down: health check failed", endpoint.target)
                else:
                    endpoint.backoff = min(endpoint.backoff * 2, self._backoff_max)

    async def probe(self, endpoint: Endpoint) -> bool:
        """One health check: True when the endpoint answers SERVING."""
        from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

        endpoint.last_probe = time.monotonic()
        try:
            response = await endpoint.health.Check(HealthCheckRequest(),
                                                   timeout=self._probe_timeout)
        except (GRPCError, OSError, TimeoutError, asyncio.IncompleteReadError,
                StreamTerminatedError, _H2ProtocolError) as exc:
            log.debug("endpoint=%s health check failed: %r", endpoint.target, exc)
            return False
        return bool(response.status == HealthCheckResponse.SERVING)
