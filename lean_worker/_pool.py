"""A local pool of supervised workers serving concurrent leases, with warm reuse by key.

    async with Pool(lean_config(search_path=[...]), size=2) as pool:
        result = await pool.call(CHECK, CheckRequest(code))      # leased, keyed, released
        async with pool.map(CHECK, requests) as outcomes:        # spread over the pool
            async for outcome in outcomes:                       # as they finish
                ...

- **Leases.** ``pool.lease(key)`` gives one task a worker to itself; many tasks hold leases
  on different workers at once. Admission is first in, first out: a task that finds every
  worker busy queues, and fails with ``QueueTimeout`` after ``queue_timeout_s``.
- **Warm reuse.** A key names warm state in a worker (for Lean: the session key of a
  snippet's header). A lease with a key goes to an idle worker that has served the key if
  there is one (a hit), else to the idle worker with the fewest keys (a miss). Each worker
  remembers at most ``keys_per_worker`` keys, least recently used out first (an eviction),
  matching the child's own session limit (``WorkerConfig.session_limit``, which
  ``lean_config`` sets from ``max_sessions``). A worker that restarted has lost its keys.
- **Warm states.** Stateful work (Lean session states: ``lean_worker.session``) names
  the warm state it wants as a list of ids, longest prefix first:
  ``pool.lease(key, prefer=ids)`` goes to the idle worker that has the first of them it
  can find, and ``lease.remember(ids)`` records what the leased worker now holds. Each
  worker remembers at most ``states_per_worker`` ids, least recently used out first; a
  worker that restarted has lost them. A wrong guess costs time (the child rebuilds the
  state from its value), never a wrong answer.
- **Memory.** ``rss_budget_bytes`` bounds the pool's total: before a lease, if the workers'
  trees are over it (RSS, confirmed by PSS), idle workers are cycled largest first; if the
  pool is still over, the lease is refused with ``PoolBudgetExceeded``. The per-worker
  ceiling and idle cycling are the workers' own ``RestartPolicy``.
- **Leases hold their child.** A lease is bound to the generation of its worker's child.
  Planned restarts (``max_requests``, ``max_imports``, the RSS ceiling, idle retirement)
  that come due during a lease wait until it ends; they run when the worker is next
  leased. Only an unplanned end (a crash, a timeout, the RSS hard limit) or an explicit
  ``cycle()`` invalidates a lease: its next call raises ``LeaseInvalidated`` instead of
  running on a new child that lacks the state the holder built.
- **Tripped workers leave rotation.** A worker whose restart limit refuses a new child
  (``RestartLimitExceeded``) gets no leases until its window lets it start one again
  (``WorkerSnapshot.restart_blocked_s``). When no worker can run and none is busy, a lease
  fails at once with ``PoolUnavailable``, which names each worker's cause.
- **Batches.** ``pool.map(command, requests)`` runs every request on the pool and yields an
  ``Outcome`` per request as it finishes; a request that fails (a crash, a timeout, a
  request that does not match its type) is an outcome with ``error`` set, always a
  ``WorkerError``, and never fails the batch.
"""

from __future__ import annotations

import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Hashable, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from lean_worker_protocol import Call, Stream

from ._clock import Clock
from ._config import WorkerConfig
from ._errors import (
    InvalidRequest,
    LeaseInvalidated,
    PoolBudgetExceeded,
    PoolClosed,
    PoolError,
    PoolUnavailable,
    QueueTimeout,
    RestartLimitExceeded,
    WorkerError,
)
from ._types import SandboxStatus
from ._worker import (
    DEFAULT,
    DiagnosticCallback,
    ProgressCallback,
    StreamCall,
    Tracer,
    Worker,
    check_timeout,
    session_keys_of,
)

ReqT = TypeVar("ReqT")
RespT = TypeVar("RespT")
RowT = TypeVar("RowT")
SummaryT = TypeVar("SummaryT")

DEFAULT_KEYS_PER_WORKER = 8
"""Keys remembered per worker when the config does not give the child's ``session_limit``."""
DEFAULT_STATES_PER_WORKER = 4096
"""Warm state ids remembered per worker (``Lease.remember``): a few documents' chains."""


@dataclass(frozen=True)
class WorkerSnapshot:
    index: int
    generation: int
    busy: bool
    pid: int | None
    keys: list[Hashable]
    """Warm keys, most recently used last."""
    requests: int
    imports: int
    restarts: dict[str, int]
    rss_bytes: int | None
    restart_blocked_s: float = 0.0
    """Seconds until the restart limit lets this worker start a child again; while above 0
    the worker is out of rotation. 0: in rotation."""
    states: int = 0
    """Warm state ids remembered (``Lease.remember``)."""
    sandbox: SandboxStatus | None = None
    """Whether this worker's children run sandboxed (``Worker.sandbox``)."""


@dataclass(frozen=True)
class PoolSnapshot:
    """The state of a pool, for monitoring (see ``Pool.snapshot``)."""

    workers: list[WorkerSnapshot]
    busy: int
    queue_depth: int
    warm_keys: int
    total_rss_bytes: int | None
    """Sum of the last RSS reading of every worker's tree (``None`` before any)."""
    restarts: dict[str, int]
    key_hits: int
    key_misses: int
    key_evictions: int
    leases: int
    queue_timeouts: int
    budget_refusals: int
    budget_cycles: int
    state_hits: int = 0
    """Leases with ``prefer`` that went to a worker holding one of the preferred states."""
    state_misses: int = 0


def _only_worker_errors(exc: BaseException) -> WorkerError | None:
    """The first error of a group made only of ``WorkerError``s, else ``None``."""
    if not isinstance(exc, BaseExceptionGroup):
        return None
    leaves: list[BaseException] = []
    stack: list[BaseException] = [exc]
    while stack:
        e = stack.pop()
        if isinstance(e, BaseExceptionGroup):
            stack.extend(reversed(e.exceptions))
        else:
            leaves.append(e)
    if leaves and all(isinstance(e, WorkerError) for e in leaves):
        return leaves[0]  # type: ignore[return-value]
    return None


@dataclass
class _Slot:
    index: int
    worker: Worker
    owner: Pool
    busy: bool = False
    generation: int = 0
    keys: OrderedDict[Hashable, None] = field(default_factory=OrderedDict)
    states: OrderedDict[Hashable, None] = field(default_factory=OrderedDict)
    last_used: float = 0.0


@dataclass
class _Waiter:
    key: Hashable | None
    prefer: tuple[Hashable, ...] = ()
    event: anyio.Event = field(default_factory=anyio.Event)
    slot: _Slot | None = None
    error: PoolError | None = None


class Lease:
    """Exclusive use of one pool worker, bound to the generation of its child."""

    def __init__(self, slot: _Slot, generation: int) -> None:
        self._slot = slot
        self.generation = generation
        self.index = slot.index

    @property
    def valid(self) -> bool:
        worker = self._slot.worker
        return worker.generation == self.generation and worker.pid is not None

    @property
    def worker(self) -> Worker:
        """The leased worker; raises ``LeaseInvalidated`` once its child has ended."""
        if not self.valid:
            current = self._slot.worker.generation
            raise LeaseInvalidated(
                f"pool worker {self.index}: its child (generation {self.generation}) ended while leased; "
                f"now generation={current}: take a new lease",
                worker=self.index, generation=self.generation, current_generation=current,
            )
        return self._slot.worker

    async def call(
        self,
        command: Call[ReqT, RespT],
        request: ReqT,
        *,
        timeout: float | None = DEFAULT,
        on_diagnostic: DiagnosticCallback | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> RespT:
        """``Worker.call`` on the leased worker's child (``LeaseInvalidated`` once it ended)."""
        return await self.worker.call(
            command, request, timeout=timeout, on_diagnostic=on_diagnostic, on_progress=on_progress
        )

    def stream(
        self,
        command: Stream[ReqT, RowT, SummaryT],
        request: ReqT,
        *,
        timeout: float | None = DEFAULT,
        on_diagnostic: DiagnosticCallback | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> StreamCall[RowT, SummaryT]:
        """``Worker.stream`` on the leased worker's child (``LeaseInvalidated`` once it ended)."""
        return self.worker.stream(
            command, request, timeout=timeout, on_diagnostic=on_diagnostic, on_progress=on_progress
        )

    def remember(self, ids: Iterable[Hashable]) -> None:
        """Record that the leased worker now holds the states ``ids`` warm (see ``Pool``)."""
        if not self.valid:
            return  # its child ended: the states went with it
        slot = self._slot
        owner = slot.owner
        for state in ids:
            slot.states[state] = None
            slot.states.move_to_end(state)
        while len(slot.states) > owner.states_per_worker:
            slot.states.popitem(last=False)

    async def _call_keyed(
        self, command: Call[ReqT, RespT], request: ReqT, keys: tuple[Hashable, ...] | None, timeout: float | None
    ) -> RespT:
        """``call`` with the session keys the pool computed to pick this worker."""
        return await self.worker._call(command, request, timeout, None, None, keys)


def request_keys(
    command: Call[Any, Any], index: int, request: Any, given: Sequence[tuple[Hashable, ...]] | None
) -> tuple[Hashable, ...] | None:
    """The session keys of request ``index`` of a batch: ``given[index]`` when the caller
    computed them, else the command's own ``session_keys`` (``None``: it declares none).
    ``InvalidRequest`` when ``given`` is too short."""
    if given is None:
        return session_keys_of(command, request)
    if index < len(given):
        return tuple(given[index])
    raise InvalidRequest(
        f"{command.name}: map() was given keys for {len(given)} requests but request "
        f"index={index} has none: nothing was sent",
        operation=command.name,
    )


@dataclass(frozen=True)
class Outcome(Generic[ReqT, RespT]):
    """The result of one request of ``Pool.map``: ``value`` or ``error``."""

    index: int
    request: ReqT
    value: RespT | None
    error: WorkerError | None
    worker: int
    """Index of the pool worker that ran it (-1 if it never got one)."""
    generation: int
    elapsed_s: float


class Pool:
    """``size`` supervised workers, all started from ``config`` (see the module docstring)."""

    def __init__(
        self,
        config: WorkerConfig,
        size: int,
        *,
        queue_timeout_s: float | None = 60.0,
        rss_budget_bytes: int | None = None,
        keys_per_worker: int | None = None,
        states_per_worker: int = DEFAULT_STATES_PER_WORKER,
        clock: Clock | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1; got {size}")
        if keys_per_worker is None:  # as many as the child keeps sessions
            keys_per_worker = config.session_limit or DEFAULT_KEYS_PER_WORKER
        if keys_per_worker < 1:
            raise ValueError(f"keys_per_worker must be >= 1; got {keys_per_worker}")
        if isinstance(states_per_worker, bool) or not isinstance(states_per_worker, int) or states_per_worker < 1:
            raise ValueError(f"states_per_worker must be an int >= 1; got {states_per_worker!r}")
        if queue_timeout_s is not None and not queue_timeout_s > 0:
            raise ValueError(f"queue_timeout_s must be positive or None; got {queue_timeout_s}")
        self.config = config
        self.size = size
        self.queue_timeout_s = queue_timeout_s
        self.rss_budget_bytes = rss_budget_bytes
        self.keys_per_worker = keys_per_worker
        self.states_per_worker = states_per_worker
        self._slots = [
            _Slot(i, Worker(replace(config, name=f"{config.name}-{i}"), clock=clock, tracer=tracer), self)
            for i in range(size)
        ]
        self._waiters: deque[_Waiter] = deque()
        self._closed = True
        self._counts: Counter[str] = Counter()
        self._rss: dict[int, int | None] = {}
        self._stack = AsyncExitStack()

    # -- lifecycle -------------------------------------------------------------------------------
    async def __aenter__(self) -> Pool:
        # Each worker's context is entered here, in this task (its task group must be exited
        # in the task that entered it); their children start concurrently.
        self._stack = AsyncExitStack()
        self._closed = False
        try:
            for slot in self._slots:
                slot.worker._start_on_enter = False
                await self._stack.enter_async_context(slot.worker)
            async with anyio.create_task_group() as tg:
                for slot in self._slots:
                    tg.start_soon(slot.worker.start)
        except BaseException as exc:
            await self.close()
            await self._stack.aclose()
            # Workers fail to start together for one reason (no toolchain, no sandbox): raise
            # the first worker's typed error, not a group of them the caller cannot match.
            first = _only_worker_errors(exc)
            if first is not None:
                raise first from exc
            raise
        for slot in self._slots:
            slot.generation = slot.worker.generation
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()
        # Only here, in the task and scope that entered them, are the workers' task
        # groups exited: close() may be called from any scope (inside a fail_after).
        await self._stack.aclose()

    async def close(self) -> None:
        """Close every worker (their children are stopped and reaped); queued and later
        lease requests fail with ``PoolClosed``. Leaving ``async with`` calls it."""
        self._closed = True
        while self._waiters:
            self._waiters.popleft().event.set()
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for slot in self._slots:
                    tg.start_soon(slot.worker.close)

    # -- leases -------------------------------------------------------------------------------
    @asynccontextmanager
    async def lease(self, key: Hashable | None = None, *, prefer: Sequence[Hashable] = ()) -> AsyncIterator[Lease]:
        """Lease a worker (warm for ``key`` if one is idle); released when the block ends.

        ``prefer``: warm state ids, best first (a state's id, then its prefixes'): an idle
        worker that remembers one of them (``Lease.remember``) wins over the ``key``."""
        slot = await self._acquire(key, tuple(prefer))
        try:
            # A planned restart that is due runs now (not during the lease), a worker
            # without a child starts one, and the worker is bound to that child.
            generation = await slot.worker._hold(key, slot.index)
            self._refresh(slot)
            self._learn(slot, key)
            yield Lease(slot, generation)
        finally:
            slot.worker._unhold()
            self._release(slot)

    async def call(
        self,
        command: Call[ReqT, RespT],
        request: ReqT,
        *,
        key: Hashable | None = None,
        timeout: float | None = DEFAULT,
    ) -> RespT:
        """Run one ``Call`` on a leased worker. ``key`` defaults to the command's session key."""
        keys = session_keys_of(command, request)  # once: for the lease and for the worker
        if key is None:
            key = keys[0] if keys else None
        async with self.lease(key) as lease:
            return await lease._call_keyed(command, request, keys, timeout)

    async def _acquire(self, key: Hashable | None, prefer: tuple[Hashable, ...] = ()) -> _Slot:
        if self._closed:
            raise PoolClosed("the pool is closed")
        await self._enforce_budget()
        if not self._waiters:
            slot = self._pick(key, prefer)
            if slot is not None:
                return slot
        unavailable = self._unavailable()
        if unavailable is not None:
            raise unavailable
        waiter = _Waiter(key, prefer)
        self._waiters.append(waiter)
        started = time.monotonic()
        with anyio.move_on_after(math.inf if self.queue_timeout_s is None else self.queue_timeout_s):
            try:
                await waiter.event.wait()
            except BaseException:
                if waiter.slot is not None:  # handed a worker just as we were cancelled
                    slot, waiter.slot = waiter.slot, None
                    self._release(slot)
                elif waiter in self._waiters:
                    self._waiters.remove(waiter)
                raise
        if waiter.slot is not None:
            return waiter.slot
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if waiter.error is not None:
            raise waiter.error
        if self._closed:
            raise PoolClosed("the pool closed while this lease request was queued")
        self._counts["queue_timeouts"] += 1
        raise QueueTimeout(
            f"no pool worker became free; waited_s={time.monotonic() - started:.3f} size={self.size} "
            f"queue_depth={len(self._waiters) + 1}",
            waited_s=time.monotonic() - started,
            queue_depth=len(self._waiters) + 1,
        )

    def _refresh(self, slot: _Slot) -> None:
        """Forget the keys of a worker whose child is not the one that served them."""
        worker = slot.worker
        if worker.generation != slot.generation:
            slot.keys.clear()
            slot.states.clear()
            slot.generation = worker.generation

    def _pick(self, key: Hashable | None, prefer: tuple[Hashable, ...] = ()) -> _Slot | None:
        """The best idle worker in rotation for ``prefer`` then ``key`` (marked busy), or ``None``."""
        idle = [s for s in self._slots if not s.busy and s.worker.restart_blocked_s() == 0]
        if not idle:
            return None
        for candidate in idle:
            self._refresh(candidate)
        warm = None
        if prefer:
            warm = next((s for state in prefer for s in idle if state in s.states), None)
            self._counts["state_hits" if warm is not None else "state_misses"] += 1
        if warm is None and key is not None:
            warm = next((s for s in idle if key in s.keys), None)
            self._counts["key_hits" if warm is not None else "key_misses"] += 1
        slot = warm if warm is not None else min(idle, key=lambda s: (len(s.keys), s.last_used))
        slot.busy = True
        self._counts["leases"] += 1
        return slot

    def _learn(self, slot: _Slot, key: Hashable | None) -> None:
        """The leased worker now has ``key`` warm (most recently used); evict past the limit."""
        if key is None:
            return
        slot.keys[key] = None
        slot.keys.move_to_end(key)
        while len(slot.keys) > self.keys_per_worker:
            slot.keys.popitem(last=False)
            self._counts["key_evictions"] += 1

    def _unavailable(self) -> PoolUnavailable | None:
        """``PoolUnavailable`` when no worker can run now and none is busy (so none will
        come free): every one is out of rotation by its restart limit."""
        if any(s.busy for s in self._slots):
            return None
        causes = [s.worker._restart_limit_error() for s in self._slots]
        if any(c is None for c in causes):
            return None
        retry = min(s.worker.restart_blocked_s() for s in self._slots)
        first = causes[0]
        assert first is not None
        cause = first.last_exit.cause.value if first.last_exit is not None else "unknown"
        return PoolUnavailable(
            f"no pool worker can run: all {self.size} are out of rotation after too many unplanned "
            f"restarts; last_cause={cause} retry_after_s={retry:.1f}: fix the crash cause or wait",
            causes=tuple(c for c in causes if isinstance(c, RestartLimitExceeded)),
            retry_after_s=retry,
        )

    def _release(self, slot: _Slot) -> None:
        slot.busy = False
        slot.last_used = time.monotonic()
        while self._waiters:
            waiter = self._waiters[0]
            chosen = self._pick(waiter.key, waiter.prefer)
            if chosen is None:
                break
            self._waiters.popleft()
            waiter.slot = chosen
            waiter.event.set()
        unavailable = self._unavailable() if self._waiters else None
        if unavailable is not None:  # nobody will come free: fail the queue now, not at its timeout
            while self._waiters:
                waiter = self._waiters.popleft()
                waiter.error = unavailable
                waiter.event.set()

    # -- memory -------------------------------------------------------------------------------
    async def _measure(self) -> int:
        total = 0
        for slot in self._slots:
            value = await slot.worker.rss()
            self._rss[slot.index] = value
            total += value or 0
        return total

    async def measure_rss(self) -> int:
        """Read the RSS of every worker's process tree now (bytes, summed over the pool);
        ``snapshot()`` then carries the readings (``WorkerSnapshot.rss_bytes``,
        ``total_rss_bytes``). For monitoring: the budget and the ceilings read their own."""
        return await self._measure()

    async def _pss_total(self) -> int:
        return sum([await s.worker.pss() or 0 for s in self._slots])

    async def _enforce_budget(self) -> None:
        budget = self.rss_budget_bytes
        if budget is None:
            return
        total = await self._measure()
        if total <= budget:
            return
        confirmed = await self._pss_total()
        if confirmed <= budget:
            return
        # Cycle idle workers, largest first, until the pool fits.
        for slot in sorted((s for s in self._slots if not s.busy), key=lambda s: -(self._rss.get(s.index) or 0)):
            if slot.worker.pid is None:
                continue
            slot.busy = True  # nobody leases it while it cycles
            try:
                await slot.worker.cycle()
                self._counts["budget_cycles"] += 1
            finally:
                self._release(slot)
            confirmed = await self._pss_total()
            if confirmed <= budget:
                return
        self._counts["budget_refusals"] += 1
        raise PoolBudgetExceeded(
            f"the pool's memory is over its budget after cycling every idle worker; "
            f"total_bytes={confirmed} budget_bytes={budget}",
            total_bytes=confirmed,
            budget_bytes=budget,
        )

    # -- batches ------------------------------------------------------------------------------
    @asynccontextmanager
    async def map(
        self,
        command: Call[ReqT, RespT],
        requests: Iterable[ReqT],
        *,
        timeout: float | None = DEFAULT,
        concurrency: int | None = None,
        keys: Sequence[tuple[Hashable, ...]] | None = None,
    ) -> AsyncIterator[MemoryObjectReceiveStream[Outcome[ReqT, RespT]]]:
        """Run ``command`` (a ``Call``) for every request on the pool; yield outcomes as they finish.

        ``async with pool.map(CHECK, reqs) as outcomes: async for o in outcomes: ...``.
        Leaving the block early cancels what is still running. ``keys``: each request's
        session keys, in order, when the caller has them already (computed once, off the
        event loop, as ``verify`` does for big snippets); by default the command's
        ``session_keys`` computes them, once per request.
        """
        if not isinstance(command, Call):
            raise TypeError(f"map() takes a Call declaration; got {command!r}")
        check_timeout(timeout)
        items = iter(enumerate(requests))
        send, receive = anyio.create_memory_object_stream[Outcome[ReqT, RespT]](self.size * 2)

        async def runner(out: MemoryObjectSendStream[Outcome[ReqT, RespT]]) -> None:
            async with out:
                for index, request in items:
                    outcome = await self._run_one(command, index, request, timeout, keys)
                    await out.send(outcome)

        async with anyio.create_task_group() as tg:
            for _ in range(concurrency or self.size):
                tg.start_soon(runner, send.clone())
            send.close()
            async with receive:
                yield receive
                tg.cancel_scope.cancel()

    async def _run_one(
        self,
        command: Call[ReqT, RespT],
        index: int,
        request: ReqT,
        timeout: float | None,
        given: Sequence[tuple[Hashable, ...]] | None,
    ) -> Outcome[ReqT, RespT]:
        started = time.perf_counter()
        worker, generation = -1, 0
        try:
            keys = request_keys(command, index, request, given)
            async with self.lease(keys[0] if keys else None) as lease:
                worker, generation = lease.index, lease.generation
                value = await lease._call_keyed(command, request, keys, timeout)
        except WorkerError as exc:
            return Outcome(index, request, None, exc, worker, generation, time.perf_counter() - started)
        return Outcome(index, request, value, None, worker, generation, time.perf_counter() - started)

    # -- monitoring ---------------------------------------------------------------------------
    def snapshot(self) -> PoolSnapshot:
        restarts: Counter[str] = Counter()
        workers = []
        for slot in self._slots:
            stats = slot.worker.stats()
            restarts.update(stats.restarts)
            rss = stats.last_rss_bytes if stats.last_rss_bytes is not None else self._rss.get(slot.index)
            workers.append(WorkerSnapshot(
                slot.index, slot.worker.generation, slot.busy, slot.worker.pid, list(slot.keys),
                stats.requests, stats.imports, dict(stats.restarts), rss, slot.worker.restart_blocked_s(),
                len(slot.states), slot.worker.sandbox,
            ))
        readings = [w.rss_bytes for w in workers if w.rss_bytes is not None]
        c = self._counts
        return PoolSnapshot(
            workers=workers,
            busy=sum(w.busy for w in workers),
            queue_depth=len(self._waiters),
            warm_keys=sum(len(w.keys) for w in workers),
            total_rss_bytes=sum(readings) if readings else None,
            restarts=dict(restarts),
            key_hits=c["key_hits"],
            key_misses=c["key_misses"],
            key_evictions=c["key_evictions"],
            leases=c["leases"],
            queue_timeouts=c["queue_timeouts"],
            budget_refusals=c["budget_refusals"],
            budget_cycles=c["budget_cycles"],
            state_hits=c["state_hits"],
            state_misses=c["state_misses"],
        )

