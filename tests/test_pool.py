"""The pool: concurrent leases, FIFO admission with a queue timeout, warm reuse by key and
eviction, the RSS budget, lease invalidation, batches with partial results, snapshots.

Generic behaviour runs on the workload test child (fast); warm reuse runs on the real Lean
worker with the fixture library.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from children.workload import (
    EXIT,
    HOLD,
    KEYED_LOAD,
    LOAD,
    MAYBE_EXIT,
    SLEEP,
    STATUS,
    Exit,
    Hold,
    Load,
    MaybeExit,
    Sleep,
    StatusRequest,
)
from conftest import child_config
from lean_worker import (
    InvalidRequest,
    LeaseInvalidated,
    ManualClock,
    PoolUnavailable,
    RestartPolicy,
    WorkerError,
    Pool,
    PoolBudgetExceeded,
    PoolClosed,
    QueueTimeout,
    RemoteError,
    RequestTimeout,
    SyncPool,
    WorkerCrashed,
)
from lean_worker.lean import CHECK, CheckRequest, LeanCrashed, lean_config
from lean_worker_protocol import Call

SNIPPETS = Path(__file__).resolve().parents[1] / "lean" / "snippets"
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


def workload(**options: object):  # type: ignore[no-untyped-def]
    return child_config("tests.children.workload", **options)


async def test_many_tasks_share_the_workers_concurrently() -> None:
    active = peak = 0
    used: set[int] = set()

    async with Pool(workload(), size=3) as pool:
        async def job(i: int) -> None:
            nonlocal active, peak
            async with pool.lease() as lease:
                active += 1
                peak = max(peak, active)
                used.add(lease.index)
                await lease.call(SLEEP, Sleep(0.1))
                active -= 1

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(12):
                    tg.start_soon(job, i)
        snap = pool.snapshot()
    assert peak == 3
    assert used == {0, 1, 2}
    assert snap.leases == 12
    assert snap.busy == 0 and snap.queue_depth == 0
    assert sum(w.requests for w in snap.workers) == 12


async def test_admission_is_first_in_first_out() -> None:
    order: list[int] = []
    async with Pool(workload(), size=1) as pool:
        async def job(i: int) -> None:
            async with pool.lease() as lease:
                order.append(i)
                await lease.call(SLEEP, Sleep(0.02))

        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(job, i)
                await anyio.sleep(0.01)  # each queues behind the previous one
    assert order == list(range(6))


async def test_queue_timeout_is_typed_and_counted() -> None:
    async with Pool(workload(), size=1, queue_timeout_s=0.2) as pool:
        async with pool.lease():
            with pytest.raises(QueueTimeout) as info:
                async with pool.lease():
                    pass
            assert info.value.code == "pool.queue_timeout"
            assert info.value.waited_s >= 0.2
            assert pool.snapshot().queue_depth == 0  # the timed-out request left the queue
        # The worker is free again: the next lease gets it at once.
        async with pool.lease() as lease:
            await lease.call(SLEEP, Sleep(0))
        assert pool.snapshot().queue_timeouts == 1


async def test_measure_rss_reads_every_worker_tree_and_the_snapshot_carries_the_readings() -> None:
    async with Pool(workload(), size=2) as pool:
        assert pool.snapshot().total_rss_bytes is None  # nothing measures without a budget or a ceiling
        total = await pool.measure_rss()
        snap = pool.snapshot()
    assert total > 0 and snap.total_rss_bytes == total
    assert all(w.rss_bytes is not None and w.rss_bytes > 0 for w in snap.workers)


def test_the_sync_pool_measures_rss_as_well() -> None:
    with SyncPool(workload(), size=1) as sync:
        assert sync.measure_rss() == sync.snapshot().total_rss_bytes > 0


async def test_rss_budget_cycles_idle_workers_then_refuses() -> None:
    async with Pool(workload(), size=2, rss_budget_bytes=1) as pool:
        with pytest.raises(PoolBudgetExceeded) as info:
            async with pool.lease():
                pass
        snap = pool.snapshot()
    assert info.value.code == "pool.rss_budget"
    assert info.value.total_bytes > info.value.budget_bytes == 1
    assert snap.budget_cycles == 2  # every idle worker was cycled first
    assert snap.budget_refusals == 1
    assert snap.restarts == {"explicit": 2}


async def test_rss_budget_admits_after_cycling_a_bloated_worker() -> None:
    async with Pool(workload(), size=2) as pool:
        async with pool.lease() as lease:
            await lease.call(HOLD, Hold(200))  # 200 MiB held by one child
            bloated = lease.index
        total = sum([await s.worker.pss() or 0 for s in pool._slots])
        pool.rss_budget_bytes = total - 100 * 1024 * 1024  # under what the pool holds now
        async with pool.lease() as lease:
            await lease.call(SLEEP, Sleep(0))
        snap = pool.snapshot()
    assert snap.budget_cycles == 1
    assert snap.budget_refusals == 0
    assert snap.workers[bloated].restarts == {"explicit": 1}


async def test_a_lease_is_invalidated_when_its_worker_crashes() -> None:
    async with Pool(workload(), size=1) as pool:
        async with pool.lease() as lease:
            assert lease.valid
            with pytest.raises(WorkerCrashed):
                await lease.call(EXIT, Exit(3))
            assert not lease.valid
            with pytest.raises(LeaseInvalidated) as info:
                await lease.call(SLEEP, Sleep(0))
            assert info.value.code == "pool.lease_invalidated"
        async with pool.lease() as fresh:  # a new lease starts a new child
            assert fresh.valid and fresh.generation == 2
            await fresh.call(SLEEP, Sleep(0))


async def test_map_returns_every_outcome_despite_crashes_and_timeouts() -> None:
    requests = [Sleep(0.01), Sleep(5.0), Sleep(0.01), Sleep(0.01)]
    async with Pool(workload(), size=2) as pool:
        async with pool.map(SLEEP, requests, timeout=1.0) as outcomes:
            got = [o async for o in outcomes]
    assert sorted(o.index for o in got) == [0, 1, 2, 3]
    by_index = {o.index: o for o in got}
    assert isinstance(by_index[1].error, RequestTimeout)
    assert all(by_index[i].error is None and by_index[i].value is not None for i in (0, 2, 3))
    assert {o.worker for o in got} <= {0, 1}


async def test_idle_workers_are_retired_and_restarted_on_the_next_lease() -> None:
    from lean_worker import RestartPolicy

    async with Pool(workload(restart=RestartPolicy(idle_restart_s=0.3)), size=1) as pool:
        async with pool.lease() as lease:
            await lease.call(SLEEP, Sleep(0))
            first = lease.generation
        with anyio.fail_after(10):
            while pool.snapshot().workers[0].pid is not None:  # the idle monitor retires it
                await anyio.sleep(0.05)
        async with pool.lease() as lease:
            assert lease.valid and lease.generation == first + 1
            await lease.call(SLEEP, Sleep(0))
        assert pool.snapshot().restarts == {"idle": 1}


async def test_closed_pool_refuses_leases() -> None:
    pool = Pool(workload(), size=1)
    async with pool:
        pass
    with pytest.raises(PoolClosed):
        async with pool.lease():
            pass


# -- warm reuse with real Lean ---------------------------------------------------------------


def lean_pool_config(lean_toolchain, library, **options):  # type: ignore[no-untyped-def]
    options.setdefault("request_timeout_s", 60)
    return lean_config(lean=lean_toolchain.lean, search_path=[library.root], **options)


HEADERS = ["prelude\nimport LwFix.Logic\n", "prelude\nimport LwFix.Nat\n", "prelude\nimport LwFix.List\n"]


async def test_warm_keys_route_checks_to_the_worker_that_has_the_header(lean_toolchain, library) -> None:  # type: ignore[no-untyped-def]
    async with Pool(lean_pool_config(lean_toolchain, library), size=2) as pool:
        first = [await pool.call(CHECK, CheckRequest(h)) for h in HEADERS[:2]]
        again = [await pool.call(CHECK, CheckRequest(h + "\n")) for h in HEADERS[:2] * 3]
        snap = pool.snapshot()
    assert [r.session for r in first] == ["import", "import"]
    assert {r.session for r in again} == {"warm"}
    assert (snap.key_misses, snap.key_hits) == (2, 6)
    assert sorted(len(w.keys) for w in snap.workers) == [1, 1]  # one header per worker
    assert sum(w.requests for w in snap.workers) == 8
    assert sum(w.imports for w in snap.workers) == 2  # one session per header


async def test_least_recently_used_keys_are_evicted(lean_toolchain, library) -> None:  # type: ignore[no-untyped-def]
    config = lean_pool_config(lean_toolchain, library, max_sessions=2)
    async with Pool(config, size=1, keys_per_worker=2) as pool:
        for h in (HEADERS[0], HEADERS[1], HEADERS[0], HEADERS[2]):  # HEADERS[1] is least recently used
            await pool.call(CHECK, CheckRequest(h))
        snap = pool.snapshot()
        assert snap.workers[0].keys == [("prelude", "import LwFix.Logic"), ("prelude", "import LwFix.List")]
        assert (snap.key_hits, snap.key_misses, snap.key_evictions) == (1, 3, 1)
        assert (await pool.call(CHECK, CheckRequest(HEADERS[0]))).session == "warm"


async def test_a_lean_batch_with_crashing_and_hanging_items_returns_every_other_result(lean_toolchain, library) -> None:  # type: ignore[no-untyped-def]
    def s(name: str) -> str:
        return (SNIPPETS / name).read_text()

    requests = [
        CheckRequest(s("ok.lean"), id="ok"),
        CheckRequest(s("crash.lean"), id="crash"),
        CheckRequest(s("type_error.lean"), id="type_error"),
        CheckRequest(s("hang.lean"), id="hang-deadline", timeout_s=1.0),
        CheckRequest(s("hang.lean"), id="hang-request"),  # only the request timeout stops it
        CheckRequest(s("sorry.lean"), id="sorry"),
        CheckRequest(s("ok.lean"), id="ok-again"),
    ]
    async with Pool(lean_pool_config(lean_toolchain, library), size=2) as pool:
        async with pool.map(CHECK, requests, timeout=4.0) as outcomes:
            got = {o.request.id: o async for o in outcomes}
        snap = pool.snapshot()
    assert set(got) == {r.id for r in requests}
    assert got["ok"].value.verdict == got["ok-again"].value.verdict == "ok"
    assert got["type_error"].value.verdict == "errors"
    assert got["sorry"].value.verdict == "sorry"
    assert isinstance(got["crash"].error, LeanCrashed)
    assert isinstance(got["hang-deadline"].error, RemoteError)
    assert got["hang-deadline"].error.code == "lean.timeout"
    assert isinstance(got["hang-request"].error, RequestTimeout)
    assert snap.restarts.get("request_timeout") == 1  # only the request timeout replaced a worker


# -- contracts on every path (issue 8) ---------------------------------------------------------


async def trip(pool: Pool, index: int) -> None:
    """Crash worker ``index``'s children until its restart limit takes it out of rotation."""
    worker = pool._slots[index].worker
    for _ in range(worker.policy.max_restarts + 1):
        with pytest.raises(WorkerCrashed):
            await worker.call(EXIT, Exit(3))
    assert worker.restart_blocked_s() > 0


async def test_a_tripped_worker_leaves_rotation_and_the_healthy_one_takes_the_whole_batch() -> None:
    clock = ManualClock()
    policy = RestartPolicy(max_restarts=1, restart_window_s=60)
    async with Pool(workload(restart=policy), size=2, clock=clock) as pool:
        with anyio.fail_after(60):
            await trip(pool, 0)
            snap = pool.snapshot()
            assert snap.workers[0].restart_blocked_s == 60 and snap.workers[1].restart_blocked_s == 0
            async with pool.map(SLEEP, [Sleep(0)] * 20) as outcomes:
                got = [o async for o in outcomes]
            assert [o.error for o in got] == [None] * 20
            assert {o.worker for o in got} == {1}
            # Once its window has passed, the tripped worker is back in rotation.
            clock.advance(61)
            assert pool.snapshot().workers[0].restart_blocked_s == 0
            async with pool.lease() as first, pool.lease() as second:
                assert {first.index, second.index} == {0, 1}
                await first.call(SLEEP, Sleep(0))
                await second.call(SLEEP, Sleep(0))


async def test_when_every_worker_is_tripped_each_item_fails_at_once_naming_the_cause() -> None:
    clock = ManualClock()
    policy = RestartPolicy(max_restarts=1, restart_window_s=60)
    async with Pool(workload(restart=policy), size=2, clock=clock) as pool:
        with anyio.fail_after(60):
            await trip(pool, 0)
            await trip(pool, 1)
            async with pool.map(SLEEP, [Sleep(0)] * 5) as outcomes:
                got = [o async for o in outcomes]
    assert len(got) == 5
    for outcome in got:
        error = outcome.error
        assert isinstance(error, PoolUnavailable) and error.code == "pool.unavailable"
        assert [c.code for c in error.causes] == ["worker.restart_limit"] * 2
        assert all(c.last_exit is not None and c.last_exit.returncode == 3 for c in error.causes)
        assert error.retry_after_s == 60
        assert "worker.exit.nonzero" in str(error)
    assert pool.snapshot().queue_timeouts == 0  # nobody waited for the queue timeout


async def test_a_batch_with_many_crashing_items_keeps_every_healthy_result_under_the_default_policy() -> None:
    # 40 crashing items over 2 workers: about 20 crashes each, more than max_restarts=16 in
    # the 60 s window. Each child answers healthy items between crashes, so neither worker
    # is in a crash loop, and no healthy item may lose its result.
    requests = [MaybeExit(3 if i % 2 == 0 else None) for i in range(80)]
    async with Pool(workload(), size=2) as pool:
        with anyio.fail_after(120):
            async with pool.map(MAYBE_EXIT, requests) as outcomes:
                got = {o.index: o async for o in outcomes}
        snap = pool.snapshot()
    assert sorted(got) == list(range(80))
    assert all(isinstance(got[i].error, WorkerCrashed) for i in range(0, 80, 2))
    assert [got[i].error for i in range(1, 80, 2)] == [None] * 40
    assert snap.restarts == {"crash": 40}


async def test_planned_restarts_wait_until_the_lease_ends() -> None:
    async with Pool(workload(restart=RestartPolicy(max_requests=1)), size=1) as pool:
        with anyio.fail_after(30):
            async with pool.lease() as lease:
                first = await lease.call(STATUS, StatusRequest())
                second = await lease.call(STATUS, StatusRequest())
                assert lease.valid
            assert (first.pid, first.generation) == (second.pid, second.generation)
            assert second.requests == 2
            async with pool.lease() as lease:  # the next lease starts on a fresh child
                third = await lease.call(STATUS, StatusRequest())
            assert third.generation == first.generation + 1
        assert pool.snapshot().restarts == {"max_requests": 1}


async def test_max_imports_waits_until_the_lease_ends_and_then_cycles_the_worker() -> None:
    async with Pool(workload(restart=RestartPolicy(max_imports=1)), size=1) as pool:
        with anyio.fail_after(30):
            async with pool.lease() as lease:
                await lease.call(LOAD, Load("a"))
                await lease.call(LOAD, Load("b"))  # over max_imports: deferred, same child
                status = await lease.call(STATUS, StatusRequest())
            assert (status.generation, status.loads) == (1, 2)
            assert await pool.call(LOAD, Load("c")) >= 0
        assert pool.snapshot().restarts == {"max_imports": 1}


async def test_a_leased_worker_is_never_retired_for_idleness() -> None:
    clock = ManualClock()
    async with Pool(workload(restart=RestartPolicy(idle_restart_s=1.0)), size=1, clock=clock) as pool:
        with anyio.fail_after(30):
            async with pool.lease() as lease:
                before = await lease.call(STATUS, StatusRequest())
                clock.advance(10)  # the holder pauses far longer than idle_restart_s
                await anyio.wait_all_tasks_blocked()
                after = await lease.call(STATUS, StatusRequest())
                assert lease.valid and (after.pid, after.generation) == (before.pid, before.generation)
            # Released and idle: now the monitor retires it.
            clock.advance(10)
            await anyio.wait_all_tasks_blocked()
            while pool.snapshot().workers[0].pid is not None:
                await anyio.sleep(0.01)  # the child's exit is real: wait for its reaping
        assert pool.snapshot().restarts == {"idle": 1}


class Opaque:
    """Nothing msgspec can encode."""


async def test_one_item_that_cannot_be_encoded_fails_alone_with_a_typed_error() -> None:
    requests = [Sleep(0), Sleep(Opaque()), Sleep("soon"), Sleep(0)]  # type: ignore[arg-type]
    async with Pool(workload(), size=2) as pool:
        with anyio.fail_after(30):
            async with pool.map(SLEEP, requests) as outcomes:
                got = {o.index: o async for o in outcomes}
            keyed = [Load("a"), Sleep(0)]  # the second has no `name` for session_keys
            async with pool.map(KEYED_LOAD, keyed) as outcomes:  # type: ignore[arg-type]
                by_keys = {o.index: o async for o in outcomes}
        snap = pool.snapshot()
    assert got[0].error is None and got[3].error is None
    assert isinstance(got[1].error, InvalidRequest) and isinstance(got[2].error, InvalidRequest)
    assert got[1].error.code == "worker.invalid_request"
    assert by_keys[0].error is None
    assert isinstance(by_keys[1].error, InvalidRequest) and "session_keys" in str(by_keys[1].error)
    assert snap.restarts == {}  # nothing reached a child


async def test_every_failure_of_a_batch_is_a_worker_error() -> None:
    async with Pool(workload(), size=1) as pool:
        with anyio.fail_after(30):
            async with pool.map(SLEEP, [Sleep(0), object(), Sleep(0)]) as outcomes:  # type: ignore[list-item]
                got = {o.index: o async for o in outcomes}
    assert got[0].error is None and got[2].error is None
    assert isinstance(got[1].error, WorkerError)


async def test_a_requests_session_keys_are_computed_once_or_taken_from_the_caller() -> None:
    calls: list[str] = []

    def counting(request: Load) -> list[str]:
        calls.append(request.name)
        return [request.name]

    # The same command as KEYED_LOAD (session_keys is not part of the fingerprint).
    keyed = Call(KEYED_LOAD.name, request=Load, response=int, session_keys=counting)
    async with Pool(workload(), size=2) as pool:
        with anyio.fail_after(30):
            await pool.call(keyed, Load("a"))
            assert calls == ["a"]  # once: for the lease and for the worker
            async with pool.map(keyed, [Load("b"), Load("c")]) as outcomes:
                assert [o.error async for o in outcomes] == [None, None]
            assert sorted(calls) == ["a", "b", "c"]
            calls.clear()
            async with pool.map(keyed, [Load("d"), Load("e")], keys=[("d",)]) as outcomes:
                got = {o.index: o async for o in outcomes}
        snap = pool.snapshot()
    assert calls == []  # the caller's keys were used
    assert got[0].error is None
    assert isinstance(got[1].error, InvalidRequest) and "keys for 1 requests" in str(got[1].error)
    assert {k for w in snap.workers for k in w.keys} >= {"a", "d"}
