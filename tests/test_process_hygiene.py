"""Process hygiene: whatever happens to a child, nothing it started outlives it.

Real processes, real signals: a grandchild a handler left running dies with the child it
belongs to; a child dies with its parent even when that parent is killed with SIGKILL and
the child is busy in native code; a request timeout ends a child that ignores SIGTERM within
the kill grace; and a soak of a thousand crashes, timeouts and restarts leaves no zombie, no
file descriptor and no process group behind.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import msgspec
import psutil
import pytest

from children.faulty import (
    ABORT,
    ECHO,
    EXIT,
    GARBAGE,
    ROWS_THEN,
    SEGFAULT,
    SLEEP,
    SPAWN,
    Exit,
    Fault,
    RowsThen,
    Sleep,
    Spawn,
    Text,
)
from conftest import ROOT, child_config
from lean_worker import (
    CorruptStream,
    ExitCause,
    RequestTimeout,
    RestartPolicy,
    Worker,
    WorkerConfig,
    WorkerCrashed,
    WorkerError,
)

pytestmark = pytest.mark.anyio

FAULTY = "tests.children.faulty"
TEST_LIMIT_S = 60.0


def faulty_config(**options: object) -> WorkerConfig:
    return child_config(FAULTY, **options)


def gone(proc: psutil.Process) -> bool:
    """Dead: reaped, or a zombie waiting for whoever inherited it (here PID 1 reaps orphans
    about once a second). ``is_running`` also compares the start time, so a reused pid does
    not count as the old process."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(procs: list[psutil.Process], within_s: float) -> float:
    """Seconds until every process in ``procs`` is gone; fails after ``within_s``."""
    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        alive = [p.pid for p in procs if not gone(p)]
        if not alive:
            return elapsed
        assert elapsed < within_s, f"still running {within_s} s later: pids={alive}"
        time.sleep(0.005)


def live(pid: int) -> psutil.Process:
    proc = psutil.Process(pid)
    assert not gone(proc)
    return proc


def kill_leftovers(procs: list[psutil.Process]) -> None:
    """Failure cleanup only: a test that found a survivor must not leave it to the next test."""
    for proc in procs:
        try:
            if proc.is_running():
                proc.kill()
        except psutil.Error:
            pass


# -- grandchildren die with the child they belong to ------------------------------------------


async def test_grandchild_left_running_by_handler_is_gone_after_child_crashes(anyio_backend: str) -> None:
    procs: list[psutil.Process] = []
    try:
        with anyio.fail_after(TEST_LIMIT_S):
            async with Worker(faulty_config()) as worker:
                # Started without popen_kwargs(): only the supervisor's group kill can end it.
                grandchild = live(await worker.call(SPAWN, Spawn(die_with_child=False)))
                child = live(worker.pid)  # type: ignore[arg-type]
                procs = [grandchild, child]
                assert os.getpgid(grandchild.pid) == child.pid
                with pytest.raises(WorkerCrashed) as raised:
                    await worker.call(SEGFAULT, Fault())
                assert raised.value.code == "worker.exit.sigsegv"
                wait_gone(procs, within_s=2.0)
                assert await worker.call(ECHO, Text("next")) == Text("next")
                assert worker.generation == 2
    finally:
        kill_leftovers(procs)


async def test_grandchild_left_running_by_handler_is_gone_after_request_timeout(anyio_backend: str) -> None:
    procs: list[psutil.Process] = []
    try:
        with anyio.fail_after(TEST_LIMIT_S):
            async with Worker(faulty_config()) as worker:
                grandchild = live(await worker.call(SPAWN, Spawn(die_with_child=False)))
                procs = [grandchild, live(worker.pid)]  # type: ignore[arg-type]
                with pytest.raises(RequestTimeout):
                    await worker.call(SLEEP, Sleep(30), timeout=0.2)
                wait_gone(procs, within_s=2.0)
                assert await worker.call(ECHO, Text("next")) == Text("next")
                assert worker.generation == 2
    finally:
        kill_leftovers(procs)


# -- a parent killed with SIGKILL takes its child (and the child's helpers) along --------------


def read_line(proc: subprocess.Popen[bytes], timeout_s: float) -> bytes:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            raise AssertionError(f"the parent script printed nothing within {timeout_s} s")
    return proc.stdout.readline()


@pytest.mark.parametrize("mode", ["idle", "busy_native", "grandchild", "grandchild_busy_native", "sandboxed"])
def test_parent_killed_with_sigkill_leaves_no_child_behind(mode: str, tmp_path: Path) -> None:
    ready = tmp_path / "in-native-sleep"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    parent = subprocess.Popen(
        [sys.executable, "-m", "tests.children.doomed_parent", mode, str(ready)],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
    )
    procs: list[psutil.Process] = []
    try:
        line = read_line(parent, timeout_s=30.0)
        pids = json.loads(line)
        procs = [live(pids["child"])]
        if mode.startswith("grandchild"):
            procs.append(live(pids["grandchild"]))
        if mode == "sandboxed":  # the sandbox's init and worker go too (the namespace dies with init)
            assert len(pids["tree"]) == 2
            procs += [live(pid) for pid in pids["tree"]]
        if mode.endswith("busy_native"):
            deadline = time.monotonic() + 30.0
            while not ready.exists():
                assert time.monotonic() < deadline, "the child never entered its native sleep"
                time.sleep(0.005)
        parent.kill()
        parent.wait(timeout=10.0)
        elapsed = wait_gone(procs, within_s=2.0)
        assert elapsed < 2.0
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        kill_leftovers(procs)
        assert parent.stdout is not None
        parent.stdout.close()


# -- a cancelled caller scope ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["idle", "mid_request"])
def test_cancelled_scope_around_worker_stops_and_reaps_the_child(mode: str) -> None:
    # Found by the soak: when a sibling task failed, the task group cancelled the other
    # workers, their reapers were cancelled with them, and the workers' shielded cleanup then
    # waited forever on children nobody would reap. Run in its own process: the bug is a hang.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tests.children.cancelled_owner", mode],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=30.0,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"cancelling the scope around a Worker hung; stderr:\n{exc.stderr!r}") from None
    assert done.returncode == 0, done.stderr.decode()
    facts = json.loads(done.stdout)
    assert facts["cancelled"] is True
    assert facts["reaped"] is True
    assert facts["fds_left"] == 0
    # idle: the Shutdown frame; mid-request: cancel grace (0.2 s), then SIGTERM.
    assert facts["unwind_s"] < 3.0


# -- request timeouts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hang",
    [Sleep(30), Sleep(30, native=True), Sleep(30, native=True, hold_gil=True)],
    ids=["python_sleep", "native_sleep", "native_sleep_holding_gil"],
)
async def test_request_timeout_kills_child_and_next_request_runs_on_new_generation(anyio_backend: str, hang: Sleep) -> None:
    limit = 0.3
    kill_grace = 1.0
    with anyio.fail_after(TEST_LIMIT_S):
        async with Worker(faulty_config(kill_grace_s=kill_grace)) as worker:
            child = live(worker.pid)  # type: ignore[arg-type]
            started = time.monotonic()
            with pytest.raises(RequestTimeout) as raised:
                await worker.call(SLEEP, msgspec.structs.replace(hang, note="sleeping past the timeout"), timeout=limit)
            elapsed = time.monotonic() - started
            exc = raised.value
            assert exc.code == "worker.request_timeout"
            assert (exc.operation, exc.generation, exc.limit_s, exc.rows_delivered) == ("sleep", 1, limit, 0)
            assert limit <= exc.elapsed_s <= elapsed
            info = exc.exit
            assert info is not None
            assert (info.cause, info.generation, info.command, info.request_id) == (
                ExitCause.SUPERVISOR_KILL, 1, "sleep", exc.request_id,
            )
            assert info.hint == "ended by the supervisor: request_timeout"
            # SIGTERM comes first and is enough for a child that does not ignore it, even
            # while it sits in native code: no kill grace is spent.
            assert info.signal == "SIGTERM"
            assert elapsed < limit + kill_grace
            assert "faulty: sleeping past the timeout" in info.stderr_tail
            assert gone(child)
            assert worker.stats().restarts == {"request_timeout": 1}
            assert await worker.call(ECHO, Text("next")) == Text("next")
            assert worker.generation == 2


async def test_child_ignoring_sigterm_is_gone_within_kill_grace_after_request_timeout(anyio_backend: str) -> None:
    limit = 0.3
    kill_grace = 0.5
    hang = Sleep(30, native=True, ignore_sigterm=True)
    with anyio.fail_after(TEST_LIMIT_S):
        async with Worker(faulty_config(kill_grace_s=kill_grace)) as worker:
            child = live(worker.pid)  # type: ignore[arg-type]
            rows = 0
            started = time.monotonic()
            with pytest.raises(RequestTimeout) as raised:
                async with worker.stream(ROWS_THEN, RowsThen(7, "sleep", hang, note="ignoring SIGTERM"), timeout=limit) as call:
                    async for _ in call:
                        rows += 1
            elapsed = time.monotonic() - started
            exc = raised.value
            assert rows == 7
            assert (exc.operation, exc.generation, exc.limit_s, exc.rows_delivered) == ("rows_then", 1, limit, 7)
            assert limit <= exc.elapsed_s <= elapsed
            info = exc.exit
            assert info is not None
            assert (info.cause, info.signal) == (ExitCause.SUPERVISOR_KILL, "SIGKILL")
            assert "faulty: ignoring SIGTERM" in info.stderr_tail
            # SIGTERM was ignored, so the child lived through the whole grace; then SIGKILL.
            assert limit + kill_grace * 0.9 <= elapsed < limit + kill_grace + 1.5
            assert gone(child)
            assert await worker.call(ECHO, Text("next")) == Text("next")
            assert worker.generation == 2


# -- soak -----------------------------------------------------------------------------------------

SOAK_ENDINGS = 1000
SOAK_WORKERS = 4
"""Workers run side by side. A child start costs ~100 ms of CPU and timeouts and kill graces
leave a core idle; on the 2-core development machine (2026-11-22) the soak took ~80 s with
2 workers and 62-75 s with 4 (``pytest tests/test_process_hygiene.py -k soak -s`` prints it)."""
SOAK_TIMEOUT_S = 0.1
"""Short, but far above the few ms a started child needs to enter its sleep."""


@dataclass
class Seen:
    ended: dict[int, float] = field(default_factory=dict)
    """Pid of every child (also its process group id) -> wall time its end was reported."""
    grandchildren: list[psutil.Process] = field(default_factory=list)


async def _soak_worker(config: WorkerConfig, rounds: range, seen: Seen, outcomes: Counter[str]) -> None:
    """Each round: a request on a fresh generation, then one way to end that child."""
    async with Worker(config) as worker:
        for i, n in enumerate(rounds):
            assert await worker.call(ECHO, Text("up")) == Text("up")
            generation = worker.generation
            assert generation == i + 1
            pid = worker.pid
            assert pid is not None
            kind = n % 10
            error: WorkerError | None = None
            try:
                if kind == 0:
                    await worker.stream_into(ROWS_THEN, RowsThen(3, "sigkill"), lambda row: None)
                elif kind == 1:
                    await worker.call(SEGFAULT, Fault())
                elif kind == 2:
                    await worker.call(ABORT, Fault())
                elif kind == 3:
                    await worker.call(EXIT, Exit(5))
                elif kind == 4:
                    await worker.call(EXIT, Exit(0))
                elif kind == 5:
                    await worker.call(SLEEP, Sleep(30), timeout=SOAK_TIMEOUT_S)
                elif kind == 6:
                    await worker.call(SLEEP, Sleep(30, native=True, ignore_sigterm=True), timeout=SOAK_TIMEOUT_S)
                elif kind == 7:
                    await worker.call(GARBAGE, Fault())
                elif kind == 8:
                    grandchild = await worker.call(SPAWN, Spawn(die_with_child=n % 20 == 8))
                    seen.grandchildren.append(psutil.Process(grandchild))
                    await worker.call(EXIT, Exit(5))
                else:
                    await worker.cycle()
                    seen.ended[pid] = time.time()
                    outcomes["cycle"] += 1
                    assert worker.generation == generation + 1
                    continue
            except (WorkerCrashed, RequestTimeout, CorruptStream) as exc:
                error = exc
            seen.ended[pid] = time.time()
            assert error is not None, f"round {n} kind {kind} did not end its child"
            assert error.generation == generation  # type: ignore[attr-defined]
            assert error.exit is not None and error.exit.pid == pid
            outcomes[error.code] += 1


def _left_in_child_groups(ended: dict[int, float]) -> list[psutil.Process]:
    """Live processes in the process group of a child that has ended.

    A leftover was started before its group's leader (the child) ended. A process created
    later only reuses the number: pid_max is 32768 here and other work on the machine wraps
    the pid counter within minutes.
    """
    found = []
    for proc in psutil.process_iter():
        try:
            pgid = os.getpgid(proc.pid)
            if pgid in ended and proc.create_time() <= ended[pgid] and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.Error, ProcessLookupError):
            continue
    return found


@pytest.mark.soak
async def test_soak_of_crashes_timeouts_and_restarts_leaves_no_zombie_fd_or_process_group(anyio_backend: str) -> None:
    config = faulty_config(
        kill_grace_s=0.1,
        # Every round is an unplanned restart; the crash-loop brake is not under test here.
        restart=RestartPolicy(max_restarts=10 * SOAK_ENDINGS),
    )
    # Warm up once so anything opened lazily on first use is already counted in `before`.
    async with Worker(config) as worker:
        with pytest.raises(WorkerCrashed):
            await worker.call(SEGFAULT, Fault())
    fds_before = sorted(os.listdir("/proc/self/fd"))
    seen = Seen()
    outcomes: Counter[str] = Counter()
    started = time.monotonic()
    with anyio.fail_after(240):
        async with anyio.create_task_group() as tg:
            for w in range(SOAK_WORKERS):
                tg.start_soon(_soak_worker, config, range(w, SOAK_ENDINGS, SOAK_WORKERS), seen, outcomes)
    elapsed = time.monotonic() - started
    print(f"\nsoak: {SOAK_ENDINGS} child endings over {SOAK_WORKERS} workers in {elapsed:.1f} s; {dict(outcomes)}")

    per_kind = SOAK_ENDINGS // 10
    assert outcomes == {
        "worker.exit.sigkill": per_kind,
        "worker.exit.sigsegv": per_kind,
        "worker.exit.sigabrt": per_kind,
        "worker.exit.nonzero": 2 * per_kind,
        "worker.exit.clean_in_flight": per_kind,
        "worker.request_timeout": 2 * per_kind,
        "protocol.corrupt_stream": per_kind,
        "cycle": per_kind,
    }
    assert sum(outcomes.values()) == SOAK_ENDINGS

    me = psutil.Process()
    assert [p.pid for p in me.children(recursive=True) if p.status() == psutil.STATUS_ZOMBIE] == []
    assert me.children(recursive=True) == []
    assert sorted(os.listdir("/proc/self/fd")) == fds_before
    assert len(seen.grandchildren) == per_kind
    assert [p.pid for p in seen.grandchildren if not gone(p)] == []
    # Killed grandchildren are orphans (zombies) until PID 1 reaps them; none may still run.
    deadline = time.monotonic() + 3.0
    while leftovers := _left_in_child_groups(seen.ended):
        assert time.monotonic() < deadline, f"processes left in ended children's process groups: {leftovers}"
        await anyio.sleep(0.05)
