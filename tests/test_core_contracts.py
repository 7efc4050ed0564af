"""Core contracts the rest of lean-worker builds on, each checked against a real child
(``tests/children/probe.py``):

- the layering: a child imports the protocol and child runtime, never the parent; the
  protocol loads no other package, not even the exit classification (``lean_worker_exit``);
- the child's start-up: an explicit environment (no parent secrets, no bootstrap variable
  left for helpers), resource limits applied before the handshake, core dumps off;
- the protocol's request ids and generations: a frame for anyone else ends the child;
- the child's own ``UnknownCommand`` answer, past the parent's fingerprint check;
- row batching: ``emit_many`` from a generator, an oversize row after rows that went out;
- the request timeout also bounds a consumer slower than the child;
- the busy-poll of ``Worker.call`` (white-box: ``Worker._spin`` and ``Channel.spin``);
- ``WorkerStats`` timings and counters as documented in architecture/30-restart-policy.md;
- ``SyncWorker.output_tail`` on a live child.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any

import anyio
import pytest

# tests/ is on sys.path (pytest's rootdir conftest), so the test children import as
# ``children.*`` under both ``pytest`` and ``python -m pytest``.
from children.probe import (
    ECHO,
    EMIT_MANY,
    ENVIRON,
    GHOST,
    LOAD,
    MODULES,
    NAP,
    OVERSIZE_LATER,
    RLIMITS,
    SAY,
    STALE,
    TRICKLE,
    Emitted,
    Empty,
    Many,
    Nap,
    OversizeLater,
    Say,
    StaleFrame,
    Text,
    Trickle,
)
from conftest import ROOT, child_config
from lean_worker import (
    ChildCommand,
    ChildEnv,
    ExitCause,
    ProtocolViolation,
    RemoteError,
    RequestTimeout,
    Rlimits,
    StartupError,
    SyncWorker,
    UnexpectedFrame,
    UnknownCommand,
    Worker,
    WorkerConfig,
)
from lean_worker_child._boot import EXIT_NOT_SUPERVISED
from lean_worker_protocol import BOOTSTRAP_ENV

PROBE = "tests.children.probe"
TEST_LIMIT_S = 60.0
"""Upper bound for any one test's worker activity: a hang fails instead of blocking CI."""
SMALL_FRAMES = 64 * 1024
BOTH_BACKENDS = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])


def probe(**options: Any) -> WorkerConfig:
    return child_config(PROBE, **options)


async def call_once(config: WorkerConfig, command: Any, request: Any) -> Any:
    """Start a worker, make one call, stop it."""
    with anyio.fail_after(TEST_LIMIT_S):
        async with Worker(config) as worker:
            return await worker.call(command, request)


# -- layering ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_child_imports_the_protocol_and_child_runtime_but_never_the_parent_package() -> None:
    loaded = await call_once(probe(), MODULES, Empty())
    assert {"lean_worker_child", "lean_worker_protocol"} <= set(loaded)
    assert [m for m in loaded if m == "lean_worker" or m.startswith("lean_worker.")] == []
    # Nor the parent's own dependencies: a child starts without the supervisor's event loop.
    assert [m for m in loaded if m in ("anyio", "psutil", "trio")] == []


def packages_loaded_by(statement: str) -> list[str]:
    """The lean-worker packages (top-level names) a fresh interpreter holds after ``statement``."""
    script = (
        f"import sys; {statement}\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules if m.startswith('lean_worker')})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    return result.stdout.split()


def test_importing_the_protocol_package_loads_neither_the_parent_nor_the_child_runtime_nor_exit_classification() -> None:
    # Pure types and codec: nothing that reads signals or cgroups (lean_worker_exit) either.
    assert packages_loaded_by("import lean_worker_protocol, lean_worker_protocol.lean, lean_worker_protocol.probe") == [
        "lean_worker_protocol"
    ]


def test_exit_classification_imports_none_of_the_other_packages() -> None:
    assert packages_loaded_by("import lean_worker_exit") == ["lean_worker_exit"]


def test_the_lean_capability_of_the_child_may_use_exit_classification_but_never_the_parent() -> None:
    loaded = packages_loaded_by("import lean_worker_child.lean.worker")
    assert "lean_worker" not in loaded
    assert {"lean_worker_child", "lean_worker_exit", "lean_worker_protocol"} <= set(loaded)


# -- the child's environment -------------------------------------------------------------------


def names_outside(env: dict[str, str], spec: ChildEnv) -> list[str]:
    """Variables of ``env`` that ``spec`` neither inherits nor sets."""
    return sorted(k for k in env if k not in spec.set and not any(fnmatchcase(k, p) for p in spec.inherit))


@pytest.mark.anyio
async def test_the_child_environment_holds_only_what_child_env_names_and_no_bootstrap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "s3cret-of-the-parent")
    monkeypatch.setenv("PROBE_INHERITED", "from-the-parent")
    monkeypatch.setenv("PROBE_GLOB_A", "glob-a")
    monkeypatch.setenv("PROBE_OVERRIDDEN", "parent-value")

    default = probe()
    env = await call_once(default, ENVIRON, Empty())
    assert "SECRET_TOKEN" not in env
    assert not [k for k in env if k.startswith("PROBE_")]
    assert names_outside(env, default.env) == []
    assert env["PATH"] == os.environ["PATH"]
    # serve() removes the bootstrap before the handshake: helpers the child starts never see it.
    assert BOOTSTRAP_ENV not in env

    spec = ChildEnv(
        inherit=(*default.env.inherit, "PROBE_INHERITED", "PROBE_GLOB_*", "PROBE_OVERRIDDEN", "PROBE_UNSET"),
        set={**default.env.set, "PROBE_SET": "from-the-config", "PROBE_OVERRIDDEN": "config-value"},
    )
    env = await call_once(dataclasses.replace(default, env=spec), ENVIRON, Empty())
    assert {k: v for k, v in env.items() if k.startswith("PROBE_")} == {
        "PROBE_INHERITED": "from-the-parent",
        "PROBE_GLOB_A": "glob-a",
        "PROBE_SET": "from-the-config",
        "PROBE_OVERRIDDEN": "config-value",  # set= wins over inherit=
    }
    assert "SECRET_TOKEN" not in env
    assert names_outside(env, spec) == []
    assert BOOTSTRAP_ENV not in env


# -- resource limits ---------------------------------------------------------------------------


def _fits(value: int, which: int) -> int:
    """``value``, lowered to the parent's hard limit (the child may only lower its soft one)."""
    hard = resource.getrlimit(which)[1]
    return value if hard == resource.RLIM_INFINITY else min(value, hard)


@pytest.mark.anyio
async def test_configured_rlimits_are_applied_in_the_child_and_core_dumps_are_off() -> None:
    parent = {
        "core": resource.getrlimit(resource.RLIMIT_CORE),
        "as": resource.getrlimit(resource.RLIMIT_AS),
        "cpu": resource.getrlimit(resource.RLIMIT_CPU),
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
    }
    # RLIMIT_CORE=1 (not 0) is what suppresses dumps to a core_pattern pipe too (see _boot).
    no_core = (0 if parent["core"][1] == 0 else 1, parent["core"][1])

    limits = await call_once(probe(), RLIMITS, Empty())
    assert limits == {**parent, "core": no_core}  # nothing else changes unless configured

    rlimits = Rlimits(
        open_files=_fits(200, resource.RLIMIT_NOFILE),
        cpu_seconds=_fits(3_600, resource.RLIMIT_CPU),
        address_space_bytes=_fits(16 * 2**30, resource.RLIMIT_AS),
    )
    limits = await call_once(probe(rlimits=rlimits), RLIMITS, Empty())
    assert limits == {
        "core": no_core,
        "as": (rlimits.address_space_bytes, parent["as"][1]),
        "cpu": (rlimits.cpu_seconds, parent["cpu"][1]),
        "nofile": (rlimits.open_files, parent["nofile"][1]),
    }


@pytest.mark.anyio
async def test_a_child_whose_hard_core_limit_is_zero_gets_soft_limit_zero() -> None:
    # The shell lowers both core limits to 0, then execs the child in its place (same pid,
    # same inherited protocol fds), as a container or a hardened host would.
    shell = 'ulimit -S -c 0 && ulimit -H -c 0 && exec "$0" -m ' + PROBE
    config = dataclasses.replace(probe(), child=ChildCommand(("/bin/sh", "-c", shell, sys.executable)))
    limits = await call_once(config, RLIMITS, Empty())
    assert limits["core"] == (0, 0)


@pytest.mark.anyio
async def test_an_rlimit_the_child_cannot_apply_fails_start_up_with_the_childs_message() -> None:
    impossible = 2**31  # above any RLIMIT_NOFILE hard limit: the kernel caps it at fs.nr_open
    with anyio.fail_after(TEST_LIMIT_S), pytest.raises(StartupError) as raised:
        async with Worker(probe(rlimits=Rlimits(open_files=impossible))):
            pass
    exc = raised.value
    assert type(exc) is StartupError
    assert exc.code == "worker.startup.failed"
    assert "exited before its handshake" in str(exc)
    info = exc.exit
    assert info is not None
    assert (info.cause, info.returncode, info.generation, info.work_entered) == (
        ExitCause.NONZERO, EXIT_NOT_SUPERVISED, 1, False,
    )
    assert "lean-worker child: cannot apply rlimits" in info.stderr_tail
    assert f"open_files={impossible}" in info.stderr_tail
    assert "cannot apply rlimits" in str(exc)


# -- request ids and generations ---------------------------------------------------------------


@pytest.mark.anyio
@BOTH_BACKENDS
@pytest.mark.parametrize("kind", ["response", "diagnostic"])
@pytest.mark.parametrize("wrong", ["request_id", "generation"])
async def test_a_frame_for_a_stale_request_or_another_generation_is_unexpected_frame_and_the_child_is_replaced(
    anyio_backend: str, wrong: str, kind: str
) -> None:
    with anyio.fail_after(TEST_LIMIT_S):
        async with Worker(probe()) as worker:
            earlier = Text("earlier request")  # so a stale id names a request that really was
            assert await worker.call(ECHO, earlier) == earlier
            with pytest.raises(UnexpectedFrame) as raised:
                await worker.call(STALE, StaleFrame(wrong, kind))  # type: ignore[arg-type]
            exc = raised.value
            assert isinstance(exc, ProtocolViolation)
            assert exc.code == "protocol.unexpected_frame"
            assert (exc.operation, exc.generation) == ("stale_frame", 1)
            rid = exc.request_id
            assert rid is not None
            stale_id, stale_generation = (rid - 1, 1) if wrong == "request_id" else (rid, 0)
            frame = "Response" if kind == "response" else "Diagnostic"
            assert (
                f"{frame} for request_id={stale_id} generation={stale_generation} "
                f"while request_id={rid} generation=1 is in flight"
            ) in str(exc)
            info = exc.exit
            assert info is not None
            assert (info.cause, info.signal, info.command, info.work_entered) == (
                ExitCause.SUPERVISOR_KILL, "SIGKILL", "stale_frame", True,
            )
            assert info.hint == "ended by the supervisor: protocol_violation"
            assert f"probe: writing a {kind} for request_id={stale_id}" in info.stderr_tail
            assert worker.stats().restarts == {"protocol_violation": 1}

            after = Text("after")
            assert await worker.call(ECHO, after) == after
            assert worker.generation == 2


# -- the child's own UnknownCommand ------------------------------------------------------------


@pytest.mark.anyio
async def test_a_command_the_child_announced_but_has_no_handler_for_is_unknown_command_and_the_child_lives() -> None:
    # The parent sends only what the child announced with a matching fingerprint, so a plain
    # unserved declaration is SchemaMismatch and never reaches the child (test_fatal_exits).
    # The probe announces GHOST without a handler: the request passes the parent's check and
    # the child itself answers worker.unknown_command.
    with anyio.fail_after(TEST_LIMIT_S):
        async with Worker(probe()) as worker:
            assert worker.hello is not None and GHOST.name in {c.name for c in worker.hello.commands}
            pid = worker.pid
            with pytest.raises(UnknownCommand) as raised:
                await worker.call(GHOST, Empty())
            exc = raised.value
            assert isinstance(exc, RemoteError)
            assert exc.code == "worker.unknown_command"
            assert (exc.remote_type, exc.remote_code) == ("UnknownCommand", "worker.unknown_command")
            assert exc.remote_message.startswith("worker 'probe' has no command 'ghost'; serves: [")
            served = exc.remote_message.split("serves: ", 1)[1]
            assert "'echo'" in served and "'ghost'" not in served
            assert (exc.operation, exc.generation, exc.exit) == ("ghost", 1, None)

            assert await worker.call(ECHO, Text("alive")) == Text("alive")
            assert (worker.pid, worker.generation) == (pid, 1)
            assert worker.stats().restarts == {}


# -- row batching ------------------------------------------------------------------------------


@pytest.mark.anyio
@BOTH_BACKENDS
async def test_emit_many_from_a_generator_delivers_100_000_rows_in_order_in_few_batches(anyio_backend: str) -> None:
    n = 100_000
    config = probe()
    sizes: list[int] = []
    with anyio.fail_after(TEST_LIMIT_S):
        async with Worker(config) as worker:
            async with worker.stream(EMIT_MANY, Many(n)) as call:
                async for batch in call.batches():
                    seq = sum(sizes)
                    assert (batch.stream, batch.seq) == ("rows", seq)
                    if [row.i for row in batch.rows] != list(range(seq, seq + len(batch.rows))):
                        raise AssertionError(f"batch at seq={seq} does not hold rows {seq}..{seq + len(batch.rows) - 1}")
                    sizes.append(len(batch.rows))
            summary = call.summary
            assert sum(sizes) == n
            assert summary.summary == Emitted(n)
            assert (summary.rows, summary.total_rows, call.rows_delivered) == ({"rows": n}, n, n)
            assert worker.stats().rows_delivered == n
    # One Rows frame per batch, not per row. The first batch is a single row (nothing is
    # known about row sizes yet); later ones are capped by row_batch_rows.
    assert sizes[0] == 1
    assert max(sizes) <= config.row_batch_rows
    assert len(sizes) <= 2 * n // config.row_batch_rows, f"{len(sizes)} Rows frames for {n} rows"


@pytest.mark.anyio
@BOTH_BACKENDS
# The first batch is one row, so the oversize row is in a later one. 100 rows before it (and
# 50 after): its batch is still pending when the handler returns, and is split around it.
# 1,024 before: it completes a batch, so it fails in the handler's own emit().
@pytest.mark.parametrize(("before", "after"), [(100, 50), (1_024, 0)], ids=["flushed_at_return", "flushed_by_emit"])
async def test_an_oversize_row_in_a_later_batch_fails_the_request_after_the_rows_around_it_and_the_child_lives(
    anyio_backend: str, before: int, after: int
) -> None:
    got: list[int] = []
    with anyio.fail_after(TEST_LIMIT_S):
        async with Worker(probe(max_frame_bytes=SMALL_FRAMES)) as worker:
            pid = worker.pid
            with pytest.raises(RemoteError) as raised:
                async with worker.stream(OVERSIZE_LATER, OversizeLater(before, SMALL_FRAMES + 1, after)) as call:
                    async for row in call:
                        got.append(row.i)
            exc = raised.value
            assert type(exc) is RemoteError
            assert exc.code == "worker.handler_error"
            assert exc.remote_code == "protocol.frame_too_large"
            assert exc.remote_type == "lean_worker_protocol._codec.FrameTooLarge"
            assert f"limit_bytes={SMALL_FRAMES}" in exc.remote_message
            assert (exc.generation, exc.exit) == (1, None)
            # Every other row went out, in order; the oversize one alone is missing.
            assert got == [*range(before), *range(before + 1, before + 1 + after)]
            assert call.rows_delivered == before + after

            async with worker.stream(EMIT_MANY, Many(10)) as call:
                assert [row.i async for row in call] == list(range(10))
            assert call.summary.summary == Emitted(10)
            assert (worker.pid, worker.generation) == (pid, 1)
            assert worker.stats().restarts == {}


# -- a slow consumer and the request timeout ---------------------------------------------------


@pytest.mark.anyio
@BOTH_BACKENDS
async def test_a_consumer_slower_than_the_child_hits_the_request_timeout_on_time_and_the_next_request_works(
    anyio_backend: str,
) -> None:
    limit = 1.0
    got: list[int] = []
    with anyio.fail_after(TEST_LIMIT_S):
        async with Worker(probe()) as worker:
            started = time.monotonic()
            with pytest.raises(RequestTimeout) as raised:
                # The child emits a row every ~0.2 ms and would go on forever; the consumer
                # takes 1 ms a row, so the child is always ahead and never the slow side.
                async with worker.stream(TRICKLE, Trickle(sleep_s=0.0002), timeout=limit) as call:
                    async for row in call:
                        got.append(row.i)
                        await anyio.sleep(0.001)
            elapsed = time.monotonic() - started
            exc = raised.value
            assert exc.code == "worker.request_timeout"
            assert limit <= elapsed < limit + 2.0, f"timed out after {elapsed:.2f} s; limit {limit} s"
            assert exc.limit_s == limit and exc.elapsed_s >= limit
            assert exc.rows_delivered > 0 and exc.rows_delivered == call.rows_delivered
            assert got and got == list(range(len(got))) and len(got) <= exc.rows_delivered
            assert exc.generation == 1
            assert worker.stats().restarts == {"request_timeout": 1}

            assert await worker.call(ECHO, Text("next")) == Text("next")
            assert worker.generation == 2


# -- busy-poll in Worker.call (white-box) ------------------------------------------------------

SPIN_BUDGET_US = 5_000
"""Generous, so a no-op round trip fits on a loaded machine; ``NAP`` of SLOW_MS never does."""
SLOW_MS = 8.0


class SpinRecorder:
    """Wraps the current generation's ``Channel.spin`` and records what every spin returned."""

    def __init__(self, worker: Worker) -> None:
        gen = worker._gen
        assert gen is not None
        self._spin: Callable[[float], bool | None] = gen.channel.spin
        self.results: list[bool | None] = []
        gen.channel.spin = self  # type: ignore[method-assign]

    def __call__(self, budget_s: float) -> bool | None:
        result = self._spin(budget_s)
        self.results.append(result)
        return result

    def take(self) -> list[bool | None]:
        results, self.results = self.results, []
        return results


@pytest.mark.anyio
async def test_calls_with_fast_round_trips_spin_and_a_call_slower_than_the_budget_never_does() -> None:
    with anyio.fail_after(TEST_LIMIT_S):
        async with Worker(probe(spin_wait_us=SPIN_BUDGET_US)) as worker:
            spins = SpinRecorder(worker)
            # The first call has no round trip to go by, and a young child's first replies
            # can take milliseconds (measured: up to 9 ms on 2 cores), which backs off; so
            # the first calls only warm up.
            for i in range(60):
                assert await worker.call(ECHO, Text(f"fast {i}")) == Text(f"fast {i}")
                if i == 29:
                    spins.take()
            assert worker._spin[ECHO.name].rtt_s < SPIN_BUDGET_US / 1e6
            fast = spins.take()
            # Settled, the calls spin and catch their replies (False: a hiccup longer than
            # the budget, then a few calls back off; None: the loop had other work).
            assert fast.count(True) >= 20, fast

            for tag in range(5):
                assert await worker.call(NAP, Nap(SLOW_MS, tag)) == tag
            assert spins.take() == []
            assert worker._spin[NAP.name].rtt_s >= SLOW_MS / 1000
            assert worker.generation == 1


@pytest.mark.anyio
async def test_a_spin_that_times_out_backs_off_exponentially_and_a_caught_reply_resets_it() -> None:
    with anyio.fail_after(TEST_LIMIT_S):
        async with Worker(probe(spin_wait_us=SPIN_BUDGET_US)) as worker:
            spins = SpinRecorder(worker)
            tag = 0

            async def nap(ms: float) -> None:
                nonlocal tag
                tag += 1
                assert await worker.call(NAP, Nap(ms, tag)) == tag

            # Fast until the last spin caught its reply: no back-off pending.
            for _ in range(200):
                await nap(0)
                state = worker._spin[NAP.name]
                if spins.results and spins.results[-1] is True and (state.failures, state.skip) == (0, 0):
                    break
            else:
                raise AssertionError(f"fast naps never settled into spinning: {spins.results}")
            spins.take()

            # A slow nap still spins (its average is low) and the spin times out; the average
            # stays under the budget, so only the back-off keeps the next 2, 4, 8 calls from
            # spinning.
            for failures in (1, 2, 3):
                await nap(SLOW_MS)
                assert spins.take() == [False]
                state = worker._spin[NAP.name]
                assert (state.failures, state.skip) == (failures, 2**failures)
                assert state.rtt_s < SPIN_BUDGET_US / 1e6
                for _ in range(2**failures):
                    await nap(0)
                assert spins.take() == []
                assert state.skip == 0

            # The skips are used up: the next fast call spins again. Catching its reply ends the
            # back-off (a scheduling hiccup longer than the budget would instead back off further).
            await nap(0)
            (result,) = spins.take()
            assert (state.failures, state.skip) == ((0, 0) if result is True else (4, 16)), result
            assert worker.generation == 1


@pytest.mark.anyio
async def test_spin_wait_zero_never_spins_and_replies_are_the_same() -> None:
    with anyio.fail_after(TEST_LIMIT_S):
        async with Worker(probe(spin_wait_us=0)) as worker:
            spins = SpinRecorder(worker)
            for i in range(30):
                assert await worker.call(ECHO, Text(f"fast {i}")) == Text(f"fast {i}")
                assert await worker.call(NAP, Nap(0, i)) == i
            assert spins.take() == []
            assert worker._spin[ECHO.name].rtt_s > 0


# -- stats -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_spawn_handshake_and_first_request_timings_are_taken_for_every_generation() -> None:
    config = probe()
    with anyio.fail_after(TEST_LIMIT_S):
        async with Worker(config) as worker:
            started = worker.stats()
            assert started.spawn_handshake_s is not None
            assert 0 < started.spawn_handshake_s < config.startup_timeout_s
            assert started.first_request_s is None

            await worker.call(ECHO, Text("first"))
            first = worker.stats().first_request_s
            assert first is not None and first > 0
            await worker.call(NAP, Nap(50, 1))
            assert worker.stats().first_request_s == first  # the first request only

            await worker.cycle()
            cycled = worker.stats()
            assert cycled.generation == 2
            assert cycled.spawn_handshake_s is not None and cycled.spawn_handshake_s > 0
            assert cycled.spawn_handshake_s != started.spawn_handshake_s  # measured again
            assert cycled.first_request_s is None

            await worker.call(NAP, Nap(50, 2))
            again = worker.stats().first_request_s
            assert again is not None and again >= 0.05


@pytest.mark.anyio
async def test_request_import_row_and_backpressure_counters_count_as_documented() -> None:
    with anyio.fail_after(TEST_LIMIT_S):
        async with Worker(probe()) as worker:
            await worker.call(ECHO, Text("a"))
            assert await worker.call(LOAD, Empty()) == 1
            with pytest.raises(UnknownCommand):  # a handler error still ends with a response
                await worker.call(GHOST, Empty())
            async with worker.stream(EMIT_MANY, Many(10)) as call:
                assert len([row async for row in call]) == 10
            stats = worker.stats()
            assert (stats.requests, stats.imports, stats.rows_delivered) == (4, 1, 10)
            assert (stats.requests_this_generation, stats.imports_this_generation) == (4, 1)
            assert stats.backpressure_waits == 0

            # A consumer that stops reading: the parent reads ahead ~1 MiB, then the child's
            # pipe writes block, and the child reports its stalls in the response.
            async with worker.stream(EMIT_MANY, Many(4_000, pad=1_024)) as call:
                async for batch in call.batches():
                    if batch.seq == 0:
                        await anyio.sleep(0.3)
            stats = worker.stats()
            assert (stats.requests, stats.rows_delivered) == (5, 4_010)
            assert stats.backpressure_waits > 0

            # A request its caller left early, which the child answered in time after the
            # cancel: it ended with a terminal response, so it counts (the child stays).
            async with worker.stream(TRICKLE, Trickle(sleep_s=0.001)) as call:
                async for row in call:
                    if row.i == 3:
                        break
            stats = worker.stats()
            assert (stats.requests, stats.requests_this_generation) == (6, 6)
            assert stats.rows_delivered >= 4_014
            assert stats.restarts == {}

            # Totals survive a cycle; the per-generation counts start again.
            await worker.cycle()
            assert await worker.call(LOAD, Empty()) == 1  # a fresh process
            stats = worker.stats()
            assert (stats.requests, stats.imports) == (7, 2)
            assert (stats.requests_this_generation, stats.imports_this_generation) == (1, 1)


# -- output tails ------------------------------------------------------------------------------


def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_sync_worker_output_tail_returns_the_live_childs_recent_stdout_and_stderr() -> None:
    marker = "TAIL-5e1d"
    with SyncWorker(probe()) as worker:
        pid = worker.call(SAY, Say(marker, lines=100))
        assert pid == worker.pid
        _until(lambda: f"{marker} stdout 99" in worker.output_tail("stdout"))
        _until(lambda: f"{marker} stderr 99" in worker.output_tail("stderr"))
        assert worker.output_tail("stdout", max_lines=3).splitlines() == [f"{marker} stdout {n}" for n in (97, 98, 99)]
        assert worker.output_tail("stderr", max_lines=3).splitlines() == [f"{marker} stderr {n}" for n in (97, 98, 99)]
        assert len(worker.output_tail("stdout").splitlines()) == 40  # the default max_lines
        assert worker.output_tail() == worker.output_tail("stderr")
        with pytest.raises(ValueError, match="stream must be 'stdout' or 'stderr'; got 'stdin'"):
            worker.output_tail("stdin")

        # With no child (it died; the next request would start one) there is no tail, and a
        # bad stream name is still an error.
        os.kill(pid, signal.SIGKILL)
        _until(lambda: worker.stats().last_exit is not None)
        assert worker.output_tail("stdout") == ""
        with pytest.raises(ValueError, match="stream must be 'stdout' or 'stderr'"):
            worker.output_tail("stdin")
