"""``GET /metrics``: Prometheus text, from a registry per app (never the global one).

Counters and the latency histogram move as items finish; the pool's state (workers,
queue, warm-key hits, restarts, RSS) is read once per scrape, from one snapshot.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from lean_worker._pool import Outcome
from lean_worker._verify import _error_code

from ._backend import BackendStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds per snippet, from admission to result: warm checks take milliseconds, imports
# and cold checks seconds, timeouts up to the request deadline.
_ITEM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class _PoolCollector(Collector):
    """The pool's gauges from the snapshot ``Metrics.render`` was given."""

    def __init__(self) -> None:
        self.stats: BackendStats | None = None

    def collect(self) -> Iterator[Any]:
        s = self.stats
        if s is None:
            return
        yield GaugeMetricFamily("lean_worker_workers", "Pool workers.", value=s.workers)
        yield GaugeMetricFamily("lean_worker_workers_busy", "Pool workers running a request.", value=s.busy)
        yield GaugeMetricFamily("lean_worker_queue_depth", "Requests waiting for a pool worker.", value=s.queue_depth)
        yield GaugeMetricFamily("lean_worker_admitted_snippets", "Snippets admitted and not finished.", value=s.admitted)
        yield GaugeMetricFamily("lean_worker_admitted_limit", "Snippets admitted at most (429 past it).",
                                value=s.admitted_limit)
        total = s.key_hits + s.key_misses
        yield GaugeMetricFamily("lean_worker_warm_hit_ratio",
                                "Leases that found their header warm, over all keyed leases (0 before any).",
                                value=s.key_hits / total if total else 0.0)
        hits = CounterMetricFamily("lean_worker_warm_leases", "Keyed leases by whether the header was warm.",
                                   labels=["warm"])
        hits.add_metric(["true"], s.key_hits)
        hits.add_metric(["false"], s.key_misses)
        yield hits
        restarts = CounterMetricFamily("lean_worker_restarts", "Worker child restarts by reason.", labels=["reason"])
        for reason, count in sorted(s.restarts.items()):
            restarts.add_metric([reason], count)
        yield restarts
        if s.rss_bytes is not None:
            yield GaugeMetricFamily("lean_worker_pool_rss_bytes", "RSS of every worker's process tree, last reading.",
                                    value=s.rss_bytes)
        yield GaugeMetricFamily("lean_worker_up", "1 when the pool can serve, 0 when /health says why not.",
                                value=0 if s.unavailable else 1)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.checks = Counter("lean_worker_checks", "Snippets checked, by verdict (failed: no result).",
                              ["verdict"], registry=self.registry)
        self.errors = Counter("lean_worker_check_errors", "Snippets without a result, by error code.",
                              ["code"], registry=self.registry)
        self.latency = Histogram("lean_worker_check_seconds", "Seconds per snippet, from admission to result.",
                                 buckets=_ITEM_BUCKETS, registry=self.registry)
        self.requests = Counter("lean_worker_http_requests", "HTTP requests by route and status.",
                                ["route", "status"], registry=self.registry)
        self.rejected = Counter("lean_worker_rejected_snippets", "Snippets refused before checking, by code "
                                "(service.queue_full, service.too_many_snippets).", ["code"], registry=self.registry)
        self.cancelled = Counter("lean_worker_cancelled_snippets", "Snippets cancelled because the client went away.",
                                 registry=self.registry)
        self._pool = _PoolCollector()
        self.registry.register(self._pool)
        for verdict in ("ok", "errors", "sorry", "failed"):
            self.checks.labels(verdict)  # present from the start, at 0

    def item(self, outcome: Outcome[Any, Any], seconds: float) -> None:
        value = outcome.value
        if value is not None:
            self.checks.labels(value.verdict).inc()
        else:
            self.checks.labels("failed").inc()
            self.errors.labels(_error_code(outcome.error)).inc()
        self.latency.observe(seconds)

    def render(self, stats: BackendStats) -> bytes:
        self._pool.stats = stats
        return generate_latest(self.registry)
