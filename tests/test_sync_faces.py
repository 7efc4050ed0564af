"""The sync face matches the async one (issue 8).

- ``SyncWorker``, ``SyncStreamCall``, ``SyncPool`` and ``SyncLease`` have the public members of
  ``Worker``, ``StreamCall``, ``Pool`` and ``Lease``, and their methods take the same
  parameters; the differences that are inherent to a sync face are listed, with why, in
  ``FACES`` below. Adding a public member to one face only fails here.
- ``SyncWorker`` and ``SyncPool`` work without ``with`` (``start()`` / ``close()``), and
  ``close()`` is idempotent, reaps the children and stops the portal thread.
- ``SyncPool`` serves threads concurrently on different workers; ``map`` yields every
  outcome, and leaving it early cancels the rest.

All on the workload test child.
"""

from __future__ import annotations

import inspect
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from children.workload import EXIT, ROWS, SLEEP, STATUS, Exit, Row, RowsRequest, Sleep, StatusRequest
from conftest import child_config
from lean_worker import (
    Diagnostic,
    Pool,
    PoolClosed,
    Progress,
    RequestTimeout,
    RowBatch,
    SyncStreamCall,
    SyncWorker,
    Worker,
    WorkerClosed,
    WorkerCrashed,
)
from lean_worker import SyncLease, SyncPool
from lean_worker.session import Session, SyncSession

pytestmark = pytest.mark.timeout(60)
LIMIT_S = 20.0


def workload(**options: object):  # type: ignore[no-untyped-def]
    return child_config("tests.children.workload", **options)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(LIMIT_S)
    assert not any(t.is_alive() for t in threads), "a thread did not finish in time"


# -- the two faces have the same members ---------------------------------------------------------


@dataclass(frozen=True)
class Faces:
    """One async class and its sync twin, with the differences that are inherent."""

    async_only: dict[str, str] = field(default_factory=dict)
    sync_only: dict[str, str] = field(default_factory=dict)
    sync_only_init: frozenset[str] = frozenset()
    """Constructor parameters only the sync face takes."""
    compare_init: bool = False
    """Users construct it (Worker, Pool); leases and stream calls are made by their owners."""


BACKEND = "the event loop the portal thread runs (asyncio or trio); an async face runs on its caller's loop"

FACES: dict[str, Faces] = {
    "Worker": Faces(
        sync_only={"worker": "the async Worker underneath, for code that also runs on the portal's loop"},
        sync_only_init=frozenset({"backend"}),
        compare_init=True,
    ),
    "StreamCall": Faces(
        async_only={"next_batch": "the hook the sync face iterates rows through (a batch per trip into the loop)"},
    ),
    "Pool": Faces(
        sync_only={"start": "the async Pool starts on `async with`; the sync one can also be started without `with`"},
        sync_only_init=frozenset({"backend"}),
        compare_init=True,
    ),
    "Lease": Faces(),
    "Session": Faces(compare_init=True),
}

CONTEXT_PROTOCOLS = [("__aenter__", "__enter__"), ("__aexit__", "__exit__"), ("__aiter__", "__iter__")]
"""What ``async with`` / ``async for`` is on one face is ``with`` / ``for`` on the other."""


@pytest.fixture(scope="module")
def instances() -> Iterator[dict[str, tuple[Any, Any]]]:
    """Live instances of each pair, so attributes set in ``__init__`` count too."""
    config = workload()
    with SyncPool(config, size=1) as pool:
        with pool.lease() as lease:
            sync_stream = lease.stream(ROWS, RowsRequest(n=1))  # made, never entered: nothing runs
            yield {
                "Worker": (Worker(config), SyncWorker(config)),
                "StreamCall": (Worker(config).stream(ROWS, RowsRequest(n=1)), sync_stream),
                "Pool": (Pool(config, 1), pool),
                "Lease": (lease._lease, lease),  # the async Lease the sync one wraps
                "Session": (Session(Worker(config)), SyncSession(pool)),
            }


def public(obj: object) -> set[str]:
    return {name for name in dir(obj) if not name.startswith("_")}


@pytest.mark.parametrize("pair", sorted(FACES))
def test_each_sync_face_has_the_public_members_of_its_async_face(
    instances: dict[str, tuple[Any, Any]], pair: str
) -> None:
    async_obj, sync_obj = instances[pair]
    faces = FACES[pair]
    async_names, sync_names = public(async_obj), public(sync_obj)
    assert async_names - sync_names == set(faces.async_only), f"{pair}: only on the async face"
    assert sync_names - async_names == set(faces.sync_only), f"{pair}: only on the sync face"
    for async_dunder, sync_dunder in CONTEXT_PROTOCOLS:
        assert hasattr(async_obj, async_dunder) == hasattr(sync_obj, sync_dunder), (pair, async_dunder)


def parameters(cls: type, name: str, skip: frozenset[str] = frozenset()) -> list[tuple[str, object, object]]:
    signature = inspect.signature(getattr(cls, name))
    return [(p.name, p.kind, p.default) for p in signature.parameters.values() if p.name not in {"self", *skip}]


@pytest.mark.parametrize("pair", sorted(FACES))
def test_each_sync_method_takes_the_parameters_of_its_async_twin(
    instances: dict[str, tuple[Any, Any]], pair: str
) -> None:
    async_obj, sync_obj = instances[pair]
    async_cls, sync_cls = type(async_obj), type(sync_obj)
    compared = 0
    for name in sorted(public(async_obj) & public(sync_obj)):
        member = inspect.getattr_static(async_cls, name, None)
        if not inspect.isfunction(member):
            continue  # a property or a plain attribute: no parameters
        assert parameters(async_cls, name) == parameters(sync_cls, name), f"{pair}.{name}"
        compared += 1
    assert compared > 0
    if FACES[pair].compare_init:
        assert parameters(async_cls, "__init__") == parameters(sync_cls, "__init__", FACES[pair].sync_only_init)


def test_a_sync_stream_call_gives_the_events_batches_and_counters_of_the_async_one() -> None:
    with SyncWorker(workload()) as worker:
        request = RowsRequest(n=6, diagnostic_every=3, progress_every=6)
        with worker.stream(ROWS, request) as rows:
            assert isinstance(rows, SyncStreamCall)
            events = list(rows.events())
        batches = [e for e in events if isinstance(e, RowBatch)]
        assert [r for b in batches for r in b.rows] == [Row(i) for i in range(6)]
        assert [b.seq for b in batches] == sorted(b.seq for b in batches)
        assert [e.message for e in events if isinstance(e, Diagnostic)] == ["after 3 rows", "after 6 rows"]
        assert [e.current for e in events if isinstance(e, Progress)] == [6]
        assert (rows.request_id, rows.generation) == (rows.summary.request_id, rows.summary.generation)
        assert (rows.rows_delivered, rows.diagnostics_overflow) == (6, 0)

        progress: list[int] = []
        with worker.stream(ROWS, request, on_progress=lambda p: progress.append(p.current)) as rows:
            batches = list(rows.batches())
        assert all(isinstance(b, RowBatch) and b.stream == "rows" for b in batches)
        assert [r.i for b in batches for r in b.rows] == list(range(6))
        assert [d.message for d in rows.diagnostics] == ["after 3 rows", "after 6 rows"]
        assert progress == [6]
        assert rows.summary.total_rows == 6


# -- SyncWorker without `with` -------------------------------------------------------------------


def test_sync_worker_starts_and_closes_without_with_and_close_is_idempotent() -> None:
    threads_before = threading.active_count()
    worker = SyncWorker(workload())
    with pytest.raises(WorkerClosed, match="not started"):
        worker.call(STATUS, StatusRequest())
    worker.start()
    try:
        pid = worker.call(STATUS, StatusRequest()).pid
        assert pid == worker.pid
        with pytest.raises(WorkerCrashed):
            worker.call(EXIT, Exit(3))
        worker.start()  # on a started worker: a child now, as Worker.start
        assert worker.pid is not None and worker.pid != pid and worker.generation == 2
        pid = worker.pid
    finally:
        report = worker.close()
    assert report.step == "shutdown_frame" and report.exit is not None and report.exit.pid == pid
    assert gone(pid)
    assert worker.close().step == "already_exited"
    assert threading.active_count() == threads_before  # the portal thread has ended
    with pytest.raises(WorkerClosed, match="closed"):
        worker.call(STATUS, StatusRequest())
    with pytest.raises(WorkerClosed):
        worker.start()  # started once, like the Worker it wraps


# -- SyncPool --------------------------------------------------------------------------------


def test_sync_pool_serves_leases_from_several_threads_on_distinct_workers_at_once() -> None:
    together = threading.Barrier(3, timeout=LIMIT_S)  # breaks unless all three hold a lease at once
    seen: dict[int, tuple[int, int, list[int]]] = {}
    errors: list[BaseException] = []

    with SyncPool(workload(), size=3) as pool:
        def job(i: int) -> None:
            try:
                with pool.lease() as lease:
                    assert isinstance(lease, SyncLease) and lease.valid
                    together.wait()
                    pid = lease.call(STATUS, StatusRequest()).pid
                    lease.call(SLEEP, Sleep(0.2))
                    with lease.stream(ROWS, RowsRequest(n=3)) as rows:
                        got = [row.i for row in rows]
                    seen[i] = (lease.index, pid, got)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=job, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        join(threads)
        snap = pool.snapshot()
    assert errors == []
    assert {index for index, _, _ in seen.values()} == {0, 1, 2}
    assert len({pid for _, pid, _ in seen.values()}) == 3
    assert all(got == [0, 1, 2] for _, _, got in seen.values())
    assert snap.busy == 0 and snap.leases == 3


def test_sync_pool_calls_from_several_threads_run_at_once() -> None:
    start = threading.Barrier(4, timeout=LIMIT_S)
    results: list[float] = []
    with SyncPool(workload(), size=3) as pool:
        def job() -> None:
            start.wait()
            results.append(pool.call(SLEEP, Sleep(0.5)))

        threads = [threading.Thread(target=job) for _ in range(3)]
        for thread in threads:
            thread.start()
        start.wait()
        peak = 0
        deadline = time.monotonic() + LIMIT_S
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            peak = max(peak, pool.snapshot().busy)  # three leases held at once: three calls in flight
            time.sleep(0.005)
        join(threads)
        snap = pool.snapshot()
    assert len(results) == 3
    assert peak == 3
    assert [w.requests for w in snap.workers] == [1, 1, 1]


def test_sync_pool_map_yields_every_outcome_with_failures_as_outcome_errors() -> None:
    requests = [Sleep(0.01), Sleep(5.0), Sleep(0.01), Sleep(0.01)]
    with SyncPool(workload(), size=2) as pool:
        got = list(pool.map(SLEEP, requests, timeout=1.0))
    assert sorted(o.index for o in got) == [0, 1, 2, 3]
    by_index = {o.index: o for o in got}
    assert isinstance(by_index[1].error, RequestTimeout)
    assert all(by_index[i].error is None and by_index[i].value is not None for i in (0, 2, 3))
    assert {o.worker for o in got} <= {0, 1}


@pytest.mark.parametrize("leave", ["break", "close"])
def test_leaving_sync_map_early_cancels_the_rest_and_the_pool_still_serves(leave: str) -> None:
    requests = [Sleep(0.01)] + [Sleep(30.0)] * 10  # the rest would run far past the test timeout
    with SyncPool(workload(), size=2) as pool:
        pids = [w.pid for w in pool.snapshot().workers]
        if leave == "break":
            for first in pool.map(SLEEP, requests):
                break
        else:
            outcomes = pool.map(SLEEP, requests)
            first = next(outcomes)
            outcomes.close()
        assert first.error is None
        snap = pool.snapshot()  # leaving waited for the runners: nothing is leased any more
        assert snap.busy == 0 and snap.queue_depth == 0
        assert [w.pid for w in snap.workers] == pids  # the long sleeps honoured the cancel
        assert snap.restarts == {}
        statuses = [pool.call(STATUS, StatusRequest()) for _ in range(2)]
    assert sum(s.cancels_seen for s in statuses) >= 1
    assert sum(s.requests for s in statuses) <= len(requests)  # nothing ran after the break


def test_sync_pool_starts_and_closes_without_with_and_close_reaps_every_child() -> None:
    threads_before = threading.active_count()
    pool = SyncPool(workload(), size=3)
    with pytest.raises(PoolClosed, match="not started"):
        pool.call(STATUS, StatusRequest())
    pool.start()
    try:
        pool.start()  # already started: nothing more
        pids = [pool.call(STATUS, StatusRequest()).pid for _ in range(3)]
        assert sorted(pids) == sorted(w.pid for w in pool.snapshot().workers)  # type: ignore[type-var]
    finally:
        pool.close()
    assert all(gone(pid) for pid in pids)
    assert all(w.pid is None for w in pool.snapshot().workers)
    assert threading.active_count() == threads_before
    pool.close()
    with pytest.raises(PoolClosed):
        pool.call(STATUS, StatusRequest())
    with pytest.raises(PoolClosed):
        with pool.lease():
            pass
    with pytest.raises(PoolClosed):
        pool.start()


def test_sync_pool_close_ends_a_batch_and_a_lease_that_other_threads_left_open() -> None:
    pool = SyncPool(workload(), size=2)
    pool.start()
    pids = [w.pid for w in pool.snapshot().workers]
    outcomes = pool.map(SLEEP, [Sleep(0.01)] * 100)
    next(outcomes)  # a batch left open: its runners wait for someone to read
    holding, closed = threading.Event(), threading.Event()
    holder_errors: list[BaseException] = []

    def hold_a_lease() -> None:
        try:
            with pool.lease() as lease:
                holding.set()
                closed.wait(LIMIT_S)
                lease.call(STATUS, StatusRequest())
        except BaseException as exc:
            holder_errors.append(exc)

    holder = threading.Thread(target=hold_a_lease)
    holder.start()
    assert holding.wait(LIMIT_S)
    closer = threading.Thread(target=pool.close)
    closer.start()
    join([closer])  # would wait forever if close() waited for the batch and the lease
    closed.set()
    join([holder])
    assert [type(e) for e in holder_errors] == [PoolClosed]
    with pytest.raises(PoolClosed):
        for _ in outcomes:
            pass
    assert all(gone(pid) for pid in pids if pid is not None)
