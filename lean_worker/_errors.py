"""Errors raised by lean-worker. Catch ``WorkerError`` for all of them.

    WorkerError                          worker.error
    ├── WorkerClosed                     worker.closed
    ├── StartupError                     worker.startup.failed
    │   ├── StartupTimeout               worker.startup.timeout
    │   ├── HandshakeError               worker.startup.handshake_failed
    │   └── ChildNotFound                worker.child_not_found        resolve_child found no child
    ├── RestartLimitExceeded             worker.restart_limit
    └── RequestError                     (one request failed; the worker lives on)
        ├── RequestTooLarge              worker.request_too_large      nothing was sent
        ├── SchemaMismatch               worker.schema_mismatch        nothing was sent
        ├── RemoteError                  worker.handler_error          the handler raised
        │   ├── UnknownCommand           worker.unknown_command
        │   ├── BadRequest               worker.bad_request
        │   └── LeanError                lean.error                    the Lean capability failed
        │       ├── LeanCrashed          lean.crashed                  a Lean process died
        │       ├── LeanTimeout          lean.timeout                  past the check's own deadline
        │       ├── LeanHeaderError      lean.bad_header
        │       └── ToolchainNotFound    lean.toolchain_not_found
        ├── RequestCancelled             worker.cancelled
        ├── ResponseDecodeError          worker.bad_response
        ├── RequestTimeout               worker.request_timeout        child replaced
        ├── MemoryLimitExceeded          worker.rss_limit              child replaced
        ├── WorkerCrashed                worker.exit.<cause>           child replaced
        └── ProtocolViolation            protocol.*                    child replaced
            ├── CorruptStream            protocol.corrupt_stream
            ├── OversizeFrame            protocol.frame_too_large
            ├── SchemaViolation          protocol.frame_schema
            ├── UnexpectedFrame          protocol.unexpected_frame
            └── ChannelClosed            protocol.channel_closed

The pool's errors are ``WorkerError``s too: ``PoolError`` (``pool.error``) with
``PoolClosed`` (``pool.closed``), ``QueueTimeout`` (``pool.queue_timeout``),
``PoolBudgetExceeded`` (``pool.rss_budget``) and ``LeaseInvalidated``
(``pool.lease_invalidated``).

Every error has a stable ``code``; errors that ended a child carry its ``ExitInfo`` as
``exit`` (exit status or signal, the tail of its stderr, the request in flight and whether
work had entered the child). Messages start with what failed and carry facts as
``key=value``.
"""

from __future__ import annotations

from collections.abc import Mapping

from ._exit import ExitInfo

_TAIL_IN_MESSAGE = 2000


class WorkerError(Exception):
    """Base of every lean-worker error."""

    code: str = "worker.error"

    def __init__(self, message: str, *, exit: ExitInfo | None = None) -> None:
        self.exit = exit
        if exit is not None:
            message = f"{message}; {exit.describe()}"
            if exit.stderr_tail:
                message += f"\n--- child stderr (tail) ---\n{exit.stderr_tail[-_TAIL_IN_MESSAGE:]}"
        super().__init__(message)

    @property
    def stderr_tail(self) -> str:
        return self.exit.stderr_tail if self.exit else ""


class WorkerClosed(WorkerError):
    code = "worker.closed"


class StartupError(WorkerError):
    """The child could not be started or did not complete its handshake."""

    code = "worker.startup.failed"


class StartupTimeout(StartupError):
    code = "worker.startup.timeout"

    def __init__(self, message: str, *, limit_s: float, exit: ExitInfo | None = None) -> None:
        self.limit_s = limit_s
        super().__init__(message, exit=exit)


class HandshakeError(StartupError):
    code = "worker.startup.handshake_failed"

    def __init__(
        self,
        message: str,
        *,
        exit: ExitInfo | None = None,
        parent_protocol: int | None = None,
        child_protocol: int | None = None,
        child_worker: str | None = None,
    ) -> None:
        self.parent_protocol = parent_protocol
        self.child_protocol = child_protocol
        """Set when the child speaks another protocol version."""
        self.child_worker = child_worker
        """``name version`` the child announced, when it got as far as a ``Hello``."""
        super().__init__(message, exit=exit)


class RestartLimitExceeded(WorkerError):
    """Too many unplanned restarts in the window: a crash loop is stopped instead of fed."""

    code = "worker.restart_limit"

    def __init__(self, message: str, *, restarts: int, window_s: float, last_exit: ExitInfo | None) -> None:
        self.restarts = restarts
        self.window_s = window_s
        self.last_exit = last_exit
        super().__init__(message)


class RequestError(WorkerError):
    """One request failed. ``operation`` is the command name."""

    def __init__(
        self,
        message: str,
        *,
        operation: str,
        request_id: int | None = None,
        generation: int | None = None,
        exit: ExitInfo | None = None,
    ) -> None:
        self.operation = operation
        self.request_id = request_id
        self.generation = generation
        super().__init__(message, exit=exit)


class RequestTooLarge(RequestError):
    code = "worker.request_too_large"


class SchemaMismatch(RequestError):
    """The child does not serve this command with the same schema fingerprint."""

    code = "worker.schema_mismatch"


class RemoteError(RequestError):
    """The handler raised; the child is alive and keeps serving."""

    code = "worker.handler_error"

    def __init__(
        self,
        message: str,
        *,
        operation: str,
        request_id: int | None,
        generation: int | None,
        remote_type: str,
        remote_code: str,
        remote_message: str,
        traceback: str,
        facts: Mapping[str, object] | None = None,
    ) -> None:
        self.facts: dict[str, object] = dict(facts or {})
        """Typed facts the child attached (its exception's ``facts``)."""
        self.remote_type = remote_type
        self.remote_code = remote_code
        self.remote_message = remote_message
        self.traceback = traceback
        super().__init__(message, operation=operation, request_id=request_id, generation=generation)


class UnknownCommand(RemoteError):
    code = "worker.unknown_command"


class BadRequest(RemoteError):
    code = "worker.bad_request"


class LeanError(RemoteError):
    """The Lean capability failed on this request; the worker lives on.

    ``facts`` holds what the child knew (for a crash: ``cause``, ``returncode``,
    ``detail``, ``limit``; for a timeout: ``limit_s``), also as properties."""

    code = "lean.error"


class LeanCrashed(LeanError):
    code = "lean.crashed"

    @property
    def cause(self) -> str | None:
        """The exit classification of the Lean process, e.g. ``worker.exit.sigabrt``."""
        return self.facts.get("cause")  # type: ignore[return-value]

    @property
    def returncode(self) -> int | None:
        return self.facts.get("returncode")  # type: ignore[return-value]

    @property
    def detail(self) -> str | None:
        """What Lean printed before it died, e.g. ``Stack overflow detected. Aborting.``"""
        return self.facts.get("detail")  # type: ignore[return-value]

    @property
    def limit(self) -> str | None:
        """``memory`` when Lean aborted on its own memory limit (``lean -M``)."""
        return self.facts.get("limit")  # type: ignore[return-value]


class LeanTimeout(LeanError):
    code = "lean.timeout"

    @property
    def limit_s(self) -> float | None:
        return self.facts.get("limit_s")  # type: ignore[return-value]


class LeanHeaderError(LeanError):
    code = "lean.bad_header"


class ToolchainNotFound(LeanError):
    code = "lean.toolchain_not_found"


REMOTE_ERRORS: dict[str, type[RemoteError]] = {
    cls.code: cls
    for cls in (UnknownCommand, BadRequest, LeanError, LeanCrashed, LeanTimeout, LeanHeaderError, ToolchainNotFound)
}


class RequestCancelled(RequestError):
    code = "worker.cancelled"


class ResponseDecodeError(RequestError):
    """A response, summary or row did not match the command's declared type."""

    code = "worker.bad_response"


class RequestTimeout(RequestError):
    code = "worker.request_timeout"

    def __init__(
        self,
        message: str,
        *,
        operation: str,
        request_id: int,
        generation: int,
        limit_s: float,
        elapsed_s: float,
        rows_delivered: int,
        exit: ExitInfo | None,
    ) -> None:
        self.limit_s = limit_s
        self.elapsed_s = elapsed_s
        self.rows_delivered = rows_delivered
        super().__init__(message, operation=operation, request_id=request_id, generation=generation, exit=exit)


class MemoryLimitExceeded(RequestError):
    code = "worker.rss_limit"

    def __init__(
        self,
        message: str,
        *,
        operation: str,
        request_id: int,
        generation: int,
        rss_bytes: int,
        limit_bytes: int,
        exit: ExitInfo | None,
    ) -> None:
        self.rss_bytes = rss_bytes
        self.limit_bytes = limit_bytes
        super().__init__(message, operation=operation, request_id=request_id, generation=generation, exit=exit)


class WorkerCrashed(RequestError):
    """The child ended while a request was in flight. ``code`` is the exit cause."""

    code = "worker.exit"

    def __init__(self, message: str, *, operation: str, request_id: int, generation: int, exit: ExitInfo) -> None:
        super().__init__(message, operation=operation, request_id=request_id, generation=generation, exit=exit)
        self.code = exit.cause.value


class ProtocolViolation(RequestError):
    """The child broke the protocol; it was killed and will be replaced."""

    code = "protocol.violation"


class CorruptStream(ProtocolViolation):
    code = "protocol.corrupt_stream"


class OversizeFrame(ProtocolViolation):
    code = "protocol.frame_too_large"


class SchemaViolation(ProtocolViolation):
    code = "protocol.frame_schema"


class UnexpectedFrame(ProtocolViolation):
    code = "protocol.unexpected_frame"


class ChannelClosed(ProtocolViolation):
    code = "protocol.channel_closed"


class ChildNotFound(StartupError):
    """``resolve_child`` (or ``sibling``) found no worker child. ``tried`` lists every place
    it looked, with why each one did not do, in the order tried."""

    code = "worker.child_not_found"

    def __init__(self, message: str, *, tried: tuple[str, ...], hint: str = "") -> None:
        self.tried = tried
        self.hint = hint
        super().__init__(message)


class PoolError(WorkerError):
    code = "pool.error"


class PoolClosed(PoolError):
    code = "pool.closed"


class QueueTimeout(PoolError):
    """No worker became free within ``queue_timeout_s``."""

    code = "pool.queue_timeout"

    def __init__(self, message: str, *, waited_s: float, queue_depth: int) -> None:
        self.waited_s = waited_s
        self.queue_depth = queue_depth
        super().__init__(message)


class PoolBudgetExceeded(PoolError):
    """The pool's memory is over ``rss_budget_bytes`` even after cycling its idle workers."""

    code = "pool.rss_budget"

    def __init__(self, message: str, *, total_bytes: int, budget_bytes: int) -> None:
        self.total_bytes = total_bytes
        self.budget_bytes = budget_bytes
        super().__init__(message)


class LeaseInvalidated(PoolError):
    """The leased worker's child ended while the lease was held."""

    code = "pool.lease_invalidated"
