"""The request state machine: one request from its first frame to its one terminal outcome.

An ``Exchange`` is created by the worker when a request begins (``Worker._begin``) and
owns everything that can happen to it: the next frame (checked for its id and
generation, and against the deadline on every frame), side frames, the terminal
``Response``, and every failure path (the child died, broke the protocol, ran past the
deadline, or the caller left), each ending as exactly one typed outcome. ``Worker.call``
and ``StreamCall`` talk to a request only through this interface.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from lean_worker_protocol import (
    Cancel,
    CorruptFrame,
    Diagnostic,
    FrameSchemaError,
    FrameTooLarge,
    Progress,
    ProtocolError,
    Response,
    Rows,
)

from ._channel import ChannelEOF, ChannelInterrupted, ChannelTimeout
from ._config import RestartReason
from ._errors import (
    ChannelClosed,
    CorruptStream,
    MemoryLimitExceeded,
    OversizeFrame,
    ProtocolViolation,
    RequestCancelled,
    RequestError,
    RequestTimeout,
    ResponseDecodeError,
    SchemaViolation,
    UnexpectedFrame,
    WorkerCrashed,
    remote_error_class,
)
from ._exit import ExitInfo
from ._startup import Generation
from ._types import DiagnosticCallback, ProgressCallback

if TYPE_CHECKING:
    from ._worker import Worker

KEPT_DIAGNOSTICS = 10_000

_PROTOCOL_ERRORS: dict[type[ProtocolError], type[ProtocolViolation]] = {
    FrameTooLarge: OversizeFrame,
    CorruptFrame: CorruptStream,
    FrameSchemaError: SchemaViolation,
}


class Exchange:
    """One request in flight, and the state machine that takes it to its one terminal
    outcome: every frame is checked here, and every failure ends here as a typed error."""

    __slots__ = ("command", "id", "gen", "deadline", "limit_s", "started", "entered", "rows", "counts",
                 "on_diagnostic", "on_progress", "diagnostics", "diagnostics_overflow", "done", "keys", "concluded", "worker")

    def __init__(self, worker: Worker, command: Any, rid: int, gen: Generation, limit_s: float | None,
                 on_diagnostic: DiagnosticCallback | None, on_progress: ProgressCallback | None,
                 keys: frozenset[Hashable] | None = None) -> None:
        self.worker = worker
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
        self.concluded = False

    async def next_frame(self) -> Any:
        """The next frame of ``self``, validated; failures become typed errors."""
        gen = self.gen
        try:
            # Checked on every frame, not only while waiting: a consumer that is slower than
            # the child keeps frames buffered, and the timeout covers consumer time too.
            if gen.channel.now() >= self.deadline:
                raise ChannelTimeout()
            frame = await gen.channel.recv(self.deadline)
        except ChannelTimeout:
            raise await self.timed_out() from None
        except ChannelInterrupted:
            raise await self.died() from None
        except ChannelEOF:
            with anyio.move_on_after(self.worker.config.kill_grace_s):
                await gen.child.exited.wait()
            if not gen.child.alive:
                raise await self.died() from None
            raise await self.violation(ChannelClosed, "child closed the protocol channel while alive") from None
        except ProtocolError as exc:
            raise await self.violation(_PROTOCOL_ERRORS.get(type(exc), ProtocolViolation), str(exc)) from None
        if isinstance(frame, (Response, Rows, Diagnostic, Progress)):
            if frame.id != self.id or frame.generation != self.gen.child.generation:
                raise await self.violation(
                    UnexpectedFrame,
                    f"{type(frame).__name__} for request_id={frame.id} generation={frame.generation} "
                    f"while request_id={self.id} generation={self.gen.child.generation} is in flight",
                )
            return frame
        raise await self.violation(UnexpectedFrame, f"unexpected {type(frame).__name__} frame during a request")


    def side_frame(self, frame: Diagnostic | Progress) -> None:
        if isinstance(frame, Diagnostic):
            if self.on_diagnostic is not None:
                self.on_diagnostic(frame)
            elif len(self.diagnostics) < KEPT_DIAGNOSTICS:
                self.diagnostics.append(frame)
            else:
                self.diagnostics_overflow += 1
        elif self.on_progress is not None:
            self.on_progress(frame)


    def account(self, frame: Response) -> None:
        """Count a request the child answered (normally or after a cancel)."""
        self.done = True
        gen = self.gen
        gen.requests += 1
        self.worker._stats.requests += 1
        charged = frame.imports if frame.imports >= 0 else int(self.command.import_like)
        gen.imports += charged
        self.worker._stats.imports += charged
        if self.keys:
            if charged > len(self.keys - gen.warm_keys):
                # The child imported a key we took for warm: it dropped that session
                # (evicted, or its process died). Trust only what this request used.
                gen.warm_keys = set(self.keys)
            elif frame.error is None:
                gen.warm_keys.update(self.keys)
        self.worker._stats.backpressure_waits += frame.write_stalls
        if not gen.first_request_done:
            gen.first_request_done = True
            self.worker._stats.first_request_s = gen.channel.now() - self.started
        gen.last_activity = self.worker.clock.now()
        # The child answered: it is not in a crash loop. The restart limit counts unplanned
        # ends with no answer between them, so a batch whose items crash the child now and
        # then never takes the worker out of rotation while it keeps serving the rest.
        self.worker._restarts_window.answered()
        self.end()


    def finish(self, frame: Response) -> None:
        """Account for a terminal response; raise the typed error it carries, if any."""
        self.account(frame)
        gen = self.gen
        error = frame.error
        if error is None:
            return
        cls = remote_error_class(error.code)
        if error.code == "worker.cancelled":
            raise self.fail(RequestCancelled(
                f"{self.command.name}: cancelled; request_id={self.id}",
                operation=self.command.name,
                request_id=self.id,
                generation=gen.child.generation,
            ))
        raise self.fail(cls(
            f"{self.command.name}: handler failed; request_id={self.id} remote_type={error.type} "
            f"remote_code={error.code}: {error.message}",
            operation=self.command.name,
            request_id=self.id,
            generation=gen.child.generation,
            remote_type=error.type,
            remote_code=error.code,
            remote_message=error.message,
            traceback=error.traceback,
            facts=error.facts,
        ))


    def end(self) -> None:
        if self.worker._op is self:
            self.worker._op = None
        gen = self.gen
        if gen.disposed:
            return
        gen.channel.idle = True
        if gen.channel.reader.buffered:
            self.worker._on_unsolicited(gen)


    def decode(self, decoder: msgspec.msgpack.Decoder, payload: Any, what: str) -> Any:
        try:
            return decoder.decode(payload)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise self.fail(ResponseDecodeError(
                f"{self.command.name}: {what} does not match the declared type: {exc}",
                operation=self.command.name,
                request_id=self.id,
                generation=self.gen.child.generation,
            )) from None


    async def ended(self) -> ExitInfo | None:
        with anyio.CancelScope(shield=True):
            await self.gen.child.exited.wait()
        self.done = True
        self.end()
        self.worker._dispose(self.gen)
        return self.gen.exit_info


    async def died(self) -> RequestError:
        child = self.gen.child
        info = await self.ended()
        assert info is not None
        name = self.command.name
        if child.kill_reason == RestartReason.RSS_HARD_LIMIT:
            limit = self.worker.policy.rss_hard_limit_bytes or 0
            rss = self.worker._rss_at_kill
            return self.fail(MemoryLimitExceeded(
                f"{name}: child exceeded the RSS hard limit and was killed; rss_bytes={rss} limit_bytes={limit}",
                operation=name,
                request_id=self.id,
                generation=child.generation,
                rss_bytes=rss,
                limit_bytes=limit,
                exit=info,
            ))
        if child.kill_reason == RestartReason.PROTOCOL_VIOLATION:
            return self.fail(UnexpectedFrame(
                f"{name}: child wrote frames while no request was in flight", operation=name,
                request_id=self.id, generation=child.generation, exit=info,
            ))
        return self.fail(WorkerCrashed(
            f"{name}: worker child ended during the request", operation=name, request_id=self.id,
            generation=child.generation, exit=info,
        ))


    async def violation(self, cls: type[ProtocolViolation], detail: str) -> RequestError:
        with anyio.CancelScope(shield=True):
            await self.gen.child.kill(RestartReason.PROTOCOL_VIOLATION)
        info = await self.ended()
        return self.fail(cls(
            f"{self.command.name}: protocol violation, child replaced: {detail}",
            operation=self.command.name,
            request_id=self.id,
            generation=self.gen.child.generation,
            exit=info,
        ))


    async def timed_out(self) -> RequestError:
        gen = self.gen
        elapsed = gen.channel.now() - self.started
        with anyio.CancelScope(shield=True):
            kept = False
            if not self.worker.policy.restart_on_timeout and self.entered:  # never after a partial request frame
                kept = await self.cancel_and_drain()
            if not kept:
                await gen.child.terminate(RestartReason.REQUEST_TIMEOUT, kill_grace_s=self.worker.config.kill_grace_s)
        info = None if kept else await self.ended()
        return self.fail(RequestTimeout(
            f"{self.command.name}: request timed out; limit_s={self.limit_s} elapsed_s={elapsed:.3f} "
            f"rows_delivered={self.rows} generation={gen.child.generation} child_replaced={not kept}",
            operation=self.command.name,
            request_id=self.id,
            generation=gen.child.generation,
            limit_s=self.limit_s or 0.0,
            elapsed_s=elapsed,
            rows_delivered=self.rows,
            exit=info,
        ))


    async def cancel_and_drain(self) -> bool:
        """Send Cancel and discard frames until the terminal response, within the cancel
        grace. True if the child answered (it stays); False if it must be killed."""
        gen = self.gen
        if gen.disposed or not gen.child.alive:
            return False
        if not gen.channel.send_nowait(self.worker._encoder.encode(Cancel(self.id, gen.child.generation))):
            return False  # the child is not reading its pipe: it could not see a cancel anyway
        deadline = gen.channel.now() + self.worker.config.cancel_grace_s
        while True:
            try:
                frame = await gen.channel.recv(deadline)
            except (ChannelTimeout, ChannelInterrupted, ChannelEOF, ProtocolError):
                return False
            if getattr(frame, "id", None) != self.id:
                return False
            if isinstance(frame, Response):
                self.account(frame)
                return True


    async def abandon(self) -> None:
        """The caller gave up on ``self`` (cancelled, broke out of a stream, a sink raised):
        cancel it in the child, and kill the child if it does not answer within the grace."""
        if not self.concluded:
            self.conclude("abandoned")
        if self.done:
            return
        with anyio.CancelScope(shield=True):
            if self.entered and await self.cancel_and_drain():
                return
            if self.gen.child.alive:
                await self.gen.child.terminate(RestartReason.CANCEL_TIMEOUT, kill_grace_s=self.worker.config.kill_grace_s)
            await self.ended()


    def conclude(self, outcome: str) -> None:
        """Record ``self``'s terminal outcome (once; a second one is traced as ``outcome_again``)."""
        self.worker._trace("outcome_again" if self.concluded else "outcome", self.gen.child.generation, self.id, outcome)
        self.concluded = True


    def fail(self, error: RequestError) -> RequestError:
        """``error`` is the terminal outcome of ``self``: record it, return it for raising."""
        self.conclude(error.code)
        return error

    def delivered(self, stream: str, count: int) -> None:
        """``count`` rows of ``stream`` went to the caller (tentatively, until the summary)."""
        self.counts[stream] = self.counts.get(stream, 0) + count
        self.rows += count
        self.worker._stats.rows_delivered += count
        self.worker._trace("rows", self.gen.child.generation, self.id, count)
