"""A worker child that fails on request: ``python -m tests.children.faulty``.

Each command misbehaves in one way a real child can (a native crash, an abort, an exit in the
middle of a request, a hang in native code, garbage on the protocol pipe...). Before it does,
it writes a marker line to stderr, so the tests can check that the parent kept the child's
last words in ``ExitInfo.stderr_tail``.

The declarations live here, beside the handlers; the tests import them from this module
(``serve`` only runs under ``__main__``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct
import subprocess
import sys
import time
from typing import Literal

import msgspec

from lean_worker_child import RequestContext, WorkerApp, popen_kwargs
from lean_worker_child import _boot
from lean_worker_protocol import Bootstrap, Call, Stream


def _bootstrap() -> Bootstrap:
    """The facts the parent passed this child (the runtime took the variable out of the
    environment when it was imported), also for entry points that never serve."""
    return _boot.current or _boot.load_bootstrap()


class Text(msgspec.Struct, frozen=True):
    text: str = ""


class Fault(msgspec.Struct, frozen=True):
    note: str = ""
    """Written to stderr (with a ``faulty:`` prefix) right before the fault."""


class Exit(msgspec.Struct, frozen=True):
    code: int
    how: Literal["os._exit", "sys.exit"] = "os._exit"
    note: str = ""


class Sleep(msgspec.Struct, frozen=True):
    seconds: float
    native: bool = False
    """Sleep inside libc ``usleep`` through ctypes: busy in native code, deaf to Python."""
    hold_gil: bool = False
    """With ``native``: keep the GIL during the sleep (``ctypes.PyDLL``), as a native library
    called without releasing it does, so no other thread of the child runs Python either."""
    ignore_sigterm: bool = False
    ready_path: str | None = None
    """Created right before the sleep starts, so a test knows the child is in it."""
    note: str = ""


class RowsThen(msgspec.Struct, frozen=True):
    """Emit ``rows`` rows, make sure they left the child, then do ``then``."""

    rows: int
    then: Literal["sigkill", "sleep", "return"]
    sleep: Sleep | None = None
    note: str = ""


class Row(msgspec.Struct, frozen=True, array_like=True):
    i: int


class Spawn(msgspec.Struct, frozen=True):
    die_with_child: bool = False
    """Start the grandchild with ``lean_worker_child.popen_kwargs()``."""


class BigRow(msgspec.Struct, frozen=True):
    size: int


class Blob(msgspec.Struct, frozen=True, array_like=True):
    data: bytes


ECHO = Call("echo", request=Text, response=Text)
FAIL = Call("fail", request=Text, response=Text)
"""Raise ``ValueError(text)`` in the handler: a handler error, the child lives on."""
SEGFAULT = Call("segfault", request=Fault, response=Text)
ABORT = Call("abort", request=Fault, response=Text)
EXIT = Call("exit", request=Exit, response=Text)
SLEEP = Call("sleep", request=Sleep, response=Text)
ROWS_THEN = Stream("rows_then", request=RowsThen, row=Row, summary=Text)
SPAWN = Call("spawn_grandchild", request=Spawn, response=int)
"""Start ``sleep 1000`` and return its pid, leaving it running."""
GARBAGE = Call("garbage", request=Fault, response=Text)
"""Write bytes that are not msgpack to the protocol pipe, then wait to be killed."""
OVERSIZE_HEADER = Call("oversize_header", request=Fault, response=Text)
"""Write a frame header announcing a body larger than the maximum frame, then wait."""
WRONG_SCHEMA = Call("wrong_schema", request=Fault, response=Text)
"""Write a well-formed msgpack frame that is no frame of the protocol, then wait."""
BIG_ROW = Stream("big_row", request=BigRow, row=Blob, summary=Text)
"""Emit one row of ``size`` bytes (the child refuses it if it exceeds the maximum frame)."""

NOT_SERVED = Call("not_served", request=Text, response=Text)
"""Declared but deliberately given no handler."""

app = WorkerApp("faulty", version="1")


def misbehaving_bootstrap() -> Bootstrap | None:
    """For the small entry points beside this module (``silent``, ``early_exit``,
    ``bad_version``): they take the generations on which to misbehave as arguments (none:
    always) and serve this app on the others, so a test can watch a worker recover.
    Returns the bootstrap when this generation misbehaves, else ``None``."""
    boot = _bootstrap()
    generations = {int(arg) for arg in sys.argv[1:]}
    return boot if not generations or boot.generation in generations else None


def _note(text: str) -> None:
    if text:
        print(f"faulty: {text}", file=sys.stderr, flush=True)


def _sleep(request: Sleep) -> None:
    if request.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _note(request.note)
    if request.ready_path:
        with open(request.ready_path, "w") as fh:
            fh.write(str(os.getpid()))
    if request.native:
        libc = ctypes.PyDLL(None) if request.hold_gil else ctypes.CDLL(None)
        # One call, not a loop: between calls the interpreter would hand the GIL to the
        # child's other threads. glibc's usleep takes any 32-bit count of microseconds.
        libc.usleep(ctypes.c_uint(min(int(request.seconds * 1_000_000), 2**32 - 1)))
    else:
        time.sleep(request.seconds)


def _protocol_fd() -> int:
    """The child's end of the protocol pipe, bypassing the runtime's framing."""
    return _bootstrap().write_fd


def _max_frame_bytes() -> int:
    return _bootstrap().max_frame_bytes


def _write_raw_then_wait(data: bytes, note: str) -> Text:
    _note(note)
    os.write(_protocol_fd(), data)
    time.sleep(60)  # the parent kills us long before this ends
    return Text("still here")


@app.handler(ECHO)
def echo(request: Text, ctx: RequestContext) -> Text:
    return request


@app.handler(FAIL)
def fail(request: Text, ctx: RequestContext) -> Text:
    raise ValueError(request.text)


@app.handler(SEGFAULT)
def segfault(request: Fault, ctx: RequestContext) -> Text:
    _note(request.note)
    ctypes.string_at(0)  # reads address 0: SIGSEGV in native code
    return Text("unreachable")


@app.handler(ABORT)
def abort(request: Fault, ctx: RequestContext) -> Text:
    _note(request.note)
    os.abort()


@app.handler(EXIT)
def exit_(request: Exit, ctx: RequestContext) -> Text:
    _note(request.note)
    if request.how == "sys.exit":
        sys.exit(request.code)
    os._exit(request.code)


@app.handler(SLEEP)
def sleep(request: Sleep, ctx: RequestContext) -> Text:
    _sleep(request)
    return Text("slept")


@app.handler(ROWS_THEN)
def rows_then(request: RowsThen, ctx: RequestContext) -> Text:
    if request.sleep is not None and request.sleep.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # before any row: deaf once rows arrive
    for i in range(request.rows):
        ctx.emit(Row(i))
    # A diagnostic is written after every row emitted before it: once it is on the pipe,
    # so are the rows.
    ctx.diagnostic(f"emitted {request.rows} rows", code="faulty.rows_sent")
    _note(request.note)
    if request.then == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif request.then == "sleep":
        _sleep(request.sleep or Sleep(60))
    return Text(f"emitted {request.rows}")


@app.handler(SPAWN)
def spawn(request: Spawn, ctx: RequestContext) -> int:
    kwargs = popen_kwargs() if request.die_with_child else {}
    proc = subprocess.Popen(
        ["sleep", "1000"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs
    )
    return proc.pid


@app.handler(GARBAGE)
def garbage(request: Fault, ctx: RequestContext) -> Text:
    # A valid header for a 16-byte body of 0xc1, the one byte msgpack never uses.
    return _write_raw_then_wait(struct.pack(">I", 16) + b"\xc1" * 16, request.note)


@app.handler(OVERSIZE_HEADER)
def oversize_header(request: Fault, ctx: RequestContext) -> Text:
    return _write_raw_then_wait(struct.pack(">I", _max_frame_bytes() + 1), request.note)


@app.handler(WRONG_SCHEMA)
def wrong_schema(request: Fault, ctx: RequestContext) -> Text:
    body = msgspec.msgpack.encode(["no_such_frame", 1, 2, 3])
    return _write_raw_then_wait(struct.pack(">I", len(body)) + body, request.note)


@app.handler(BIG_ROW)
def big_row(request: BigRow, ctx: RequestContext) -> Text:
    ctx.emit(Blob(b"x" * request.size))
    return Text("emitted a big row")


if __name__ == "__main__":
    app.serve()
