"""Child start-up: read the bootstrap, tie the child's life to its parent, apply limits.

The order matters. The parent-death signal is armed first and then ``getppid`` is compared
with the parent that spawned us: a parent that died between ``fork`` and ``prctl`` would
otherwise leave us running forever. Core dumps are disabled before anything can crash:
lean-rs measured 23-107 s of delayed pipe EOF while the kernel piped an aborting child's
core to a dump handler.
"""

from __future__ import annotations

import ctypes
import os
import resource
import select
import signal
import sys
import threading
from typing import Any

import msgspec

from lean_worker_protocol import BOOTSTRAP_ENV, Bootstrap, Rlimits

_PR_SET_PDEATHSIG = 1
EXIT_NOT_SUPERVISED = 2
EXIT_PROTOCOL = 3
EXIT_PARENT_GONE = 4

_libc: ctypes.CDLL | None = None


def libc() -> ctypes.CDLL:
    """The C library, for the calls Python does not wrap (here and in ``_sandbox``)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    return _libc


def prctl(option: int, arg: int = 0) -> int:
    """``prctl`` with every argument an unsigned long, as the kernel reads them (a variadic
    call would pass bare ints, and options like ``PR_SET_NO_NEW_PRIVS`` demand zeros)."""
    zero = ctypes.c_ulong(0)
    return int(libc().prctl(ctypes.c_int(option), ctypes.c_ulong(arg), zero, zero, zero))


def _prctl_pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    return prctl(_PR_SET_PDEATHSIG, sig) == 0


_raw_bootstrap = os.environ.pop(BOOTSTRAP_ENV, None)
"""Taken out of the environment as soon as the child runtime is imported: an app that
copies the environment for its helpers before ``serve`` (the Lean engines do) must not
hand them the parent's pid and the protocol's descriptors."""
current: Bootstrap | None = None
"""This child's bootstrap once ``serve`` has read it."""
sandbox_report: Any = None
"""What the sandbox enforces (a ``_sandbox.SandboxReport``), when this child runs in one."""


def load_bootstrap() -> Bootstrap:
    global current
    raw = _raw_bootstrap
    if raw is None:
        print(
            f"{sys.argv[0]}: this program is a lean-worker child; start it through lean_worker "
            f"(the parent passes {BOOTSTRAP_ENV})",
            file=sys.stderr,
        )
        sys.exit(EXIT_NOT_SUPERVISED)
    try:
        current = msgspec.json.decode(raw, type=Bootstrap)
        return current
    except msgspec.DecodeError as exc:
        print(f"{sys.argv[0]}: malformed {BOOTSTRAP_ENV}: {exc}", file=sys.stderr)
        sys.exit(EXIT_NOT_SUPERVISED)


def tie_to_parent(parent_pid: int) -> None:
    """Die with the parent, even while busy in native code (SIGKILL needs no cooperation)."""
    _prctl_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(EXIT_PARENT_GONE)


def apply_rlimits(limits: Rlimits, *, lock: bool = False) -> None:
    """Set the soft limits; with ``lock`` (in a sandbox) the hard limits too, so the code
    the child runs cannot raise them again."""
    # RLIMIT_CORE=1, not 0: for a core_pattern that pipes to a handler the kernel ignores
    # the limit except for the value 1, which it treats as "no dump" (fs/coredump.c); for
    # file dumps anything below a page writes nothing. So 1 suppresses both kinds.
    _soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    core = 1 if hard == resource.RLIM_INFINITY or hard >= 1 else 0
    resource.setrlimit(resource.RLIMIT_CORE, (core, core if lock else hard))
    pairs = (
        (resource.RLIMIT_AS, limits.address_space_bytes),
        (resource.RLIMIT_CPU, limits.cpu_seconds),
        (resource.RLIMIT_NOFILE, limits.open_files),
        (resource.RLIMIT_NPROC, limits.processes),
        (resource.RLIMIT_FSIZE, limits.file_size_bytes),
    )
    for which, value in pairs:
        if value is not None:
            _soft, hard = resource.getrlimit(which)
            if lock:  # never above the inherited hard limit, which only root could raise
                value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (value, value if lock else hard))


def kill_own_group() -> None:
    """End this child and everything it started; only when we lead our own process group."""
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(EXIT_PARENT_GONE)


def start_watchdog(read_fd: int) -> threading.Thread:
    """Watch the protocol pipe for hang-up (parent gone) and take the process group down.

    ``poll`` with an empty event mask reports only POLLHUP/POLLERR, so the thread sleeps in
    the kernel until the parent's write end closes and costs nothing per request.
    """

    def watch() -> None:
        poller = select.poll()
        poller.register(read_fd, 0)
        while True:
            try:
                events = poller.poll()
            except InterruptedError:  # pragma: no cover - PEP 475 retries already
                continue
            except OSError:
                return
            if any(ev & (select.POLLHUP | select.POLLERR) for _fd, ev in events):
                kill_own_group()
            if any(ev & select.POLLNVAL for _fd, ev in events):
                return

    thread = threading.Thread(target=watch, name="lean-worker-watchdog", daemon=True)
    thread.start()
    return thread


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies (also the ``preexec_fn`` of helpers,
    where it runs in the forked process before exec)."""
    _prctl_pdeathsig(signal.SIGKILL)


def popen_kwargs() -> dict[str, object]:
    """``subprocess.Popen`` keyword arguments that make a process die with this child.

    A handler that starts helper processes (a Lean toolchain, a solver) should pass these:
    the helper then gets SIGKILL when the child dies, also when the child itself was killed
    because its parent died. Helpers always die with the child's process group when the
    supervisor replaces the child; these arguments cover the case where nobody is left to
    kill the group.
    """
    return {"preexec_fn": die_with_parent}
