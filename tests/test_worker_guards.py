"""Guards at the start of a request: what the worker refuses before it sends anything.

- a request from the task (or thread) that already holds the worker through an open stream
  is ``ReentrantRequest`` at once, not a wait that nothing ends;
- a request that waits for a busy worker waits at most its own timeout (``WorkerBusy``);
- a per-call timeout that is not a positive number is ``ValueError`` before anything is
  sent, and the child stays;
- a request that does not match the command's request type, or cannot be encoded, is
  ``InvalidRequest`` before anything is sent, and the child stays;
- ``close()`` waits for a stream nobody reads at most the request timeout.

Each ran into a hang, a killed child or a bare ``TypeError`` before (issue 8, defects 1, 5
and 6).
"""

from __future__ import annotations

import math
import threading
from typing import Any

import anyio
import pytest

from children.workload import KEYED_LOAD, ROWS, SLEEP, STATUS, RowsRequest, Sleep, StatusRequest
from conftest import child_config
from lean_worker import InvalidRequest, ReentrantRequest, SyncWorker, Worker, WorkerBusy, WorkerError

pytestmark = pytest.mark.timeout(60)
LIMIT_S = 30.0


def workload(**options: Any):  # type: ignore[no-untyped-def]
    return child_config("tests.children.workload", **options)


class Opaque:
    """Nothing msgspec can encode."""


# -- re-entrant requests -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_call_inside_an_open_stream_of_the_same_task_is_reentrant_request_at_once() -> None:
    async with Worker(workload()) as worker:
        with anyio.fail_after(LIMIT_S):
            async with worker.stream(ROWS, RowsRequest(n=3)) as rows:
                with pytest.raises(ReentrantRequest) as info:
                    await worker.call(SLEEP, Sleep(0))
                with pytest.raises(ReentrantRequest):
                    async with worker.stream(ROWS, RowsRequest(n=1)):
                        pass
                with pytest.raises(ReentrantRequest):
                    await worker.cycle()
                got = [row.i async for row in rows]  # the open stream itself is untouched
            assert got == [0, 1, 2]
            assert info.value.code == "worker.reentrant_request"
            assert isinstance(info.value, WorkerBusy) and isinstance(info.value, WorkerError)
            assert info.value.operation == "sleep"
            await worker.call(SLEEP, Sleep(0))  # and the worker serves the next request
            assert worker.stats().restarts == {}


def test_a_sync_call_inside_an_open_sync_stream_of_the_same_thread_is_reentrant_request_at_once() -> None:
    with SyncWorker(workload()) as worker:
        with worker.stream(ROWS, RowsRequest(n=3)) as rows:
            with pytest.raises(ReentrantRequest):
                worker.call(SLEEP, Sleep(0))
            with pytest.raises(ReentrantRequest):
                with worker.stream(ROWS, RowsRequest(n=1)):
                    pass
            assert [row.i for row in rows] == [0, 1, 2]
        assert worker.call(SLEEP, Sleep(0)) >= 0
        assert worker.stats().restarts == {}


def test_another_thread_waits_for_a_sync_stream_instead_of_failing() -> None:
    results: list[object] = []
    with SyncWorker(workload()) as worker:
        with worker.stream(ROWS, RowsRequest(n=2)) as rows:
            other = threading.Thread(target=lambda: results.append(worker.call(SLEEP, Sleep(0), timeout=20)))
            other.start()
            assert [row.i for row in rows] == [0, 1]
        other.join(LIMIT_S)
    assert not other.is_alive()
    assert len(results) == 1 and isinstance(results[0], float)


# -- waiting for a busy worker ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_request_waiting_for_a_busy_worker_fails_with_worker_busy_after_its_timeout() -> None:
    async with Worker(workload()) as worker:
        holding = anyio.Event()
        release = anyio.Event()

        async def hold_the_worker() -> None:
            async with worker.stream(ROWS, RowsRequest(n=1)) as rows:
                holding.set()
                await release.wait()  # an open stream nobody reads holds the worker
                assert [row.i async for row in rows] == [0]

        with anyio.fail_after(LIMIT_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(hold_the_worker)
                await holding.wait()
                with pytest.raises(WorkerBusy) as info:
                    await worker.call(SLEEP, Sleep(0), timeout=0.2)
                release.set()
            error = info.value
            assert error.code == "worker.busy" and not isinstance(error, ReentrantRequest)
            assert error.limit_s == 0.2 and error.waited_s >= 0.2
            assert error.request_id is None  # nothing was sent
            await worker.call(SLEEP, Sleep(0))
            assert worker.stats().requests == 2 and worker.stats().restarts == {}


# -- bad timeouts -------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("timeout", [0, -1.0, math.nan, "5"])
async def test_a_per_call_timeout_that_is_not_a_positive_number_is_a_value_error_and_the_child_stays(timeout: Any) -> None:
    async with Worker(workload()) as worker:
        with anyio.fail_after(LIMIT_S):
            pid = worker.pid
            with pytest.raises((ValueError, TypeError), match="timeout"):
                await worker.call(SLEEP, Sleep(0), timeout=timeout)
            with pytest.raises((ValueError, TypeError), match="timeout"):
                async with worker.stream(ROWS, RowsRequest(n=1), timeout=timeout):
                    pass
            assert (await worker.call(STATUS, StatusRequest())).requests == 1  # nothing reached the child
            assert worker.pid == pid and worker.stats().restarts == {}


def test_a_nan_request_timeout_in_the_config_is_refused() -> None:
    with pytest.raises(ValueError, match="request_timeout_s"):
        workload(request_timeout_s=math.nan)


# -- requests that do not match their type ------------------------------------------------------


@pytest.mark.anyio
async def test_a_request_that_cannot_be_encoded_is_invalid_request_and_nothing_is_sent() -> None:
    async with Worker(workload()) as worker:
        with anyio.fail_after(LIMIT_S):
            pid = worker.pid
            with pytest.raises(InvalidRequest) as info:
                await worker.call(SLEEP, Sleep(Opaque()))  # type: ignore[arg-type]
            assert info.value.code == "worker.invalid_request"
            assert info.value.operation == "sleep" and info.value.request_id is None
            with pytest.raises(InvalidRequest, match="Sleep"):
                await worker.call(SLEEP, RowsRequest(n=1))  # type: ignore[arg-type]
            with pytest.raises(InvalidRequest, match="seconds"):
                await worker.call(SLEEP, Sleep("soon"))  # type: ignore[arg-type]
            with pytest.raises(InvalidRequest):
                async with worker.stream(ROWS, RowsRequest(n=Opaque())):  # type: ignore[arg-type]
                    pass
            with pytest.raises(InvalidRequest, match="session_keys"):  # its keys cannot be computed
                await worker.call(KEYED_LOAD, Sleep(0))  # type: ignore[arg-type]
            assert (await worker.call(STATUS, StatusRequest())).requests == 1
            assert worker.pid == pid and worker.stats().restarts == {}


@pytest.mark.anyio
async def test_close_waits_for_a_stream_nobody_reads_at_most_the_request_timeout_then_kills_under_it() -> None:
    from lean_worker import RequestTimeout, WorkerCrashed

    async with Worker(workload(request_timeout_s=0.5)) as worker:
        holding = anyio.Event()
        closed = anyio.Event()
        errors: list[BaseException] = []

        async def hold_the_worker() -> None:
            try:
                async with worker.stream(ROWS, RowsRequest(n=3, sleep_s=0.05)) as rows:
                    holding.set()
                    await closed.wait()  # the holder stops reading
                    async for _ in rows:
                        pass
            except WorkerError as exc:
                errors.append(exc)

        with anyio.fail_after(LIMIT_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(hold_the_worker)
                await holding.wait()
                pid = worker.pid
                report = await worker.close()
                closed.set()
            assert report.step == "sigkill" and report.exit is not None
            assert report.exit.cause.value == "worker.exit.supervisor_kill"
            assert worker.pid is None and pid is not None
            # The holder's next read finds its child gone (and, here, its deadline passed).
            assert len(errors) == 1 and isinstance(errors[0], (WorkerCrashed, RequestTimeout))
            assert errors[0].exit is not None and errors[0].exit.pid == pid
