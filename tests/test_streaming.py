"""Streaming through a supervised worker: rows, diagnostics and progress in order; the child's
own output kept apart and bounded; memory bounded by backpressure; leaving a stream early
(break, a raising sink, a cancelled caller) cancels the request in the child, which stays
when it honours the cancel and is replaced when it does not. The same through ``SyncWorker``
and on the trio backend."""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

import anyio
import pytest

from lean_worker import (
    Diagnostic,
    ExitCause,
    Progress,
    RemoteError,
    RowBatch,
    SyncWorker,
    Worker,
    WorkerConfig,
)
from children.workload import (
    FAIL,
    FLOOD,
    MULTI,
    ROWS,
    SLEEP,
    SLEEP_IGNORING_CANCEL,
    SPAM,
    STATUS,
    Fail,
    FloodRequest,
    MultiRequest,
    Note,
    Row,
    RowsRequest,
    RowsSummary,
    Sleep,
    SpamRequest,
    Status,
    StatusRequest,
)
from conftest import child_config

BOTH_BACKENDS = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])

ENDLESS = RowsRequest(n=1_000_000, sleep_s=0.005)
"""A stream that would run for over an hour: a request that stops early was stopped."""
ENDLESS_IGNORING_CANCEL = RowsRequest(n=1_000_000, sleep_s=0.005, honour_cancel=False)


def workload(**options: Any) -> WorkerConfig:
    options.setdefault("cancel_grace_s", 0.5)
    return child_config("tests.children.workload", **options)


async def status(worker: Worker) -> Status:
    return await worker.call(STATUS, StatusRequest())


class SinkFull(Exception):
    """What a user's sink raises; it must reach the caller unchanged."""


def _output_tails(worker: Worker) -> Any:
    # The supervisor keeps the child's stdout and stderr tails on its process object and
    # exposes only the stderr tail (in ExitInfo, once a child ended); there is no public
    # accessor for a live child's output yet, so the tests reach in.
    gen = worker._gen
    assert gen is not None
    return gen.child.stdout_tail, gen.child.stderr_tail


async def _wait_for(predicate: Any, timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)


# -- the child's own output ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_print_spam_on_stdout_does_not_corrupt_frames_and_lands_in_the_stdout_tail() -> None:
    async with Worker(workload()) as worker:
        generation = worker.generation
        with anyio.fail_after(20):
            async with worker.stream(SPAM, SpamRequest(lines=3000, marker="SPAM-7f3a")) as rows:
                got = [row.i async for row in rows]
        assert got == list(range(3000))
        assert rows.summary.rows == {"rows": 3000}
        assert rows.summary.summary == RowsSummary(3000)

        stdout, stderr = _output_tails(worker)
        await _wait_for(lambda: "SPAM-7f3a done" in stdout.text())
        assert "SPAM-7f3a line 2999" in stdout.text()
        assert stderr.total_bytes == 0
        # The protocol channel never saw a byte of it: same child, still serving.
        assert (await status(worker)).generation == generation
        assert worker.stats().restarts == {}


@pytest.mark.anyio
async def test_a_10_mib_stderr_flood_during_a_stream_neither_blocks_nor_breaks_it_and_the_tail_stays_bounded() -> None:
    tail_limit = 16 * 1024
    flood = 10 * 1024 * 1024
    async with Worker(workload(output_tail_bytes=tail_limit)) as worker:
        generation = worker.generation
        with anyio.fail_after(30):
            async with worker.stream(FLOOD, FloodRequest(total_bytes=flood, marker="FLOOD-END-91c2")) as rows:
                got = [row.i async for row in rows]
        chunks = rows.summary.summary.emitted
        assert chunks >= flood // (64 * 1024)
        assert got == list(range(chunks))

        _stdout, stderr = _output_tails(worker)
        await _wait_for(lambda: stderr.total_bytes >= flood)
        await _wait_for(lambda: "FLOOD-END-91c2" in stderr.text())
        kept = stderr.text(max_lines=10**9)
        assert len(kept.encode()) <= tail_limit

        # The child keeps serving, and the tail that travels with its exit is bounded too.
        assert (await status(worker)).generation == generation
        report = await worker.cycle()
        assert report.exit is not None
        assert report.exit.stderr_tail.endswith("FLOOD-END-91c2")
        assert len(report.exit.stderr_tail.encode()) <= tail_limit


# -- backpressure --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_slow_consumer_of_a_million_rows_keeps_parent_memory_bounded_and_loses_no_row() -> None:
    # 1,000,000 rows of ~75 bytes: ~75 MiB on the wire, ~140 MiB as decoded rows. The
    # consumer yields to the event loop after every batch (as one that awaits a database
    # write would), so the loop could read ahead as far as the child writes. With
    # backpressure the parent holds about one read-ahead window. Measured on 2 cores, Python
    # 3.11, 2026-11-22: traced peak 3.3 MiB; 46-77 MiB with the channel's read-ahead limit
    # (HIGH_WATER) disabled.
    n = 1_000_000
    bound = 16 * 1024 * 1024
    async with Worker(workload()) as worker:
        waits_before = worker.stats().backpressure_waits
        expected = 0
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            with anyio.fail_after(90):
                async with worker.stream(ROWS, RowsRequest(n=n, pad=64)) as rows:
                    async for batch in rows.batches():
                        # Each batch starts where the last one ended and holds the rows its
                        # ends say: none dropped, none reordered across batches. (A per-row
                        # loop here would triple the runtime under tracemalloc.)
                        first, last = batch.rows[0].i, batch.rows[-1].i
                        if (batch.seq, first, last) != (expected, expected, expected + len(batch.rows) - 1):
                            raise AssertionError(
                                f"batch seq={batch.seq} rows {first}..{last} where row {expected} was due"
                            )
                        expected += len(batch.rows)
                        await anyio.sleep(0.001)  # the slow part: the child gets ahead
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert expected == n
        assert rows.summary.rows == {"rows": n}
        assert peak < bound, f"parent traced peak {peak / 2**20:.1f} MiB while consuming {n} rows"
        assert worker.stats().backpressure_waits > waits_before


# -- order and the terminal summary --------------------------------------------------------------


@pytest.mark.anyio
async def test_events_deliver_rows_diagnostics_and_progress_in_emission_order() -> None:
    async with Worker(workload()) as worker:
        request = RowsRequest(n=2_500, diagnostic_every=250, progress_every=500)
        rows_seen = 0
        diagnostics: list[tuple[int, Diagnostic]] = []
        progress: list[tuple[int, Progress]] = []
        with anyio.fail_after(20):
            async with worker.stream(ROWS, request) as call:
                async for event in call.events():
                    if isinstance(event, RowBatch):
                        assert event.stream == "rows" and event.seq == rows_seen
                        assert [r.i for r in event.rows] == list(range(rows_seen, rows_seen + len(event.rows)))
                        rows_seen += len(event.rows)
                    elif isinstance(event, Diagnostic):
                        diagnostics.append((rows_seen, event))
                    else:
                        assert isinstance(event, Progress)
                        progress.append((rows_seen, event))
        assert rows_seen == 2_500
        # Every diagnostic and progress step arrives after exactly the rows emitted before it.
        assert [(seen, d.message) for seen, d in diagnostics] == [
            (k, f"after {k} rows") for k in range(250, 2_501, 250)
        ]
        assert {(d.severity, d.code) for _, d in diagnostics} == {("warning", "workload.checkpoint")}
        assert [(seen, p.phase, p.current, p.total) for seen, p in progress] == [
            (k, f"rows-{k}", k, 2_500) for k in range(500, 2_501, 500)
        ]
        assert call.summary.rows == {"rows": 2_500}
        assert call.diagnostics == []  # events() hands them to the caller, not to the list


@pytest.mark.anyio
async def test_iterating_rows_hands_diagnostics_to_the_list_and_progress_to_the_callback_in_order() -> None:
    async with Worker(workload()) as worker:
        consumed: list[int] = []
        progress: list[tuple[int, int]] = []
        with anyio.fail_after(20):
            async with worker.stream(
                ROWS,
                RowsRequest(n=3_000, diagnostic_every=1_000, progress_every=1_500),
                on_progress=lambda p: progress.append((len(consumed), p.current)),
            ) as rows:
                async for row in rows:
                    consumed.append(row.i)
        assert consumed == list(range(3_000))
        assert progress == [(1_500, 1_500), (3_000, 3_000)]
        assert [d.message for d in rows.diagnostics] == ["after 1000 rows", "after 2000 rows", "after 3000 rows"]
        assert rows.diagnostics_overflow == 0


@pytest.mark.anyio
async def test_the_summary_reports_rows_per_stream_elapsed_time_generation_and_request() -> None:
    async with Worker(workload()) as worker:
        async with worker.stream(ROWS, RowsRequest(n=5, sleep_s=0.02)) as rows:
            with pytest.raises(RuntimeError, match="consume all rows first"):
                rows.summary
            got = [row async for row in rows]
        summary = rows.summary
        assert got == [Row(i) for i in range(5)]
        assert summary.summary == RowsSummary(5)
        assert summary.rows == {"rows": 5}
        assert summary.total_rows == 5
        assert summary.child_elapsed_s >= 5 * 0.02 * 0.9
        assert summary.elapsed_s >= summary.child_elapsed_s
        assert summary.generation == worker.generation
        assert summary.request_id == rows.request_id
        assert rows.rows_delivered == 5


@pytest.mark.anyio
async def test_named_streams_keep_their_own_order_and_counts() -> None:
    async with Worker(workload()) as worker:
        seen: dict[str, list[Any]] = {"evens": [], "odds": [], "notes": []}
        with anyio.fail_after(20):
            async with worker.stream(MULTI, MultiRequest(n=5_001, note_every=1_000)) as call:
                async for batch in call.batches():
                    assert batch.seq == len(seen[batch.stream])
                    seen[batch.stream] += batch.rows
        assert [r.i for r in seen["evens"]] == list(range(0, 5_001, 2))
        assert [r.i for r in seen["odds"]] == list(range(1, 5_001, 2))
        assert seen["notes"] == [Note(k, f"{k} rows so far") for k in range(1_000, 5_001, 1_000)]
        assert call.summary.rows == {"evens": 2_501, "odds": 2_500, "notes": 5}
        assert call.summary.total_rows == 5_001 + 5
        assert (call.summary.summary.evens, call.summary.summary.odds, call.summary.summary.notes) == (2_501, 2_500, 5)


# -- leaving a stream early ----------------------------------------------------------------------


@pytest.mark.anyio
@BOTH_BACKENDS
async def test_breaking_out_of_a_stream_cancels_it_in_the_child_which_keeps_its_generation() -> None:
    async with Worker(workload()) as worker:
        generation, pid = worker.generation, worker.pid
        started = time.monotonic()
        with anyio.fail_after(20):
            async with worker.stream(ROWS, ENDLESS) as rows:
                async for row in rows:
                    if row.i == 3:
                        break
        assert time.monotonic() - started < 5
        after = await status(worker)
        assert (after.generation, after.pid) == (generation, pid)
        assert after.cancels_seen == 1
        assert worker.stats().restarts == {}


@pytest.mark.anyio
async def test_breaking_out_of_a_stream_that_ignores_cancel_replaces_the_child_after_the_grace() -> None:
    async with Worker(workload(cancel_grace_s=0.3)) as worker:
        generation = worker.generation
        started = time.monotonic()
        with anyio.fail_after(20):
            async with worker.stream(ROWS, ENDLESS_IGNORING_CANCEL) as rows:
                async for row in rows:
                    if row.i == 3:
                        break
        assert time.monotonic() - started >= 0.3
        assert worker.pid is None
        stats = worker.stats()
        assert stats.restarts == {"cancel_timeout": 1}
        assert stats.last_exit is not None and stats.last_exit.cause == ExitCause.SUPERVISOR_KILL
        assert stats.last_exit.command == "rows" and stats.last_exit.work_entered
        after = await status(worker)
        assert after.generation == generation + 1
        assert after.cancels_seen == 0


@pytest.mark.anyio
@pytest.mark.parametrize(("honour_cancel", "restarts"), [(True, {}), (False, {"cancel_timeout": 1})])
async def test_a_sink_that_raises_in_stream_into_propagates_and_the_worker_keeps_serving(
    honour_cancel: bool, restarts: dict[str, int]
) -> None:
    async with Worker(workload(cancel_grace_s=0.3)) as worker:
        generation = worker.generation
        received: list[int] = []

        def sink(row: Row) -> None:
            if row.i == 5:
                raise SinkFull(f"sink full at row {row.i}")
            received.append(row.i)

        request = RowsRequest(n=1_000_000, sleep_s=0.005, honour_cancel=honour_cancel)
        with anyio.fail_after(20), pytest.raises(SinkFull, match="sink full at row 5"):
            await worker.stream_into(ROWS, request, sink)
        assert received == [0, 1, 2, 3, 4]
        assert worker.stats().restarts == restarts

        after = await status(worker)
        assert after.generation == (generation if honour_cancel else generation + 1)
        assert after.cancels_seen == (1 if honour_cancel else 0)
        collected: list[Row] = []
        summary = await worker.stream_into(ROWS, RowsRequest(n=10), collected.append)
        assert collected == [Row(i) for i in range(10)]
        assert summary.rows == {"rows": 10}


@pytest.mark.anyio
@BOTH_BACKENDS
@pytest.mark.parametrize("kind", ["call", "stream"])
async def test_cancelling_the_caller_mid_request_cancels_it_in_the_child_which_keeps_its_generation(kind: str) -> None:
    async with Worker(workload()) as worker:
        generation = worker.generation
        rows: list[Row] = []
        with anyio.fail_after(20):
            with anyio.move_on_after(0.3) as scope:
                if kind == "call":
                    await worker.call(SLEEP, Sleep(seconds=60))
                else:
                    async with worker.stream(ROWS, ENDLESS) as call:
                        async for row in call:
                            rows.append(row)
        assert scope.cancelled_caught
        if kind == "stream":
            assert rows and rows == [Row(i) for i in range(len(rows))]
        after = await status(worker)
        assert after.generation == generation
        assert after.cancels_seen == 1
        assert worker.stats().restarts == {}


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["call", "stream"])
async def test_cancelling_the_caller_of_a_request_that_ignores_cancel_replaces_the_child(kind: str) -> None:
    async with Worker(workload(cancel_grace_s=0.3)) as worker:
        generation = worker.generation
        started = time.monotonic()
        with anyio.fail_after(20):
            with anyio.move_on_after(0.3) as scope:
                if kind == "call":
                    await worker.call(SLEEP_IGNORING_CANCEL, Sleep(seconds=60))
                else:
                    async with worker.stream(ROWS, ENDLESS_IGNORING_CANCEL) as call:
                        async for _row in call:
                            pass
        assert scope.cancelled_caught
        assert time.monotonic() - started >= 0.3 + 0.3
        assert worker.stats().restarts == {"cancel_timeout": 1}
        after = await status(worker)
        assert after.generation == generation + 1


# -- calls, and the trio backend -----------------------------------------------------------------


@pytest.mark.anyio
@BOTH_BACKENDS
async def test_a_call_returns_its_typed_response_and_a_raising_handler_leaves_the_child_serving() -> None:
    async with Worker(workload()) as worker:
        first = await status(worker)
        assert first.generation == worker.generation and first.pid == worker.pid
        with anyio.fail_after(20), pytest.raises(RemoteError) as info:
            await worker.call(FAIL, Fail("no such lemma"))
        error = info.value
        assert error.code == "worker.handler_error"
        assert (error.remote_type, error.remote_code, error.remote_message) == (
            "builtins.ValueError",
            "worker.handler_error",
            "no such lemma",
        )
        assert "ValueError: no such lemma" in error.traceback
        assert (error.operation, error.generation) == ("fail", first.generation)
        after = await status(worker)
        assert (after.generation, after.pid, after.requests) == (first.generation, first.pid, first.requests + 2)
        assert worker.stats().restarts == {}


@pytest.mark.anyio
@BOTH_BACKENDS
async def test_a_stream_delivers_every_row_across_batches_then_its_summary() -> None:
    async with Worker(workload(row_batch_rows=64)) as worker:
        with anyio.fail_after(20):
            async with worker.stream(ROWS, RowsRequest(n=10_000, diagnostic_every=5_000)) as rows:
                got = [row.i async for row in rows]
        assert got == list(range(10_000))
        assert rows.summary.rows == {"rows": 10_000}
        assert rows.summary.summary == RowsSummary(10_000)
        assert [d.message for d in rows.diagnostics] == ["after 5000 rows", "after 10000 rows"]
        assert worker.stats().rows_delivered == 10_000


# -- SyncWorker ----------------------------------------------------------------------------------


def test_sync_worker_calls_and_streams_with_the_async_semantics() -> None:
    with SyncWorker(workload()) as worker:
        first = worker.call(STATUS, StatusRequest())
        assert first.generation == worker.generation
        with pytest.raises(RemoteError, match="no such lemma"):
            worker.call(FAIL, Fail("no such lemma"))

        with worker.stream(ROWS, RowsRequest(n=3_000, diagnostic_every=1_000)) as rows:
            got = [row.i for row in rows]
        assert got == list(range(3_000))
        assert rows.summary.rows == {"rows": 3_000}
        assert [d.message for d in rows.diagnostics] == ["after 1000 rows", "after 2000 rows", "after 3000 rows"]

        collected: list[Row] = []
        progress: list[int] = []
        summary = worker.stream_into(
            ROWS,
            RowsRequest(n=2_000, progress_every=1_000),
            collected.append,
            on_progress=lambda p: progress.append(p.current),
        )
        assert collected == [Row(i) for i in range(2_000)]
        assert summary.rows == {"rows": 2_000} and summary.summary == RowsSummary(2_000)
        assert progress == [1_000, 2_000]
        assert worker.call(STATUS, StatusRequest()).generation == first.generation


@pytest.mark.parametrize(("honour_cancel", "restarts"), [(True, {}), (False, {"cancel_timeout": 1})])
def test_sync_worker_leaving_a_stream_early_cancels_it_in_the_child(
    honour_cancel: bool, restarts: dict[str, int]
) -> None:
    with SyncWorker(workload(cancel_grace_s=0.3)) as worker:
        generation = worker.generation
        request = RowsRequest(n=1_000_000, sleep_s=0.005, honour_cancel=honour_cancel)
        with worker.stream(ROWS, request) as rows:
            for row in rows:
                if row.i == 3:
                    break
        assert worker.stats().restarts == restarts
        after = worker.call(STATUS, StatusRequest())
        assert after.generation == (generation if honour_cancel else generation + 1)
        assert after.cancels_seen == (1 if honour_cancel else 0)


def test_sync_worker_sink_error_propagates_and_the_worker_keeps_serving() -> None:
    with SyncWorker(workload()) as worker:
        generation = worker.generation

        def sink(row: Row) -> None:
            if row.i == 2:
                raise SinkFull("full")

        with pytest.raises(SinkFull, match="full"):
            worker.stream_into(ROWS, ENDLESS, sink)
        after = worker.call(STATUS, StatusRequest())
        assert (after.generation, after.cancels_seen) == (generation, 1)
        assert worker.stats().restarts == {}
