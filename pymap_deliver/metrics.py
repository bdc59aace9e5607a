"""What the daemon counts, and ``--metrics [HOST:]PORT``: Prometheus metrics
and a ``/healthz`` on one small HTTP listener in the daemon's own event loop.

The server and the delivery backend count into a :class:`Stats` (plain
numbers, no dependency, nothing to configure); at each scrape a collector
turns them into Prometheus metrics with ``prometheus-client``. Gauges that
are a state (sessions open, calls in flight, pymap reachable) are read at
scrape time from the objects that hold them.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .logfmt import event

if TYPE_CHECKING:
    from pymap_admin.pool import EndpointPool

    from .server import TcpEndpoint

__all__ = ["LATENCY_BUCKETS", "MetricsServer", "Stats"]

log = logging.getLogger("pymap_deliver.metrics")

#: Seconds: a delivery into pymap takes milliseconds; deadlines are 60 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Stats:
    """Counters the server and the backend update as things happen."""

    #: Recipients by reply class: "2xx", "4xx", "5xx".
    deliveries: Counter[str] = field(default_factory=Counter)
    #: RCPT lookups: "hit" (the user exists), "miss" (no such user),
    #: "refused" (pymap could not be asked: deferred).
    lookups: Counter[str] = field(default_factory=Counter)
    #: Of those, answered from the cache without a task (a test reads it).
    lookups_known: int = 0
    sessions_opened: int = 0
    sessions_refused: int = 0
    bytes_received: int = 0
    #: Delivery latency histogram (per recipient, seconds).
    latency_counts: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    latency_count: int = 0
    latency_sum: float = 0.0
    #: None until something has told: the start-up probe or a call.
    pymap_reachable: bool | None = None

    def delivered(self, code: int, seconds: float) -> None:
        self.deliveries[f"{code // 100}xx"] += 1
        self.latency_count += 1
        self.latency_sum += seconds
        index = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        if index < len(LATENCY_BUCKETS):
            self.latency_counts[index] += 1


class _Collector:
    """Stats and the live gauges, as Prometheus metric families."""

    def __init__(self, stats: Stats, sessions: Callable[[], int], in_flight: Callable[[], int],
                 token_reads: Callable[[], int], token_mints: Callable[[], int],
                 pool: EndpointPool | None = None) -> None:
        self.stats = stats
        self.sessions = sessions
        self.in_flight = in_flight
        self.token_reads = token_reads
        self.token_mints = token_mints
        #: The admin endpoints, when there are several (a pymap cluster).
        self.pool = pool

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        stats = self.stats
        deliveries = CounterMetricFamily(
            "pymap_deliver_deliveries", "Recipients delivered or refused, by reply class",
            labels=["status"])
        for status in ("2xx", "4xx", "5xx"):
            deliveries.add_metric([status], stats.deliveries[status])
        yield deliveries
        cumulative, buckets = 0, []
        for bound, count in zip(LATENCY_BUCKETS, stats.latency_counts, strict=True):
            cumulative += count
            buckets.append((repr(bound), cumulative))
        buckets.append(("+Inf", stats.latency_count))
        yield HistogramMetricFamily(
            "pymap_deliver_delivery_seconds", "Time to store one recipient's copy",
            buckets=buckets, sum_value=stats.latency_sum)
        lookups = CounterMetricFamily(
            "pymap_deliver_rcpt_lookups", "RCPT user lookups: hit (exists), miss (no such "
            "user), refused (pymap could not be asked)", labels=["result"])
        for result in ("hit", "miss", "refused"):
            lookups.add_metric([result], stats.lookups[result])
        yield lookups
        yield GaugeMetricFamily("pymap_deliver_sessions_open", "LMTP sessions open",
                                value=self.sessions())
        yield CounterMetricFamily("pymap_deliver_sessions", "LMTP sessions accepted",
                                  value=stats.sessions_opened)
        yield CounterMetricFamily("pymap_deliver_sessions_refused",
                                  "LMTP connections refused (421: too many, or stopping)",
                                  value=stats.sessions_refused)
        yield GaugeMetricFamily("pymap_deliver_calls_in_flight",
                                "Admin calls to pymap under way", value=self.in_flight())
        yield GaugeMetricFamily("pymap_deliver_pymap_reachable",
                                "1 if pymap answered the last call or probe, else 0",
                                value=1 if stats.pymap_reachable else 0)
        yield CounterMetricFamily("pymap_deliver_token_reads",
                                  "Times the admin token file was (re-)read",
                                  value=self.token_reads())
        yield CounterMetricFamily("pymap_deliver_token_mints",
                                  "Per-request narrowed tokens minted", value=self.token_mints())
        yield CounterMetricFamily("pymap_deliver_received_bytes",
                                  "Message bytes received over LMTP",
                                  value=stats.bytes_received)
        if self.pool is not None and not self.pool.single:
            yield from self._pool_metrics(self.pool)

    @staticmethod
    def _pool_metrics(pool: EndpointPool) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        up = GaugeMetricFamily("pymap_deliver_member_up",
                               "1 while a pymap member passes its health checks",
                               labels=["member"])
        calls = CounterMetricFamily("pymap_deliver_member_calls",
                                    "Admin calls started on a pymap member", labels=["member"])
        for endpoint in pool.endpoints:
            up.add_metric([endpoint.target], 1 if endpoint.healthy else 0)
            calls.add_metric([endpoint.target], endpoint.calls)
        yield up
        yield calls
        stats = pool.stats
        yield CounterMetricFamily("pymap_deliver_member_failovers",
                                  "Calls moved to another member before their request was "
                                  "sent", value=stats.failovers)
        ambiguous = CounterMetricFamily(
            "pymap_deliver_calls_ambiguous", "Calls cut off after their whole request was "
            "sent (pymap may have done them), by what followed", labels=["action"])
        ambiguous.add_metric(["retried"], stats.ambiguous_retried)
        ambiguous.add_metric(["deferred"], stats.ambiguous - stats.ambiguous_retried)
        yield ambiguous
        yield CounterMetricFamily("pymap_deliver_no_healthy_member",
                                  "Calls refused because no member was healthy",
                                  value=stats.no_healthy)


class MetricsServer:
    """``GET /metrics`` (Prometheus text format) and ``GET /healthz`` (200
    when serving and pymap reachable, else 503, with one line saying which)."""

    def __init__(self, endpoint: TcpEndpoint, collector: _Collector,
                 serving: Callable[[], bool]) -> None:
        from prometheus_client import CollectorRegistry

        self.endpoint = endpoint
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(collector)
        self.collector = collector
        self.serving = serving
        self._server: asyncio.Server | None = None

    @classmethod
    def for_daemon(cls, endpoint: TcpEndpoint, stats: Stats, *, sessions: Callable[[], int],
                   in_flight: Callable[[], int], token_reads: Callable[[], int],
                   token_mints: Callable[[], int], serving: Callable[[], bool],
                   pool: EndpointPool | None = None) -> MetricsServer:
        collector = _Collector(stats, sessions, in_flight, token_reads, token_mints, pool)
        return cls(endpoint, collector, serving)

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.endpoint.host,
                                                  self.endpoint.port)
        log.info(event("metrics listening", {
            "address": f"{self.endpoint.host}:{self.port}"}))

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    def health(self) -> tuple[int, str]:
        serving = self.serving()
        reachable = bool(self.collector.stats.pymap_reachable)
        text = (f"{'serving' if serving else 'not serving'}, pymap "
                f"{'reachable' if reachable else 'unreachable'}\n")
        return (200 if serving and reachable else 503), text

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 10)
            while (await asyncio.wait_for(reader.readline(), 10)).strip():
                pass  # headers: nothing in them matters here
            method, _, rest = request.decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", b"method not allowed\n"
            elif path == "/metrics":
                from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

                status, ctype, body = 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
            elif path == "/healthz":
                status, text = self.health()
                ctype, body = "text/plain; charset=utf-8", text.encode()
            else:
                status, ctype, body = 404, "text/plain", b"not found: try /metrics or /healthz\n"
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed",
                      503: "Service Unavailable"}[status]
            head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
            writer.write(head + (body if method == "GET" else b""))
            await writer.drain()
        except (OSError, TimeoutError, UnicodeDecodeError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
