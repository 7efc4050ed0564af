"""A worker child that tries to get out: ``python -m tests.children.sandbox_probe``.

Each command attempts one thing a hostile snippet would (write outside, read a secret,
connect, leave a detached process behind, fork without end, undo a mount) and reports what
happened as text, never raising: the tests assert on the outcome with and without the
sandbox. The declarations live here; ``serve`` only runs under ``__main__``.
"""

from __future__ import annotations

import ctypes
import os
import resource
import socket
import subprocess
import sys

import msgspec

from lean_worker_child import RequestContext, WorkerApp, sandboxed
from lean_worker_protocol import Call


class Paths(msgspec.Struct, frozen=True):
    paths: list[str]


class Needle(msgspec.Struct, frozen=True):
    value: str


class Port(msgspec.Struct, frozen=True):
    port: int


class Marker(msgspec.Struct, frozen=True):
    marker: str


class Forks(msgspec.Struct, frozen=True):
    cap: int


class ForkOutcome(msgspec.Struct, frozen=True):
    forked: int
    stopped_by: str
    """The error that stopped the loop, or ``cap`` when it ran to the probe's own cap."""


class Facts(msgspec.Struct, frozen=True):
    sandboxed: bool
    pid: int
    tmpdir: str
    cap_eff: str
    limits: dict[str, list[int]]


WRITE = Call("probe.write", request=Paths, response=dict[str, str])
READ = Call("probe.read", request=Paths, response=dict[str, str])
FIND_SECRET = Call("probe.find_secret", request=Needle, response=list[str])
CONNECT = Call("probe.connect", request=Port, response=str)
DETACH = Call("probe.detach", request=Marker, response=str)
FORK_BOMB = Call("probe.fork_bomb", request=Forks, response=ForkOutcome)
UNMOUNT = Call("probe.unmount", request=Paths, response=dict[str, str])
FACTS = Call("probe.facts", request=Marker, response=Facts)

app = WorkerApp("sandbox-probe")


def _outcome(exc: OSError) -> str:
    return f"{type(exc).__name__}: {exc.strerror or exc}"


@app.handler(WRITE)
def write(req: Paths, ctx: RequestContext) -> dict[str, str]:
    out = {}
    for path in req.paths:
        try:
            with open(path, "x") as fh:
                fh.write("written by a sandbox probe\n")
            out[path] = "written"
        except OSError as exc:
            out[path] = _outcome(exc)
    return out


@app.handler(READ)
def read(req: Paths, ctx: RequestContext) -> dict[str, str]:
    out = {}
    for path in req.paths:
        try:
            if os.path.isdir(path):
                out[path] = f"dir with {len(os.listdir(path))} entries"
            else:
                with open(path, "rb") as fh:
                    out[path] = f"read {len(fh.read())} bytes"
        except OSError as exc:
            out[path] = _outcome(exc)
    return out


@app.handler(FIND_SECRET)
def find_secret(req: Needle, ctx: RequestContext) -> list[str]:
    """Where the value shows: our environment, or any process's environ we can read."""
    found = [f"own environment: {k}" for k, v in os.environ.items() if req.value in v]
    needle = req.value.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if needle in fh.read():
                    found.append(f"/proc/{entry}/environ")
        except OSError:
            continue
    return found


@app.handler(CONNECT)
def connect(req: Port, ctx: RequestContext) -> str:
    try:
        with socket.create_connection(("127.0.0.1", req.port), timeout=5):
            return "connected"
    except OSError as exc:
        return _outcome(exc)


# A grandchild that leaves the process group and its parent: setsid, then fork again and let
# the middle process exit, so the grandchild is reparented and shares nothing with the worker
# but (inside a sandbox) its PID namespace. Its command line carries the marker for the test.
_DETACHED = (
    "import os, sys, time\n"
    "os.setsid()\n"
    "if os.fork():\n"
    "    os._exit(0)\n"
    "devnull = os.open(os.devnull, os.O_RDWR)\n"
    "for fd in (0, 1, 2):\n"
    "    os.dup2(devnull, fd)\n"
    "time.sleep(300)\n"
)


@app.handler(DETACH)
def detach(req: Marker, ctx: RequestContext) -> str:
    proc = subprocess.Popen([sys.executable, "-c", _DETACHED, req.marker], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _out, err = proc.communicate()  # the middle process exits at once; the grandchild lives on
    return "detached" if proc.returncode == 0 else f"failed: {err.decode()[-300:]}"


@app.handler(FORK_BOMB)
def fork_bomb(req: Forks, ctx: RequestContext) -> ForkOutcome:
    """Fork until refused, or ``cap`` times. Every child blocks reading a pipe no one writes,
    so they all live until the worker is replaced (or, unsandboxed, until the read end's
    writer, this process, exits)."""
    r, w = os.pipe()
    forked = 0
    stopped_by = "cap"
    while forked < req.cap:
        try:
            pid = os.fork()
        except OSError as exc:
            stopped_by = _outcome(exc)
            break
        if pid == 0:
            os.close(w)
            os.read(r, 1)
            os._exit(0)
        forked += 1
    os.close(r)
    _held.append(w)  # keeps the children blocked until this process ends
    return ForkOutcome(forked, stopped_by)


_held: list[int] = []


_MS_REMOUNT = 0x20
_MS_BIND = 0x1000


@app.handler(UNMOUNT)
def unmount(req: Paths, ctx: RequestContext) -> dict[str, str]:
    """Try to undo the read-only view: unmount each path, or remount it writable."""
    libc = ctypes.CDLL(None, use_errno=True)
    out = {}
    for path in req.paths:
        if libc.umount2(path.encode(), 2) == 0:
            out[path] = "unmounted"
        elif libc.mount(None, path.encode(), None, _MS_REMOUNT | _MS_BIND, None) == 0:
            out[path] = "remounted writable"
        else:
            out[path] = os.strerror(ctypes.get_errno())
    return out


@app.handler(FACTS)
def facts(req: Marker, ctx: RequestContext) -> Facts:
    with open("/proc/self/status") as fh:
        cap_eff = next(line.split()[1] for line in fh if line.startswith("CapEff:"))
    names = {"nproc": resource.RLIMIT_NPROC, "fsize": resource.RLIMIT_FSIZE, "core": resource.RLIMIT_CORE}
    limits = {k: list(resource.getrlimit(v)) for k, v in names.items()}
    return Facts(sandboxed(), os.getpid(), os.environ.get("TMPDIR", ""), cap_eff, limits)


if __name__ == "__main__":
    app.serve()
