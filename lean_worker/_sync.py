"""``SyncWorker``: the same worker and semantics for code without an event loop.

The async ``Worker`` runs on an anyio event loop in one background thread (a blocking
portal) owned by the ``SyncWorker``; every method is a call into that loop. The child's
parent-death signal is tied to that thread, which lives exactly as long as the
``SyncWorker``. Streams cross the thread boundary a batch at a time, not a row at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from typing import Any, Generic, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from lean_worker_protocol import Call, Diagnostic, Hello, Stream

from ._config import WorkerConfig
from ._errors import WorkerClosed
from ._worker import DEFAULT, DiagnosticCallback, ProgressCallback, ShutdownReport, StreamCall, StreamSummary, Worker, WorkerStats

ReqT = TypeVar("ReqT")
RespT = TypeVar("RespT")
RowT = TypeVar("RowT")
SummaryT = TypeVar("SummaryT")


class SyncWorker:
    """``with SyncWorker(config) as worker: worker.call(ADD, Add(1, 2))``."""

    def __init__(self, config: WorkerConfig, *, backend: str = "asyncio") -> None:
        self.config = config
        self._backend = backend
        self._stack: ExitStack | None = None
        self._portal: BlockingPortal | None = None
        self._worker: Worker | None = None

    def __enter__(self) -> SyncWorker:
        stack = ExitStack()
        try:
            self._portal = stack.enter_context(start_blocking_portal(self._backend))
            self._worker = stack.enter_context(self._portal.wrap_async_context_manager(Worker(self.config)))
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc_info: Any) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.__exit__(*exc_info)

    def _parts(self) -> tuple[BlockingPortal, Worker]:
        if self._portal is None or self._worker is None or self._stack is None:
            raise WorkerClosed("SyncWorker is not open: use it as a context manager")
        return self._portal, self._worker

    @property
    def worker(self) -> Worker:
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

    def stats(self) -> WorkerStats:
        return self._parts()[1].stats()

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
        return portal.call(worker.cycle)

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

        async def run() -> RespT:
            return await worker.call(command, request, timeout=timeout, on_diagnostic=on_diagnostic, on_progress=on_progress)

        return portal.call(run)

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
    """A streaming request in flight, iterated from a plain thread."""

    def __init__(self, portal: BlockingPortal, call: StreamCall[RowT, SummaryT]) -> None:
        self._portal = portal
        self._call = call
        self._cm: AbstractContextManager[Any] | None = None

    def __enter__(self) -> SyncStreamCall[RowT, SummaryT]:
        self._cm = self._portal.wrap_async_context_manager(self._call)
        self._cm.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> bool | None:
        assert self._cm is not None
        return self._cm.__exit__(*exc_info)

    def __iter__(self) -> Iterator[RowT]:
        call = self._call
        while (batch := self._portal.call(call.next_batch)) is not None:
            yield from batch

    def batches(self) -> Iterator[list[RowT]]:
        call = self._call
        while (batch := self._portal.call(call.next_batch)) is not None:
            yield batch

    @property
    def summary(self) -> StreamSummary[SummaryT]:
        return self._call.summary

    @property
    def diagnostics(self) -> list[Diagnostic]:
        return self._call.diagnostics

    @property
    def rows_delivered(self) -> int:
        return self._call.rows_delivered
