"""``Worker``: one supervised child process serving typed commands (async, on anyio).

States of a worker: no child -> starting (spawn + handshake under ``startup_timeout_s``)
-> ready <-> busy (one request in flight) -> the child ends (planned cycle, policy, crash,
timeout, protocol violation) -> no child -> ... -> closed. Requests are served one at a
time, in arrival order; a request that finds no child (or one the restart policy retires)
starts a fresh generation first. See ``architecture/20-supervisor.md``.

The worker owns the generations and applies the policy; the pieces live beside it:
``_startup`` (a generation's state and its handshake), ``_request`` (one request's state
machine and failure paths), ``_stream`` (``StreamCall``), ``_policy`` (the restart
policy's decisions over a clock), ``_lock`` (the request lock and its holder), ``_types``
(the public result types).
"""

from __future__ import annotations

import logging
import signal
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import replace
from typing import Any, TypeVar

import anyio
import msgspec

from lean_worker_protocol import Call, FrameEncoder, FrameTooLarge, Hello, Request, Response, Rows, Shutdown, Stream

from ._channel import ChannelEOF, ChannelInterrupted, ChannelTimeout, open_channel
from ._clock import SYSTEM_CLOCK, Clock
from ._config import RestartPolicy, RestartReason, WorkerConfig
from ._errors import (
    InvalidRequest,
    LeaseInvalidated,
    ReentrantRequest,
    RequestTooLarge,
    RestartLimitExceeded,
    SandboxUnavailable,
    SchemaMismatch,
    StartupError,
    UnexpectedFrame,
    WorkerBusy,
    WorkerClosed,
)
from ._exit import ExitInfo, classify, signal_name
from ._lock import FifoLock, entered_as, owner, run_as
from ._policy import RestartWindow, idle_due, planned_reason, rss_reason
from ._process import ChildProcess
from ._request import Exchange
from ._startup import Generation, handshake, sandbox_unavailable
from ._stream import StreamCall
from ._types import (
    DEFAULT,
    DiagnosticCallback,
    ProgressCallback,
    RowBatch,
    SandboxStatus,
    ShutdownReport,
    StreamSummary,
    TraceEvent,
    Tracer,
    WorkerStats,
)

__all__ = [
    "DEFAULT",
    "DiagnosticCallback",
    "ProgressCallback",
    "RowBatch",
    "ShutdownReport",
    "StreamCall",
    "StreamSummary",
    "TraceEvent",
    "Tracer",
    "Worker",
    "WorkerStats",
    "check_timeout",
    "entered_as",
    "run_as",
    "session_keys_of",
]

sandbox_logger = logging.getLogger("lean_worker.sandbox")

ReqT = TypeVar("ReqT")
RespT = TypeVar("RespT")
RowT = TypeVar("RowT")
SummaryT = TypeVar("SummaryT")


class _SpinState:
    """Per call command: moving-average round trip, and back-off after failed spins."""

    __slots__ = ("rtt_s", "skip", "failures")

    def __init__(self, rtt_s: float) -> None:
        self.rtt_s = rtt_s
        self.skip = 0
        self.failures = 0


KEYS_FROM_COMMAND: Any = object()
"""Marker for ``Worker._call``/``_begin``: compute the request's session keys from its
command (the caller has not)."""


def check_timeout(timeout: object) -> None:
    """A per-call timeout is ``DEFAULT``, ``None`` (no limit) or a positive number."""
    if timeout is DEFAULT or timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a positive number of seconds, None or DEFAULT; got {timeout!r}")
    if not timeout > 0:  # also NaN
        raise ValueError(f"timeout must be a positive number of seconds, None or DEFAULT; got {timeout!r}")


class Worker:
    """A supervised worker child. Use as ``async with Worker(config) as worker:``.

    ``call`` runs a request/response command; ``stream`` runs a streaming command. Every
    failure is a typed ``WorkerError``; a failure that ended the child replaces it on the
    next request, within the restart limit.
    """

    def __init__(self, config: WorkerConfig, *, clock: Clock | None = None, tracer: Tracer | None = None) -> None:
        self.config = config
        self.tracer = tracer
        """Called with a ``TraceEvent`` at every step of the worker's life (see ``TraceEvent``)."""
        self.policy: RestartPolicy = config.restart
        self.clock: Clock = clock or SYSTEM_CLOCK
        """What the restart policy reads the time from (idle, the restart window); a
        ``ManualClock`` in tests. Request deadlines run on the event loop's clock."""
        self._holder: object | None = None
        """The task holding the request lock through an open stream (re-entrancy check)."""
        self._held_for: tuple[int, int] | None = None
        """(generation, pool index) while a pool lease holds this worker: planned restarts wait,
        and a request never runs silently on another child."""
        self._encoder = FrameEncoder(config.max_frame_bytes)
        self._lock = FifoLock()
        self._gen: Generation | None = None
        self._generation = 0
        self._next_id = 0
        self._op: Exchange | None = None
        self._stats = WorkerStats()
        self._restarts: Counter[str] = Counter()
        self._restarts_window = RestartWindow(config.restart)
        self._tg: anyio.abc.TaskGroup | None = None
        self._closed = False
        self._entered = False
        self._start_on_enter = True
        """The pool enters many workers in one task and starts their children concurrently."""
        self._rss_at_kill = 0
        self._sandbox_fallback: SandboxUnavailable | None = None
        """With ``sandbox='auto'``: why the sandbox failed here; children then run without."""
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
            if self.policy.idle_restart_s is not None:
                self._tg.start_soon(self._watch_idle)
            if self.policy.rss_hard_limit_bytes is not None:
                self._tg.start_soon(self._watch_rss)
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
        """Start the child now (entering the context manager already does). Waits for a
        request in flight at most ``request_timeout_s`` (``WorkerBusy``)."""
        await self._acquire("start", self.config.request_timeout_s)
        try:
            await self._ensure_child(None)
        finally:
            self._lock.release()

    async def close(self) -> ShutdownReport:
        """Stop the child gracefully; later requests raise ``WorkerClosed``.

        A request in flight is waited for, at most ``request_timeout_s``: past that (a
        stream whose holder stopped reading), the child is killed under it, and that
        request fails as a crash with cause ``worker.exit.supervisor_kill``."""
        self._refuse_reentry("close")
        self._closed = True
        if not await self._lock.acquire_within(self.config.request_timeout_s):
            return await self._kill_under_holder()
        try:
            return await self._stop("shutdown")
        finally:
            self._lock.release()

    async def _kill_under_holder(self) -> ShutdownReport:
        gen = self._gen
        if gen is None:
            return ShutdownReport("already_exited", 0.0, None)
        started = time.monotonic()
        self._trace("stopping", gen.child.generation, None, "shutdown")
        with anyio.CancelScope(shield=True):
            await gen.child.kill("shutdown")
        return ShutdownReport("sigkill", time.monotonic() - started, gen.exit_info)

    async def cycle(self) -> ShutdownReport:
        """Replace the child now (explicit restart): stop it gracefully, start a new one.
        Waits for a request in flight at most ``request_timeout_s`` (``WorkerBusy``)."""
        await self._acquire("cycle", self.config.request_timeout_s)
        try:
            report = await self._stop(RestartReason.EXPLICIT)
            await self._ensure_child(None)
            return report
        finally:
            self._lock.release()

    def _trace(self, kind: str, generation: int, request_id: int | None, detail: object) -> None:
        if self.tracer is not None:
            self.tracer(TraceEvent(kind, self.config.name, generation, request_id, str(detail)))

    def _refuse_reentry(self, operation: str) -> None:
        if self._holder is not None and self._holder == owner():
            raise ReentrantRequest(
                f"{operation}: this task already holds worker {self.config.name} through an open stream; "
                "finish or leave that stream first (waiting for it here would never end)",
                operation=operation, waited_s=0.0, limit_s=None,
            )

    async def _acquire(self, operation: str, limit_s: float | None) -> None:
        """Take the request lock for ``operation``, waiting at most ``limit_s``."""
        if self._holder is not None:
            self._refuse_reentry(operation)
        if self._lock.try_acquire():  # the common case: no clock read, no await
            return
        started = anyio.current_time()
        if not await self._lock.acquire_within(limit_s):
            waited = anyio.current_time() - started
            raise WorkerBusy(
                f"{operation}: worker {self.config.name} stayed busy with another request; "
                f"waited_s={waited:.3f} limit_s={limit_s}: nothing was sent",
                operation=operation, waited_s=waited, limit_s=limit_s,
            )

    async def _hold(self, key: Hashable | None, index: int) -> int:
        """Bind the worker to its current child for a lease (see ``_held_for``) and return
        that child's generation. Before binding, a planned restart that is due runs now,
        judged as for an import of ``key`` (a lease may import), and a child is started
        if there is none: within the lease, neither happens."""
        await self._acquire("lease", self.config.request_timeout_s)
        try:
            self._held_for = None
            gen = await self._ensure_child(_LEASE, None if key is None else frozenset([key]))
            self._held_for = (gen.child.generation, index)
            return gen.child.generation
        finally:
            self._lock.release()

    def _unhold(self) -> None:
        self._held_for = None

    def _lease_invalidated(self) -> LeaseInvalidated:
        assert self._held_for is not None
        generation, index = self._held_for
        return LeaseInvalidated(
            f"pool worker {index}: its child (generation {generation}) ended while leased; now generation="
            f"{self._generation}: take a new lease",
            worker=index, generation=generation, current_generation=self._generation,
        )

    def restart_blocked_s(self) -> float:
        """Seconds until the restart limit lets this worker start a child again; 0 when it
        may now (or has a live child that needs no start)."""
        gen = self._gen
        if gen is not None and gen.child.alive and gen.child.kill_reason is None:
            return 0.0
        return self._restarts_window.blocked_s(self.clock.now())

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

    @property
    def sandbox(self) -> SandboxStatus:
        """Whether this worker's children run sandboxed, and if ``auto`` fell back, why."""
        mode = self.config.sandbox.mode
        fallback = self._sandbox_fallback
        if fallback is None:
            return SandboxStatus(mode, mode != "off")
        return SandboxStatus(mode, False, fallback.reason, fallback.fix)

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
    def _restart_limit_error(self) -> RestartLimitExceeded | None:
        """The error a start would raise now because of the restart limit, or ``None``."""
        return self._restarts_window.error(self.clock.now(), self.config.name, self._stats.last_exit)

    def _check_restart_limit(self) -> None:
        error = self._restart_limit_error()
        if error is not None:
            raise error

    def _record_end(self, reason: str) -> None:
        if reason == "shutdown":
            return
        self._restarts[str(reason)] += 1
        if not RestartReason(reason).planned:
            self._restarts_window.record(self.clock.now())

    async def _spawn(self) -> Generation:
        """Start the next generation and complete its handshake. With ``sandbox='auto'``, a
        child that cannot build its sandbox is followed at once by one without."""
        self._check_restart_limit()
        assert self._tg is not None
        generation = self._generation + 1
        t0 = time.monotonic()
        spec = self.config.sandbox.spec() if self.sandbox.active else None
        try:
            child = ChildProcess(self.config, generation, sandbox=spec)
        except OSError as exc:
            self._record_end(RestartReason.STARTUP_FAILURE)
            raise StartupError(
                f"cannot start worker child; argv={list(self.config.child.argv)} error={exc}"
            ) from exc
        self._generation = generation
        channel = open_channel(child.read_fd, child.write_fd, self.config.max_frame_bytes)
        gen = Generation(child, channel, self.clock.now())
        self._gen = gen
        self._tg.start_soon(child.run, self._on_child_exit)
        deadline = anyio.current_time() + self.config.startup_timeout_s
        try:
            hello = await handshake(gen, self.config, self._encoder, deadline)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await child.kill(RestartReason.STARTUP_FAILURE)
                self._dispose(gen)
            unavailable = sandbox_unavailable(exc, self.config) if spec is not None else None
            if unavailable is None:
                raise
            if self.config.sandbox.mode == "required":
                raise unavailable from None
            self._sandbox_fallback = unavailable
            sandbox_logger.warning("worker %s: %s", self.config.name, self.sandbox.describe())
            return await self._spawn()
        gen.channel.on_unsolicited = lambda: self._on_unsolicited(gen)
        gen.hello = hello
        gen.served = {c.name: c for c in hello.commands}
        if self.policy.rss_ceiling_bytes is not None:
            over, _rss, _pss = await anyio.to_thread.run_sync(gen.memory.over, self.policy.rss_ceiling_bytes)
            gen.born_over_ceiling = over
        self._stats.spawn_handshake_s = time.monotonic() - t0
        self._stats.first_request_s = None
        self._trace("started", generation, None, child.pid)
        return gen

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
        self._trace("reaped", child.generation, info.request_id, cause.value)
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

    def _dispose(self, gen: Generation) -> None:
        if gen.disposed:
            return
        gen.disposed = True
        gen.channel.close()
        gen.child.close_protocol_fds()
        if self._gen is gen:
            self._gen = None

    def _on_unsolicited(self, gen: Generation) -> None:
        """The child wrote while no request was in flight: a protocol violation."""
        if self._gen is gen and self._op is None and gen.child.alive and gen.child.kill_reason is None:
            gen.child.kill_reason = RestartReason.PROTOCOL_VIOLATION
            gen.child.signal_group(signal.SIGKILL)

    # -- policy ----------------------------------------------------------------------------------
    async def _ensure_child(self, command: Any, keys: frozenset[Hashable] | None = None) -> Generation:
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

    def _idle_due(self, gen: Generation) -> bool:
        return idle_due(
            self.policy, requests=gen.requests, last_activity=gen.last_activity, now=self.clock.now(),
            held=self._held_for is not None,
        )

    async def _policy_reason(
        self, gen: Generation, command: Any, keys: frozenset[Hashable] | None
    ) -> RestartReason | None:
        if self._held_for is not None:
            return None  # planned restarts wait until the lease ends
        reason = planned_reason(
            self.policy,
            requests=gen.requests,
            imports=gen.imports,
            import_like=command is not None and command.import_like,
            keys=keys,
            warm_keys=gen.warm_keys,
            idle=self._idle_due(gen),
        )
        if reason is not None or self.policy.rss_ceiling_bytes is None:
            return reason
        over, rss, _pss = await anyio.to_thread.run_sync(gen.memory.over, self.policy.rss_ceiling_bytes)
        self._stats.last_rss_bytes = rss
        reason = rss_reason(over_ceiling=over, requests=gen.requests, born_over_ceiling=gen.born_over_ceiling)
        if over and reason is None:
            self._stats.rss_over_ceiling_when_fresh += 1
        return reason

    async def _watch_rss(self) -> None:
        """The RSS hard limit, sampled during requests (real time: it bounds a real request)."""
        policy = self.policy
        limit = policy.rss_hard_limit_bytes
        assert limit is not None
        while True:
            await anyio.sleep(policy.rss_sample_interval_s)
            gen, op = self._gen, self._op
            if gen is None or op is None or op.gen is not gen or not gen.child.alive or gen.child.kill_reason is not None:
                continue
            over, rss, pss = await anyio.to_thread.run_sync(gen.memory.over, limit)
            self._stats.last_rss_bytes = rss
            if over and self._op is op and gen.child.kill_reason is None:
                gen.child.kill_reason = RestartReason.RSS_HARD_LIMIT
                gen.child.signal_group(signal.SIGKILL)
                self._rss_at_kill = pss if pss is not None else rss or 0

    async def _watch_idle(self) -> None:
        """Idle retirement, on the policy's clock."""
        assert self.policy.idle_restart_s is not None
        period = max(0.01, self.policy.idle_restart_s / 4)
        while True:
            await self.clock.sleep(period)
            gen = self._gen
            if (
                gen is None
                or not gen.child.alive
                or gen.child.kill_reason is not None
                or self._op is not None
                or self._lock.locked()
                or not self._idle_due(gen)
            ):
                continue
            async with self._lock:
                if self._gen is gen and self._op is None and self._idle_due(gen):
                    await self._stop(RestartReason.IDLE)

    async def _stop(self, reason: str) -> ShutdownReport:
        """Stop the current child gracefully: Shutdown frame, then SIGTERM, then SIGKILL."""
        gen = self._gen
        started = time.monotonic()
        if gen is None:
            return ShutdownReport("already_exited", 0.0, None)
        child = gen.child
        step = "already_exited"
        self._trace("stopping", child.generation, None, reason)
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
        listed: tuple[Hashable, ...] | None,
    ) -> Exchange:
        if listed is KEYS_FROM_COMMAND:
            listed = session_keys_of(command, request)
        keys = None if listed is None else frozenset(listed)
        held = self._held_for
        if held is not None:
            gen = self._gen
            if gen is None or gen.child.generation != held[0] or not gen.child.alive or gen.child.kill_reason is not None:
                raise self._lease_invalidated()
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
        try:
            payload = self._encoder.encode_payload(request)
            command.request_decoder.decode(payload)  # the child decodes it with the same type
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError, msgspec.DecodeError, RecursionError) as exc:
            raise InvalidRequest(
                f"{command.name}: the request does not match the declared request type "
                f"{_type_name(command.request)}: {exc}: nothing was sent",
                operation=command.name,
            ) from None
        self._next_id += 1
        rid = self._next_id
        limit = self.config.request_timeout_s if timeout is DEFAULT else timeout
        try:
            data = self._encoder.encode(Request(rid, gen.child.generation, command.name, msgspec.Raw(payload)))
        except FrameTooLarge as exc:
            raise RequestTooLarge(
                f"{command.name}: request exceeds the maximum frame size; size_bytes={exc.size} limit_bytes={exc.limit}",
                operation=command.name,
                request_id=rid,
                generation=gen.child.generation,
            ) from None
        op = Exchange(self, command, rid, gen, limit, on_diagnostic, on_progress, keys)
        self._op = op
        self._trace("request", gen.child.generation, rid, command.name)
        gen.channel.idle = False
        try:
            await gen.channel.send(data, op.deadline)
        except ChannelTimeout:
            raise await op.timed_out() from None
        except (ChannelInterrupted, ChannelEOF):
            raise await op.died() from None
        except BaseException:
            await op.abandon()
            raise
        op.entered = True
        return op

    # -- failure paths ---------------------------------------------------------------------------
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
        return await self._call(command, request, timeout, on_diagnostic, on_progress, KEYS_FROM_COMMAND)

    async def _call(
        self,
        command: Call[ReqT, RespT],
        request: ReqT,
        timeout: float | None,
        on_diagnostic: DiagnosticCallback | None,
        on_progress: ProgressCallback | None,
        keys: tuple[Hashable, ...] | None,
    ) -> RespT:
        """``call``, with the request's session keys when the caller computed them already
        (the pool does, to pick a warm worker): a command's ``session_keys`` runs once."""
        if not isinstance(command, Call):
            raise TypeError(f"call() takes a Call declaration; got {command!r} (use stream() for Stream)")
        check_timeout(timeout)
        await self._acquire(command.name, self.config.request_timeout_s if timeout is DEFAULT else timeout)
        try:
            op = await self._begin(command, request, timeout, on_diagnostic, on_progress, keys)
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
                    frame = await op.next_frame()
                    if isinstance(frame, Response):
                        rtt = op.gen.channel.now() - op.started
                        if spin is None:
                            self._spin[command.name] = _SpinState(rtt)
                        else:
                            spin.rtt_s = 0.8 * spin.rtt_s + 0.2 * rtt
                        op.finish(frame)
                        value = op.decode(command.response_decoder, frame.payload, "response")
                        op.conclude("ok")
                        return value  # type: ignore[no-any-return]
                    if isinstance(frame, Rows):
                        raise await op.violation(UnexpectedFrame, "Rows frame for a call command")
                    op.side_frame(frame)
            except BaseException:
                await op.abandon()
                raise
        finally:
            self._lock.release()

    async def _open(
        self,
        command: Any,
        request: Any,
        timeout: float | None,
        on_diagnostic: DiagnosticCallback | None,
        on_progress: ProgressCallback | None,
    ) -> Exchange:
        """Take the worker for a stream and begin its request; the caller becomes the holder
        until ``_close``."""
        await self._acquire(command.name, self.config.request_timeout_s if timeout is DEFAULT else timeout)
        try:
            op = await self._begin(command, request, timeout, on_diagnostic, on_progress, KEYS_FROM_COMMAND)
        except BaseException:
            self._lock.release()
            raise
        self._holder = owner()
        return op

    async def _close(self, op: Exchange | None) -> None:
        """End a stream: abandon its request if it did not finish, give the worker back."""
        try:
            if op is not None and not op.done:
                await op.abandon()
        finally:
            self._holder = None
            self._lock.release()

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
        check_timeout(timeout)
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


class _LeaseStart:
    """What the policy judges at the start of a lease: a request that may import."""

    name = "lease"
    import_like = True


_LEASE = _LeaseStart()


def session_keys_of(command: Call[Any, Any] | Stream[Any, Any, Any], request: Any) -> tuple[Hashable, ...] | None:
    """The session keys ``request`` needs, in order (``None``: the command declares none).
    A ``session_keys`` that cannot read the request is ``InvalidRequest``, as a request of
    the wrong type is."""
    if command.session_keys is None:
        return None
    try:
        return tuple(command.session_keys(request))
    except Exception as exc:
        raise InvalidRequest(
            f"{command.name}: the command's session_keys cannot read this request "
            f"({type(exc).__name__}: {exc}): nothing was sent",
            operation=command.name,
        ) from exc


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", repr(tp))
