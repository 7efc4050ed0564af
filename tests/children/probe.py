"""A worker child that reports on itself and bends the protocol: ``python -m tests.children.probe``.

It answers questions only the child can answer (which modules it imported, its environment,
its resource limits), emits rows in the shapes the batching tests need (a generator through
``emit_many``, small rows then one too large for any frame, an endless trickle), writes a
well-formed frame that names the wrong request or generation, and naps for a few
milliseconds (a call slower than the parent's busy-poll budget).

Its handshake also announces ``GHOST``, a command it has no handler for, so a test can reach
the child's own ``worker.unknown_command`` answer past the parent's fingerprint check.

The declarations live here, beside the handlers; the tests import them from this module
(``serve`` only runs under ``__main__``).
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Iterator
from typing import Literal

import msgspec

from lean_worker_child import RequestContext, WorkerApp
from lean_worker_child import _boot
from lean_worker_protocol import NIL, Call, CommandInfo, Diagnostic, FrameEncoder, Response, Stream


class Empty(msgspec.Struct, frozen=True):
    pass


class Text(msgspec.Struct, frozen=True):
    text: str = ""


class Item(msgspec.Struct, frozen=True, array_like=True):
    i: int
    pad: bytes = b""


class Emitted(msgspec.Struct, frozen=True):
    count: int


class Many(msgspec.Struct, frozen=True):
    n: int
    pad: int = 0
    """Bytes of padding in every row."""


class OversizeLater(msgspec.Struct, frozen=True):
    before: int
    """Small rows emitted before the oversize one (at least 1: the first batch is one row)."""
    size: int
    """Padding of the oversize row: above the maximum frame, it fits no frame at all."""
    after: int = 0
    """Small rows emitted after it (numbered on from ``before + 1``)."""


class Trickle(msgspec.Struct, frozen=True):
    sleep_s: float
    n: int | None = None
    """Rows to emit; ``None``: until cancelled or killed."""


class StaleFrame(msgspec.Struct, frozen=True):
    wrong: Literal["request_id", "generation"]
    kind: Literal["response", "diagnostic"]


class Nap(msgspec.Struct, frozen=True):
    ms: float
    tag: int
    """Returned unchanged, so every reply can be matched to its call."""


class Say(msgspec.Struct, frozen=True):
    marker: str
    lines: int = 1


Limits = dict[str, tuple[int, int]]

ECHO = Call("echo", request=Text, response=Text)
"""Return the request unchanged (a call that is as fast as a round trip gets)."""
MODULES = Call("modules", request=Empty, response=list[str])
"""``sorted(sys.modules)`` names that start with ``lean_worker``, plus ``anyio``/``psutil``/``trio``
if loaded (the parent's own dependencies; a child should not need them)."""
ENVIRON = Call("environ", request=Empty, response=dict[str, str])
"""The child's whole ``os.environ`` as it serves."""
RLIMITS = Call("rlimits", request=Empty, response=Limits)
"""``(soft, hard)`` of RLIMIT_CORE, RLIMIT_AS, RLIMIT_CPU and RLIMIT_NOFILE, keyed core/as/cpu/nofile."""
EMIT_MANY = Stream("emit_many", request=Many, row=Item, summary=Emitted)
"""``ctx.emit_many`` over a generator of ``n`` rows."""
OVERSIZE_LATER = Stream("oversize_later", request=OversizeLater, row=Item, summary=Emitted)
"""``before`` small rows, one row larger than the maximum frame, ``after`` small rows."""
TRICKLE = Stream("trickle", request=Trickle, row=Item, summary=Emitted)
"""One row every ``sleep_s``; stops (as cancelled) when the parent cancels."""
STALE = Call("stale_frame", request=StaleFrame, response=Text)
"""Write a well-formed frame naming the previous request id, or the previous generation,
straight to the protocol pipe; then wait to be killed."""
NAP = Call("nap", request=Nap, response=int)
"""Sleep ``ms`` milliseconds, return ``tag``."""
LOAD = Call("load", request=Empty, response=int, import_like=True)
"""An import-like no-op; returns this process's count of them."""
SAY = Call("say", request=Say, response=int)
"""Print ``lines`` numbered lines with ``marker`` to stdout and to stderr; returns the pid."""
GHOST = Call("ghost", request=Empty, response=int)
"""Announced in the handshake, but there is no handler."""


class _ProbeApp(WorkerApp):
    def command_infos(self) -> tuple[CommandInfo, ...]:
        ghost = CommandInfo(GHOST.name, GHOST.kind, GHOST.import_like, GHOST.fingerprint, GHOST.streams)
        return (*super().command_infos(), ghost)


app = _ProbeApp("probe", version="1")
_loads = 0


@app.handler(ECHO)
def echo(request: Text, ctx: RequestContext) -> Text:
    return request


@app.handler(MODULES)
def modules(request: Empty, ctx: RequestContext) -> list[str]:
    return sorted(m for m in sys.modules if m.startswith("lean_worker") or m in ("anyio", "psutil", "trio"))


@app.handler(ENVIRON)
def environ(request: Empty, ctx: RequestContext) -> dict[str, str]:
    return dict(os.environ)


@app.handler(RLIMITS)
def rlimits(request: Empty, ctx: RequestContext) -> Limits:
    which = {
        "core": resource.RLIMIT_CORE,
        "as": resource.RLIMIT_AS,
        "cpu": resource.RLIMIT_CPU,
        "nofile": resource.RLIMIT_NOFILE,
    }
    return {name: resource.getrlimit(limit) for name, limit in which.items()}


@app.handler(EMIT_MANY)
def emit_many(request: Many, ctx: RequestContext) -> Emitted:
    pad = b"p" * request.pad

    def rows() -> Iterator[Item]:
        for i in range(request.n):
            yield Item(i, pad)

    ctx.emit_many(rows())
    return Emitted(request.n)


@app.handler(OVERSIZE_LATER)
def oversize_later(request: OversizeLater, ctx: RequestContext) -> Emitted:
    for i in range(request.before):
        ctx.emit(Item(i))
    ctx.emit(Item(request.before, b"x" * request.size))
    for i in range(request.before + 1, request.before + 1 + request.after):
        ctx.emit(Item(i))
    return Emitted(request.before + 1 + request.after)


@app.handler(TRICKLE)
def trickle(request: Trickle, ctx: RequestContext) -> Emitted:
    i = 0
    while request.n is None or i < request.n:
        ctx.check_cancelled()
        ctx.emit(Item(i))
        i += 1
        time.sleep(request.sleep_s)
    return Emitted(i)


@app.handler(STALE)
def stale_frame(request: StaleFrame, ctx: RequestContext) -> Text:
    boot = _boot.current
    assert boot is not None, "serve() has read the bootstrap"
    rid, generation = ctx.request_id, ctx.generation
    if request.wrong == "request_id":
        rid -= 1
    else:
        generation -= 1
    if request.kind == "response":
        frame: Response | Diagnostic = Response(rid, generation, NIL, None, {}, 0.0, 0)
    else:
        frame = Diagnostic(rid, generation, "info", "probe.stale", "a frame for someone else")
    print(f"probe: writing a {request.kind} for request_id={rid} generation={generation}", file=sys.stderr, flush=True)
    os.write(boot.write_fd, FrameEncoder(boot.max_frame_bytes).encode(frame))
    time.sleep(60)  # the parent kills us long before this ends
    return Text("still here")


@app.handler(NAP)
def nap(request: Nap, ctx: RequestContext) -> int:
    if request.ms > 0:
        time.sleep(request.ms / 1000)
    return request.tag


@app.handler(LOAD)
def load(request: Empty, ctx: RequestContext) -> int:
    global _loads
    _loads += 1
    return _loads


@app.handler(SAY)
def say(request: Say, ctx: RequestContext) -> int:
    for n in range(request.lines):
        print(f"{request.marker} stdout {n}", flush=True)
        print(f"{request.marker} stderr {n}", file=sys.stderr, flush=True)
    return os.getpid()


if __name__ == "__main__":
    app.serve()
