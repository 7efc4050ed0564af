"""Enter the sandbox: new user, PID, network and mount namespaces around this child.

Python 3.11 has no ``os.unshare`` (3.12 added it) and the standard library wraps neither
``mount`` nor ``pivot_root``: every call here goes through ``ctypes`` to the C library,
and through ``syscall(2)`` for ``pivot_root``, ``mount_setattr`` and ``capset``, which
glibc does not wrap (``_boot.libc``). Only this module and ``_boot`` make such calls.

``enter`` runs in the child right after it has read its bootstrap, while it is still
single-threaded (the kernel refuses a new user namespace to a threaded process). Afterwards
three processes exist where one was::

    supervisor ── child (waits; outside the PID namespace)
                    └── init (PID 1 of the new namespace: reaps orphans)
                          └── worker (PID 2: serves the protocol, starts Lean)

The child that the supervisor spawned stays outside the new PID namespace (``unshare``
never moves its caller) and only waits: it exits the way the worker exited, so the
supervisor's exit classification still sees a crash's signal. When init exits, the kernel
kills everything left in the namespace, including ``setsid`` grandchildren that left the
process group; init exits as soon as the worker does, and dies with the waiting child
(``PR_SET_PDEATHSIG``), which dies with the supervisor or by its signals.

The filesystem is built on a fresh tmpfs and entered with ``pivot_root``: the system
directories, the child's interpreter and packages and the requested paths are bind-mounted
read-only, ``/scratch`` is a private size-limited tmpfs (``TMPDIR``), ``/proc`` belongs to the new PID
namespace, ``/dev`` holds only null, zero, full, random and urandom. Nothing else of the
host exists inside: not the home directory, not ``/run`` (no sockets of other programs),
not another process's ``/proc`` entry. The worker then drops every capability, so it cannot
undo a mount, and sets ``no_new_privs``.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import platform
import select
import signal
import sys
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec

from lean_worker_protocol import Rlimits, SandboxFailure, SandboxSpec

from ._boot import die_with_parent, libc, prctl

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2

MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
AT_FDCWD = -100
AT_RECURSIVE = 0x8000

_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_CAP_VERSION_3 = 0x20080522
_CAP_LAST = 63

# Per-architecture numbers of the calls glibc does not wrap (mount_setattr is 442 on both).
_SYSCALLS = {
    "x86_64": {"pivot_root": 155, "capset": 126, "mount_setattr": 442},
    "aarch64": {"pivot_root": 41, "capset": 91, "mount_setattr": 442},
}

SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
"""Host directories every sandbox sees (read-only): programs, libraries, and ``/etc`` for
the dynamic linker's cache, users, locales and certificates. Top-level symlinks (``/bin``
to ``usr/bin`` on merged-/usr systems) are recreated as symlinks."""
DEVICES = ("null", "zero", "full", "random", "urandom")
SCRATCH = "/scratch"
"""The one writable directory inside (``TMPDIR`` points to it); ``/tmp`` is read-only, so a
write meant for the host's ``/tmp`` fails instead of landing somewhere unexpected."""
_NEW_ROOT_AT = "/tmp"
"""Where the new root's tmpfs is mounted before ``pivot_root`` (any directory works: once
the new root moves to ``/``, the old root at ``/oldroot`` shows this directory uncovered)."""
PID_MAX_RESERVED = 300
"""The kernel hands out PIDs below 300 only before the first wrap-around (RESERVED_PIDS), so
a namespace's ``pid_max`` is set to this plus the process limit."""

ENABLE_FIX = (
    "enable unprivileged user namespaces (sysctl user.max_user_namespaces=15000; on Debian "
    "kernel.unprivileged_userns_clone=1; on Ubuntu 23.10+ kernel.apparmor_restrict_unprivileged_userns=0 "
    "or an AppArmor profile that allows userns; in Docker a seccomp profile that allows unshare "
    "and mount)"
)


class SandboxError(Exception):
    """A step of entering the sandbox failed; ``failure`` says which and how to fix it."""

    def __init__(self, failure: SandboxFailure) -> None:
        self.failure = failure
        super().__init__(failure.message)


@dataclass
class SandboxReport:
    """What this child's sandbox enforces, for ``worker.doctor``."""

    uid_inside: int = 0
    readable: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    scratch_bytes: int = 0
    processes: int = 0
    pid_max: int | None = None
    """The PID namespace's own ``pid_max`` (Linux 6.14+), else ``None``."""
    nproc_enforced: bool = False
    """Whether RLIMIT_NPROC holds: the kernel exempts the host's root user."""

    def enforced(self) -> list[str]:
        limits = []
        if self.nproc_enforced:
            limits.append(f"RLIMIT_NPROC={self.processes}")
        if self.pid_max is not None:
            limits.append(f"pid_max={self.pid_max} (about {self.processes} tasks after wrap-around)")
        return [
            "namespaces: user, pid, net, mount",
            "network: none (a private loopback, down)",
            f"filesystem: read-only view of {len(self.readable)} paths; scratch {SCRATCH} "
            f"({self.scratch_bytes // (1024 * 1024)} MiB tmpfs)",
            "processes: " + (", ".join(limits) if limits else "NOT bounded (host root and no per-namespace pid_max)"),
            "capabilities: none; no_new_privs",
        ]


def _fail(step: str, message: str, *, path: str | None = None, err: int | None = None, fix: str | None = None) -> SandboxError:
    name = _errno.errorcode.get(err, str(err)) if err else None
    detail = f"{message}: {os.strerror(err)}" if err else message
    return SandboxError(SandboxFailure(
        step=step, message=detail, path=path, errno=name,
        fix=fix or "check that the path exists and is a directory or file the worker's user can read",
    ))


def _check(result: int, step: str, message: str, *, path: str | None = None, fix: str | None = None) -> None:
    if result != 0:
        raise _fail(step, message, path=path, err=ctypes.get_errno(), fix=fix)


def _syscall(name: str, *args: object) -> int:
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        raise _fail("platform", f"the sandbox knows no system call numbers for {platform.machine()}",
                    fix="run on x86_64 or aarch64 Linux")
    return int(libc().syscall(ctypes.c_long(numbers[name]), *args))


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> int:
    enc = (lambda s: None if s is None else os.fsencode(s))
    return int(libc().mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)))


def _read_only(target: str, *, recursive: bool, nodev: bool = True) -> None:
    attr = _MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | (MOUNT_ATTR_NODEV if nodev else 0), 0, 0, 0)
    result = _syscall("mount_setattr", ctypes.c_int(AT_FDCWD), os.fsencode(target),
                      ctypes.c_uint(AT_RECURSIVE if recursive else 0), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
    if result != 0:
        err = ctypes.get_errno()
        fix = "Linux 5.12 or newer is needed (mount_setattr)" if err == _errno.ENOSYS else None
        raise _fail("mount", "cannot make a bind mount read-only", path=target, err=err, fix=fix)


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def _python_paths() -> list[str]:
    """What this interpreter reads: its prefixes, ``sys.path``, the roots of imported
    packages and of editable installs (their finders map names to source directories)."""
    paths = [sys.executable, sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sys.path]
    for finder in sys.meta_path:
        mapping = getattr(sys.modules.get(getattr(finder, "__module__", "") or ""), "MAPPING", None)
        if isinstance(mapping, dict):
            paths.extend(str(p) for p in mapping.values())
    for module in list(sys.modules.values()):
        origin = getattr(module, "__file__", None)
        if isinstance(origin, str) and os.path.isabs(origin):
            paths.append(os.path.dirname(origin))
    return [p for p in paths if p and os.path.isabs(p)]


def _plan(paths: Iterable[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """(target, host source) pairs to bind, outermost first with nested ones dropped, and
    the paths that do not exist. A symlinked path is bound at its own name and at its target."""
    wanted: set[str] = set()
    missing: list[str] = []
    for raw in paths:
        path = os.path.normpath(os.path.abspath(raw))
        if path == "/":  # the whole host is not a read path; it would replace the new root
            continue
        if not os.path.exists(path):
            missing.append(path)
            continue
        wanted.add(path)
        wanted.add(os.path.realpath(path))
    binds: list[tuple[str, str]] = []
    for path in sorted(wanted):
        if any(path == t or path.startswith(t.rstrip("/") + "/") for t, _ in binds):
            continue
        binds.append((path, os.path.realpath(path)))
    return binds, sorted(set(missing))


def _mountpoint(target: str, source: str) -> None:
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.lexists(target):
            with open(target, "w"):
                pass


def _bind(source: str, target: str, *, nodev: bool = True) -> None:
    try:
        _mountpoint(target, source)
    except OSError as exc:
        raise _fail("mount", "cannot create a mount point", path=target, err=exc.errno) from None
    _check(_mount(source, target, None, MS_BIND | MS_REC), "mount", "cannot bind-mount", path=target)
    _read_only(target, recursive=True, nodev=nodev)


def _drop_capabilities() -> None:
    for cap in range(_CAP_LAST + 1):
        prctl(_PR_CAPBSET_DROP, cap)  # EINVAL past the kernel's last capability: nothing to drop
    header = (ctypes.c_uint32 * 2)(_CAP_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()
    _check(_syscall("capset", header, data), "capabilities", "cannot drop capabilities")
    _check(prctl(_PR_SET_NO_NEW_PRIVS, 1), "capabilities", "cannot set no_new_privs")


def _mirror_exit(status: int) -> None:
    """Exit the way a waited-for process did: by its signal, else with its status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def _wait_for(pid: int) -> int:
    while True:
        try:
            done, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return 1 << 8
        if done == pid:
            return status


def enter(spec: SandboxSpec, readable: Iterable[str], keep_fds: Iterable[int]) -> SandboxReport:
    """Build the sandbox and return in its worker process (PID 2); the two processes around
    it never return. ``readable`` adds to ``spec.read_paths``; ``keep_fds`` (the protocol
    pipes) are closed in the processes that do not serve. Raises ``SandboxError``."""
    try:
        return _enter(spec, list(readable), tuple(keep_fds))
    except OSError as exc:  # a step without its own check (mkdir, symlink...): still typed
        path = exc.filename if isinstance(exc.filename, str) else None
        raise _fail("setup", "cannot build the sandbox's filesystem", path=path, err=exc.errno) from None


def _enter(spec: SandboxSpec, readable: list[str], keep_fds: tuple[int, ...]) -> SandboxReport:
    if not sys.platform.startswith("linux"):
        raise _fail("platform", "namespaces are Linux-only", fix="run on Linux")
    if threading.active_count() > 1:
        raise _fail("threads", "the child started a thread before entering the sandbox",
                    fix="start threads in handlers, not at import time")
    report = SandboxReport(scratch_bytes=spec.scratch_bytes, processes=spec.processes)
    binds, report.missing = _plan([*SYSTEM_PATHS, *_python_paths(), *spec.read_paths, *readable])
    report.readable = [target for target, _ in binds]
    report.missing = [p for p in report.missing if p not in SYSTEM_PATHS]
    cwd = os.getcwd()
    uid, gid = os.getuid(), os.getgid()
    report.uid_inside = uid if uid != 0 else 65534
    report.nproc_enforced = uid != 0
    lib = libc()

    _check(lib.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID), "unshare",
           "cannot create user, PID, network and mount namespaces", fix=ENABLE_FIX)
    try:
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{report.uid_inside} {uid} 1")
        _write("/proc/self/gid_map", f"{gid if gid != 0 else 65534} {gid} 1")
    except OSError as exc:
        raise _fail("uid_map", "cannot map the user into the new namespace", err=exc.errno, fix=ENABLE_FIX) from None

    _check(_mount(None, "/", None, MS_REC | MS_PRIVATE), "mount", "cannot make the mount tree private", path="/")
    base = _NEW_ROOT_AT if os.path.isdir(_NEW_ROOT_AT) else "/mnt"
    _check(_mount("tmpfs", base, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=4m"), "mount",
           "cannot mount the new root's tmpfs", path=base, fix=ENABLE_FIX)
    os.mkdir(base + "/oldroot")
    _check(_syscall("pivot_root", os.fsencode(base), os.fsencode(base + "/oldroot")), "pivot_root",
           "cannot switch to the new root", path=base)
    os.chdir("/")
    os.makedirs(SCRATCH, exist_ok=True)
    _check(_mount("tmpfs", SCRATCH, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={spec.scratch_bytes}"), "mount",
           "cannot mount the scratch tmpfs", path=SCRATCH)
    for target, source in binds:
        old = "/oldroot" + source
        if target in SYSTEM_PATHS and os.path.islink("/oldroot" + target):
            os.symlink(os.readlink("/oldroot" + target), target)
        else:
            _bind(old, target)
    os.makedirs("/tmp", exist_ok=True)
    os.makedirs("/dev", exist_ok=True)
    for name in DEVICES:
        if os.path.exists("/oldroot/dev/" + name):
            _bind("/oldroot/dev/" + name, "/dev/" + name, nodev=False)
    for name, fd_path in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                          ("stderr", "/proc/self/fd/2")):
        os.symlink(fd_path, "/dev/" + name)
    os.makedirs("/proc", exist_ok=True)
    os.environ["TMPDIR"] = SCRATCH
    tempfile.tempdir = None  # computed again from TMPDIR on its next use

    status_r, status_w = os.pipe()  # init -> child: the worker's wait status
    life_r, life_w = os.pipe()  # child -> init: hangs up when the child is gone
    init = os.fork()
    if init:  # the child the supervisor knows: outside the PID namespace, it only waits
        for fd in (status_w, life_r, *keep_fds):
            os.close(fd)
        own = _wait_for(init)
        data = os.read(status_r, 16)
        _mirror_exit(int(data) if data.strip() else own)
    os.close(status_r)
    os.close(life_w)
    _become_init(spec, report, cwd, life_r)
    worker = os.fork()
    if worker:
        for fd in keep_fds:
            os.close(fd)
        while True:  # reap every orphan the namespace hands us until the worker ends
            try:
                pid, status = os.wait()
            except ChildProcessError:
                os._exit(1)
            if pid == worker:
                os.write(status_w, str(status).encode())
                os._exit(0)  # the kernel now kills whatever is left in the namespace
    os.close(status_w)
    os.close(life_r)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    die_with_parent()
    _drop_capabilities()
    return report


def _become_init(spec: SandboxSpec, report: SandboxReport, cwd: str, life_r: int) -> None:
    """PID 1 of the new namespace: mount its ``/proc`` (the kernel allows that only while
    the host's ``/proc`` is still visible, so before the old root goes), bound its PIDs,
    detach the old root and freeze the new one read-only."""
    lib = libc()
    die_with_parent()
    poller = select.poll()
    poller.register(life_r, 0)
    if poller.poll(0):  # the waiting child died before prctl: nobody would kill us
        os._exit(1)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    _check(_mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC), "proc",
           "cannot mount /proc for the new PID namespace", path="/proc",
           fix="run where /proc is not partly masked (Docker: --security-opt systempaths=unconfined)")
    try:
        _write("/proc/sys/kernel/pid_max", str(PID_MAX_RESERVED + spec.processes))
        report.pid_max = PID_MAX_RESERVED + spec.processes
    except OSError:  # before Linux 6.14 pid_max is global: RLIMIT_NPROC is then the only bound
        report.pid_max = None
    _check(lib.umount2(b"/oldroot", MNT_DETACH), "mount", "cannot detach the old root", path="/oldroot")
    os.rmdir("/oldroot")
    _read_only("/", recursive=False)
    os.chdir(cwd if os.path.isdir(cwd) else "/")


def rlimits(limits: Rlimits, spec: SandboxSpec) -> Rlimits:
    """The sandbox's own limits where the configuration leaves them unset: processes, and
    files no larger than the scratch space."""
    return msgspec.structs.replace(
        limits,
        processes=spec.processes if limits.processes is None else limits.processes,
        file_size_bytes=spec.scratch_bytes if limits.file_size_bytes is None else limits.file_size_bytes,
    )
