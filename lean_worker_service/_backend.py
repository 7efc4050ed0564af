"""What the routes run on: a local ``Pool`` (or a ``ClusterPool``), admission, deadlines.

Admission counts snippets, not requests: a request of n snippets is admitted when the
snippets already admitted (running or waiting for a worker) plus n stay within the limit,
else it is refused whole with 429 before anything runs, so a client can send it again as
it was. Admitted snippets wait for a worker in the pool's own first-in-first-out queue,
so requests share the workers in the order they came.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from lean_worker import Pool
from lean_worker._pool import Outcome
from lean_worker._verify import _open_cluster, node_config, sandbox_line
from lean_worker.lean import CHECK, TOOLCHAIN, CheckRequest, CheckResult, ToolchainQuery, ToolchainReport

from ._errors import HttpError, RequestDeadlineExceeded
from ._options import ServiceOptions

REQUEST_TIMEOUT_MARGIN_S = 30.0
"""The parent's limit per check is the snippet's own timeout plus this: the child's
deadline (which kills only that snippet's Lean) fires first."""


@dataclass(frozen=True)
class BackendStats:
    """What ``/metrics``, ``/health`` and ``/v1/status`` read (one snapshot)."""

    workers: int
    busy: int
    queue_depth: int
    """Lease requests waiting for a worker inside the pool."""
    admitted: int
    """Snippets admitted and not finished, over all requests."""
    admitted_limit: int
    key_hits: int
    key_misses: int
    restarts: dict[str, int]
    rss_bytes: int | None
    unavailable: str | None
    """Why the pool cannot serve now; ``None`` when it can."""
    nodes: int = 0
    """On a cluster: nodes taking work."""
    sandbox: str = ""
    """Whether checks run sandboxed (``verify``'s summary line: ``required: active``...)."""


class Backend:
    """The pool a service checks on, opened with ``async with``."""

    def __init__(self, options: ServiceOptions) -> None:
        self.options = options
        self.pool: Any = None
        """A ``Pool``, or a ``lean_worker_ray.ClusterPool`` (``options.pool.ray``)."""
        self.toolchain: ToolchainReport | None = None
        self.workers = 0
        self.admitted = 0
        self.limit = 0
        self._item_s = 1.0
        """A running mean of a snippet's time, for ``Retry-After``."""
        self._closing = False
        self._stack: Any = None

    async def __aenter__(self) -> Backend:
        opts = self.options.pool
        if opts.ray is not None:
            self._stack = _open_cluster(opts)
            self.pool = await self._stack.__aenter__()
            self.workers = (await self.pool.snapshot()).workers
        else:
            # The config verify's nodes compute (the fixtures built first, when asked for).
            config = await node_config(opts)
            self.pool = Pool(config, size=opts.workers, queue_timeout_s=self.options.request_deadline_s)
            self._stack = self.pool
            await self.pool.__aenter__()
            self.workers = opts.workers
        try:
            self.toolchain = await self.pool.call(TOOLCHAIN, ToolchainQuery())  # no toolchain: fail at start
        except BaseException:
            await self._stack.__aexit__(None, None, None)
            raise
        self.limit = self.options.admitted_limit(self.workers)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self._closing = True
        await self._stack.__aexit__(None, None, None)

    # -- admission ------------------------------------------------------------------------------
    @contextmanager
    def admit(self, count: int) -> Iterator[None]:
        """Hold ``count`` snippets of the admission limit, or raise 429 (or 503 when closing)."""
        if self._closing:
            raise HttpError(503, "service.unavailable", "the service is shutting down")
        if self.admitted + count > self.limit:
            waiting = self.admitted + count - self.limit
            retry = min(60, max(1, math.ceil(waiting * self._item_s / max(1, self.workers))))
            raise HttpError(
                429, "service.queue_full",
                f"the queue is full; admitted={self.admitted} limit={self.limit} snippets={count}: retry after {retry} s",
                {"Retry-After": str(retry)},
            )
        self.admitted += count
        try:
            yield
        finally:
            self.admitted -= count

    def timeout_for(self, requested: float | None) -> float:
        """A snippet's timeout: the request's (at most ``max_timeout_s``), or the default when
        it gives none or 0."""
        if requested is None or requested <= 0:
            return min(self.options.pool.timeout_s, self.options.max_timeout_s)
        return min(float(requested), self.options.max_timeout_s)

    # -- checking -------------------------------------------------------------------------------
    @asynccontextmanager
    async def check(
        self, requests: list[CheckRequest], timeout_s: float
    ) -> AsyncIterator[MemoryObjectReceiveStream[Outcome[CheckRequest, CheckResult]]]:
        """Check ``requests`` (already admitted); yield one outcome per request as it finishes.

        The request's deadline (``request_deadline_s``) ends the batch: what has not finished
        by then is an outcome with ``RequestDeadlineExceeded``. Leaving the block early (the
        client went away) cancels what is still queued or running."""
        # Room for every outcome: the producer never waits on a slow reader.
        send, receive = anyio.create_memory_object_stream[Outcome[CheckRequest, CheckResult]](max(1, len(requests)))
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._produce, requests, timeout_s, send)
            async with receive:
                yield receive
                tg.cancel_scope.cancel()

    async def _produce(
        self,
        requests: list[CheckRequest],
        timeout_s: float,
        send: MemoryObjectSendStream[Outcome[CheckRequest, CheckResult]],
    ) -> None:
        deadline = self.options.request_deadline_s
        started = time.perf_counter()
        done: set[int] = set()
        async with send:
            with anyio.move_on_after(deadline):
                async with self.pool.map(CHECK, requests, timeout=timeout_s + REQUEST_TIMEOUT_MARGIN_S) as outcomes:
                    async for outcome in outcomes:
                        done.add(outcome.index)
                        self._learn(outcome.elapsed_s)
                        await send.send(outcome)
            elapsed = time.perf_counter() - started
            for index, request in enumerate(requests):
                if index not in done:
                    await send.send(Outcome(index, request, None, RequestDeadlineExceeded(deadline), -1, 0, elapsed))

    def _learn(self, seconds: float) -> None:
        self._item_s += 0.05 * (seconds - self._item_s)

    # -- monitoring -----------------------------------------------------------------------------
    async def stats(self, *, measure: bool = False) -> BackendStats:
        """One snapshot of the pool; ``measure`` reads the workers' RSS first (``/metrics``)."""
        if isinstance(self.pool, Pool):
            if measure:
                await self.pool.measure_rss()
            snap = self.pool.snapshot()
            blocked = [w.restart_blocked_s for w in snap.workers]
            unavailable = None
            if self._closing:
                unavailable = "the service is shutting down"
            elif blocked and all(b > 0 for b in blocked):
                unavailable = (f"all {len(blocked)} workers are out of rotation after too many unplanned restarts; "
                               f"retry_after_s={min(blocked):.1f}")
            return BackendStats(
                workers=len(snap.workers), busy=snap.busy, queue_depth=snap.queue_depth, admitted=self.admitted,
                admitted_limit=self.limit, key_hits=snap.key_hits, key_misses=snap.key_misses,
                restarts=dict(snap.restarts), rss_bytes=snap.total_rss_bytes, unavailable=unavailable,
                sandbox=sandbox_line(w.sandbox for w in snap.workers),
            )
        snap = await self.pool.snapshot()  # a lean_worker_ray.ClusterSnapshot
        alive = [n for n in snap.nodes if n.alive]
        unavailable = "the service is shutting down" if self._closing else None
        if unavailable is None and not snap.workers:
            unavailable = "no Ray node can take work: " + (
                ", ".join(f"{n.node_id[:12]}={n.out}" for n in snap.nodes) or "no node"
            )
        return BackendStats(
            workers=snap.workers, busy=sum(n.pool.busy for n in alive if n.pool is not None),
            queue_depth=snap.queue_depth, admitted=self.admitted, admitted_limit=self.limit,
            key_hits=snap.key_hits, key_misses=snap.key_misses, restarts=dict(snap.restarts),
            rss_bytes=snap.total_rss_bytes, unavailable=unavailable, nodes=len(alive),
            sandbox=sandbox_line(w.sandbox for n in snap.nodes if n.pool for w in n.pool.workers),
        )
