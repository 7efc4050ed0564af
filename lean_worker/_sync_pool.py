"""``SyncPool``: the pool of ``_pool.py`` for code without an event loop.

    with SyncPool(config, size=2) as pool:
        result = pool.call(CHECK, CheckRequest(code))
        with pool.lease(key) as lease:
            lease.call(OPEN, ...)
            lease.call(CHECK, ...)               # same child as the call before
        for outcome in pool.map(CHECK, requests):
            ...

Built like ``SyncWorker``: the async ``Pool`` runs on an event loop in one background
thread (a blocking portal) that lives as long as the ``SyncPool`` is started; every method
is a call into that loop, so any number of threads can use one ``SyncPool`` and their
calls run concurrently on different workers. The children are spawned from the portal
thread, which their parent-death signal is tied to.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable, Iterator, Sequence
from concurrent.futures import CancelledError
from contextlib import AbstractContextManager, ExitStack, contextmanager
from functools import partial
from typing import Any, TypeVar

from anyio import EndOfStream, get_cancelled_exc_class
from anyio.from_thread import BlockingPortal
from anyio.streams.memory import MemoryObjectReceiveStream

from lean_worker_protocol import Call, Stream

from ._clock import Clock
from ._config import WorkerConfig
from ._errors import PoolClosed
from ._pool import DEFAULT_STATES_PER_WORKER, Lease, Outcome, Pool, PoolSnapshot
from ._sync import _CLOSED, _END, _NEW, _OPEN, SyncStreamCall, open_portal, this_thread
from ._worker import DEFAULT, DiagnosticCallback, ProgressCallback, Tracer, Worker, run_as

ReqT = TypeVar("ReqT")
RespT = TypeVar("RespT")
RowT = TypeVar("RowT")
SummaryT = TypeVar("SummaryT")


class SyncPool:
    """``with SyncPool(config, size=2) as pool: pool.call(CMD, request)``.

    Or without ``with``: ``pool = SyncPool(config, 2); pool.start(); ...; pool.close()``.
    Started once, like the ``Pool`` it wraps; after ``close()`` leases raise ``PoolClosed``.
    """

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
        backend: str = "asyncio",
    ) -> None:
        # Built here, not in start(): bad arguments fail at construction, as with Pool.
        self._pool = Pool(
            config, size, queue_timeout_s=queue_timeout_s, rss_budget_bytes=rss_budget_bytes,
            keys_per_worker=keys_per_worker, states_per_worker=states_per_worker, clock=clock, tracer=tracer,
        )
        self.config = config
        self.size = size
        self.queue_timeout_s = queue_timeout_s
        self.rss_budget_bytes = rss_budget_bytes
        self.keys_per_worker = self._pool.keys_per_worker
        self.states_per_worker = self._pool.states_per_worker
        self._backend = backend
        self._state = _NEW
        self._transition = threading.Lock()
        self._stack: ExitStack | None = None
        self._portal: BlockingPortal | None = None
        self._cancelled: tuple[type[BaseException], ...] = ()
        """The loop's cancellation exception (asyncio's or trio's), once started."""

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> SyncPool:
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def start(self) -> None:
        """Open the portal thread and start every worker's child there (concurrently).
        Starting a started pool does nothing."""
        with self._transition:
            if self._state == _CLOSED:
                raise PoolClosed("the pool is closed: create a new SyncPool")
            if self._state == _OPEN:
                return
            stack = ExitStack()
            try:
                portal = open_portal(stack, self._backend)
                self._cancelled = (portal.call(get_cancelled_exc_class),)
                stack.enter_context(portal.wrap_async_context_manager(self._pool))
            except BaseException:
                stack.close()
                raise
            self._stack, self._portal = stack, portal
            self._state = _OPEN

    def close(self) -> None:
        """Close every worker (waiting for requests in flight), then stop the portal thread,
        which ends leases and batches other threads left open. Idempotent."""
        with self._transition:
            stack, self._stack, self._portal = self._stack, None, None
            self._state = _CLOSED
            if stack is not None:
                stack.close()

    def _portal_or_raise(self) -> BlockingPortal:
        portal = self._portal
        if portal is None:
            if self._state == _CLOSED:
                raise PoolClosed("the pool is closed")
            raise PoolClosed("the pool is not started: call start() or use `with SyncPool(...)`")
        return portal

    def _stopped(self, portal: BlockingPortal, exc: BaseException) -> bool:
        """Whether ``exc`` is how a portal that ``close()`` stopped under a caller shows:
        ``RuntimeError`` (not running) or a cancellation."""
        return self._portal is not portal and isinstance(exc, (RuntimeError, CancelledError, *self._cancelled))

    def _run(self, portal: BlockingPortal, func: Any, *args: Any) -> Any:
        """``portal.call``, with the errors of a portal stopped under us told as ``PoolClosed``."""
        try:
            return portal.call(func, *args)
        except BaseException as exc:
            if self._stopped(portal, exc):
                raise PoolClosed("the pool was closed while this call was running") from exc
            raise

    def _enter(self, portal: BlockingPortal, cm: Any) -> tuple[AbstractContextManager[Any], Any]:
        """Enter an async context manager in a portal task of its own (``__aenter__`` and
        ``__aexit__`` in one task, as the task groups inside the pool require)."""
        wrapped = portal.wrap_async_context_manager(cm)
        try:
            return wrapped, wrapped.__enter__()
        except BaseException as exc:
            if self._stopped(portal, exc):
                raise PoolClosed("the pool was closed while this call was running") from exc
            raise

    def _exit(self, portal: BlockingPortal, wrapped: AbstractContextManager[Any], exc: BaseException | None) -> None:
        if self._portal is not portal:
            return  # close() stopped the portal: it cancelled that task, which exited the context
        try:
            if exc is None:
                wrapped.__exit__(None, None, None)
            else:
                wrapped.__exit__(type(exc), exc, exc.__traceback__)
        except RuntimeError:
            if self._portal is portal:
                raise

    # -- requests --------------------------------------------------------------------------------
    @contextmanager
    def lease(self, key: Hashable | None = None, *, prefer: Sequence[Hashable] = ()) -> Iterator[SyncLease]:
        """Lease a worker (warm for ``key`` if one is idle, or holding one of the
        ``prefer`` states: see ``Pool.lease``); released when the block ends."""
        portal = self._portal_or_raise()
        wrapped, lease = self._enter(portal, self._pool.lease(key, prefer=prefer))
        try:
            yield SyncLease(self, lease)
        except BaseException as exc:
            self._exit(portal, wrapped, exc)
            raise
        self._exit(portal, wrapped, None)

    def call(
        self, command: Call[ReqT, RespT], request: ReqT, *, key: Hashable | None = None, timeout: float | None = DEFAULT
    ) -> RespT:
        """Run one ``Call`` on a leased worker. ``key`` defaults to the command's session key."""
        portal = self._portal_or_raise()
        return self._run(portal, partial(self._pool.call, command, request, key=key, timeout=timeout))

    def map(
        self,
        command: Call[ReqT, RespT],
        requests: Iterable[ReqT],
        *,
        timeout: float | None = DEFAULT,
        concurrency: int | None = None,
        keys: Sequence[tuple[Hashable, ...]] | None = None,
    ) -> Iterator[Outcome[ReqT, RespT]]:
        """Run ``command`` for every request on the pool; yield an ``Outcome`` per request as
        it finishes (a failed request is an outcome with ``error`` set).

        Leaving early (``break``, ``close()`` on the iterator, an exception in the loop body)
        cancels what is still running. ``requests`` is read from the portal thread.
        """
        portal = self._portal_or_raise()
        return self._outcomes(
            portal, self._pool.map(command, requests, timeout=timeout, concurrency=concurrency, keys=keys)
        )

    def _outcomes(self, portal: BlockingPortal, batch: Any) -> Iterator[Outcome[Any, Any]]:
        async def receive_one(stream: MemoryObjectReceiveStream[Outcome[Any, Any]]) -> Any:
            try:
                return await stream.receive()
            except EndOfStream:
                return _END

        wrapped, outcomes = self._enter(portal, batch)
        try:
            while (outcome := self._run(portal, receive_one, outcomes)) is not _END:
                yield outcome
        finally:
            # Exit cleanly whatever ended the loop (the end, break, close(), an exception):
            # Pool.map then cancels the runners still going and waits for them; a request
            # they abandon is cancelled in its child, which stays. The caller's exception,
            # if any, propagates unchanged.
            self._exit(portal, wrapped, None)

    def snapshot(self) -> PoolSnapshot:
        """The pool's state (read in the loop thread while the pool runs)."""
        portal = self._portal
        if portal is None:
            return self._pool.snapshot()
        return self._run(portal, self._pool.snapshot)  # type: ignore[no-any-return]

    def measure_rss(self) -> int:
        """``Pool.measure_rss``: read every worker tree's RSS now; the snapshot carries it."""
        return self._run(self._portal_or_raise(), self._pool.measure_rss)  # type: ignore[no-any-return]


class SyncLease:
    """Exclusive use of one pool worker from a plain thread (from ``SyncPool.lease``)."""

    def __init__(self, owner: SyncPool, lease: Lease) -> None:
        self._owner = owner
        self._lease = lease
        self.generation = lease.generation
        self.index = lease.index

    @property
    def valid(self) -> bool:
        return self._lease.valid

    @property
    def worker(self) -> Worker:
        """The leased async ``Worker``; raises ``LeaseInvalidated`` once its child has ended."""
        return self._lease.worker

    def call(
        self,
        command: Call[ReqT, RespT],
        request: ReqT,
        *,
        timeout: float | None = DEFAULT,
        on_diagnostic: DiagnosticCallback | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> RespT:
        """``Lease.call`` from a plain thread (callbacks run on the portal thread)."""
        owner = self._owner
        return owner._run(  # type: ignore[no-any-return]
            owner._portal_or_raise(),
            partial(
                run_as, this_thread(), self._lease.call, command, request,
                timeout=timeout, on_diagnostic=on_diagnostic, on_progress=on_progress,
            ),
        )

    def remember(self, ids: Iterable[Hashable]) -> None:
        """``Lease.remember``: the leased worker now holds the states ``ids`` warm."""
        owner = self._owner
        owner._run(owner._portal_or_raise(), self._lease.remember, tuple(ids))

    def stream(
        self,
        command: Stream[ReqT, RowT, SummaryT],
        request: ReqT,
        *,
        timeout: float | None = DEFAULT,
        on_diagnostic: DiagnosticCallback | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> SyncStreamCall[RowT, SummaryT]:
        """``Lease.stream`` from a plain thread: ``with lease.stream(CMD, req) as rows: ...``."""
        portal = self._owner._portal_or_raise()
        call = self._lease.stream(command, request, timeout=timeout, on_diagnostic=on_diagnostic, on_progress=on_progress)
        return SyncStreamCall(portal, call)
