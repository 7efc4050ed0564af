"""Test worker child for streaming and restart-policy tests: ``python -m tests.children.workload``.

The command declarations live here too, so the tests import the exact declarations the
child serves. Module globals count what the child saw (requests, imports, cancellations,
memory held); ``STATUS`` reports them, so a test can check what happened inside the child
and not only what the parent observed.
"""

from __future__ import annotations

import os
import sys
import time

import msgspec

from lean_worker_child import Call, Cancelled, RequestContext, Stream, WorkerApp

# -- declarations --------------------------------------------------------------------------------


class RowsRequest(msgspec.Struct, frozen=True):
    n: int
    sleep_s: float = 0.0
    """Sleep between rows (the stream then takes about ``n * sleep_s``)."""
    pad: int = 0
    """Bytes of padding in every row (heavy rows for memory tests)."""
    diagnostic_every: int = 0
    """After every ``k`` rows, a diagnostic whose message says how many rows came before it."""
    progress_every: int = 0
    """After every ``k`` rows, a progress step of phase ``"rows-<k>"`` (a phase change is never coalesced)."""
    honour_cancel: bool = True


class Row(msgspec.Struct, frozen=True, array_like=True):
    i: int
    pad: bytes = b""


class RowsSummary(msgspec.Struct, frozen=True):
    emitted: int


class MultiRequest(msgspec.Struct, frozen=True):
    n: int
    note_every: int = 10


class Note(msgspec.Struct, frozen=True, array_like=True):
    after: int
    text: str


class MultiSummary(msgspec.Struct, frozen=True):
    evens: int
    odds: int
    notes: int


class SpamRequest(msgspec.Struct, frozen=True):
    lines: int
    marker: str


class FloodRequest(msgspec.Struct, frozen=True):
    total_bytes: int
    marker: str
    chunk_bytes: int = 64 * 1024


class Load(msgspec.Struct, frozen=True):
    name: str


class Hold(msgspec.Struct, frozen=True):
    mib: int
    linger_s: float = 0.0
    """Keep running this long after allocating (honours cancellation meanwhile)."""


class Sleep(msgspec.Struct, frozen=True):
    seconds: float


class Fail(msgspec.Struct, frozen=True):
    message: str


class Exit(msgspec.Struct, frozen=True):
    code: int


class MaybeExit(msgspec.Struct, frozen=True):
    code: int | None = None
    """Exit with this status; ``None``: answer 0 (a healthy item of a batch)."""


class StatusRequest(msgspec.Struct, frozen=True):
    pass


class Status(msgspec.Struct, frozen=True):
    pid: int
    generation: int
    requests: int
    """Requests this process started handling, this one included."""
    loads: int
    cancels_seen: int
    """Requests that stopped because they saw the parent's cancel."""
    held_mib: int


ROWS = Stream("rows", request=RowsRequest, row=Row, summary=RowsSummary)
MULTI = Stream("multi", request=MultiRequest, streams={"evens": Row, "odds": Row, "notes": Note}, summary=MultiSummary)
SPAM = Stream("spam", request=SpamRequest, row=Row, summary=RowsSummary)
"""Rows interleaved with print() spam on stdout (and bytes that look like a frame header)."""
FLOOD = Stream("flood", request=FloodRequest, row=Row, summary=RowsSummary)
"""Write ``total_bytes`` to stderr in chunks, one row per chunk, then a last line with the marker."""
LOAD = Call("load", request=Load, response=int, import_like=True)
"""An import-like command (what a Lean ``import`` is to the restart policy); returns this process's load count."""
KEYED_LOAD = Call("keyed_load", request=Load, response=int, session_keys=lambda req: [req.name])
"""Like a Lean check: loads ``name`` once per process and reuses it after; charges the
import only when it really loads. Returns this process's load count."""
HOLD = Call("hold", request=Hold, response=int)
"""Allocate ``mib`` MiB, touch every page and keep it; returns the MiB held in total."""
SLEEP = Call("sleep", request=Sleep, response=float)
"""Sleep, checking ``ctx.cancelled`` every 10 ms."""
SLEEP_IGNORING_CANCEL = Call("sleep_ignoring_cancel", request=Sleep, response=float)
"""Sleep without ever looking at cancellation."""
FAIL = Call("fail", request=Fail, response=int)
"""Raise ``ValueError(message)``."""
EXIT = Call("exit", request=Exit, response=int)
"""End the process at once with ``os._exit(code)`` (a crash from the parent's view)."""
MAYBE_EXIT = Call("maybe_exit", request=MaybeExit, response=int)
"""``EXIT`` for an item with a ``code``, an answer of 0 for one without: a batch of both."""
STATUS = Call("status", request=StatusRequest, response=Status)

# -- handlers ------------------------------------------------------------------------------------

app = WorkerApp("lean-worker-test-workload", version="1")

_requests = 0
_loads = 0
_cancels_seen = 0
_held: list[bytes] = []


def _count_request() -> None:
    global _requests
    _requests += 1


def _stop_if_cancelled(ctx: RequestContext) -> None:
    global _cancels_seen
    if ctx.cancelled:
        _cancels_seen += 1
        raise Cancelled(f"request {ctx.request_id} cancelled")


@app.handler(ROWS)
def rows(request: RowsRequest, ctx: RequestContext) -> RowsSummary:
    _count_request()
    pad = b"x" * request.pad
    check_every = 1 if request.sleep_s else 1024
    for i in range(request.n):
        if request.honour_cancel and i % check_every == 0:
            _stop_if_cancelled(ctx)
        ctx.emit(Row(i, pad))
        done = i + 1
        if request.diagnostic_every and done % request.diagnostic_every == 0:
            ctx.diagnostic(f"after {done} rows", severity="warning", code="workload.checkpoint")
        if request.progress_every and done % request.progress_every == 0:
            ctx.progress(f"rows-{done}", done, request.n)
        if request.sleep_s:
            time.sleep(request.sleep_s)
    return RowsSummary(request.n)


@app.handler(MULTI)
def multi(request: MultiRequest, ctx: RequestContext) -> MultiSummary:
    _count_request()
    notes = 0
    for i in range(request.n):
        ctx.emit(Row(i), "evens" if i % 2 == 0 else "odds")
        if request.note_every and (i + 1) % request.note_every == 0:
            ctx.emit(Note(i + 1, f"{i + 1} rows so far"), "notes")
            notes += 1
    return MultiSummary((request.n + 1) // 2, request.n // 2, notes)


@app.handler(SPAM)
def spam(request: SpamRequest, ctx: RequestContext) -> RowsSummary:
    _count_request()
    for i in range(request.lines):
        print(f"{request.marker} line {i}")
        if i % 100 == 0:
            # Bytes shaped like a frame header announcing a tiny body, then garbage: on a
            # protocol that shared stdout this would desynchronise the parent's reader.
            sys.stdout.flush()
            sys.stdout.buffer.write(b"\x00\x00\x00\x03\x93\xa3bad\n")
            sys.stdout.buffer.flush()
        ctx.emit(Row(i))
    print(f"{request.marker} done", flush=True)
    return RowsSummary(request.lines)


@app.handler(FLOOD)
def flood(request: FloodRequest, ctx: RequestContext) -> RowsSummary:
    _count_request()
    line = b"e" * 127 + b"\n"
    chunk = line * max(1, request.chunk_bytes // len(line))
    written = 0
    chunks = 0
    while written < request.total_bytes:
        data = chunk[: request.total_bytes - written]
        view = memoryview(data)
        while view:
            view = view[os.write(2, view) :]
        written += len(data)
        ctx.emit(Row(chunks))
        chunks += 1
    os.write(2, f"\n{request.marker}\n".encode())
    return RowsSummary(chunks)


@app.handler(LOAD)
def load(request: Load, ctx: RequestContext) -> int:
    global _loads
    _count_request()
    _loads += 1
    return _loads


_loaded: set[str] = set()


@app.handler(KEYED_LOAD)
def keyed_load(request: Load, ctx: RequestContext) -> int:
    global _loads
    _count_request()
    if request.name in _loaded:
        ctx.charge_imports(0)
    else:
        _loaded.add(request.name)
        _loads += 1
        ctx.charge_imports(1)
    return _loads


@app.handler(HOLD)
def hold(request: Hold, ctx: RequestContext) -> int:
    _count_request()
    # Repetition writes every byte, so the pages are resident (bytearray(n) would only map
    # zero pages that RSS does not count).
    for _ in range(request.mib):
        _held.append(b"\x01" * (1024 * 1024))
    deadline = time.monotonic() + request.linger_s
    while time.monotonic() < deadline:
        _stop_if_cancelled(ctx)
        time.sleep(0.01)
    return len(_held)


@app.handler(SLEEP)
def sleep(request: Sleep, ctx: RequestContext) -> float:
    _count_request()
    started = time.monotonic()
    deadline = started + request.seconds
    while time.monotonic() < deadline:
        _stop_if_cancelled(ctx)
        time.sleep(0.01)
    return time.monotonic() - started


@app.handler(SLEEP_IGNORING_CANCEL)
def sleep_ignoring_cancel(request: Sleep, ctx: RequestContext) -> float:
    _count_request()
    started = time.monotonic()
    time.sleep(request.seconds)
    return time.monotonic() - started


@app.handler(FAIL)
def fail(request: Fail, ctx: RequestContext) -> int:
    _count_request()
    raise ValueError(request.message)


@app.handler(EXIT)
def exit_now(request: Exit, ctx: RequestContext) -> int:
    _count_request()
    sys.stderr.write(f"workload: exiting with status {request.code}\n")
    sys.stderr.flush()
    os._exit(request.code)


@app.handler(MAYBE_EXIT)
def maybe_exit(request: MaybeExit, ctx: RequestContext) -> int:
    if request.code is None:
        _count_request()
        return 0
    return exit_now(Exit(request.code), ctx)


@app.handler(STATUS)
def status(request: StatusRequest, ctx: RequestContext) -> Status:
    _count_request()
    return Status(os.getpid(), ctx.generation, _requests, _loads, _cancels_seen, len(_held))


if __name__ == "__main__":
    app.serve()
