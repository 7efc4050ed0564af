"""The conformance suite's fake child: ``python -m tests.children.conformance``.

One command pair, ``PROBE_CALL`` and ``PROBE_STREAM``, whose behaviour is a *mode* read at
start-up from ``LW_CONFORMANCE_MODE``: one mode, or a comma list with one mode per
generation (generation 1 takes the first, the last repeats), so ``"ok,exit_at_start,ok"``
describes a worker whose first replacement fails to start. A request may name its own
``mode``, which wins over the start-up one: that is how the suite's random soak drives
one worker through every mode.

Modes (a stream first emits ``rows`` rows in every mode; a call has no rows):

- ``ok``: answer at once (a stream: its rows, then the summary);
- ``fail``: raise ``ValueError`` in the handler (a remote error; the child lives on);
- ``rows_then_exit``: ``os._exit(3)`` after the rows reached the pipe;
- ``rows_then_crash``: die of SIGSEGV after the rows;
- ``rows_then_hang``: sleep, never looking at cancellation (SIGTERM still ends it);
- ``hang_honours_cancel``: wait until the parent cancels, then stop with ``Cancelled``;
- ``hang_ignores_cancel``: see the cancel and go on; ignore SIGTERM too (only SIGKILL
  ends it). It writes ``conformance: cancel seen`` and ``conformance: SIGTERM ignored``
  to stderr, so a test can read in ``ExitInfo.stderr_tail`` that the supervisor sent both;
- ``exit_at_start``: ``os._exit(4)`` before the handshake;
- ``answer_then_exit``: answer as ``ok`` does, then exit with status 0 50 ms later (the
  child dies right after its answer is on the pipe).

Every mode that does not answer at once sends a diagnostic with code
``conformance.entered`` after its rows: once it is on the pipe so are the rows, and a test
waiting for it knows the handler is past them (no sleeping to guess).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import msgspec

from lean_worker_child import Call, Cancelled, RequestContext, Stream, WorkerApp, _boot

MODE_ENV = "LW_CONFORMANCE_MODE"
MODES = (
    "ok",
    "fail",
    "rows_then_exit",
    "rows_then_crash",
    "rows_then_hang",
    "hang_honours_cancel",
    "hang_ignores_cancel",
    "exit_at_start",
    "answer_then_exit",
)
HANG_LIMIT_S = 60.0
"""No mode hangs longer: a child the parent failed to end still goes away."""

# -- declarations --------------------------------------------------------------------------------


class Probe(msgspec.Struct, frozen=True):
    rows: int = 3
    pad: int = 0
    """Bytes of padding in every row (for backpressure)."""
    mode: str = ""
    """Overrides the start-up mode for this request ("": keep it)."""


class Row(msgspec.Struct, frozen=True, array_like=True):
    i: int
    pad: bytes = b""


class Answer(msgspec.Struct, frozen=True):
    mode: str
    pid: int
    generation: int
    rows: int = 0


PROBE_CALL = Call("conformance_call", request=Probe, response=Answer)
PROBE_STREAM = Stream("conformance_stream", request=Probe, row=Row, summary=Answer)

# -- handlers ------------------------------------------------------------------------------------


def _startup_mode() -> str:
    modes = [m.strip() for m in os.environ.get(MODE_ENV, "ok").split(",")]
    generation = (_boot.current or _boot.load_bootstrap()).generation
    mode = modes[min(generation, len(modes)) - 1]
    if mode not in MODES:
        print(f"conformance: unknown mode {mode!r}; modes: {MODES}", file=sys.stderr, flush=True)
        os._exit(2)
    return mode


STARTUP_MODE = _startup_mode() if __name__ == "__main__" else "ok"

app = WorkerApp("lean-worker-test-conformance", version="1")


def _note(text: str) -> None:
    print(f"conformance: {text}", file=sys.stderr, flush=True)


def _run(request: Probe, ctx: RequestContext, stream: bool) -> Answer:
    mode = request.mode or STARTUP_MODE
    if stream:
        pad = b"x" * request.pad
        for i in range(request.rows):
            ctx.emit(Row(i, pad))
    answer = Answer(mode, os.getpid(), ctx.generation, request.rows if stream else 0)
    if mode == "ok":
        return answer
    if mode == "answer_then_exit":
        threading.Timer(0.05, os._exit, (0,)).start()
        return answer
    if mode == "fail":
        raise ValueError(f"conformance: mode fail after {answer.rows} rows")
    if mode == "hang_ignores_cancel":
        signal.signal(signal.SIGTERM, lambda *_: _note("SIGTERM ignored"))
    ctx.diagnostic(f"{mode} after {answer.rows} rows", code="conformance.entered")
    deadline = time.monotonic() + HANG_LIMIT_S
    if mode == "rows_then_exit":
        os._exit(3)
    elif mode == "rows_then_crash":
        signal.signal(signal.SIGSEGV, signal.SIG_DFL)  # no faulthandler dump: just die
        os.kill(os.getpid(), signal.SIGSEGV)
    elif mode == "rows_then_hang":
        time.sleep(HANG_LIMIT_S)
    elif mode == "hang_honours_cancel":
        while time.monotonic() < deadline:
            ctx.check_cancelled()
            time.sleep(0.005)
    elif mode == "hang_ignores_cancel":
        seen = False
        while time.monotonic() < deadline:
            if not seen and ctx.cancelled:
                seen = True
                _note("cancel seen")
            time.sleep(0.005)
    raise Cancelled(f"conformance: mode {mode} was not ended within {HANG_LIMIT_S} s")


@app.handler(PROBE_CALL)
def probe_call(request: Probe, ctx: RequestContext) -> Answer:
    return _run(request, ctx, stream=False)


@app.handler(PROBE_STREAM)
def probe_stream(request: Probe, ctx: RequestContext) -> Answer:
    return _run(request, ctx, stream=True)


if __name__ == "__main__":
    if STARTUP_MODE == "exit_at_start":
        _note("exiting before the handshake")
        os._exit(4)
    app.serve()
