"""``WorkerApp``: declare handlers for typed commands and serve them to a supervising parent."""

from __future__ import annotations

import faulthandler
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

import msgspec

from lean_worker_protocol import (
    PROTOCOL_VERSION,
    Call,
    Cancel,
    Command,
    CommandInfo,
    ErrorInfo,
    NIL,
    FrameTooLarge,
    Hello,
    ProtocolError,
    Request,
    Response,
    SANDBOX_ERROR_MARK,
    SANDBOX_EXIT_CODE,
    Shutdown,
    Stream,
    Welcome,
)
from lean_worker_protocol.probe import DOCTOR, SEVERITIES, DoctorItem, DoctorReport, DoctorRequest

from . import _boot, _sandbox
from ._connection import Cancelled, Connection, ProtocolBroken, RequestContext

_MESSAGE_LIMIT = 4 * 1024
_TRACEBACK_LIMIT = 32 * 1024

Handler = Callable[[Any, RequestContext], Any]
DoctorContributor = Callable[[], Iterable[DoctorItem]]
"""Returns (or yields) what one capability diagnoses about itself; see ``WorkerApp.doctor``."""

_BUILTIN = frozenset({DOCTOR.name})


@dataclass(frozen=True)
class _Registered:
    command: Command
    handler: Handler


def _bounded(text: str, limit: int, *, keep_tail: bool = False) -> str:
    if len(text) <= limit:
        return text
    return ("..." + text[-limit:]) if keep_tail else (text[:limit] + "...")


def _error(exc: BaseException, code: str | None = None) -> ErrorInfo:
    own = getattr(exc, "code", None)  # only string codes: HTTPError.code is an int status
    return ErrorInfo(
        type=f"{type(exc).__module__}.{type(exc).__qualname__}",
        code=code or (own if isinstance(own, str) and own else None) or "worker.handler_error",
        message=_bounded(str(exc), _MESSAGE_LIMIT),
        traceback=_bounded("".join(traceback.format_exception(exc)), _TRACEBACK_LIMIT, keep_tail=True),
        facts=_facts(exc),
    )


def _sandbox_item(report: _sandbox.SandboxReport) -> DoctorItem:
    """What the sandbox this child runs in enforces (a child without one has no item: the
    parent knows whether it asked for one)."""
    unbounded = not report.nproc_enforced and report.pid_max is None
    return DoctorItem(
        "worker.sandbox", "warning" if unbounded else "ok", "sandboxed: " + "; ".join(report.enforced()),
        "Linux 6.14+ bounds the processes of host root's sandboxes (a per-namespace pid_max); "
        "or run the workers as another user" if unbounded else "",
        data={"active": "true", "readable": str(len(report.readable)), "pid_max": str(report.pid_max or ""),
              "nproc_enforced": str(report.nproc_enforced).lower(), "scratch_bytes": str(report.scratch_bytes),
              "missing": ", ".join(report.missing)[:1000]},
    )


def _facts(exc: BaseException) -> dict[str, str | int | float | bool | None]:
    """An exception's ``facts`` mapping, kept to scalar values (anything else is dropped)."""
    facts = getattr(exc, "facts", None)
    if not isinstance(facts, dict):
        return {}
    return {
        str(k): (_bounded(v, _MESSAGE_LIMIT) if isinstance(v, str) else v)
        for k, v in facts.items()
        if v is None or isinstance(v, str | int | float | bool)
    }


def _info(command: Command) -> CommandInfo:
    return CommandInfo(command.name, command.kind, command.import_like, command.fingerprint, command.streams)  # type: ignore[arg-type]


class WorkerApp:
    """The commands one worker child serves.

    ::

        app = WorkerApp("my-tool", version="1.2.0")

        @app.handler(ADD)
        def add(request: Add, ctx: RequestContext) -> int:
            return request.a + request.b

        if __name__ == "__main__":
            app.serve()

    A handler gets the decoded request and a ``RequestContext``; a ``Call`` handler returns
    the response, a ``Stream`` handler emits rows through the context and returns the
    summary. An exception in a handler becomes a typed error response; the child lives on.

    Every app also serves the built-in ``worker.doctor`` (``lean_worker_protocol.probe.DOCTOR``):
    the items of the contributors registered with ``@app.doctor``.
    """

    def __init__(self, name: str, version: str = "0") -> None:
        self.name = name
        self.version = version
        self._commands: dict[str, _Registered] = {DOCTOR.name: _Registered(DOCTOR, self._serve_doctor)}
        self._doctors: list[DoctorContributor] = []

    def handler(self, command: Command) -> Callable[[Handler], Handler]:
        if not isinstance(command, (Call, Stream)):
            raise TypeError(f"handler() takes a Call or Stream declaration; got {command!r}")

        def register(fn: Handler) -> Handler:
            if command.name in self._commands:
                raise ValueError(f"command {command.name!r} already has a handler")
            self._commands[command.name] = _Registered(command, fn)
            return fn

        return register

    def doctor(self, fn: DoctorContributor) -> DoctorContributor:
        """Register a doctor contributor: ``fn()`` returns or yields ``DoctorItem``s.

        ::

            @app.doctor
            def dictionary() -> Iterator[DoctorItem]:
                yield DoctorItem("wordstat.stopwords", "ok", f"{len(STOPWORDS)} stop words")

        Contributors run in registration order on each ``worker.doctor`` request. One that
        raises, or returns something other than ``DoctorItem``s, becomes an error item
        named after it; the others still report.
        """
        self._doctors.append(fn)
        return fn

    def _serve_doctor(self, request: DoctorRequest, ctx: RequestContext) -> DoctorReport:
        items: list[DoctorItem] = []
        for fn in self._doctors:
            name = getattr(fn, "__qualname__", repr(fn))
            try:
                produced = list(fn())
            except Exception as exc:
                message = _bounded(f"doctor contributor raised {type(exc).__name__}: {exc}", _MESSAGE_LIMIT)
                items.append(DoctorItem(name, "error", message, "a bug in the contributor: call it in the child's environment to see the traceback"))
                continue
            for item in produced:
                if isinstance(item, DoctorItem) and item.severity in SEVERITIES:
                    items.append(item)
                else:
                    message = f"doctor contributor produced {item!r:.200}, not a DoctorItem with a known severity"
                    items.append(DoctorItem(name, "error", message))
        if _boot.sandbox_report is not None:
            items.append(_sandbox_item(_boot.sandbox_report))
        return DoctorReport(self.name, self.version, items)

    @property
    def commands(self) -> tuple[Command, ...]:
        """The app's own commands (the built-in ``worker.doctor`` is served but not listed)."""
        return tuple(r.command for r in self._commands.values() if r.command.name not in _BUILTIN)

    def command_infos(self) -> tuple[CommandInfo, ...]:
        return tuple(_info(c) for c in self.commands)

    def serve(self, *, readable: Iterable[str] = ()) -> NoReturn:
        """Run as a supervised child until the parent shuts us down. Never returns.

        ``readable``: paths this app reads after start-up (a toolchain, data files), made
        visible read-only when the parent asks for a sandbox; the interpreter and its
        packages always are. Call ``serve`` before starting any thread."""
        boot = _boot.load_bootstrap()
        _boot.tie_to_parent(boot.parent_pid)
        rlimits = boot.rlimits
        if boot.sandbox is not None:
            try:
                _boot.sandbox_report = _sandbox.enter(boot.sandbox, readable, (boot.read_fd, boot.write_fd))
            except _sandbox.SandboxError as exc:
                print(SANDBOX_ERROR_MARK + msgspec.json.encode(exc.failure).decode(), file=sys.stderr, flush=True)
                os._exit(SANDBOX_EXIT_CODE)
            rlimits = _sandbox.rlimits(rlimits, boot.sandbox)
        try:
            _boot.apply_rlimits(rlimits, lock=boot.sandbox is not None)
        except (ValueError, OSError) as exc:
            print(f"lean-worker child: cannot apply rlimits {boot.rlimits}: {exc}", file=sys.stderr)
            sys.exit(_boot.EXIT_NOT_SUPERVISED)
        faulthandler.enable(all_threads=True)
        os.set_inheritable(boot.read_fd, False)
        os.set_inheritable(boot.write_fd, False)
        _boot.start_watchdog(boot.read_fd)
        conn = Connection(boot.read_fd, boot.write_fd, boot.max_frame_bytes)
        try:
            code = _Server(self, conn).run()
        except (ProtocolBroken, ProtocolError) as exc:
            print(f"lean-worker child: protocol broken: {exc}", file=sys.stderr)
            code = _boot.EXIT_PROTOCOL
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class _Server:
    def __init__(self, app: WorkerApp, conn: Connection) -> None:
        self.app = app
        self.conn = conn
        self.payload_encoder = msgspec.msgpack.Encoder()

    def run(self) -> int:
        conn = self.conn
        conn.send(
            Hello(
                PROTOCOL_VERSION,
                self.app.name,
                self.app.version,
                os.getpid(),
                (*self.app.command_infos(), _info(DOCTOR)),  # the built-in, announced last
                conn.max_frame_bytes,
            )
        )
        welcome = conn.read_frame()
        if welcome is None:
            _boot.kill_own_group()
        if not isinstance(welcome, Welcome):
            raise ProtocolBroken(f"expected Welcome, got {type(welcome).__name__}")
        if welcome.protocol_version != PROTOCOL_VERSION:
            raise ProtocolBroken(
                f"protocol version mismatch: child={PROTOCOL_VERSION} parent={welcome.protocol_version}"
            )
        conn.row_batch_rows = max(1, welcome.row_batch_rows)
        conn.row_batch_bytes = max(1, welcome.row_batch_bytes)
        conn.flush_interval_s = max(0.001, welcome.row_flush_interval_s)

        while not conn.shutdown_requested:
            frame = conn.read_frame()
            if frame is None:  # parent gone without a Shutdown: take our helpers down with us
                _boot.kill_own_group()
            if isinstance(frame, Request):
                self.handle(frame)
            elif isinstance(frame, Shutdown):
                return 0
            elif isinstance(frame, Cancel):
                continue  # the request it names already finished
            else:
                raise ProtocolBroken(f"unexpected {type(frame).__name__} frame from parent")
        return 0

    def handle(self, request: Request) -> None:
        started = time.perf_counter()
        conn = self.conn
        registered = self.app._commands.get(request.command)
        ctx: RequestContext | None = None
        payload: bytes | None = None
        error: ErrorInfo | None = None
        stalls_before = conn.stalls
        if registered is None:
            error = ErrorInfo(
                "UnknownCommand",
                "worker.unknown_command",
                f"worker {self.app.name!r} has no command {request.command!r}; "
                f"serves: {sorted(self.app._commands)}",
            )
        else:
            command = registered.command
            try:
                value = command.request_decoder.decode(request.payload)
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
                error = ErrorInfo("BadRequest", "worker.bad_request", f"cannot decode request for {command.name!r}: {exc}")
            else:
                ctx = RequestContext(conn, request, command)
                conn.active = ctx  # a plain reference swap; the flusher reads it under the lock
                try:
                    result = registered.handler(value, ctx)
                    payload = self.payload_encoder.encode(result)
                except Cancelled as exc:
                    error = _error(exc, "worker.cancelled")
                except ProtocolBroken:
                    raise
                except Exception as exc:
                    error = _error(exc)
        with conn.lock:
            rows: dict[str, int] = {}
            if ctx is not None:
                try:
                    ctx._flush_all_locked()
                except FrameTooLarge as exc:
                    ctx.deferred_error = ctx.deferred_error or exc
                if ctx.deferred_error is not None and error is None:
                    error, payload = _error(ctx.deferred_error), None
                rows = ctx.row_counts()
            conn.active = None
            response = Response(
                request.id,
                request.generation,
                NIL if payload is None else msgspec.Raw(payload),
                error,
                rows,
                time.perf_counter() - started,
                conn.stalls - stalls_before,
                -1 if ctx is None else ctx.imports,
            )
            try:
                data = conn.encoder.encode(response)
            except FrameTooLarge as exc:
                data = conn.encoder.encode(
                    msgspec.structs.replace(response, payload=NIL, error=_error(exc, "worker.response_too_large"))
                )
            conn.write_locked(data)
