"""Errors raised by lean-worker. Catch ``WorkerError`` for all of them.

    WorkerError                          worker.error
    ├── WorkerClosed                     worker.closed
    ├── StartupError                     worker.startup.failed
    │   ├── StartupTimeout               worker.startup.timeout
    │   ├── HandshakeError               worker.startup.handshake_failed
    │   ├── SandboxUnavailable           worker.sandbox.unavailable    sandbox='required' cannot hold
    │   └── ChildNotFound                worker.child_not_found        resolve_child found no child
    ├── RestartLimitExceeded             worker.restart_limit
    └── RequestError                     (one request failed; the worker lives on)
        ├── RequestTooLarge              worker.request_too_large      nothing was sent
        ├── SchemaMismatch               worker.schema_mismatch        nothing was sent
        ├── InvalidRequest               worker.invalid_request        nothing was sent
        ├── WorkerBusy                   worker.busy                   nothing was sent
        │   └── ReentrantRequest         worker.reentrant_request      the caller holds the worker
        ├── RemoteError                  worker.handler_error          the handler raised
        │   ├── UnknownCommand           worker.unknown_command
        │   ├── BadRequest               worker.bad_request
        │   ├── LeanError                lean.*                        registered by lean_worker.lean
        │   └── (your class)             (your code)                   register_remote_error(cls)
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

A child's exception arrives as the ``RemoteError`` subclass registered for its ``code``
(``register_remote_error``; ``remote_error_class`` looks one up), else as ``RemoteError``.
The Lean errors (``LeanCrashed``, ``LeanTimeout``, ``LeanHeaderError``,
``ToolchainNotFound``, all ``LeanError``) are declared and registered by ``lean_worker.lean``
when it is imported; catch them from there.

The pool's errors are ``WorkerError``s too: ``PoolError`` (``pool.error``) with
``PoolClosed`` (``pool.closed``), ``QueueTimeout`` (``pool.queue_timeout``),
``PoolBudgetExceeded`` (``pool.rss_budget``), ``LeaseInvalidated``
(``pool.lease_invalidated``) and ``PoolUnavailable`` (``pool.unavailable``).
The batch job's errors before a batch starts are ``WorkerError``s too, declared in
``lean_worker.verify``: ``VerifyError`` (``verify.error``) with ``VerifyOptionError``
(``verify.bad_option``), ``VerifyInputError`` (``verify.bad_input``) and
``FixturesUnavailable`` (``verify.fixtures_failed``).

Every error has a stable ``code``; errors that ended a child carry its ``ExitInfo`` as
``exit`` (exit status or signal, the tail of its stderr, the request in flight and whether
work had entered the child). Messages start with what failed and carry facts as
``key=value``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

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

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle by state, not by constructor: most errors take keyword-only facts, which
        # ``Exception``'s default (``cls(*args)``) drops. A cluster node sends its outcomes'
        # errors to the driver this way (lean_worker_ray).
        return (_rebuild_error, (type(self), self.args, self.__dict__))


def _rebuild_error(cls: type[WorkerError], args: tuple[Any, ...], state: dict[str, Any]) -> WorkerError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


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


class SandboxUnavailable(StartupError):
    """The child could not build the sandbox it was required to run in (``sandbox='required'``).

    ``step`` names what failed (``unshare``, ``uid_map``, ``mount``, ``proc``...), ``path``
    the path involved, ``errno`` the system error, ``fix`` what to change on the machine.
    Not retried: the machine, not the child, has to change."""

    code = "worker.sandbox.unavailable"

    def __init__(
        self, message: str, *, step: str, fix: str, reason: str = "", path: str | None = None,
        errno: str | None = None, exit: ExitInfo | None = None,
    ) -> None:
        self.step = step
        self.fix = fix
        self.path = path
        self.errno = errno
        self.reason = reason or message
        """What failed, in one line: ``step=... errno=...: ...`` (``fix`` says what to do)."""
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


class InvalidRequest(RequestError):
    """The request does not match the command's request type, cannot be encoded, or its
    session keys cannot be computed. Nothing was sent; the child is untouched."""

    code = "worker.invalid_request"


class WorkerBusy(RequestError):
    """The request did not get the worker within its timeout (another request held it).
    Nothing was sent; ``waited_s`` and ``limit_s`` say how long it waited."""

    code = "worker.busy"

    def __init__(self, message: str, *, operation: str, waited_s: float, limit_s: float | None) -> None:
        self.waited_s = waited_s
        self.limit_s = limit_s
        super().__init__(message, operation=operation)


class ReentrantRequest(WorkerBusy):
    """The caller already holds this worker (a stream it opened is still open in the same
    task or thread): waiting for itself would never end, so it fails at once."""

    code = "worker.reentrant_request"


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


REMOTE_ERRORS: dict[str, type[RemoteError]] = {}
"""The registry: a child error's ``code`` -> the ``RemoteError`` subclass the parent raises
for it. Fill it with ``register_remote_error``; read it with ``remote_error_class``."""

_RemoteErrorT = TypeVar("_RemoteErrorT", bound=type[RemoteError])


def register_remote_error(cls: _RemoteErrorT) -> _RemoteErrorT:
    """Raise ``cls`` in the parent for a child error whose ``code`` is ``cls.code``.

    Use it as a class decorator in the module that declares an app's commands, so the class
    is registered wherever those commands are called::

        @register_remote_error
        class OutOfStock(RemoteError):
            code = "inventory.out_of_stock"

    The child raises any exception with that string ``code`` (its ``facts`` dict arrives as
    ``.facts``). Registering the same class again does nothing; another class for a code
    already taken is a ``ValueError``, a class that is not a ``RemoteError`` subclass a
    ``TypeError``. ``lean_worker.lean`` registers the ``lean.*`` codes when imported.
    """
    if not (isinstance(cls, type) and issubclass(cls, RemoteError)):
        raise TypeError(f"register_remote_error takes a RemoteError subclass; got {cls!r}")
    code = cls.__dict__.get("code")
    if not isinstance(code, str) or not code:
        raise ValueError(
            f"register_remote_error: {cls.__module__}.{cls.__qualname__} must set its own code "
            f"(a non-empty string); it has code={cls.code!r} from a base class"
        )
    taken = REMOTE_ERRORS.get(code)
    if taken is not None and taken is not cls:
        raise ValueError(
            f"register_remote_error: code {code!r} is already registered; "
            f"registered={taken.__module__}.{taken.__qualname__} new={cls.__module__}.{cls.__qualname__}"
        )
    REMOTE_ERRORS[code] = cls
    return cls


def remote_error_class(code: str) -> type[RemoteError]:
    """The class registered for a child error's ``code``; ``RemoteError`` when none is."""
    return REMOTE_ERRORS.get(code, RemoteError)


register_remote_error(UnknownCommand)
register_remote_error(BadRequest)


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
    """The leased worker's child ended while the lease was held (a crash, a timeout, an
    explicit ``cycle()``): the state the holder built is gone. Planned restarts never do
    this; they wait until the lease ends."""

    code = "pool.lease_invalidated"

    def __init__(self, message: str, *, worker: int, generation: int, current_generation: int) -> None:
        self.worker = worker
        self.generation = generation
        """The generation the lease was bound to."""
        self.current_generation = current_generation
        super().__init__(message)


class PoolUnavailable(PoolError):
    """No worker of the pool can run: every one is out of rotation after too many unplanned
    restarts (``RestartLimitExceeded``), and none is busy, so none will come free.
    ``causes`` holds each worker's own error (its ``last_exit`` says why it crashed);
    ``retry_after_s`` is when the first of them is allowed back."""

    code = "pool.unavailable"

    def __init__(self, message: str, *, causes: tuple[RestartLimitExceeded, ...], retry_after_s: float) -> None:
        self.causes = causes
        self.retry_after_s = retry_after_s
        super().__init__(message)

