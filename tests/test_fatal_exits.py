"""Fatal exits and protocol failures of a real child, and how the parent classifies them.

Every test here runs a real child (``tests/children/faulty.py`` and its small siblings) that
fails in one specific way, and pins down four things: the typed error and its stable
``code``, the ``ExitInfo`` facts (cause, signal or status, the child's last stderr, the
generation and the request in flight), and that the worker recovers: the next request runs
on a new generation. Failures that must *not* end the child (a handler exception, a row or
request over the frame limit, an unserved command) pin down the opposite: same child, same
generation, nothing replaced.
"""

from __future__ import annotations

import signal
import time

import anyio
import msgspec
import psutil
import pytest

# tests/ is on sys.path (pytest's rootdir conftest), so the test children import as
# ``children.*`` under both ``pytest`` and ``python -m pytest``.
from children.bad_version import BAD_VERSION
from children.early_exit import EXIT_STATUS
from children.faulty import (
    ABORT,
    BIG_ROW,
    ECHO,
    EXIT,
    FAIL,
    GARBAGE,
    NOT_SERVED,
    OVERSIZE_HEADER,
    ROWS_THEN,
    SEGFAULT,
    WRONG_SCHEMA,
    BigRow,
    Exit,
    Fault,
    Row,
    RowsThen,
    Text,
)
from conftest import child_config
from lean_worker import (
    PROTOCOL_VERSION,
    Call,
    CorruptStream,
    ExitCause,
    HandshakeError,
    OversizeFrame,
    RemoteError,
    RequestTooLarge,
    SchemaMismatch,
    SchemaViolation,
    StartupError,
    StartupTimeout,
    Worker,
    WorkerConfig,
    WorkerCrashed,
    WorkerError,
)
from lean_worker_protocol import DEFAULT_MAX_FRAME_BYTES

pytestmark = pytest.mark.anyio

FAULTY = "tests.children.faulty"
SMALL_FRAMES = 64 * 1024
TEST_LIMIT_S = 60.0
"""Upper bound for any one test's worker activity: a hang fails instead of blocking CI."""


def faulty_config(**options: object) -> WorkerConfig:
    return child_config(FAULTY, **options)


async def assert_next_request_runs_on_new_generation(worker: Worker, failed_generation: int) -> None:
    assert await worker.call(ECHO, Text("after")) == Text("after")
    assert worker.generation == failed_generation + 1
    assert worker.pid is not None


def assert_request_exit(
    exc: WorkerError,
    *,
    cause: ExitCause,
    command: str,
    generation: int,
    signal_name: str | None = None,
    returncode: int | None = None,
    stderr: tuple[str, ...] = (),
) -> None:
    """The exit facts of a request whose child ended under it."""
    info = exc.exit
    assert info is not None
    assert info.cause is cause
    assert info.code == cause.value
    assert info.generation == generation == exc.generation  # type: ignore[attr-defined]
    assert info.command == command == exc.operation  # type: ignore[attr-defined]
    assert info.request_id is not None and info.request_id == exc.request_id  # type: ignore[attr-defined]
    assert info.work_entered is True
    if signal_name is not None:
        assert info.signal == signal_name
        assert info.returncode == -signal.Signals[signal_name]
    else:
        assert info.signal is None
        assert info.returncode == returncode
    for text in stderr:
        assert text in info.stderr_tail, f"{text!r} not in stderr tail:\n{info.stderr_tail}"
        assert text in str(exc)
    assert f"cause={cause.value}" in str(exc)


def child_read_chars(pid: int) -> int:
    """Bytes the child has read so far (``rchar`` of /proc/<pid>/io): grows if we send it anything."""
    return psutil.Process(pid).io_counters().read_chars


# -- the child ends by itself mid-request ----------------------------------------------------


async def test_child_sigkilled_mid_stream_is_worker_crashed_after_the_rows_it_sent(anyio_backend: str) -> None:
    rows: list[Row] = []
    with anyio.fail_after(TEST_LIMIT_S):
        async with Worker(faulty_config()) as worker:
            with pytest.raises(WorkerCrashed) as raised:
                async with worker.stream(ROWS_THEN, RowsThen(25, "sigkill", note="sending SIGKILL to myself")) as call:
                    async for row in call:
                        rows.append(row)
            assert rows == [Row(i) for i in range(25)]
            assert call.rows_delivered == 25
            assert worker.stats().rows_delivered == 25
            exc = raised.value
            assert exc.code == "worker.exit.sigkill"
            assert_request_exit(
                exc, cause=ExitCause.SIGKILL, command="rows_then", generation=1, signal_name="SIGKILL",
                stderr=("faulty: sending SIGKILL to myself",),
            )
            assert exc.exit is not None and exc.exit.hint and "outside the supervisor" in exc.exit.hint
            assert worker.stats().restarts == {"crash": 1}
            await assert_next_request_runs_on_new_generation(worker, 1)


async def test_segfault_is_worker_crashed_with_faulthandler_traceback_in_stderr_tail(anyio_backend: str) -> None:
    with anyio.fail_after(TEST_LIMIT_S):
        async with Worker(faulty_config()) as worker:
            with pytest.raises(WorkerCrashed) as raised:
                await worker.call(SEGFAULT, Fault("reading address 0"))
            exc = raised.value
            assert exc.code == "worker.exit.sigsegv"
            assert_request_exit(
                exc, cause=ExitCause.SIGSEGV, command="segfault", generation=1, signal_name="SIGSEGV",
                stderr=("faulty: reading address 0", "Fatal Python error: Segmentation fault"),
            )
            # faulthandler names the handler that crashed, with its file.
            assert 'faulty.py", line' in exc.stderr_tail
            assert "in segfault" in exc.stderr_tail
            await assert_next_request_runs_on_new_generation(worker, 1)


async def test_abort_is_sigabrt_and_ends_promptly(anyio_backend: str) -> None:
    # lean-rs measured 23-107 s of delayed pipe EOF while the kernel piped an aborting
    # child's core to a dump handler; the child disables core dumps, so this is quick.
    with anyio.fail_after(TEST_LIMIT_S):
        async with Worker(faulty_config()) as worker:
            started = time.monotonic()
            with pytest.raises(WorkerCrashed) as raised:
                await worker.call(ABORT, Fault("calling abort()"))
            elapsed = time.monotonic() - started
            exc = raised.value
            assert exc.code == "worker.exit.sigabrt"
            assert_request_exit(
                exc, cause=ExitCause.SIGABRT, command="abort", generation=1, signal_name="SIGABRT",
                stderr=("faulty: calling abort()", "Fatal Python error: Aborted"),
            )
            assert elapsed < 2.0, f"abort took {elapsed:.2f} s to be reported"
            await assert_next_request_runs_on_new_generation(worker, 1)


async def test_clean_exit_mid_request_is_clean_in_flight(anyio_backend: str) -> None:
    with anyio.fail_after(TEST_LIMIT_S):
        async with Worker(faulty_config()) as worker:
            with pytest.raises(WorkerCrashed) as raised:
                await worker.call(EXIT, Exit(0, "os._exit", note="exiting with status 0"))
            exc = raised.value
            assert exc.code == "worker.exit.clean_in_flight"
            assert_request_exit(
                exc, cause=ExitCause.CLEAN_IN_FLIGHT, command="exit", generation=1, returncode=0,
                stderr=("faulty: exiting with status 0",),
            )
            await assert_next_request_runs_on_new_generation(worker, 1)


# Statuses chosen apart from the child runtime's own (2: not supervised, 3: protocol broken,
# 4: parent gone), so a pass cannot come from the runtime exiting on its own.
@pytest.mark.parametrize(("how", "status"), [("sys.exit", 7), ("os._exit", 9)])
async def test_nonzero_exit_mid_request_is_worker_crashed_with_its_status(anyio_backend: str, how: str, status: int) -> None:
    with anyio.fail_after(TEST_LIMIT_S):
        async with Worker(faulty_config()) as worker:
            with pytest.raises(WorkerCrashed) as raised:
                await worker.call(EXIT, Exit(status, how, note=f"{how}({status})"))  # type: ignore[arg-type]
            exc = raised.value
            assert exc.code == "worker.exit.nonzero"
            assert_request_exit(
                exc, cause=ExitCause.NONZERO, command="exit", generation=1, returncode=status,
                stderr=(f"faulty: {how}({status})",),
            )
            assert f"returncode={status}" in str(exc)
            await assert_next_request_runs_on_new_generation(worker, 1)


# -- the child breaks the protocol: killed by the supervisor and replaced ---------------------


def assert_protocol_violation(exc: WorkerError, command: str, note: str) -> None:
    assert_request_exit(
        exc, cause=ExitCause.SUPERVISOR_KILL, command=command, generation=1, signal_name="SIGKILL",
        stderr=(f"faulty: {note}",),
    )
    assert exc.exit is not None and exc.exit.hint == "ended by the supervisor: protocol_violation"


async def test_garbage_on_protocol_channel_is_corrupt_stream(anyio_backend: str) -> None:
    with anyio.fail_after(TEST_LIMIT_S):
        async with Worker(faulty_config()) as worker:
            with pytest.raises(CorruptStream) as raised:
                await worker.call(GARBAGE, Fault("writing garbage"))
            exc = raised.value
            assert exc.code == "protocol.corrupt_stream"
            assert "first_bytes=c1c1c1" in str(exc)
            assert_protocol_violation(exc, "garbage", "writing garbage")
            assert worker.stats().restarts == {"protocol_violation": 1}
            await assert_next_request_runs_on_new_generation(worker, 1)


async def test_well_formed_frame_of_wrong_schema_is_schema_violation_not_corrupt_stream(anyio_backend: str) -> None:
    with anyio.fail_after(TEST_LIMIT_S):
        async with Worker(faulty_config()) as worker:
            with pytest.raises(SchemaViolation) as raised:
                await worker.call(WRONG_SCHEMA, Fault("writing a frame of no known kind"))
            exc = raised.value
            assert not isinstance(exc, CorruptStream)
            assert exc.code == "protocol.frame_schema"
            assert "no_such_frame" in str(exc)
            assert_protocol_violation(exc, "wrong_schema", "writing a frame of no known kind")
            await assert_next_request_runs_on_new_generation(worker, 1)


async def test_oversize_frame_from_child_is_refused_from_its_header(anyio_backend: str) -> None:
    with anyio.fail_after(TEST_LIMIT_S):
        async with Worker(faulty_config()) as worker:
            with pytest.raises(OversizeFrame) as raised:
                await worker.call(OVERSIZE_HEADER, Fault("announcing an oversize frame"))
            exc = raised.value
            assert exc.code == "protocol.frame_too_large"
            # Refused from the header alone: the body was never sent, so nothing was buffered.
            assert f"size_bytes={DEFAULT_MAX_FRAME_BYTES + 1} limit_bytes={DEFAULT_MAX_FRAME_BYTES}" in str(exc)
            assert_protocol_violation(exc, "oversize_header", "announcing an oversize frame")
            await assert_next_request_runs_on_new_generation(worker, 1)


# -- failures that must leave the child alone -------------------------------------------------


async def test_request_larger_than_max_frame_is_refused_before_sending(anyio_backend: str) -> None:
    with anyio.fail_after(TEST_LIMIT_S):
        async with Worker(faulty_config(max_frame_bytes=SMALL_FRAMES)) as worker:
            near_limit = Text("x" * (SMALL_FRAMES - 1024))
            assert await worker.call(ECHO, near_limit) == near_limit
            pid = worker.pid
            assert pid is not None
            read_before = child_read_chars(pid)
            with pytest.raises(RequestTooLarge) as raised:
                await worker.call(ECHO, Text("x" * (SMALL_FRAMES + 1)))
            exc = raised.value
            assert exc.code == "worker.request_too_large"
            assert exc.exit is None
            assert exc.generation == 1
            assert f"limit_bytes={SMALL_FRAMES}" in str(exc)
            await anyio.sleep(0.2)  # had anything been sent, the child would have read it by now
            assert child_read_chars(pid) == read_before
            assert await worker.call(ECHO, Text("still fine")) == Text("still fine")
            assert (worker.pid, worker.generation) == (pid, 1)
            assert worker.stats().restarts == {}


async def test_row_larger_than_max_frame_fails_in_the_handler_and_child_lives(anyio_backend: str) -> None:
    with anyio.fail_after(TEST_LIMIT_S):
        async with Worker(faulty_config(max_frame_bytes=SMALL_FRAMES)) as worker:
            pid = worker.pid
            with pytest.raises(RemoteError) as raised:
                async with worker.stream(BIG_ROW, BigRow(SMALL_FRAMES + 1)) as call:
                    async for _ in call:
                        pass
            exc = raised.value
            assert exc.code == "worker.handler_error"
            # The handler got a typed error from emit(), not a dead pipe.
            assert exc.remote_code == "protocol.frame_too_large"
            assert exc.remote_type == "lean_worker_protocol._codec.FrameTooLarge"
            assert f"limit_bytes={SMALL_FRAMES}" in exc.remote_message
            assert "in big_row" in exc.traceback
            assert exc.exit is None
            assert call.rows_delivered == 0
            assert await worker.call(ECHO, Text("alive")) == Text("alive")
            assert (worker.pid, worker.generation) == (pid, 1)
            assert worker.stats().restarts == {}


async def test_handler_exception_is_remote_error_and_child_lives_on_same_generation(anyio_backend: str) -> None:
    with anyio.fail_after(TEST_LIMIT_S):
        async with Worker(faulty_config()) as worker:
            pid = worker.pid
            with pytest.raises(RemoteError) as raised:
                await worker.call(FAIL, Text("bad input 42"))
            exc = raised.value
            assert type(exc) is RemoteError
            assert exc.code == "worker.handler_error"
            assert (exc.remote_type, exc.remote_code, exc.remote_message) == (
                "builtins.ValueError", "worker.handler_error", "bad input 42",
            )
            assert "Traceback (most recent call last)" in exc.traceback
            assert "in fail" in exc.traceback and "ValueError: bad input 42" in exc.traceback
            assert (exc.operation, exc.generation, exc.exit) == ("fail", 1, None)
            assert await worker.call(ECHO, Text("alive")) == Text("alive")
            assert (worker.pid, worker.generation) == (pid, 1)
            assert worker.stats().restarts == {}


class OtherEcho(msgspec.Struct, frozen=True):
    words: list[str]


@pytest.mark.parametrize(
    ("declaration", "served"),
    [
        (NOT_SERVED, "not served"),
        (Call("echo", request=OtherEcho, response=Text), f"fingerprint={ECHO.fingerprint}"),
    ],
    ids=["unknown_command", "changed_schema"],
)
async def test_command_the_child_does_not_serve_is_schema_mismatch_and_nothing_is_sent(
    anyio_backend: str, declaration: Call, served: str
) -> None:
    with anyio.fail_after(TEST_LIMIT_S):
        async with Worker(faulty_config()) as worker:
            assert await worker.call(ECHO, Text("ready")) == Text("ready")  # the Welcome is read
            pid = worker.pid
            assert pid is not None
            read_before = child_read_chars(pid)
            with pytest.raises(SchemaMismatch) as raised:
                await worker.call(declaration, Text("?") if declaration is NOT_SERVED else OtherEcho(["?"]))
            exc = raised.value
            assert exc.code == "worker.schema_mismatch"
            assert (exc.operation, exc.request_id, exc.generation, exc.exit) == (declaration.name, None, 1, None)
            assert f"expected fingerprint={declaration.fingerprint}" in str(exc)
            assert served in str(exc)
            await anyio.sleep(0.2)  # had anything been sent, the child would have read it by now
            assert child_read_chars(pid) == read_before
            assert await worker.call(ECHO, Text("alive")) == Text("alive")
            assert (worker.pid, worker.generation) == (pid, 1)


# -- the child fails before its handshake -----------------------------------------------------


async def test_wrong_protocol_version_is_handshake_error_naming_both_versions(anyio_backend: str) -> None:
    with anyio.fail_after(TEST_LIMIT_S):
        with pytest.raises(HandshakeError) as raised:
            async with Worker(child_config("tests.children.bad_version")):
                pass
    exc = raised.value
    assert exc.code == "worker.startup.handshake_failed"
    assert f"parent={PROTOCOL_VERSION} child={BAD_VERSION}" in str(exc)
    assert (exc.parent_protocol, exc.child_protocol) == (PROTOCOL_VERSION, BAD_VERSION)
    assert exc.child_worker == "bad-version 0"
    info = exc.exit
    assert info is not None
    assert (info.cause, info.signal, info.generation) == (ExitCause.SUPERVISOR_KILL, "SIGKILL", 1)
    assert (info.request_id, info.command, info.work_entered) == (None, None, False)
    assert f"sent protocol_version={BAD_VERSION}" in info.stderr_tail


async def test_child_that_never_handshakes_is_startup_timeout(anyio_backend: str) -> None:
    limit = 0.5
    started = time.monotonic()
    with anyio.fail_after(TEST_LIMIT_S):
        with pytest.raises(StartupTimeout) as raised:
            async with Worker(child_config("tests.children.silent", startup_timeout_s=limit)):
                pass
    elapsed = time.monotonic() - started
    exc = raised.value
    assert exc.code == "worker.startup.timeout"
    assert exc.limit_s == limit
    assert f"limit_s={limit}" in str(exc)
    assert limit <= elapsed < limit + 3.0
    info = exc.exit
    assert info is not None
    assert (info.cause, info.signal, info.generation, info.work_entered) == (ExitCause.SUPERVISOR_KILL, "SIGKILL", 1, False)
    assert "silent: generation 1 will never handshake" in info.stderr_tail


async def test_child_that_exits_before_handshake_is_startup_error_with_its_stderr(anyio_backend: str) -> None:
    with anyio.fail_after(TEST_LIMIT_S):
        with pytest.raises(StartupError) as raised:
            async with Worker(child_config("tests.children.early_exit")):
                pass
    exc = raised.value
    assert type(exc) is StartupError
    assert exc.code == "worker.startup.failed"
    assert "exited before its handshake" in str(exc)
    info = exc.exit
    assert info is not None
    assert (info.cause, info.returncode, info.signal, info.generation) == (ExitCause.NONZERO, EXIT_STATUS, None, 1)
    assert "early_exit: generation 1 cannot load its configuration" in info.stderr_tail
    assert "cannot load its configuration" in str(exc)


@pytest.mark.parametrize(
    ("module", "error", "stderr"),
    [
        ("tests.children.silent", StartupTimeout, "will never handshake"),
        ("tests.children.early_exit", StartupError, "cannot load its configuration"),
        ("tests.children.bad_version", HandshakeError, f"sent protocol_version={BAD_VERSION}"),
    ],
    ids=["never_handshakes", "exits_before_handshake", "wrong_version"],
)
async def test_failed_restart_raises_to_its_caller_and_the_next_request_starts_a_fresh_child(
    anyio_backend: str, module: str, error: type[StartupError], stderr: str
) -> None:
    # The child misbehaves on generation 2 only: the worker starts fine, an explicit cycle
    # hits the bad start, and the request after it gets generation 3.
    config = child_config(module, "2", startup_timeout_s=2.0)
    with anyio.fail_after(TEST_LIMIT_S):
        async with Worker(config) as worker:
            assert await worker.call(ECHO, Text("first")) == Text("first")
            with pytest.raises(error) as raised:
                await worker.cycle()
            exc = raised.value
            assert type(exc) is error
            assert exc.exit is not None and exc.exit.generation == 2
            assert f"generation 2 {stderr}" in exc.exit.stderr_tail
            assert worker.pid is None
            # However it failed, a child that never completed its handshake is a failed start.
            assert worker.stats().restarts == {"explicit": 1, "startup_failure": 1}
            await assert_next_request_runs_on_new_generation(worker, 2)
