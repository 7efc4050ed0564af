"""``SyncWorker``: the same worker and semantics for code without an event loop.

The async ``Worker`` runs on an anyio event loop in one background thread (a blocking
portal) owned by the ``SyncWorker``; every method is a call into that loop. The child's
parent-death signal is tied to that thread, which lives exactly as long as the
``SyncWorker`` is started. Streams cross the thread boundary a batch at a time, not a row
at a time. ``SyncPool`` (``_sync_pool.py``) is built the same way on these helpers.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from typing import Any, Generic, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from lean_worker_protocol import Call, Diagnostic, Hello, Progress, Stream

from ._clock import SYSTEM_CLOCK, Clock
from ._config import RestartPolicy, WorkerConfig
from ._errors import WorkerClosed
from ._types import SandboxStatus
from ._worker import (
    DEFAULT,
    entered_as,
    run_as,
    DiagnosticCallback,
    ProgressCallback,
    RowBatch,
    ShutdownReport,
    StreamCall,
    StreamSummary,
    Tracer,
    Worker,
    WorkerStats,
)

ReqT = TypeVar("ReqT")
RespT = TypeVar("RespT")
RowT = TypeVar("RowT")
SummaryT = TypeVar("SummaryT")
T = TypeVar("T")

_NEW, _OPEN, _CLOSED = "new", "open", "closed"
_END: Any = object()


def this_thread() -> object:
    """The owner a sync facade names for its calls: the calling thread. A thread that holds
    a worker through an open stream and calls it again gets ``ReentrantRequest`` at once."""
    return ("thread", threading.get_ident())


def open_portal(stack: ExitStack, backend: str) -> BlockingPortal:
    """Start an event loop thread whose tasks all end when ``stack`` closes.

    The portal is stopped with ``cancel_remaining=True``: a lease or a batch that another
    thread left open must not keep the thread (and ``close()``) waiting forever. Whatever
    the facade entered after this call (the worker, the pool) is exited first, cleanly.
    """
    portal = stack.enter_context(start_blocking_portal(backend))
    stack.callback(portal.call, portal.stop, True)
    return portal


def iterate(portal: BlockingPortal, make: Callable[[], AsyncIterator[T]]) -> Iterator[T]:
    """Drive an async iterator from a plain thread, one portal trip per item.

    ``make`` is called on the first ``next()``; closing the returned generator closes the
    async one in the loop (as leaving an ``async for`` early would).
    """
    agen = make()

    async def step() -> T:
        try:
            return await agen.__anext__()
        except StopAsyncIteration:
            return _END  # not raised across the portal: a future cannot carry it cleanly

    try:
        while (item := portal.call(step)) is not _END:
            yield item
    finally:
        aclose = getattr(agen, "aclose", None)
        if aclose is not None:
            try:
                portal.call(aclose)
            except RuntimeError:
                pass  # the portal has stopped (the facade was closed): nothing runs any more


class SyncWorker:
    """``with SyncWorker(config) as worker: worker.call(ADD, Add(1, 2))``.

    Or without ``with``: ``worker = SyncWorker(config); worker.start(); ...; worker.close()``.
    A ``SyncWorker`` is started once, like the ``Worker`` it wraps; after ``close()`` every
    request raises ``WorkerClosed``.
    """

    def __init__(
        self,
        config: WorkerConfig,
        *,
        clock: Clock | None = None,
        tracer: Tracer | None = None,
        backend: str = "asyncio",
    ) -> None:
        self.config = config
        self.policy: RestartPolicy = config.restart
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.tracer = tracer
        """Called on the portal thread with every ``TraceEvent``."""
        self._backend = backend
        self._state = _NEW
        self._transition = threading.Lock()
        self._stack: ExitStack | None = None
        self._portal: BlockingPortal | None = None
        self._worker: Worker | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> SyncWorker:
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def start(self) -> None:
        """Open the portal thread and start the worker's child there; on a started worker,
        start a child now if it has none (as ``Worker.start``)."""
        with self._transition:
            if self._state == _CLOSED:
                raise WorkerClosed(f"worker {self.config.name} is closed: create a new SyncWorker")
            if self._state == _OPEN:
                portal, worker = self._parts()
                portal.call(run_as, this_thread(), worker.start)
                return
            stack = ExitStack()
            try:
                portal = open_portal(stack, self._backend)
                # Entered in a portal task: the child is spawned from the portal thread.
                worker = stack.enter_context(portal.wrap_async_context_manager(Worker(self.config, clock=self.clock, tracer=self.tracer)))
            except BaseException:
                stack.close()
                raise
            self._stack, self._portal, self._worker = stack, portal, worker
            self._state = _OPEN

    def close(self) -> ShutdownReport:
        """Stop the child gracefully, then the portal thread. Idempotent: a worker that is
        not running reports ``already_exited``."""
        with self._transition:
            stack, portal, worker = self._stack, self._portal, self._worker
            self._state = _CLOSED
            self._stack = self._portal = self._worker = None
            if stack is None or portal is None or worker is None:
                return ShutdownReport("already_exited", 0.0, None)
            try:
                return portal.call(run_as, this_thread(), worker.close)
            finally:
                stack.close()

    def _parts(self) -> tuple[BlockingPortal, Worker]:
        portal, worker = self._portal, self._worker
        if portal is None or worker is None:
            if self._state == _CLOSED:
                raise WorkerClosed(f"worker {self.config.name} is closed")
            raise WorkerClosed(
                f"worker {self.config.name} is not started: call start() or use `with SyncWorker(...)`"
            )
        return portal, worker

    # -- state -----------------------------------------------------------------------------------
    @property
    def worker(self) -> Worker:
        """The async ``Worker`` underneath (its methods must run on the portal's loop)."""
        return self._parts()[1]

    @property
    def generation(self) -> int:
        return self._parts()[1].generation

    @property
    def pid(self) -> int | None:
        return self._parts()[1].pid

    @property
    def hello(self) -> Hello | None:
        return self._parts()[1].hello

    @property
    def sandbox(self) -> SandboxStatus:
        return self._parts()[1].sandbox

    def stats(self) -> WorkerStats:
        return self._parts()[1].stats()

    def restart_blocked_s(self) -> float:
        return self._parts()[1].restart_blocked_s()

    def output_tail(self, stream: str = "stderr", max_lines: int = 40) -> str:
        return self._parts()[1].output_tail(stream, max_lines)

    def rss(self) -> int | None:
        portal, worker = self._parts()
        return portal.call(worker.rss)

    def pss(self) -> int | None:
        portal, worker = self._parts()
        return portal.call(worker.pss)

    def cycle(self) -> ShutdownReport:
        portal, worker = self._parts()
        return portal.call(run_as, this_thread(), worker.cycle)

    # -- requests --------------------------------------------------------------------------------
    def call(
        self,
        command: Call[ReqT, RespT],
        request: ReqT,
        *,
        timeout: float | None = DEFAULT,
        on_diagnostic: DiagnosticCallback | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> RespT:
        portal, worker = self._parts()
        return portal.call(  # type: ignore[no-any-return]
            functools.partial(
                run_as, this_thread(), worker.call, command, request,
                timeout=timeout, on_diagnostic=on_diagnostic, on_progress=on_progress,
            )
        )

    def stream(
        self,
        command: Stream[ReqT, RowT, SummaryT],
        request: ReqT,
        *,
        timeout: float | None = DEFAULT,
        on_diagnostic: DiagnosticCallback | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> SyncStreamCall[RowT, SummaryT]:
        portal, worker = self._parts()
        call = worker.stream(command, request, timeout=timeout, on_diagnostic=on_diagnostic, on_progress=on_progress)
        return SyncStreamCall(portal, call)

    def stream_into(
        self,
        command: Stream[ReqT, RowT, SummaryT],
        request: ReqT,
        sink: Callable[[RowT], object],
        *,
        timeout: float | None = DEFAULT,
        on_diagnostic: DiagnosticCallback | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> StreamSummary[SummaryT]:
        with self.stream(command, request, timeout=timeout, on_diagnostic=on_diagnostic, on_progress=on_progress) as call:
            for row in call:
                sink(row)
        return call.summary


class SyncStreamCall(Generic[RowT, SummaryT]):
    """A streaming request in flight, used from a plain thread: ``with worker.stream(CMD, req)
    as rows: for row in rows: ...``. The same members as ``StreamCall``."""

    def __init__(self, portal: BlockingPortal, call: StreamCall[RowT, SummaryT]) -> None:
        self._portal = portal
        self._call = call
        self._cm: AbstractContextManager[Any] | None = None

    def __enter__(self) -> SyncStreamCall[RowT, SummaryT]:
        # The StreamCall is entered and exited in one portal task that waits in between.
        self._cm = self._portal.wrap_async_context_manager(entered_as(this_thread(), self._call))
        self._cm.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> bool | None:
        assert self._cm is not None
        return self._cm.__exit__(*exc_info)

    def __iter__(self) -> Iterator[RowT]:
        """Rows; each trip into the loop fetches the rest of a batch (``next_batch``)."""
        call = self._call
        while (batch := self._portal.call(call.next_batch)) is not None:
            yield from batch

    def events(self) -> Iterator[RowBatch[RowT] | Diagnostic | Progress]:
        """Every event in arrival order: row batches, diagnostics and progress."""
        return iterate(self._portal, self._call.events)

    def batches(self) -> Iterator[RowBatch[RowT]]:
        """Row batches as they arrive; diagnostics and progress go to the callbacks."""
        return iterate(self._portal, self._call.batches)

    @property
    def request_id(self) -> int:
        return self._call.request_id

    @property
    def generation(self) -> int:
        return self._call.generation

    @property
    def summary(self) -> StreamSummary[SummaryT]:
        return self._call.summary

    @property
    def diagnostics(self) -> list[Diagnostic]:
        return self._call.diagnostics

    @property
    def diagnostics_overflow(self) -> int:
        return self._call.diagnostics_overflow

    @property
    def rows_delivered(self) -> int:
        return self._call.rows_delivered
