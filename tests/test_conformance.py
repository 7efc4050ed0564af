"""The conformance suite (issue 8, in the style of lean-rs): every request ends exactly once.

A ``Trace`` records the worker's typed events (``TraceEvent``) per (generation, request
id) while fake children (``tests/children/conformance.py``, driven by a mode) answer,
fail, crash, hang, ignore cancellation or never start. Every test ends with
``trace.check_invariants()``:

- every request that began has exactly one terminal ``outcome``, and no ``outcome_again``;
- every ``rows`` and ``outcome`` event names a request that began in that same generation;
- no ``rows`` after the request's outcome;
- after a generation was ``reaped``, only the request that was in flight at its end may
  still get rows or an ``ok`` (the frames the child wrote before it died are its real
  last words: a response sent just before an exit is an answer); no other request of it
  does, and once its successor started, no event of it at all (no stale generation
  completes anything);
- a request begins only in a started generation that was not yet reaped;
- per worker, generations strictly increase, a generation starts only once the one before
  it was reaped (one child at a time), and every started generation was reaped by the end.

Every async test runs on asyncio and on trio (the parent's channel differs between them).
Time-based policy (idle retirement, the restart window) runs on a ``ManualClock``; real
waits (a request deadline, a child's exit) are bounded by ``anyio.fail_after``.
See ``architecture/20-supervisor.md``, "Conformance suite".
"""

from __future__ import annotations

import os
import random
import tracemalloc
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from typing import Any

import anyio
import pytest

from children.conformance import MODE_ENV, PROBE_CALL, PROBE_STREAM, Answer, Probe
from conftest import child_config
from lean_worker import (
    ChildEnv,
    ManualClock,
    Pool,
    PoolBudgetExceeded,
    PoolClosed,
    PoolUnavailable,
    QueueTimeout,
    RemoteError,
    RequestTimeout,
    RestartLimitExceeded,
    RestartPolicy,
    StartupError,
    TraceEvent,
    Worker,
    WorkerClosed,
    WorkerConfig,
    WorkerCrashed,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Both backends: the parent's channel differs (asyncio: one registered reader and the
    busy-poll; trio: ``wait_readable``), and every invariant must hold on each."""
    return request.param  # type: ignore[no-any-return]
LIMIT_S = 30.0
"""Bound of every test's body: far above its normal run time, far below a hang."""


def conformance(mode: str = "ok", *, restart: RestartPolicy | None = None, **options: object) -> WorkerConfig:
    """A config for the conformance child in ``mode`` (a comma list: one mode per generation)."""
    config = child_config("tests.children.conformance", restart=restart, **options)
    return replace(config, env=ChildEnv(inherit=config.env.inherit, set={**config.env.set, MODE_ENV: mode}))


# -- the trace -----------------------------------------------------------------------------------


class Trace:
    """Collects a worker's (or a pool's) ``TraceEvent``s in order; pass it as ``tracer``."""

    def __init__(self) -> None:
        self.events: list[TraceEvent] = []

    def __call__(self, event: TraceEvent) -> None:
        self.events.append(event)

    def of(self, kind: str, worker: str | None = None) -> list[TraceEvent]:
        return [e for e in self.events if e.kind == kind and (worker is None or e.worker == worker)]

    def for_request(self, generation: int, request_id: int, worker: str | None = None) -> list[TraceEvent]:
        """The events of one request, in order (``request``, ``rows``..., ``outcome``; and
        the ``reaped`` of its child if it died with the request in flight)."""
        return [
            e for e in self.events
            if e.generation == generation and e.request_id == request_id and (worker is None or e.worker == worker)
        ]

    def outcomes(self) -> list[str]:
        """The details of every terminal outcome, in order."""
        return [e.detail for e in self.of("outcome")]

    def last_request(self) -> TraceEvent:
        return self.of("request")[-1]

    def outcome_of(self, request: TraceEvent) -> str:
        ends = [e.detail for e in self.for_request(request.generation, request.request_id or 0, request.worker)
                if e.kind == "outcome"]
        assert len(ends) == 1, f"request {request} has outcomes {ends}"
        return ends[0]

    def index(self, event: TraceEvent) -> int:
        return next(i for i, e in enumerate(self.events) if e is event)

    def delivered_after_reaping(self) -> list[TraceEvent]:
        """``rows`` events, and ``ok`` outcomes, of a generation after it was reaped."""
        reaped: set[tuple[str, int]] = set()
        late = []
        for e in self.events:
            if e.kind == "reaped":
                reaped.add((e.worker, e.generation))
            elif (e.kind == "rows" or (e.kind == "outcome" and e.detail == "ok")) and (e.worker, e.generation) in reaped:
                late.append(e)
        return late

    def check_invariants(self, *, all_reaped: bool = True, nothing_after_reaping: bool = True) -> None:
        """The conformance invariants (module docstring). ``all_reaped``: the workers are
        closed, so every child that started must have been reaped. ``nothing_after_reaping``
        off: skip only the rule that a reaped generation delivers no rows and no ``ok``
        (see ``test_a_reaped_generation_delivers_no_rows_and_completes_nothing``)."""
        problems: list[str] = []
        newest: dict[str, int] = {}  # worker -> highest generation seen
        live: set[tuple[str, int]] = set()  # started, not yet reaped
        reaped: set[tuple[str, int]] = set()
        in_flight_at_end: dict[tuple[str, int], int | None] = {}
        begun: dict[tuple[str, int, int | None], int] = {}
        ended: dict[tuple[str, int, int | None], int] = {}
        ids: dict[str, set[int | None]] = {}
        for n, e in enumerate(self.events):
            w, g = e.worker, e.generation
            key = (w, g, e.request_id)
            at = f"#{n} {e.kind}(gen={g} id={e.request_id} {e.detail!r}) of {w}"
            if e.kind in ("request", "rows", "outcome", "outcome_again") and g < newest.get(w, 0):
                problems.append(f"{at}: an event of a stale generation (generation {newest[w]} exists)")
            if e.kind == "started":
                if g <= newest.get(w, 0):
                    problems.append(f"{at}: generation does not increase (seen {newest[w]})")
                others = sorted(h for v, h in live if v == w)
                if others:
                    problems.append(f"{at}: generation(s) {others} still live: two children at once")
                live.add((w, g))
            elif e.kind == "request":
                if (w, g) not in live:
                    problems.append(f"{at}: request begins in a generation not started or already reaped")
                if e.request_id in ids.setdefault(w, set()):
                    problems.append(f"{at}: request id used twice")
                ids[w].add(e.request_id)
                begun[key] = n
            elif e.kind in ("rows", "outcome", "outcome_again"):
                if key not in begun:
                    problems.append(f"{at}: no request {e.request_id} began in generation {g}")
                if e.kind == "outcome_again":
                    problems.append(f"{at}: a second terminal outcome (first: #{ended.get(key)})")
                elif e.kind == "outcome":
                    if key in ended:
                        problems.append(f"{at}: a second terminal outcome (first: #{ended[key]})")
                    ended.setdefault(key, n)
                    if (
                        nothing_after_reaping and e.detail == "ok" and (w, g) in reaped
                        and in_flight_at_end[(w, g)] != e.request_id
                    ):
                        problems.append(f"{at}: a reaped generation completed a request: ok after its reaping")
                else:
                    if key in ended:
                        problems.append(f"{at}: rows after the request's outcome #{ended[key]}")
                    if nothing_after_reaping and (w, g) in reaped and in_flight_at_end[(w, g)] != e.request_id:
                        problems.append(f"{at}: rows of a generation after its reaping")
            elif e.kind == "stopping":
                if (w, g) not in live:
                    problems.append(f"{at}: stopping a generation that is not live")
            elif e.kind == "reaped":
                if (w, g) in reaped:
                    problems.append(f"{at}: reaped twice")
                if e.request_id is not None and key not in begun:
                    problems.append(f"{at}: names a request that did not begin in this generation")
                if e.request_id is not None and key in ended and ended[key] < n and self.events[ended[key]].detail == "ok":
                    problems.append(f"{at}: names a request that already ended ok")
                reaped.add((w, g))
                in_flight_at_end[(w, g)] = e.request_id
                live.discard((w, g))
            else:
                problems.append(f"{at}: unknown kind")
            newest[w] = max(newest.get(w, 0), g)
        for key, n in begun.items():
            if key not in ended:
                problems.append(f"#{n} request(gen={key[1]} id={key[2]}) of {key[0]}: no terminal outcome")
        if all_reaped and live:
            problems.append(f"children never reaped: {sorted(live)}")
        if problems:
            log = "\n".join(f"  #{n} {e}" for n, e in enumerate(self.events))
            raise AssertionError("conformance invariants broken:\n- " + "\n- ".join(problems) + f"\ntrace:\n{log}")


def test_the_invariant_checker_rejects_a_second_outcome_a_missing_one_and_a_stale_ok() -> None:
    # The harness itself, on hand-written traces: a checker that accepts everything would
    # make every test below pass vacuously.
    def trace_of(*events: tuple[str, int, int | None, str]) -> Trace:
        trace = Trace()
        for kind, generation, rid, detail in events:
            trace(TraceEvent(kind, "w", generation, rid, detail))
        return trace

    good = [("started", 1, None, "10"), ("request", 1, 1, "c"), ("rows", 1, 1, "2"), ("outcome", 1, 1, "ok"),
            ("stopping", 1, None, "shutdown"), ("reaped", 1, None, "worker.exit.shutdown")]
    trace_of(*good).check_invariants()
    broken = {
        "a second terminal outcome": [*good[:4], ("outcome_again", 1, 1, "abandoned"), *good[4:]],
        "no terminal outcome": [good[0], good[1], good[4], good[5]],
        "rows after the request's outcome": [*good[:4], ("rows", 1, 1, "1"), *good[4:]],
        # A request that was not the one in flight at the child's end completes after it.
        "ok after its reaping": [*good[:3], ("reaped", 1, None, "worker.exit.nonzero"), ("outcome", 1, 1, "ok")],
        "no request 1 began in generation 2": [*good[:3], ("outcome", 2, 1, "ok")],
        "two children at once": [*good[:4], ("started", 2, None, "11"), ("reaped", 1, None, "x"), ("reaped", 2, None, "x")],
        "children never reaped": good[:4],
        "does not increase": [*good, ("started", 1, None, "12"), ("reaped", 1, None, "x")],
        "rows of a generation after its reaping": [*good[:3], ("reaped", 1, None, "x"), ("rows", 1, 1, "1"),
                                                   ("outcome", 1, 1, "worker.exit.nonzero")],
        "an event of a stale generation": [*good[:3], ("reaped", 1, 1, "x"), ("started", 2, None, "11"),
                                           ("outcome", 1, 1, "worker.exit.nonzero"), ("reaped", 2, None, "x")],
    }
    for expected, events in broken.items():
        with pytest.raises(AssertionError, match=expected):
            trace_of(*events).check_invariants()


def gone(pid: int) -> bool:
    """The process and its process group (the child leads its own) no longer exist."""
    for probe in (os.kill, os.killpg):
        try:
            probe(pid, 0)
        except ProcessLookupError:
            continue
        return False
    return True


def entered_signal() -> tuple[anyio.Event, Any]:
    """An event set when the child reports it is past its rows (diagnostic ``conformance.entered``)."""
    entered = anyio.Event()

    def on_diagnostic(diagnostic: Any) -> None:
        if diagnostic.code == "conformance.entered":
            entered.set()

    return entered, on_diagnostic


# -- 1, 2: terminal success ----------------------------------------------------------------------


async def test_terminal_success_has_exactly_one_ok_outcome_for_a_call_and_a_stream() -> None:
    trace = Trace()
    async with Worker(conformance("ok"), tracer=trace) as worker:
        with anyio.fail_after(LIMIT_S):
            answer = await worker.call(PROBE_CALL, Probe())
            call = trace.last_request()
            async with worker.stream(PROBE_STREAM, Probe(rows=4)) as stream:
                rows = [row.i async for row in stream]
            stream_request = trace.last_request()
    assert answer == Answer("ok", answer.pid, 1, 0)
    assert rows == [0, 1, 2, 3] and stream.summary.summary.rows == 4
    assert [e.kind for e in trace.for_request(1, call.request_id or 0)] == ["request", "outcome"]
    assert (call.detail, stream_request.detail) == ("conformance_call", "conformance_stream")
    assert trace.outcome_of(call) == trace.outcome_of(stream_request) == "ok"
    assert trace.outcomes() == ["ok", "ok"]
    trace.check_invariants()


async def test_rows_are_tentative_until_terminal_success_and_the_summary_exists_only_after() -> None:
    trace = Trace()
    async with Worker(conformance("ok"), tracer=trace) as worker:
        with anyio.fail_after(LIMIT_S):
            async with worker.stream(PROBE_STREAM, Probe(rows=2000)) as stream:
                seen = 0
                async for batch in stream.batches():
                    seen += len(batch.rows)
                    with pytest.raises(RuntimeError, match="has not finished"):
                        stream.summary  # noqa: B018 - the access is the assertion
                    assert trace.of("outcome") == []  # nothing is final while rows arrive
            summary = stream.summary
    assert seen == summary.total_rows == 2000 and summary.rows == {"rows": 2000}
    request = trace.last_request()
    events = trace.for_request(request.generation, summary.request_id)
    kinds = [e.kind for e in events]
    assert kinds[0] == "request" and kinds[-1] == "outcome" and set(kinds[1:-1]) == {"rows"}
    assert sum(int(e.detail) for e in events if e.kind == "rows") == 2000
    assert events[-1].detail == "ok" and summary.generation == request.generation == 1
    trace.check_invariants()


# -- 3: a failure after rows discards them -------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "timeout", "error", "code", "exit_cause"),
    [
        ("rows_then_exit", None, WorkerCrashed, "worker.exit.nonzero", "worker.exit.nonzero"),
        ("rows_then_crash", None, WorkerCrashed, "worker.exit.sigsegv", "worker.exit.sigsegv"),
        ("rows_then_hang", 0.5, RequestTimeout, "worker.request_timeout", "worker.exit.supervisor_kill"),
    ],
)
async def test_a_child_that_dies_or_times_out_after_rows_fails_the_request_once_and_the_next_runs_on_a_new_generation(
    mode: str, timeout: float | None, error: type[Exception], code: str, exit_cause: str
) -> None:
    trace = Trace()
    got: list[int] = []
    async with Worker(conformance(f"{mode},ok"), tracer=trace) as worker:
        with anyio.fail_after(LIMIT_S):
            with pytest.raises(error) as info:
                async with worker.stream(PROBE_STREAM, Probe(rows=5), timeout=timeout) as stream:
                    async for row in stream:
                        got.append(row.i)
            with pytest.raises(RuntimeError, match="has not finished"):
                stream.summary  # noqa: B018 - no summary: the rows stay tentative, never confirmed
            failed = trace.last_request()
            after = await worker.call(PROBE_CALL, Probe())
            following = trace.last_request()
    assert got == [0, 1, 2, 3, 4]  # delivered, tentatively, before the failure
    assert info.value.code == code  # type: ignore[attr-defined]
    assert info.value.exit is not None and info.value.exit.cause.value == exit_cause  # type: ignore[attr-defined]
    assert trace.outcome_of(failed) == code
    reaped = [e for e in trace.for_request(1, failed.request_id or 0) if e.kind == "reaped"]
    assert [e.detail for e in reaped] == [exit_cause]
    assert (following.generation, after.generation, after.mode) == (2, 2, "ok")
    assert trace.index(trace.of("started")[1]) > trace.index(reaped[0])
    trace.check_invariants()


@pytest.mark.parametrize(
    ("mode", "child_replaced"), [("hang_honours_cancel", False), ("rows_then_hang", True)]
)
async def test_the_callers_own_cancellation_after_rows_is_one_abandoned_outcome(mode: str, child_replaced: bool) -> None:
    trace = Trace()
    got: list[int] = []
    async with Worker(conformance(mode=f"{mode},ok"), tracer=trace) as worker:
        with anyio.fail_after(LIMIT_S):
            with anyio.CancelScope() as scope:
                async with worker.stream(PROBE_STREAM, Probe(rows=5)) as stream:
                    async for row in stream:
                        got.append(row.i)
                        if len(got) == 5:
                            scope.cancel()  # every row is in; the handler is past them or nearly
            assert scope.cancelled_caught
            with pytest.raises(RuntimeError, match="has not finished"):
                stream.summary  # noqa: B018
            abandoned = trace.last_request()
            after = await worker.call(PROBE_CALL, Probe(mode="ok"))
    assert got == [0, 1, 2, 3, 4]
    assert trace.outcome_of(abandoned) == "abandoned"
    assert after.generation == (2 if child_replaced else 1)
    reaped = [e.detail for e in trace.for_request(1, abandoned.request_id or 0) if e.kind == "reaped"]
    assert reaped == (["worker.exit.supervisor_kill"] if child_replaced else [])
    assert worker.stats().restarts == ({"cancel_timeout": 1} if child_replaced else {})
    trace.check_invariants()


# -- 4: backpressure -----------------------------------------------------------------------------


async def test_a_slow_consumer_stalls_the_childs_writes_and_the_parent_holds_a_bounded_window() -> None:
    # 20,000 rows of ~1 KiB: ~20 MiB on the wire. The consumer stops for a moment after the
    # first batch, so the child gets far ahead: the parent reads ~1 MiB ahead (the channel's
    # HIGH_WATER), then the child's pipe writes block, and it counts them as stalls.
    rows, pad = 20_000, 1024
    total = rows * pad
    trace = Trace()
    async with Worker(conformance("ok"), tracer=trace) as worker:
        with anyio.fail_after(LIMIT_S):
            waits_before = worker.stats().backpressure_waits
            tracemalloc.start()
            try:
                tracemalloc.reset_peak()
                async with worker.stream(PROBE_STREAM, Probe(rows=rows, pad=pad)) as stream:
                    count = 0
                    async for batch in stream.batches():
                        if count == 0:
                            await anyio.sleep(0.3)  # the slow consumer (real time: not policy)
                        count += len(batch.rows)
                _current, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            stalls = worker.stats().backpressure_waits - waits_before
    assert count == stream.summary.total_rows == rows
    assert stalls > 0, "the child never had to wait for the parent: no backpressure observed"
    assert peak < total / 4, f"parent traced peak {peak / 2**20:.1f} MiB for {total / 2**20:.0f} MiB of rows"
    rows_events = [e for e in trace.of("rows")]
    assert sum(int(e.detail) for e in rows_events) == rows and len(rows_events) > 1
    trace.check_invariants()


# -- 5, 6, 7: stopping and dropping a worker reaps its child -------------------------------------


async def test_explicit_close_reaps_the_child_after_the_shutdown_frame() -> None:
    trace = Trace()
    async with Worker(conformance("ok"), tracer=trace) as worker:
        with anyio.fail_after(LIMIT_S):
            await worker.call(PROBE_CALL, Probe())
            pid = worker.pid
            assert pid is not None
            report = await worker.close()
            with pytest.raises(WorkerClosed):  # typed, and before any request event
                await worker.call(PROBE_CALL, Probe())
    assert report.step == "shutdown_frame"
    assert report.exit is not None and report.exit.cause.value == "worker.exit.shutdown"
    assert gone(pid)
    assert [(e.kind, e.detail) for e in trace.events if e.kind in ("stopping", "reaped")] == [
        ("stopping", "shutdown"),
        ("reaped", "worker.exit.shutdown"),
    ]
    assert len(trace.of("request")) == 1
    trace.check_invariants()


@pytest.mark.parametrize("how", ["block_ends", "scope_cancelled"])
async def test_a_dropped_idle_worker_reaps_its_child(how: str) -> None:
    trace = Trace()
    pid = None
    with anyio.fail_after(LIMIT_S):
        with anyio.CancelScope() as scope:
            async with Worker(conformance("ok"), tracer=trace) as worker:
                pid = worker.pid
                if how == "scope_cancelled":
                    scope.cancel()
                    await anyio.sleep_forever()
    assert pid is not None and gone(pid)
    assert scope.cancelled_caught == (how == "scope_cancelled")
    assert [e.detail for e in trace.of("reaped")] == ["worker.exit.shutdown"]
    assert trace.of("request") == []
    trace.check_invariants()


async def test_a_dropped_busy_worker_sends_cancel_then_escalates_to_sigkill_and_reaps_the_group() -> None:
    # The child sees the Cancel and carries on, and ignores SIGTERM: only SIGKILL ends it.
    # It writes what it saw to stderr, so the exit facts show every step was taken.
    trace = Trace()
    entered, on_diagnostic = entered_signal()
    pid = None
    with anyio.fail_after(LIMIT_S):
        with anyio.CancelScope() as scope:
            async with Worker(conformance("hang_ignores_cancel", cancel_grace_s=0.5, kill_grace_s=0.3), tracer=trace) as worker:
                pid = worker.pid

                async def drop_when_entered() -> None:
                    await entered.wait()
                    scope.cancel()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(drop_when_entered)
                    await worker.call(PROBE_CALL, Probe(), on_diagnostic=on_diagnostic)
    assert scope.cancelled_caught
    assert pid is not None and gone(pid)
    request = trace.last_request()
    assert trace.outcome_of(request) == "abandoned"
    reaped = trace.of("reaped")
    assert [(e.request_id, e.detail) for e in reaped] == [(request.request_id, "worker.exit.supervisor_kill")]
    last = worker.stats().last_exit
    assert last is not None and last.signal == "SIGKILL" and last.work_entered
    assert "conformance: cancel seen" in last.stderr_tail
    assert "conformance: SIGTERM ignored" in last.stderr_tail
    assert worker.stats().restarts == {"cancel_timeout": 1}
    trace.check_invariants()


# -- 8, 9: timeouts and the restart limit --------------------------------------------------------


async def test_a_request_timeout_kills_and_reaps_the_child_and_the_next_request_runs_on_generation_2() -> None:
    trace = Trace()
    async with Worker(conformance("rows_then_hang,ok"), tracer=trace) as worker:
        with anyio.fail_after(LIMIT_S):
            first_pid = worker.pid
            with pytest.raises(RequestTimeout) as info:
                await worker.call(PROBE_CALL, Probe(), timeout=0.3)
            timed_out = trace.last_request()
            answer = await worker.call(PROBE_CALL, Probe())
    assert info.value.exit is not None and info.value.exit.cause.value == "worker.exit.supervisor_kill"
    assert first_pid is not None and gone(first_pid)
    assert trace.outcome_of(timed_out) == "worker.request_timeout"
    started, reaped = trace.of("started"), trace.of("reaped")
    assert [e.generation for e in started] == [1, 2]
    assert (reaped[0].generation, reaped[0].request_id) == (1, timed_out.request_id)
    assert trace.index(reaped[0]) < trace.index(started[1])
    assert (answer.generation, trace.last_request().generation) == (2, 2)
    trace.check_invariants()


async def test_restart_limit_exhaustion_is_a_typed_refusal_before_any_request_and_the_window_readmits_work() -> None:
    clock = ManualClock()
    trace = Trace()
    policy = RestartPolicy(max_restarts=1, restart_window_s=60)
    async with Worker(conformance("ok", restart=policy), clock=clock, tracer=trace) as worker:
        with anyio.fail_after(LIMIT_S):
            for _ in range(2):
                with pytest.raises(WorkerCrashed):
                    await worker.call(PROBE_CALL, Probe(mode="rows_then_exit"))
            requests_before = len(trace.of("request"))
            with pytest.raises(RestartLimitExceeded) as info:
                await worker.call(PROBE_CALL, Probe())
            assert len(trace.of("request")) == requests_before  # refused before it began
            assert worker.restart_blocked_s() == 60
            clock.advance(60.5)  # the window moves on
            await anyio.wait_all_tasks_blocked()
            answer = await worker.call(PROBE_CALL, Probe())
    assert info.value.code == "worker.restart_limit"
    assert info.value.last_exit is not None and info.value.last_exit.returncode == 3
    assert answer.generation == 3
    assert trace.outcomes() == ["worker.exit.nonzero", "worker.exit.nonzero", "ok"]
    trace.check_invariants()


async def test_a_replacement_that_fails_to_start_is_a_typed_error_before_any_request_and_the_next_start_recovers() -> None:
    trace = Trace()
    async with Worker(conformance("ok,exit_at_start,ok"), tracer=trace) as worker:
        with anyio.fail_after(LIMIT_S):
            with pytest.raises(WorkerCrashed):
                await worker.call(PROBE_CALL, Probe(mode="rows_then_exit"))
            with pytest.raises(StartupError) as info:
                await worker.call(PROBE_CALL, Probe())
            answer = await worker.call(PROBE_CALL, Probe())
    assert info.value.code == "worker.startup.failed"
    assert info.value.exit is not None and info.value.exit.returncode == 4
    assert "exiting before the handshake" in info.value.exit.stderr_tail
    assert [e.generation for e in trace.of("started")] == [1, 3]
    assert [e.generation for e in trace.of("reaped")] == [1, 2, 3]
    assert [e.generation for e in trace.of("request")] == [1, 3]
    assert answer.generation == 3
    trace.check_invariants()


# -- 10: pool capacity accounting ----------------------------------------------------------------


async def assert_whole_capacity(pool: Pool) -> None:
    """Nothing busy or queued, and every worker leasable at once (a leaked slot would make
    one of these leases wait into ``QueueTimeout``)."""
    snap = pool.snapshot()
    assert (snap.busy, snap.queue_depth) == (0, 0), snap
    async with AsyncExitStack() as stack:
        leases = [await stack.enter_async_context(pool.lease()) for _ in range(pool.size)]
        assert sorted(lease.index for lease in leases) == list(range(pool.size))
        for lease in leases:
            assert (await lease.call(PROBE_CALL, Probe())).mode == "ok"
    snap = pool.snapshot()
    assert (snap.busy, snap.queue_depth) == (0, 0), snap


async def test_pool_capacity_is_exact_after_normal_releases_and_a_lease_block_left_by_an_exception() -> None:
    trace = Trace()
    async with Pool(conformance("ok"), size=2, queue_timeout_s=5, tracer=trace) as pool:
        with anyio.fail_after(LIMIT_S):
            for _ in range(3):
                async with pool.lease() as lease:
                    await lease.call(PROBE_CALL, Probe())
            with pytest.raises(LookupError):
                async with pool.lease() as lease:
                    await lease.call(PROBE_CALL, Probe())
                    raise LookupError("the holder's own failure")
            assert pool.snapshot().leases == 4
            await assert_whole_capacity(pool)
            assert pool.snapshot().leases == 6
    trace.check_invariants()


async def test_pool_capacity_is_exact_after_a_lease_cancelled_while_queued_or_while_holding() -> None:
    trace = Trace()
    async with Pool(conformance("ok"), size=1, queue_timeout_s=10, tracer=trace) as pool:
        with anyio.fail_after(LIMIT_S):
            # Cancelled while queued.
            async with anyio.create_task_group() as tg:
                async with pool.lease():
                    queued = await tg.start(cancellable, lease_and_call, pool)
                    await anyio.wait_all_tasks_blocked()
                    assert pool.snapshot().queue_depth == 1
                    queued.cancel()
                    await anyio.wait_all_tasks_blocked()
                    assert pool.snapshot().queue_depth == 0
            assert pool.snapshot().leases == 1
            await assert_whole_capacity(pool)

            # Cancelled in the instant it was handed the worker: the release gives the
            # worker to the queued task, whose scope is already cancelled.
            async with anyio.create_task_group() as tg:
                async with pool.lease():
                    queued = await tg.start(cancellable, lease_and_call, pool)
                    await anyio.wait_all_tasks_blocked()
                    queued.cancel()  # no checkpoint between this and the release below
            assert pool.snapshot().leases == 4  # 1 + 1 (capacity check) + the holder + the one handed over
            await assert_whole_capacity(pool)

            # Cancelled while holding, inside a request the child ends on the cancel.
            entered, on_diagnostic = entered_signal()
            async with anyio.create_task_group() as tg:
                tg.start_soon(lease_and_call, pool, Probe(mode="hang_honours_cancel"), on_diagnostic)
                await entered.wait()
                assert pool.snapshot().busy == 1
                tg.cancel_scope.cancel()
            assert trace.outcome_of(trace.last_request()) == "abandoned"
            await assert_whole_capacity(pool)
            assert pool.snapshot().workers[0].generation == 1  # the child answered the cancel
    trace.check_invariants()


async def cancellable(fn: Any, *args: Any, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
    """Run ``fn(*args)`` in its own cancel scope, handed to the starter."""
    with anyio.CancelScope() as scope:
        task_status.started(scope)
        await fn(*args)


async def lease_and_call(pool: Pool, probe: Probe | None = None, on_diagnostic: Any = None) -> None:
    async with pool.lease() as lease:
        await lease.call(PROBE_CALL, probe or Probe(), on_diagnostic=on_diagnostic)


async def test_pool_capacity_is_exact_after_idle_retirement_on_the_manual_clock() -> None:
    clock = ManualClock()
    trace = Trace()
    policy = RestartPolicy(idle_restart_s=1.0)
    async with Pool(conformance("ok", restart=policy), size=2, queue_timeout_s=5, clock=clock, tracer=trace) as pool:
        with anyio.fail_after(LIMIT_S):
            await assert_whole_capacity(pool)  # both workers served: both can go idle
            clock.advance(10)
            await anyio.wait_all_tasks_blocked()
            while any(w.pid is not None for w in pool.snapshot().workers):
                await anyio.sleep(0.01)  # the exits are real: wait for the reaping
            assert [e.detail for e in trace.of("stopping")] == ["idle", "idle"]
            await assert_whole_capacity(pool)  # fresh children, whole capacity
            snap = pool.snapshot()
    assert [w.generation for w in snap.workers] == [2, 2]
    assert snap.restarts == {"idle": 2} and snap.leases == 4
    trace.check_invariants()


# -- 11: admission refusals ----------------------------------------------------------------------


async def test_a_queue_past_its_timeout_is_queue_timeout_not_a_hang() -> None:
    trace = Trace()
    async with Pool(conformance("ok"), size=1, queue_timeout_s=0.2, tracer=trace) as pool:
        with anyio.fail_after(LIMIT_S):
            async with pool.lease():
                with pytest.raises(QueueTimeout) as info:
                    async with pool.lease():
                        pass
            assert info.value.code == "pool.queue_timeout"
            snap = pool.snapshot()
            assert (snap.queue_timeouts, snap.queue_depth, snap.busy) == (1, 0, 0)
            await assert_whole_capacity(pool)
    trace.check_invariants()


async def test_an_rss_budget_the_pool_cannot_meet_is_pool_budget_exceeded() -> None:
    trace = Trace()
    async with Pool(conformance("ok"), size=1, queue_timeout_s=5, rss_budget_bytes=1, tracer=trace) as pool:
        with anyio.fail_after(LIMIT_S):
            with pytest.raises(PoolBudgetExceeded) as info:
                await pool.call(PROBE_CALL, Probe())
            snap = pool.snapshot()
    assert info.value.code == "pool.rss_budget"
    assert (snap.budget_refusals, snap.busy, snap.queue_depth) == (1, 0, 0)
    assert trace.of("request") == []
    trace.check_invariants()


async def test_a_closed_pool_refuses_leases_with_pool_closed_also_for_a_queued_one() -> None:
    trace = Trace()
    queued: list[BaseException] = []
    release = anyio.Event()

    async def hold(pool: Pool, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        async with pool.lease():
            task_status.started()
            await release.wait()

    async def queue_for_a_lease(pool: Pool) -> None:
        try:
            async with pool.lease():
                pass
        except PoolClosed as exc:
            queued.append(exc)

    with anyio.fail_after(LIMIT_S):
        async with anyio.create_task_group() as tg:
            # Entered in this scope and closed by leaving it: ``Pool.close`` called from a
            # nested scope fails (see test_pool_close_called_inside_a_timeout_scope_closes_the_pool).
            async with Pool(conformance("ok"), size=1, queue_timeout_s=10, tracer=trace) as pool:
                await tg.start(hold, pool)
                tg.start_soon(queue_for_a_lease, pool)
                await anyio.wait_all_tasks_blocked()
                assert pool.snapshot().queue_depth == 1
            release.set()
        with pytest.raises(PoolClosed) as info:
            async with pool.lease():
                pass
    assert [e.code for e in queued] == ["pool.closed"]  # type: ignore[attr-defined]
    assert info.value.code == "pool.closed"
    trace.check_invariants()


async def test_a_pool_whose_every_worker_is_tripped_is_pool_unavailable_until_the_window_passes() -> None:
    clock = ManualClock()
    trace = Trace()
    policy = RestartPolicy(max_restarts=1, restart_window_s=60)
    async with Pool(conformance("ok", restart=policy), size=2, queue_timeout_s=10, clock=clock, tracer=trace) as pool:
        with anyio.fail_after(LIMIT_S):
            while any(w.restart_blocked_s == 0 for w in pool.snapshot().workers):
                with pytest.raises(WorkerCrashed):
                    await lease_and_call(pool, Probe(mode="rows_then_exit"))
            requests = len(trace.of("request"))
            with pytest.raises(PoolUnavailable) as info:
                async with pool.lease():
                    pass
            assert len(trace.of("request")) == requests
            clock.advance(60.5)
            await assert_whole_capacity(pool)
    assert info.value.code == "pool.unavailable"
    assert [c.code for c in info.value.causes] == ["worker.restart_limit"] * 2
    assert requests == 4 and Counter(trace.outcomes()) == {"worker.exit.nonzero": 4, "ok": 2}
    trace.check_invariants()


# -- a small property-style soak -----------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One kind of request in the soak, and what must come of it."""

    stream: bool
    mode: str
    outcome: str
    """The expected terminal outcome (``TraceEvent.detail``)."""
    replaces_child: bool
    how: str = "run"
    """``run`` to the end; ``timeout``: a short per-call timeout ends it; ``cancel``: the
    caller cancels once the child is past its rows; ``break``: leave a stream after one row."""


STEPS = [
    Step(False, "ok", "ok", False),
    Step(True, "ok", "ok", False),
    Step(True, "ok", "abandoned", False, "break"),
    Step(False, "fail", "worker.handler_error", False),
    Step(True, "fail", "worker.handler_error", False),
    Step(True, "rows_then_exit", "worker.exit.nonzero", True),
    Step(False, "rows_then_exit", "worker.exit.nonzero", True),
    Step(True, "rows_then_crash", "worker.exit.sigsegv", True),
    Step(True, "rows_then_hang", "worker.request_timeout", True, "timeout"),
    Step(False, "hang_honours_cancel", "worker.request_timeout", True, "timeout"),
    Step(False, "hang_honours_cancel", "abandoned", False, "cancel"),
    Step(True, "hang_honours_cancel", "abandoned", False, "cancel"),
    Step(True, "rows_then_hang", "abandoned", True, "cancel"),
]


async def run_step(worker: Worker, step: Step) -> None:
    entered, on_diagnostic = entered_signal()
    probe = Probe(rows=200 if step.how == "break" else 3, mode=step.mode)
    timeout = 0.3 if step.how == "timeout" else None
    expected: type[BaseException] | None = {
        "ok": None, "abandoned": None, "worker.handler_error": RemoteError, "worker.request_timeout": RequestTimeout,
    }.get(step.outcome, WorkerCrashed)

    async def run() -> None:
        if not step.stream:
            await worker.call(PROBE_CALL, probe, timeout=timeout, on_diagnostic=on_diagnostic)
            return
        async with worker.stream(PROBE_STREAM, probe, timeout=timeout, on_diagnostic=on_diagnostic) as rows:
            async for _row in rows:
                if step.how == "break":
                    break

    async def cancel_when_entered() -> None:
        await entered.wait()
        scope.cancel()

    with anyio.CancelScope() as scope:
        try:
            if step.how == "cancel":
                async with anyio.create_task_group() as tg:
                    tg.start_soon(cancel_when_entered)
                    await run()
            else:
                await run()
        except Exception as exc:  # noqa: BLE001 - checked against the step
            group = exc.exceptions if isinstance(exc, BaseExceptionGroup) else [exc]
            assert expected is not None and len(group) == 1 and isinstance(group[0], expected), (step, exc)
        else:
            assert expected is None, step
    assert scope.cancelled_caught == (step.how == "cancel"), step


async def test_a_seeded_random_mix_of_modes_keeps_every_invariant() -> None:
    rng = random.Random(20260808)
    weights = [1 if step.replaces_child else 2 for step in STEPS]
    steps = [*STEPS, *rng.choices(STEPS, weights=weights, k=40 - len(STEPS))]  # every step at least once
    rng.shuffle(steps)
    trace = Trace()
    generation = 1
    policy = RestartPolicy(max_restarts=1000)  # the mix crashes often; no crash loop here
    async with Worker(conformance("ok", restart=policy, cancel_grace_s=1.0, kill_grace_s=0.3), tracer=trace) as worker:
        with anyio.fail_after(50):
            for n, step in enumerate(steps):
                await run_step(worker, step)
                request = trace.last_request()
                assert len(trace.of("request")) == n + 1, (n, step)
                assert request.generation == generation, (n, step)
                assert trace.outcome_of(request) == step.outcome, (n, step)
                generation += step.replaces_child
            await worker.call(PROBE_CALL, Probe())  # and the worker still serves
    assert Counter(trace.outcomes())["ok"] == sum(s.outcome == "ok" for s in steps) + 1
    assert len(trace.of("started")) == generation
    trace.check_invariants()


def test_every_mode_of_the_conformance_child_is_exercised() -> None:
    from children.conformance import MODES

    used = {step.mode for step in STEPS} | {"hang_ignores_cancel", "exit_at_start", "answer_then_exit"}
    assert used == set(MODES)



# -- found by this suite (issue 8): two core defects, fixed; one question, decided ------------


async def test_a_stream_iterated_again_after_its_timeout_yields_no_rows_and_ends_only_once() -> None:
    trace = Trace()
    leftovers: list[int] = []
    async with Worker(conformance("ok"), tracer=trace) as worker:
        with anyio.fail_after(LIMIT_S):
            async with worker.stream(PROBE_STREAM, Probe(rows=1000), timeout=0.3) as stream:
                with pytest.raises(RequestTimeout):
                    async for row in stream:
                        if row.i == 10:
                            await anyio.sleep(0.5)  # a consumer slower than the deadline (real time)
                # A consumer that goes on iterating after the error: the request has ended.
                try:
                    async for row in stream:
                        leftovers.append(row.i)
                except RequestTimeout:
                    pass  # raising the same error again would do; ending the request again would not
    try:
        trace.check_invariants()
    finally:
        assert leftovers == [], f"{len(leftovers)} rows handed out after the terminal outcome"


async def test_pool_close_called_inside_a_timeout_scope_closes_the_pool() -> None:
    trace = Trace()
    try:
        async with Pool(conformance("ok"), size=1, tracer=trace) as pool:
            pid = pool.snapshot().workers[0].pid
            with anyio.fail_after(LIMIT_S):
                await pool.close()
            with pytest.raises(PoolClosed):
                await pool.call(PROBE_CALL, Probe())
        assert pid is not None and gone(pid)
    finally:
        trace.check_invariants()


@pytest.mark.parametrize(("mode", "outcome"), [("rows_then_exit", "worker.exit.nonzero"), ("answer_then_exit", "ok")])
async def test_the_request_in_flight_at_a_childs_end_gets_what_the_child_wrote_before_it_died(mode: str, outcome: str) -> None:
    # Decided in issue 8: the frames a child wrote before it exited are its last words for
    # the request in flight (a response sent just before an exit is an answer, and turning
    # it into a crash would invite an unsafe retry). Only that request may complete after
    # the reaping; no other request of that generation, and nothing once the next started.
    trace = Trace()
    async with Worker(conformance(f"{mode},ok"), tracer=trace) as worker:
        with anyio.fail_after(LIMIT_S):
            try:
                async with worker.stream(PROBE_STREAM, Probe(rows=5)) as stream:
                    while not trace.of("reaped"):
                        await anyio.sleep(0.01)  # the exit is real: wait until it is reaped
                    rows = [row.i async for row in stream]
            except WorkerCrashed:
                rows = []
            request = trace.last_request()
            after = await worker.call(PROBE_CALL, Probe())
    assert trace.outcome_of(request) == outcome  # exactly one terminal outcome either way
    assert after.generation == 2
    assert rows == ([0, 1, 2, 3, 4] if outcome == "ok" else [])
    trace.check_invariants()
    late = trace.delivered_after_reaping()
    assert {e.request_id for e in late} <= {request.request_id}
