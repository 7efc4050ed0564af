"""``Worker``: one supervised child process serving typed commands (async, on anyio).

States of a worker: no child -> starting (spawn + handshake under ``startup_timeout_s``)
-> ready <-> busy (one request in flight) -> the child ends (planned cycle, policy, crash,
timeout, protocol violation) -> no child -> ... -> closed. Requests are served one at a
time, in arrival order; a request that finds no child (or one the restart policy retires)
starts a fresh generation first. See ``architecture/20-supervisor.md``.
"""

from __future__ import annotations

import math
import signal
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

import anyio
import msgspec

from lean_worker_protocol import (
    PROTOCOL_VERSION,
    Call,
    Cancel,
    CommandInfo,
    CorruptFrame,
    Diagnostic,
    FrameEncoder,
    FrameSchemaError,
    FrameTooLarge,
    Hello,
    Progress,
    ProtocolError,
    Request,
    Response,
    Rows,
    Shutdown,
    Stream,
    Welcome,
)

from ._channel import Channel, ChannelEOF, ChannelInterrupted, ChannelTimeout, open_channel
from ._config import RestartPolicy, RestartReason, WorkerConfig
from ._errors import (
    ChannelClosed,
    CorruptStream,
    HandshakeError,
    MemoryLimitExceeded,
    OversizeFrame,
    ProtocolViolation,
    REMOTE_ERRORS,
    RemoteError,
    RequestCancelled,
    RequestError,
    RequestTimeout,
    RequestTooLarge,
    ResponseDecodeError,
    RestartLimitExceeded,
    SchemaMismatch,
    SchemaViolation,
    StartupError,
    StartupTimeout,
    UnexpectedFrame,
    WorkerClosed,
    WorkerCrashed,
)
from ._exit import ExitInfo, classify, signal_name
from ._process import ChildProcess
from ._rss import TreeMemory

ReqT = TypeVar("ReqT")
RespT = TypeVar("RespT")
RowT = TypeVar("RowT")
SummaryT = TypeVar("SummaryT")

DiagnosticCallback = Callable[[Diagnostic], object]
ProgressCallback = Callable[[Progress], object]


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Any = _Default()
"""Use the configured value (``WorkerConfig.request_timeout_s`` for ``timeout``)."""

_KEPT_DIAGNOSTICS = 10_000


class _SpinState:
    """Per call command: moving-average round trip, and back-off after failed spins."""

    __slots__ = ("rtt_s", "skip", "failures")

    def __init__(self, rtt_s: float) -> None:
        self.rtt_s = rtt_s
        self.skip = 0
        self.failures = 0


class _FifoLock:
    """A FIFO lock whose uncontended acquire does not yield to the event loop.

    ``anyio.Lock`` (even with fast_acquire) costs several times more per uncontended
    acquire and release on asyncio (``bench/micro.py``: ``anyio_lock_ns`` against
    ``fifo_lock_ns``). Ownership is handed directly to the next waiter on release, so the
    lock is fair, and a waiter cancelled after the hand-off passes it on.
    """

    __slots__ = ("_locked", "_waiters")

    def __init__(self) -> None:
        self._locked = False
        self._waiters: deque[list[Any]] = deque()

    def locked(self) -> bool:
        return self._locked

    async def acquire(self) -> None:
        if not self._locked:
            self._locked = True
            return
        waiter: list[Any] = [anyio.Event(), False]
        self._waiters.append(waiter)
        try:
            await waiter[0].wait()
        except BaseException:
            if waiter[1]:
                self.release()
            else:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        if self._waiters:
            waiter = self._waiters.popleft()
            waiter[1] = True
            waiter[0].set()
        else:
            self._locked = False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: Any) -> None:
        self.release()


@dataclass
class WorkerStats:
    """Counters of one worker across all its generations (a snapshot; see ``Worker.stats``)."""

    generation: int = 0
    requests: int = 0
    imports: int = 0
    requests_this_generation: int = 0
    imports_this_generation: int = 0
    restarts: dict[str, int] = field(default_factory=dict)
    """Child replacements by ``RestartReason`` code."""
    last_exit: ExitInfo | None = None
    last_rss_bytes: int | None = None
    rows_delivered: int = 0
    backpressure_waits: int = 0
    """Times the child had to wait for the parent to read (its pipe write would block)."""
    spawn_handshake_s: float | None = None
    """Spawn-to-ready time of the current generation."""
    first_request_s: float | None = None
    """Round trip of the first request the current generation served."""
    rss_over_ceiling_when_fresh: int = 0
    """RSS-ceiling breaches not acted on because the child had not served yet or was already
    above the ceiling right after its handshake: cycling could not help, so no loop."""


@dataclass(frozen=True, slots=True)
class RowBatch(Generic[RowT]):
    """Rows of one stream as they arrived; ``seq`` is the index of the first row."""

    stream: str
    seq: int
    rows: list[RowT]


@dataclass(frozen=True, slots=True)
class StreamSummary(Generic[SummaryT]):
    """Terminal success of a streaming request. Rows delivered before it were tentative."""

    summary: SummaryT
    rows: dict[str, int]
    total_rows: int
    elapsed_s: float
    child_elapsed_s: float
    generation: int
    request_id: int


@dataclass(frozen=True, slots=True)
class ShutdownReport:
    """How a child was stopped: which step ended it."""

    step: str
    """``already_exited``, ``shutdown_frame``, ``sigterm`` or ``sigkill``."""
    elapsed_s: float
    exit: ExitInfo | None


class _Generation:
    """A child plus everything the supervisor tracks about it."""

    __slots__ = ("child", "channel", "hello", "served", "requests", "imports", "last_activity", "memory",
                 "exit_info", "disposed", "first_request_done", "born_over_ceiling", "warm_keys")

    def __init__(self, child: ChildProcess, channel: Channel) -> None:
        self.child = child
        self.channel = channel
        self.hello: Hello | None = None
        self.served: dict[str, CommandInfo] = {}
        self.requests = 0
        self.imports = 0
        self.last_activity = time.monotonic()
        self.memory = TreeMemory(child.pid)
        self.exit_info: ExitInfo | None = None
        self.disposed = False
        self.first_request_done = False
        self.born_over_ceiling = False
        """Above the RSS ceiling (PSS-confirmed) right after its handshake: never cycled for it."""
        self.warm_keys: set[Hashable] = set()
        """Session keys this child has served: a request needing only these is no import."""


class _Op:
    """One request in flight."""

    __slots__ = ("command", "id", "gen", "deadline", "limit_s", "started", "entered", "rows", "counts",
                 "on_diagnostic", "on_progress", "diagnostics", "diagnostics_overflow", "done", "keys")

    def __init__(self, command: Any, rid: int, gen: _Generation, limit_s: float | None,
                 on_diagnostic: DiagnosticCallback | None, on_progress: ProgressCallback | None,
                 keys: frozenset[Hashable] | None = None) -> None:
        self.command = command
        self.keys = keys
        self.id = rid
        self.gen = gen
        self.started = gen.channel.now()
        self.limit_s = limit_s
        self.deadline = math.inf if limit_s is None else self.started + limit_s
        self.entered = False
        self.rows = 0
        self.counts: dict[str, int] = {}
        self.on_diagnostic = on_diagnostic
        self.on_progress = on_progress
        self.diagnostics: list[Diagnostic] = []
        self.diagnostics_overflow = 0
        self.done = False


_PROTOCOL_ERRORS: dict[type[ProtocolError], type[ProtocolViolation]] = {
    FrameTooLarge: OversizeFrame,
    CorruptFrame: CorruptStream,
    FrameSchemaError: SchemaViolation,
}


class Worker:
    """A supervised worker child. Use as ``async with Worker(config) as worker:``.

    ``call`` runs a request/response command; ``stream`` runs a streaming command. Every
    failure is a typed ``WorkerError``; a failure that ended the child replaces it on the
    next request, within the restart limit.
    """

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.policy: RestartPolicy = config.restart
        self._encoder = FrameEncoder(config.max_frame_bytes)
        self._lock = _FifoLock()
        self._gen: _Generation | None = None
        self._generation = 0
        self._next_id = 0
        self._op: _Op | None = None
        self._stats = WorkerStats()
        self._restarts: Counter[str] = Counter()
        self._unplanned: deque[float] = deque()
        self._tg: anyio.abc.TaskGroup | None = None
        self._closed = False
        self._entered = False
        self._start_on_enter = True
        """The pool enters many workers in one task and starts their children concurrently."""
        self._rss_at_kill = 0
        self._spin_s = config.spin_wait_us / 1e6
        self._spin: dict[str, _SpinState] = {}
        p = config.restart
        self._policy_active = any(
            v is not None for v in (p.max_requests, p.max_imports, p.idle_restart_s, p.rss_ceiling_bytes)
        )

    # -- lifecycle -----------------------------------------------------------------------------
    async def __aenter__(self) -> Worker:
        if self._entered:
            raise RuntimeError("a Worker can be entered once")
        self._entered = True
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            if self.policy.idle_restart_s is not None or self.policy.rss_hard_limit_bytes is not None:
                self._tg.start_soon(self._monitor)
            if self._start_on_enter:
                await self.start()
        except BaseException:
            await self._teardown()
            raise
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._teardown()

    async def _teardown(self) -> None:
        # The task group holds only our own tasks (child runners, the monitor), which never
        # raise; the caller's exception is not passed in, so it propagates unwrapped instead
        # of inside an ExceptionGroup.
        with anyio.CancelScope(shield=True):
            await self.close()
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)

    async def start(self) -> None:
        """Start the child now (entering the context manager already does)."""
        async with self._lock:
            await self._ensure_child(None)

    async def close(self) -> ShutdownReport:
        """Stop the child gracefully; later requests raise ``WorkerClosed``."""
        async with self._lock:
            self._closed = True
            return await self._stop("shutdown")

    async def cycle(self) -> ShutdownReport:
        """Replace the child now (explicit restart): stop it gracefully, start a new one."""
        async with self._lock:
            report = await self._stop(RestartReason.EXPLICIT)
            await self._ensure_child(None)
            return report

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def pid(self) -> int | None:
        gen = self._gen
        return gen.child.pid if gen is not None and gen.child.alive else None

    @property
    def hello(self) -> Hello | None:
        """The current child's handshake (name, version, commands and fingerprints)."""
        return self._gen.hello if self._gen is not None else None

    def stats(self) -> WorkerStats:
        gen = self._gen
        stats = replace(self._stats, restarts=dict(self._restarts), generation=self._generation)
        if gen is not None:
            stats.requests_this_generation = gen.requests
            stats.imports_this_generation = gen.imports
        return stats

    def output_tail(self, stream: str = "stderr", max_lines: int = 40) -> str:
        """The last lines the current child wrote to ``stream`` ("stdout" or "stderr")."""
        if stream not in ("stdout", "stderr"):  # checked first: a typo must not pass while no child runs
            raise ValueError(f"stream must be 'stdout' or 'stderr'; got {stream!r}")
        gen = self._gen
        if gen is None:
            return ""
        tail = gen.child.stdout_tail if stream == "stdout" else gen.child.stderr_tail
        return tail.text(max_lines)

    async def rss(self) -> int | None:
        """Summed RSS of the current child's process tree, in bytes (``None``: no child)."""
        gen = self._gen
        if gen is None or not gen.child.alive:
            return None
        value = await anyio.to_thread.run_sync(gen.memory.rss)
        self._stats.last_rss_bytes = value
        return value

    async def pss(self) -> int | None:
        """Summed PSS of the current child's process tree, in bytes (``None``: no child).

        Proportional set size splits each shared page among the processes that map it, so
        it does not count a shared library once per process as summed RSS does. Slower
        than ``rss()`` (it reads ``/proc/<pid>/smaps_rollup`` of every process); it also
        refreshes the list of the child's descendants.
        """
        gen = self._gen
        if gen is None or not gen.child.alive:
            return None
        return await anyio.to_thread.run_sync(gen.memory.pss)

    # -- spawning --------------------------------------------------------------------------------
    def _check_restart_limit(self) -> None:
        window = self.policy.restart_window_s
        now = time.monotonic()
        while self._unplanned and now - self._unplanned[0] > window:
            self._unplanned.popleft()
        if len(self._unplanned) > self.policy.max_restarts:
            raise RestartLimitExceeded(
                f"worker {self.config.name} restarted too often; unplanned_exits={len(self._unplanned)} "
                f"window_s={window} max_restarts={self.policy.max_restarts}; fix the crash cause or wait",
                restarts=len(self._unplanned),
                window_s=window,
                last_exit=self._stats.last_exit,
            )

    def _record_end(self, reason: str) -> None:
        if reason == "shutdown":
            return
        self._restarts[str(reason)] += 1
        if not RestartReason(reason).planned:
            self._unplanned.append(time.monotonic())

    async def _spawn(self) -> _Generation:
        self._check_restart_limit()
        assert self._tg is not None
        generation = self._generation + 1
        t0 = time.monotonic()
        try:
            child = ChildProcess(self.config, generation)
        except OSError as exc:
            self._record_end(RestartReason.STARTUP_FAILURE)
            raise StartupError(
                f"cannot start worker child; argv={list(self.config.child.argv)} error={exc}"
            ) from exc
        self._generation = generation
        channel = open_channel(child.read_fd, child.write_fd, self.config.max_frame_bytes)
        gen = _Generation(child, channel)
        self._gen = gen
        self._tg.start_soon(child.run, self._on_child_exit)
        deadline = anyio.current_time() + self.config.startup_timeout_s
        try:
            hello = await self._handshake(gen, deadline)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await child.kill(RestartReason.STARTUP_FAILURE)
                self._dispose(gen)
            raise
        gen.hello = hello
        gen.served = {c.name: c for c in hello.commands}
        if self.policy.rss_ceiling_bytes is not None:
            over, _rss, _pss = await anyio.to_thread.run_sync(gen.memory.over, self.policy.rss_ceiling_bytes)
            gen.born_over_ceiling = over
        self._stats.spawn_handshake_s = time.monotonic() - t0
        self._stats.first_request_s = None
        return gen

    async def _handshake(self, gen: _Generation, deadline: float) -> Hello:
        name = self.config.name
        try:
            frame = await gen.channel.recv(deadline)
        except ChannelTimeout:
            await gen.child.kill(RestartReason.STARTUP_FAILURE)
            raise StartupTimeout(
                f"worker {name} child did not complete its handshake; limit_s={self.config.startup_timeout_s}",
                limit_s=self.config.startup_timeout_s,
                exit=gen.exit_info,
            ) from None
        except (ChannelInterrupted, ChannelEOF):
            await gen.child.exited.wait()
            raise StartupError(f"worker {name} child exited before its handshake", exit=gen.exit_info) from None
        except ProtocolError as exc:
            await gen.child.kill(RestartReason.STARTUP_FAILURE)
            raise HandshakeError(f"worker {name} child sent a bad handshake: {exc}", exit=gen.exit_info) from None
        if not isinstance(frame, Hello):
            await gen.child.kill(RestartReason.STARTUP_FAILURE)
            raise HandshakeError(
                f"worker {name} child spoke first with {type(frame).__name__}, expected Hello", exit=gen.exit_info
            )
        if frame.protocol_version != PROTOCOL_VERSION:
            await gen.child.kill(RestartReason.STARTUP_FAILURE)
            raise HandshakeError(
                f"worker {name} protocol version mismatch; parent={PROTOCOL_VERSION} child={frame.protocol_version} "
                f"child_worker={frame.worker_name} {frame.worker_version}: install matching lean-worker versions",
                exit=gen.exit_info,
                parent_protocol=PROTOCOL_VERSION,
                child_protocol=frame.protocol_version,
                child_worker=f"{frame.worker_name} {frame.worker_version}",
            )
        expected = self.config.expected_worker_name
        if expected is not None and frame.worker_name != expected:
            await gen.child.kill(RestartReason.STARTUP_FAILURE)
            raise HandshakeError(
                f"worker {name} started the wrong child; expected={expected} got={frame.worker_name}",
                exit=gen.exit_info,
            )
        welcome = Welcome(
            PROTOCOL_VERSION,
            gen.child.generation,
            self.config.row_batch_rows,
            self.config.row_batch_bytes,
            self.config.row_flush_interval_s,
        )
        try:
            await gen.channel.send(self._encoder.encode(welcome), deadline)
        except (ChannelTimeout, ChannelInterrupted, ChannelEOF):
            await gen.child.kill(RestartReason.STARTUP_FAILURE)
            raise StartupError(f"worker {name} child did not take its Welcome", exit=gen.exit_info) from None
        gen.channel.on_unsolicited = lambda: self._on_unsolicited(gen)
        return frame

    # -- child exit ------------------------------------------------------------------------------
    def _on_child_exit(self, child: ChildProcess) -> None:
        gen = self._gen if self._gen is not None and self._gen.child is child else None
        op = self._op if self._op is not None and self._op.gen.child is child else None
        cause, hint = classify(
            child.returncode,
            in_flight=op is not None,
            supervisor_reason=child.kill_reason,
            graceful=child.graceful,
            oom_kills_seen=child.oom_kills_seen(),
        )
        info = ExitInfo(
            cause=cause,
            pid=child.pid,
            generation=child.generation,
            returncode=child.returncode,
            signal=signal_name(child.returncode),
            stderr_tail=child.stderr_tail.text(),
            stdout_tail=child.stdout_tail.text(),
            request_id=op.id if op else None,
            command=op.command.name if op else None,
            work_entered=op.entered if op else False,
            hint=hint,
        )
        self._stats.last_exit = info
        if child.kill_reason is not None:
            reason = child.kill_reason
        elif gen is not None and gen.hello is None:  # exited on its own before its handshake
            reason = RestartReason.STARTUP_FAILURE
        else:
            reason = RestartReason.CRASH
        self._record_end(reason)
        if gen is None:
            return
        gen.exit_info = info
        gen.channel.interrupt()
        if op is None:
            self._dispose(gen)

    def _dispose(self, gen: _Generation) -> None:
        if gen.disposed:
            return
        gen.disposed = True
        gen.channel.close()
        gen.child.close_protocol_fds()
        if self._gen is gen:
            self._gen = None

    def _on_unsolicited(self, gen: _Generation) -> None:
        """The child wrote while no request was in flight: a protocol violation."""
        if self._gen is gen and self._op is None and gen.child.alive and gen.child.kill_reason is None:
            gen.child.kill_reason = RestartReason.PROTOCOL_VIOLATION
            gen.child.signal_group(signal.SIGKILL)

    # -- policy ----------------------------------------------------------------------------------
    async def _ensure_child(self, command: Any, keys: frozenset[Hashable] | None = None) -> _Generation:
        if self._closed:
            raise WorkerClosed(f"worker {self.config.name} is closed")
        gen = self._gen
        if gen is not None and gen.channel.idle_output():
            self._on_unsolicited(gen)
        if gen is not None and (not gen.child.alive or gen.child.kill_reason is not None):
            await gen.child.exited.wait()
            self._dispose(gen)
            gen = None
        if gen is not None and self._policy_active:
            reason = await self._policy_reason(gen, command, keys)
            if reason is not None:
                await self._stop(reason)
                gen = None
        if gen is None:
            gen = await self._spawn()
        return gen

    async def _policy_reason(
        self, gen: _Generation, command: Any, keys: frozenset[Hashable] | None
    ) -> RestartReason | None:
        policy = self.policy
        if policy.max_requests is not None and gen.requests >= policy.max_requests:
            return RestartReason.MAX_REQUESTS
        if (
            command is not None
            and command.import_like
            and policy.max_imports is not None
            and gen.imports >= policy.max_imports
            and (keys is None or not keys <= gen.warm_keys)
        ):
            return RestartReason.MAX_IMPORTS
        if (
            policy.idle_restart_s is not None
            and gen.requests
            and time.monotonic() - gen.last_activity >= policy.idle_restart_s
        ):
            return RestartReason.IDLE
        if policy.rss_ceiling_bytes is not None:
            over, rss, pss = await anyio.to_thread.run_sync(gen.memory.over, policy.rss_ceiling_bytes)
            self._stats.last_rss_bytes = rss
            if over:
                # A child that was already above the ceiling when it started cannot be
                # brought under it by cycling: replacing it would loop on every request.
                if gen.requests and not gen.born_over_ceiling:
                    return RestartReason.RSS_CEILING
                self._stats.rss_over_ceiling_when_fresh += 1
        return None

    async def _monitor(self) -> None:
        """Idle retirement and in-request RSS hard-limit sampling."""
        policy = self.policy
        intervals = [policy.rss_sample_interval_s] if policy.rss_hard_limit_bytes is not None else []
        if policy.idle_restart_s is not None:
            intervals.append(max(0.01, policy.idle_restart_s / 4))
        period = min(intervals)
        while True:
            await anyio.sleep(period)
            gen = self._gen
            if gen is None or not gen.child.alive or gen.child.kill_reason is not None:
                continue
            op = self._op
            limit = policy.rss_hard_limit_bytes
            if op is not None and limit is not None and op.gen is gen:
                over, rss, pss = await anyio.to_thread.run_sync(gen.memory.over, limit)
                self._stats.last_rss_bytes = rss
                if over and self._op is op and gen.child.kill_reason is None:
                    op_rss = pss if pss is not None else rss or 0
                    gen.child.kill_reason = RestartReason.RSS_HARD_LIMIT
                    gen.child.signal_group(signal.SIGKILL)
                    self._rss_at_kill = op_rss
            elif (
                op is None
                and policy.idle_restart_s is not None
                and gen.requests
                and time.monotonic() - gen.last_activity >= policy.idle_restart_s
                and not self._lock.locked()
            ):
                async with self._lock:
                    if self._gen is gen and self._op is None:
                        await self._stop(RestartReason.IDLE)

    async def _stop(self, reason: str) -> ShutdownReport:
        """Stop the current child gracefully: Shutdown frame, then SIGTERM, then SIGKILL."""
        gen = self._gen
        started = time.monotonic()
        if gen is None:
            return ShutdownReport("already_exited", 0.0, None)
        child = gen.child
        step = "already_exited"
        if child.alive:
            if child.kill_reason is None:
                child.kill_reason = reason
                child.graceful = True
            gen.channel.send_nowait(self._encoder.encode(Shutdown(str(reason))))
            step = "shutdown_frame"
            with anyio.move_on_after(self.config.shutdown_grace_s):
                await child.exited.wait()
            if child.alive:
                step = "sigterm"
                child.signal_group(signal.SIGTERM)
                with anyio.move_on_after(self.config.kill_grace_s):
                    await child.exited.wait()
            if child.alive:
                step = "sigkill"
        await child.kill(reason)
        self._dispose(gen)
        return ShutdownReport(step, time.monotonic() - started, gen.exit_info)

    # -- requests --------------------------------------------------------------------------------
    async def _begin(
        self,
        command: Any,
        request: Any,
        timeout: float | None,
        on_diagnostic: DiagnosticCallback | None,
        on_progress: ProgressCallback | None,
    ) -> _Op:
        keys = None if command.session_keys is None else frozenset(command.session_keys(request))
        gen = self._gen
        if (
            gen is None
            or self._policy_active
            or gen.child.kill_reason is not None
            or not gen.child.alive
            or gen.channel.idle_output()
            or self._closed
        ):
            gen = await self._ensure_child(command, keys)
        info = gen.served.get(command.name)
        if info is None or info.fingerprint != command.fingerprint or info.kind != command.kind:
            served = "not served" if info is None else f"fingerprint={info.fingerprint} kind={info.kind}"
            raise SchemaMismatch(
                f"{command.name}: child {gen.hello.worker_name if gen.hello else '?'} does not serve this declaration; "
                f"expected fingerprint={command.fingerprint} kind={command.kind}, child has {served}: "
                "rebuild parent and child from the same command declarations",
                operation=command.name,
                generation=gen.child.generation,
            )
        self._next_id += 1
        rid = self._next_id
        limit = self.config.request_timeout_s if timeout is DEFAULT else timeout
        try:
            payload = self._encoder.encode_payload(request)
            data = self._encoder.encode(Request(rid, gen.child.generation, command.name, msgspec.Raw(payload)))
        except FrameTooLarge as exc:
            raise RequestTooLarge(
                f"{command.name}: request exceeds the maximum frame size; size_bytes={exc.size} limit_bytes={exc.limit}",
                operation=command.name,
                request_id=rid,
                generation=gen.child.generation,
            ) from None
        op = _Op(command, rid, gen, limit, on_diagnostic, on_progress, keys)
        self._op = op
        gen.channel.idle = False
        try:
            await gen.channel.send(data, op.deadline)
        except ChannelTimeout:
            raise await self._timed_out(op) from None
        except (ChannelInterrupted, ChannelEOF):
            raise await self._died(op) from None
        except BaseException:
            await self._abandon(op)
            raise
        op.entered = True
        return op

    async def _next(self, op: _Op) -> Any:
        """The next frame of ``op``, validated; failures become typed errors."""
        gen = op.gen
        try:
            # Checked on every frame, not only while waiting: a consumer that is slower than
            # the child keeps frames buffered, and the timeout covers consumer time too.
            if gen.channel.now() >= op.deadline:
                raise ChannelTimeout()
            frame = await gen.channel.recv(op.deadline)
        except ChannelTimeout:
            raise await self._timed_out(op) from None
        except ChannelInterrupted:
            raise await self._died(op) from None
        except ChannelEOF:
            with anyio.move_on_after(self.config.kill_grace_s):
                await gen.child.exited.wait()
            if not gen.child.alive:
                raise await self._died(op) from None
            raise await self._violation(op, ChannelClosed, "child closed the protocol channel while alive") from None
        except ProtocolError as exc:
            raise await self._violation(op, _PROTOCOL_ERRORS.get(type(exc), ProtocolViolation), str(exc)) from None
        if isinstance(frame, (Response, Rows, Diagnostic, Progress)):
            if frame.id != op.id or frame.generation != op.gen.child.generation:
                raise await self._violation(
                    op,
                    UnexpectedFrame,
                    f"{type(frame).__name__} for request_id={frame.id} generation={frame.generation} "
                    f"while request_id={op.id} generation={op.gen.child.generation} is in flight",
                )
            return frame
        raise await self._violation(op, UnexpectedFrame, f"unexpected {type(frame).__name__} frame during a request")

    def _side_frame(self, op: _Op, frame: Diagnostic | Progress) -> None:
        if isinstance(frame, Diagnostic):
            if op.on_diagnostic is not None:
                op.on_diagnostic(frame)
            elif len(op.diagnostics) < _KEPT_DIAGNOSTICS:
                op.diagnostics.append(frame)
            else:
                op.diagnostics_overflow += 1
        elif op.on_progress is not None:
            op.on_progress(frame)

    def _account(self, op: _Op, frame: Response) -> None:
        """Count a request the child answered (normally or after a cancel)."""
        op.done = True
        gen = op.gen
        gen.requests += 1
        self._stats.requests += 1
        charged = frame.imports if frame.imports >= 0 else int(op.command.import_like)
        gen.imports += charged
        self._stats.imports += charged
        if op.keys:
            if charged > len(op.keys - gen.warm_keys):
                # The child imported a key we took for warm: it dropped that session
                # (evicted, or its process died). Trust only what this request used.
                gen.warm_keys = set(op.keys)
            elif frame.error is None:
                gen.warm_keys.update(op.keys)
        self._stats.backpressure_waits += frame.write_stalls
        if not gen.first_request_done:
            gen.first_request_done = True
            self._stats.first_request_s = gen.channel.now() - op.started
        gen.last_activity = time.monotonic()
        self._end_op(op)

    def _finish(self, op: _Op, frame: Response) -> None:
        """Account for a terminal response; raise the typed error it carries, if any."""
        self._account(op, frame)
        gen = op.gen
        error = frame.error
        if error is None:
            return
        cls = REMOTE_ERRORS.get(error.code, RemoteError)
        if error.code == "worker.cancelled":
            raise RequestCancelled(
                f"{op.command.name}: cancelled; request_id={op.id}",
                operation=op.command.name,
                request_id=op.id,
                generation=gen.child.generation,
            )
        raise cls(
            f"{op.command.name}: handler failed; request_id={op.id} remote_type={error.type} "
            f"remote_code={error.code}: {error.message}",
            operation=op.command.name,
            request_id=op.id,
            generation=gen.child.generation,
            remote_type=error.type,
            remote_code=error.code,
            remote_message=error.message,
            traceback=error.traceback,
            facts=error.facts,
        )

    def _end_op(self, op: _Op) -> None:
        if self._op is op:
            self._op = None
        gen = op.gen
        if gen.disposed:
            return
        gen.channel.idle = True
        if gen.channel.reader.buffered:
            self._on_unsolicited(gen)

    def _decode(self, op: _Op, decoder: msgspec.msgpack.Decoder, payload: Any, what: str) -> Any:
        try:
            return decoder.decode(payload)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ResponseDecodeError(
                f"{op.command.name}: {what} does not match the declared type: {exc}",
                operation=op.command.name,
                request_id=op.id,
                generation=op.gen.child.generation,
            ) from None

    # -- failure paths ---------------------------------------------------------------------------
    async def _ended(self, op: _Op) -> ExitInfo | None:
        with anyio.CancelScope(shield=True):
            await op.gen.child.exited.wait()
        op.done = True
        self._end_op(op)
        self._dispose(op.gen)
        return op.gen.exit_info

    async def _died(self, op: _Op) -> RequestError:
        child = op.gen.child
        info = await self._ended(op)
        assert info is not None
        name = op.command.name
        if child.kill_reason == RestartReason.RSS_HARD_LIMIT:
            limit = self.policy.rss_hard_limit_bytes or 0
            rss = self._rss_at_kill
            return MemoryLimitExceeded(
                f"{name}: child exceeded the RSS hard limit and was killed; rss_bytes={rss} limit_bytes={limit}",
                operation=name,
                request_id=op.id,
                generation=child.generation,
                rss_bytes=rss,
                limit_bytes=limit,
                exit=info,
            )
        if child.kill_reason == RestartReason.PROTOCOL_VIOLATION:
            return UnexpectedFrame(
                f"{name}: child wrote frames while no request was in flight", operation=name,
                request_id=op.id, generation=child.generation, exit=info,
            )
        return WorkerCrashed(
            f"{name}: worker child ended during the request", operation=name, request_id=op.id,
            generation=child.generation, exit=info,
        )

    async def _violation(self, op: _Op, cls: type[ProtocolViolation], detail: str) -> RequestError:
        with anyio.CancelScope(shield=True):
            await op.gen.child.kill(RestartReason.PROTOCOL_VIOLATION)
        info = await self._ended(op)
        return cls(
            f"{op.command.name}: protocol violation, child replaced: {detail}",
            operation=op.command.name,
            request_id=op.id,
            generation=op.gen.child.generation,
            exit=info,
        )

    async def _timed_out(self, op: _Op) -> RequestError:
        gen = op.gen
        elapsed = gen.channel.now() - op.started
        with anyio.CancelScope(shield=True):
            kept = False
            if not self.policy.restart_on_timeout and op.entered:  # never after a partial request frame
                kept = await self._cancel_and_drain(op)
            if not kept:
                await gen.child.terminate(RestartReason.REQUEST_TIMEOUT, kill_grace_s=self.config.kill_grace_s)
        info = None if kept else await self._ended(op)
        return RequestTimeout(
            f"{op.command.name}: request timed out; limit_s={op.limit_s} elapsed_s={elapsed:.3f} "
            f"rows_delivered={op.rows} generation={gen.child.generation} child_replaced={not kept}",
            operation=op.command.name,
            request_id=op.id,
            generation=gen.child.generation,
            limit_s=op.limit_s or 0.0,
            elapsed_s=elapsed,
            rows_delivered=op.rows,
            exit=info,
        )

    async def _cancel_and_drain(self, op: _Op) -> bool:
        """Send Cancel and discard frames until the terminal response, within the cancel
        grace. True if the child answered (it stays); False if it must be killed."""
        gen = op.gen
        if gen.disposed or not gen.child.alive:
            return False
        if not gen.channel.send_nowait(self._encoder.encode(Cancel(op.id, gen.child.generation))):
            return False  # the child is not reading its pipe: it could not see a cancel anyway
        deadline = gen.channel.now() + self.config.cancel_grace_s
        while True:
            try:
                frame = await gen.channel.recv(deadline)
            except (ChannelTimeout, ChannelInterrupted, ChannelEOF, ProtocolError):
                return False
            if getattr(frame, "id", None) != op.id:
                return False
            if isinstance(frame, Response):
                self._account(op, frame)
                return True

    async def _abandon(self, op: _Op) -> None:
        """The caller gave up on ``op`` (cancelled, broke out of a stream, a sink raised):
        cancel it in the child, and kill the child if it does not answer within the grace."""
        if op.done:
            return
        with anyio.CancelScope(shield=True):
            if op.entered and await self._cancel_and_drain(op):
                return
            if op.gen.child.alive:
                await op.gen.child.terminate(RestartReason.CANCEL_TIMEOUT, kill_grace_s=self.config.kill_grace_s)
            await self._ended(op)

    # -- public request API ------------------------------------------------------------------------
    async def call(
        self,
        command: Call[ReqT, RespT],
        request: ReqT,
        *,
        timeout: float | None = DEFAULT,
        on_diagnostic: DiagnosticCallback | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> RespT:
        """Run a request/response command and return its typed response."""
        if not isinstance(command, Call):
            raise TypeError(f"call() takes a Call declaration; got {command!r} (use stream() for Stream)")
        async with self._lock:
            op = await self._begin(command, request, timeout, on_diagnostic, on_progress)
            try:
                spin = self._spin.get(command.name)
                if spin is not None and spin.rtt_s < self._spin_s:
                    if spin.skip:
                        spin.skip -= 1
                    else:
                        spun = op.gen.channel.spin(self._spin_s)
                        if spun is True:
                            spin.failures = 0
                        elif spun is False:
                            # The reply did not come in time: the core may be contended, and
                            # spinning would take it from the child. Back off exponentially.
                            spin.failures = min(spin.failures + 1, 10)
                            spin.skip = 2**spin.failures
                while True:
                    frame = await self._next(op)
                    if isinstance(frame, Response):
                        rtt = op.gen.channel.now() - op.started
                        if spin is None:
                            self._spin[command.name] = _SpinState(rtt)
                        else:
                            spin.rtt_s = 0.8 * spin.rtt_s + 0.2 * rtt
                        self._finish(op, frame)
                        return self._decode(op, command.response_decoder, frame.payload, "response")  # type: ignore[no-any-return]
                    if isinstance(frame, Rows):
                        raise await self._violation(op, UnexpectedFrame, "Rows frame for a call command")
                    self._side_frame(op, frame)
            except BaseException:
                await self._abandon(op)
                raise

    def stream(
        self,
        command: Stream[ReqT, RowT, SummaryT],
        request: ReqT,
        *,
        timeout: float | None = DEFAULT,
        on_diagnostic: DiagnosticCallback | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> StreamCall[RowT, SummaryT]:
        """Run a streaming command: ``async with worker.stream(CMD, req) as rows: async for row in rows``.

        Rows arrive live and are tentative until the terminal summary (``rows.summary``).
        Leaving the block early cancels the request in the child.
        """
        if not isinstance(command, Stream):
            raise TypeError(f"stream() takes a Stream declaration; got {command!r} (use call() for Call)")
        return StreamCall(self, command, request, timeout, on_diagnostic, on_progress)

    async def stream_into(
        self,
        command: Stream[ReqT, RowT, SummaryT],
        request: ReqT,
        sink: Callable[[RowT], object],
        *,
        timeout: float | None = DEFAULT,
        on_diagnostic: DiagnosticCallback | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> StreamSummary[SummaryT]:
        """Run a streaming command, handing every row to ``sink``; return the summary.

        If ``sink`` raises, the request is cancelled in the child (which stays alive when it
        answers the cancel) and the sink's exception propagates.
        """
        async with self.stream(command, request, timeout=timeout, on_diagnostic=on_diagnostic, on_progress=on_progress) as call:
            async for batch in call.batches():
                for row in batch.rows:
                    sink(row)
        return call.summary


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
        self._op: _Op | None = None
        self._rows: list[RowT] = []
        self._i = 0
        self._summary: StreamSummary[SummaryT] | None = None
        self._expected: dict[str, int] = {}

    async def __aenter__(self) -> StreamCall[RowT, SummaryT]:
        worker = self._worker
        await worker._lock.acquire()
        try:
            self._op = await worker._begin(
                self._command, self._request, self._timeout, self._on_diagnostic, self._on_progress
            )
        except BaseException:
            worker._lock.release()
            raise
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            if self._op is not None and not self._op.done:
                await self._worker._abandon(self._op)
        finally:
            self._worker._lock.release()

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
            raise RuntimeError("the stream has not finished: consume all rows first")
        return self._summary

    async def _next_event(self) -> RowBatch[RowT] | Diagnostic | Progress | None:
        """Next batch, diagnostic or progress event; ``None`` after the terminal response."""
        op = self._op
        if op is None:
            raise RuntimeError("use the StreamCall as an async context manager")
        if op.done:
            return None
        worker = self._worker
        frame = await worker._next(op)
        if isinstance(frame, Rows):
            decoder = self._command.row_decoders.get(frame.stream)
            expected = op.counts.get(frame.stream, 0)
            if decoder is None or frame.seq != expected:
                raise await worker._violation(
                    op, UnexpectedFrame,
                    f"rows for stream={frame.stream} seq={frame.seq} (expected stream in "
                    f"{sorted(self._command.row_types)} at seq={expected})",
                )
            rows = worker._decode(op, decoder, frame.rows, f"a row of stream {frame.stream!r}")
            if len(rows) != frame.count:
                raise await worker._violation(op, UnexpectedFrame, f"rows frame count={frame.count} holds {len(rows)} rows")
            op.counts[frame.stream] = expected + len(rows)
            op.rows += len(rows)
            worker._stats.rows_delivered += len(rows)
            return RowBatch(frame.stream, frame.seq, rows)
        if isinstance(frame, Response):
            if frame.error is None and frame.rows != op.counts:
                raise await worker._violation(
                    op, UnexpectedFrame, f"child reports rows={frame.rows} but parent received rows={op.counts}"
                )
            worker._finish(op, frame)
            summary = worker._decode(op, self._command.summary_decoder, frame.payload, "summary")
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
                self._worker._side_frame(op, event)  # type: ignore[arg-type]

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
                raise await self._worker._timed_out(self._op)
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
                self._worker._side_frame(self._op, event)  # type: ignore[arg-type]

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
