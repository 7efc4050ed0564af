"""``StreamCall``: a streaming request in flight, as the caller iterates it.

It talks to the worker through two calls (``Worker._open`` takes the worker and begins the
request, ``Worker._close`` abandons it if it did not finish and gives the worker back) and
to the request through its ``Exchange``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from lean_worker_protocol import Diagnostic, Progress, Response, Rows, Stream

from ._errors import UnexpectedFrame
from ._request import Exchange
from ._types import DiagnosticCallback, ProgressCallback, RowBatch, StreamSummary

if TYPE_CHECKING:
    from ._worker import Worker

RowT = TypeVar("RowT")
SummaryT = TypeVar("SummaryT")


class StreamCall(Generic[RowT, SummaryT]):
    """A streaming request in flight (from ``Worker.stream``)."""

    def __init__(
        self,
        worker: Worker,
        command: Stream[Any, RowT, SummaryT],
        request: Any,
        timeout: float | None,
        on_diagnostic: DiagnosticCallback | None,
        on_progress: ProgressCallback | None,
    ) -> None:
        self._worker = worker
        self._command = command
        self._request = request
        self._timeout = timeout
        self._on_diagnostic = on_diagnostic
        self._on_progress = on_progress
        self._op: Exchange | None = None
        self._rows: list[RowT] = []
        self._i = 0
        self._summary: StreamSummary[SummaryT] | None = None
        self._expected: dict[str, int] = {}

    async def __aenter__(self) -> StreamCall[RowT, SummaryT]:
        self._op = await self._worker._open(
            self._command, self._request, self._timeout, self._on_diagnostic, self._on_progress
        )
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._worker._close(self._op)

    @property
    def request_id(self) -> int:
        assert self._op is not None
        return self._op.id

    @property
    def generation(self) -> int:
        assert self._op is not None
        return self._op.gen.child.generation

    @property
    def diagnostics(self) -> list[Diagnostic]:
        """Diagnostics received so far when no ``on_diagnostic`` callback was given
        (the first 10,000; ``diagnostics_overflow`` counts the rest)."""
        return self._op.diagnostics if self._op is not None else []

    @property
    def diagnostics_overflow(self) -> int:
        return self._op.diagnostics_overflow if self._op is not None else 0

    @property
    def rows_delivered(self) -> int:
        return self._op.rows if self._op is not None else 0

    @property
    def summary(self) -> StreamSummary[SummaryT]:
        """The terminal summary; available once all rows were consumed."""
        if self._summary is None:
            if self._op is not None and self._op.concluded:
                raise RuntimeError("the stream has not finished and will not: it failed or was left early, with no summary")
            raise RuntimeError("the stream has not finished: consume all rows first")
        return self._summary

    async def _next_event(self) -> RowBatch[RowT] | Diagnostic | Progress | None:
        """Next batch, diagnostic or progress event; ``None`` after the terminal response."""
        op = self._op
        if op is None:
            raise RuntimeError("use the StreamCall as an async context manager")
        if op.done:
            return None
        frame = await op.next_frame()
        if isinstance(frame, Rows):
            decoder = self._command.row_decoders.get(frame.stream)
            expected = op.counts.get(frame.stream, 0)
            if decoder is None or frame.seq != expected:
                raise await op.violation(
                    UnexpectedFrame,
                    f"rows for stream={frame.stream} seq={frame.seq} (expected stream in "
                    f"{sorted(self._command.row_types)} at seq={expected})",
                )
            rows = op.decode(decoder, frame.rows, f"a row of stream {frame.stream!r}")
            if len(rows) != frame.count:
                raise await op.violation(UnexpectedFrame, f"rows frame count={frame.count} holds {len(rows)} rows")
            op.delivered(frame.stream, len(rows))
            return RowBatch(frame.stream, frame.seq, rows)
        if isinstance(frame, Response):
            if frame.error is None and frame.rows != op.counts:
                raise await op.violation(
                    UnexpectedFrame, f"child reports rows={frame.rows} but parent received rows={op.counts}"
                )
            op.finish(frame)
            summary = op.decode(self._command.summary_decoder, frame.payload, "summary")
            op.conclude("ok")
            self._summary = StreamSummary(
                summary=summary,
                rows=dict(op.counts),
                total_rows=op.rows,
                elapsed_s=op.gen.channel.now() - op.started,
                child_elapsed_s=frame.elapsed_s,
                generation=op.gen.child.generation,
                request_id=op.id,
            )
            return None
        return frame

    async def events(self) -> AsyncIterator[RowBatch[RowT] | Diagnostic | Progress]:
        """Every event in arrival order: row batches, diagnostics and progress."""
        while (event := await self._next_event()) is not None:
            yield event

    async def batches(self) -> AsyncIterator[RowBatch[RowT]]:
        """Row batches as they arrive; diagnostics and progress go to the callbacks."""
        op = self._op
        while (event := await self._next_event()) is not None:
            if isinstance(event, RowBatch):
                yield event
            else:
                op.side_frame(event)  # type: ignore[union-attr]

    def __aiter__(self) -> StreamCall[RowT, SummaryT]:
        return self

    async def __anext__(self) -> RowT:
        i = self._i
        rows = self._rows
        if i < len(rows):
            self._i = i + 1
            # Rows of a batch are handed out without waiting, so the deadline is checked
            # here too (every 64 rows: a consumer slower than the child cannot outrun it).
            if not i & 63 and self._op is not None and self._op.gen.channel.now() >= self._op.deadline:
                # The rest of the batch was tentative and goes with the request: a consumer
                # that iterates again gets no rows, and the request does not end twice.
                self._rows, self._i = [], 0
                raise await self._op.timed_out()
            return rows[i]
        while True:
            event = await self._next_event()
            if event is None:
                raise StopAsyncIteration
            if isinstance(event, RowBatch):
                if event.rows:
                    self._rows = event.rows
                    self._i = 1
                    return event.rows[0]
            else:
                self._op.side_frame(event)  # type: ignore[union-attr]

    async def next_batch(self) -> list[RowT] | None:
        """The rest of the current batch, or the next one; ``None`` at the end (sync facade)."""
        if self._i < len(self._rows):
            rest = self._rows[self._i :]
            self._i = len(self._rows)
            return rest
        async for batch in self.batches():
            if batch.rows:
                return batch.rows
        return None
