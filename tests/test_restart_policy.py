"""Each restart-policy knob replaces the child exactly when it should, and not one request
earlier; ``stats().restarts`` counts every replacement under its reason code; the restart
intensity limit stops a crash loop, and planned restarts do not count toward it."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from children.workload import (
    EXIT,
    FAIL,
    HOLD,
    KEYED_LOAD,
    LOAD,
    SLEEP,
    SLEEP_IGNORING_CANCEL,
    STATUS,
    Exit,
    Fail,
    Hold,
    Load,
    Sleep,
    Status,
    StatusRequest,
)
from conftest import child_config
from lean_worker import (
    ExitCause,
    ManualClock,
    MemoryLimitExceeded,
    RemoteError,
    RequestTimeout,
    RestartLimitExceeded,
    RestartPolicy,
    SyncWorker,
    Worker,
    WorkerConfig,
    WorkerCrashed,
)

MIB = 1024 * 1024

pytestmark = pytest.mark.anyio


def workload(restart: RestartPolicy, **options: Any) -> WorkerConfig:
    return child_config("tests.children.workload", restart=restart, **options)


async def status(worker: Worker) -> Status:
    return await worker.call(STATUS, StatusRequest())


@pytest.fixture(scope="module")
def fresh_child_rss() -> int:
    """RSS of a workload child that has served one request (the baseline memory knobs sit above)."""
    with SyncWorker(workload(RestartPolicy())) as worker:
        worker.call(STATUS, StatusRequest())
        rss = worker.rss()
    assert rss is not None and rss > 0
    return rss


# -- request and import counts --------------------------------------------------------------------


async def test_max_requests_cycles_before_request_n_plus_one_and_not_before_n() -> None:
    async with Worker(workload(RestartPolicy(max_requests=3))) as worker:
        with anyio.fail_after(30):
            assert (await status(worker)).generation == 1
            with pytest.raises(RemoteError):  # a failed request was still served: it counts
                await worker.call(FAIL, Fail("counted anyway"))
            third = await status(worker)
            assert third.generation == 1 and third.requests == 3
            assert worker.generation == 1 and worker.stats().requests_this_generation == 3
            assert worker.stats().restarts == {}

            fourth = await status(worker)
            assert fourth.generation == 2 and fourth.requests == 1
            assert worker.stats().restarts == {"max_requests": 1}
            assert worker.stats().last_exit is not None
            assert worker.stats().last_exit.cause == ExitCause.SHUTDOWN

            for _ in range(2):
                assert (await status(worker)).generation == 2
            assert (await status(worker)).generation == 3
        stats = worker.stats()
        assert stats.restarts == {"max_requests": 2}
        assert stats.requests == 7


async def test_max_imports_with_session_keys_spares_warm_hits() -> None:
    """A request whose session key this child already served is no import: at the limit it
    runs on the same child; only a fresh key cycles. The child's own charge is what counts."""
    async with Worker(workload(RestartPolicy(max_imports=2))) as worker:
        with anyio.fail_after(30):
            assert await worker.call(KEYED_LOAD, Load("A")) == 1
            assert await worker.call(KEYED_LOAD, Load("B")) == 2
            for _ in range(3):  # warm hits at the limit: no cycle, no charge
                assert await worker.call(KEYED_LOAD, Load("A")) == 2
            assert worker.generation == 1
            assert worker.stats().imports_this_generation == 2
            assert worker.stats().restarts == {}

            assert await worker.call(KEYED_LOAD, Load("C")) == 1  # fresh key at the limit: a new child
            assert worker.generation == 2
            # The new child has not served "A": that is a fresh import there.
            assert await worker.call(KEYED_LOAD, Load("A")) == 2
        stats = worker.stats()
        assert stats.restarts == {"max_imports": 1}
        assert (stats.imports, stats.imports_this_generation, stats.requests) == (4, 2, 7)


async def test_max_imports_counts_only_import_like_requests() -> None:
    async with Worker(workload(RestartPolicy(max_imports=2))) as worker:
        with anyio.fail_after(30):
            assert await worker.call(LOAD, Load("Mathlib.Logic")) == 1
            assert (await status(worker)).generation == 1
            assert await worker.call(LOAD, Load("Mathlib.Order")) == 2
            # At the import limit, but a request that imports nothing does not trigger it.
            for _ in range(3):
                assert (await status(worker)).generation == 1
            assert worker.stats().restarts == {}
            assert worker.stats().imports_this_generation == 2

            assert await worker.call(LOAD, Load("Mathlib.Topology")) == 1  # a fresh process's first load
            assert worker.generation == 2
        stats = worker.stats()
        assert stats.restarts == {"max_imports": 1}
        assert (stats.imports, stats.imports_this_generation, stats.requests_this_generation) == (3, 1, 1)


# -- memory ----------------------------------------------------------------------------------------


async def test_rss_ceiling_cycles_before_the_next_request_once_the_child_holds_more(fresh_child_rss: int) -> None:
    ceiling = fresh_child_rss + 48 * MIB
    async with Worker(workload(RestartPolicy(rss_ceiling_bytes=ceiling))) as worker:
        with anyio.fail_after(30):
            assert await worker.call(HOLD, Hold(mib=16)) == 16
            # Below the ceiling: the same child serves on.
            assert (await status(worker)).held_mib == 16
            assert worker.generation == 1

            assert await worker.call(HOLD, Hold(mib=64)) == 80
            # Above the ceiling now, but nothing is cycled eagerly after the request.
            assert worker.generation == 1 and worker.stats().restarts == {}
            rss = await worker.rss()
            assert rss is not None and rss > ceiling

            after = await status(worker)
        assert (after.generation, after.held_mib) == (2, 0)
        stats = worker.stats()
        assert stats.restarts == {"rss_ceiling": 1}
        assert stats.last_rss_bytes is not None and stats.last_rss_bytes > ceiling
        assert stats.rss_over_ceiling_when_fresh == 0


async def test_a_child_above_the_rss_ceiling_from_birth_is_never_cycled_for_it() -> None:
    ceiling = 1 * MIB  # below any Python interpreter: every child is over it from birth
    async with Worker(workload(RestartPolicy(rss_ceiling_bytes=ceiling))) as worker:
        with anyio.fail_after(30):
            first = await status(worker)
            assert first.generation == 1
            assert worker.stats().restarts == {}
            assert worker.stats().rss_over_ceiling_when_fresh == 1

            # Cycling cannot bring a child under a ceiling its own baseline breaches, so the
            # breach is counted, not acted on: no spawn per request, no loop.
            for _ in range(3):
                assert (await status(worker)).generation == 1
            assert worker.stats().restarts == {}
            assert worker.stats().rss_over_ceiling_when_fresh == 4


async def test_rss_hard_limit_kills_the_request_that_allocates_past_it_and_the_next_request_works(
    fresh_child_rss: int,
) -> None:
    limit = fresh_child_rss + 96 * MIB
    policy = RestartPolicy(rss_hard_limit_bytes=limit, rss_sample_interval_s=0.05)
    async with Worker(workload(policy)) as worker:
        with anyio.fail_after(30):
            # Under the limit for many samples: nothing happens.
            assert await worker.call(HOLD, Hold(mib=16, linger_s=0.5)) == 16
            assert worker.generation == 1 and worker.stats().restarts == {}

            started = time.monotonic()
            with pytest.raises(MemoryLimitExceeded) as info:
                await worker.call(HOLD, Hold(mib=192, linger_s=20))
            assert time.monotonic() - started < 10
        error = info.value
        assert error.code == "worker.rss_limit"
        assert error.limit_bytes == limit
        assert error.rss_bytes > limit
        assert (error.operation, error.generation) == ("hold", 1)
        assert error.exit is not None
        assert error.exit.cause == ExitCause.SUPERVISOR_KILL
        assert error.exit.command == "hold" and error.exit.work_entered
        assert worker.stats().restarts == {"rss_hard_limit": 1}

        after = await status(worker)
        assert (after.generation, after.held_mib) == (2, 0)


# -- idle ------------------------------------------------------------------------------------------


async def test_an_idle_child_is_retired_by_the_monitor_and_the_next_request_runs_on_a_new_generation() -> None:
    idle = 0.5
    clock = ManualClock()
    async with Worker(workload(RestartPolicy(idle_restart_s=idle)), clock=clock) as worker:
        pid = worker.pid
        # A child that has served nothing is as fresh as a replacement: it is not retired.
        clock.advance(idle * 2)
        await anyio.wait_all_tasks_blocked()
        assert worker.pid == pid and worker.stats().restarts == {}

        with anyio.fail_after(30):
            for _ in range(3):  # back to back: never idle for long
                assert (await status(worker)).generation == 1
            clock.advance(idle * 0.9)  # not yet idle long enough
            await anyio.wait_all_tasks_blocked()
            assert worker.pid == pid and worker.stats().restarts == {}

            # Retired in the background, no request needed. ``pid`` clears when the child is
            # reaped; the exit is recorded (stats, last_exit) once its stderr is drained,
            # up to half a second later, so wait for both.
            clock.advance(idle / 4)  # past the limit and past the monitor's next step (idle / 4)
            while worker.pid is not None or worker.stats().last_exit is None:
                await anyio.sleep(0.01)
        stats = worker.stats()
        assert stats.restarts == {"idle": 1}
        assert stats.last_exit is not None and stats.last_exit.cause == ExitCause.SHUTDOWN
        assert worker.generation == 1

        after = await status(worker)
        assert after.generation == 2 and after.pid != pid
        assert worker.stats().restarts == {"idle": 1}


# -- timeouts --------------------------------------------------------------------------------------


async def test_restart_on_timeout_kills_and_replaces_even_a_child_that_would_honour_cancel() -> None:
    async with Worker(workload(RestartPolicy(restart_on_timeout=True))) as worker:
        with anyio.fail_after(30), pytest.raises(RequestTimeout) as info:
            await worker.call(SLEEP, Sleep(seconds=60), timeout=0.3)
        error = info.value
        assert error.code == "worker.request_timeout"
        assert error.limit_s == 0.3 and error.elapsed_s >= 0.3
        assert error.exit is not None and error.exit.cause == ExitCause.SUPERVISOR_KILL
        assert "child_replaced=True" in str(error)
        assert worker.stats().restarts == {"request_timeout": 1}
        after = await status(worker)
        assert after.generation == 2 and after.cancels_seen == 0


async def test_without_restart_on_timeout_a_child_that_honours_cancel_keeps_its_generation() -> None:
    config = workload(RestartPolicy(restart_on_timeout=False), cancel_grace_s=0.5)
    async with Worker(config) as worker:
        with anyio.fail_after(30), pytest.raises(RequestTimeout) as info:
            await worker.call(SLEEP, Sleep(seconds=60), timeout=0.3)
        assert info.value.exit is None
        assert "child_replaced=False" in str(info.value)
        assert worker.stats().restarts == {}
        after = await status(worker)
        assert (after.generation, after.cancels_seen) == (1, 1)


async def test_without_restart_on_timeout_a_child_that_ignores_cancel_is_replaced_after_the_grace() -> None:
    config = workload(RestartPolicy(restart_on_timeout=False), cancel_grace_s=0.3)
    async with Worker(config) as worker:
        started = time.monotonic()
        with anyio.fail_after(30), pytest.raises(RequestTimeout) as info:
            await worker.call(SLEEP_IGNORING_CANCEL, Sleep(seconds=60), timeout=0.3)
        assert time.monotonic() - started >= 0.3 + 0.3
        assert info.value.exit is not None
        assert worker.stats().restarts == {"request_timeout": 1}
        assert (await status(worker)).generation == 2


# -- explicit cycle --------------------------------------------------------------------------------


async def test_cycle_replaces_the_child_gracefully_with_a_shutdown_frame() -> None:
    async with Worker(workload(RestartPolicy())) as worker:
        before = await status(worker)
        with anyio.fail_after(30):
            report = await worker.cycle()
        assert report.step == "shutdown_frame"
        assert report.exit is not None
        assert report.exit.cause == ExitCause.SHUTDOWN and report.exit.returncode == 0
        assert report.exit.pid == before.pid and report.exit.generation == 1
        # The replacement is started by cycle() itself, not by the next request.
        assert worker.generation == 2 and worker.pid is not None and worker.pid != before.pid
        assert worker.stats().restarts == {"explicit": 1}
        assert (await status(worker)).generation == 2


# -- restart intensity -----------------------------------------------------------------------------


async def test_the_restart_limit_stops_a_crash_loop_after_max_restarts_in_the_window() -> None:
    async with Worker(workload(RestartPolicy(max_restarts=2, restart_window_s=60))) as worker:
        with anyio.fail_after(30):
            for generation in (1, 2, 3):  # the first child plus max_restarts replacements
                with pytest.raises(WorkerCrashed) as crashed:
                    await worker.call(EXIT, Exit(code=7))
                assert crashed.value.generation == generation
                assert crashed.value.code == "worker.exit.nonzero"
                assert crashed.value.exit is not None and crashed.value.exit.returncode == 7
            for _ in range(2):  # refused, not spawned, for as long as the window holds them
                with pytest.raises(RestartLimitExceeded) as info:
                    await status(worker)
        error = info.value
        assert error.code == "worker.restart_limit"
        assert (error.restarts, error.window_s) == (3, 60)
        assert error.last_exit is not None and error.last_exit.returncode == 7
        assert "workload: exiting with status 7" in error.last_exit.stderr_tail
        assert worker.generation == 3
        assert worker.stats().restarts == {"crash": 3}


async def test_the_restart_limit_admits_work_again_once_the_window_has_passed() -> None:
    clock = ManualClock()
    async with Worker(workload(RestartPolicy(max_restarts=1, restart_window_s=1.0)), clock=clock) as worker:
        with anyio.fail_after(30):
            for _ in range(2):
                with pytest.raises(WorkerCrashed):
                    await worker.call(EXIT, Exit(code=3))
            with pytest.raises(RestartLimitExceeded):
                await status(worker)
            clock.advance(0.9)
            with pytest.raises(RestartLimitExceeded):  # still inside the window
                await status(worker)
            clock.advance(0.2)
            assert (await status(worker)).generation == 3


async def test_planned_restarts_do_not_count_toward_the_restart_limit() -> None:
    policy = RestartPolicy(max_requests=1, max_restarts=1, restart_window_s=60)
    async with Worker(workload(policy)) as worker:
        with anyio.fail_after(30):
            for generation in range(1, 6):
                assert (await status(worker)).generation == generation
            await worker.cycle()
            assert worker.stats().restarts == {"max_requests": 4, "explicit": 1}
            # One unplanned restart is within the limit despite five planned ones.
            with pytest.raises(WorkerCrashed):
                await worker.call(EXIT, Exit(code=1))  # generation 6
            with pytest.raises(WorkerCrashed):
                await worker.call(EXIT, Exit(code=1))  # generation 7: the one replacement allowed
            with pytest.raises(RestartLimitExceeded):
                await status(worker)
        assert worker.stats().restarts == {"max_requests": 4, "explicit": 1, "crash": 2}


async def test_an_answered_request_between_crashes_ends_the_crash_loop_count() -> None:
    # The limit stops children that die with no answer in between (a crash loop), not a
    # child that keeps serving while some requests crash it (a batch with poison items).
    clock = ManualClock()
    policy = RestartPolicy(max_restarts=1, restart_window_s=60)
    async with Worker(workload(policy), clock=clock) as worker:
        with anyio.fail_after(30):
            for _ in range(5):
                with pytest.raises(WorkerCrashed):
                    await worker.call(EXIT, Exit(code=1))
                assert worker.restart_blocked_s() == 0
                await status(worker)  # the replacement answers: the count starts again
            with pytest.raises(WorkerCrashed):
                await worker.call(EXIT, Exit(code=1))
            with pytest.raises(WorkerCrashed):
                await worker.call(EXIT, Exit(code=1))
            assert worker.restart_blocked_s() == 60
            with pytest.raises(RestartLimitExceeded):
                await status(worker)
            clock.advance(60.5)  # the window moves on: the worker may start a child again
            assert worker.restart_blocked_s() == 0
            assert (await status(worker)).generation == 8
        assert worker.stats().restarts == {"crash": 7}
