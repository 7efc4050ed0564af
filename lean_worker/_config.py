"""Typed configuration: how to start a child, with what environment, under which policy."""

from __future__ import annotations

import enum
import fnmatch
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

from lean_worker_protocol import DEFAULT_MAX_FRAME_BYTES, Rlimits, SandboxSpec
from lean_worker_protocol._codec import check_max_frame_bytes

DEFAULT_INHERITED_ENV: tuple[str, ...] = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
    "TMPDIR",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "XDG_CACHE_HOME",
)
"""Parent variables a child sees by default: identity, locale, time zone, temporary and
cache directories, and the Python paths. Nothing else is passed through (API keys, tokens
and cloud credentials stay in the parent). A capability adds its own: ``lean_config``
adds ``lean_worker.lean.LEAN_INHERITED_ENV``."""


@dataclass(frozen=True)
class ChildEnv:
    """The child's environment, built explicitly.

    ``inherit`` names parent variables to copy when set (``*`` globs allowed, as in
    ``LC_*``); ``set`` adds or overrides variables. Nothing else reaches the child.
    """

    inherit: tuple[str, ...] = DEFAULT_INHERITED_ENV
    set: Mapping[str, str] = field(default_factory=dict)

    def build(self, parent: Mapping[str, str] | None = None) -> dict[str, str]:
        source = os.environ if parent is None else parent
        env: dict[str, str] = {}
        for pattern in self.inherit:
            if any(c in pattern for c in "*?["):
                env.update({k: v for k, v in source.items() if fnmatch.fnmatchcase(k, pattern)})
            elif pattern in source:
                env[pattern] = source[pattern]
        env.update(self.set)
        return env


@dataclass(frozen=True)
class ChildCommand:
    """The argv that starts a worker child (an executable that calls ``WorkerApp.serve``)."""

    argv: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.argv:
            raise ValueError("ChildCommand needs a non-empty argv")

    @classmethod
    def module(cls, module: str, *args: str, python: str | None = None) -> ChildCommand:
        """``python -m module``, with this interpreter unless ``python`` is given."""
        return cls((python or sys.executable, "-m", module, *args))

    @classmethod
    def executable(cls, path: str | os.PathLike[str], *args: str) -> ChildCommand:
        return cls((os.fspath(path), *args))


class RestartReason(enum.StrEnum):
    """Why a child was replaced. Values are stable codes."""

    EXPLICIT = "explicit"
    MAX_REQUESTS = "max_requests"
    MAX_IMPORTS = "max_imports"
    RSS_CEILING = "rss_ceiling"
    RSS_HARD_LIMIT = "rss_hard_limit"
    IDLE = "idle"
    REQUEST_TIMEOUT = "request_timeout"
    CANCEL_TIMEOUT = "cancel_timeout"
    CRASH = "crash"
    PROTOCOL_VIOLATION = "protocol_violation"
    STARTUP_FAILURE = "startup_failure"

    @property
    def planned(self) -> bool:
        """Planned restarts are policy; unplanned ones count toward the restart limit."""
        return self in _PLANNED


_PLANNED = frozenset(
    {
        RestartReason.EXPLICIT,
        RestartReason.MAX_REQUESTS,
        RestartReason.MAX_IMPORTS,
        RestartReason.RSS_CEILING,
        RestartReason.IDLE,
    }
)


SandboxMode = Literal["off", "auto", "required"]
SANDBOX_MODES: tuple[str, ...] = get_args(SandboxMode)


@dataclass(frozen=True)
class Sandbox:
    """Whether and how a child runs sandboxed (architecture/120-sandbox.md).

    ``mode``: ``off``; ``required`` (the child runs in new user, PID, network and mount
    namespaces, or the worker does not start: ``SandboxUnavailable`` says why and how to fix
    it); ``auto`` (sandboxed where the machine allows it; elsewhere the worker runs
    unsandboxed, says so with a warning, and ``Worker.sandbox`` reports why).

    Inside, the filesystem is read-only and holds only the system directories, the child's
    interpreter and packages, what the child declares (the Lean worker: its toolchain and
    search path) and ``read_paths``; ``/scratch`` (``TMPDIR``) is a private tmpfs of
    ``scratch_bytes``, also the largest file a process may write; ``processes`` bounds the
    tasks (processes and threads) in the PID namespace. There is no network.
    """

    mode: SandboxMode = "off"
    read_paths: tuple[str, ...] = ()
    scratch_bytes: int = 64 * 1024 * 1024
    processes: int = 1024

    def __post_init__(self) -> None:
        if self.mode not in SANDBOX_MODES:
            raise ValueError(f"sandbox mode must be one of {', '.join(SANDBOX_MODES)}; got {self.mode!r}")
        if isinstance(self.read_paths, str | os.PathLike):
            raise ValueError("read_paths takes a sequence of paths, not one path")
        object.__setattr__(self, "read_paths", tuple(os.path.abspath(os.fspath(p)) for p in self.read_paths))
        if "/" in self.read_paths:
            raise ValueError("read_paths cannot include / (the sandbox shows the host only path by path)")
        if self.scratch_bytes < 1024 * 1024:
            raise ValueError(f"scratch_bytes must be at least 1 MiB; got {self.scratch_bytes}")
        if self.processes < 16:
            raise ValueError(f"processes must be at least 16 (Python and Lean start threads); got {self.processes}")

    @classmethod
    def of(cls, value: Sandbox | str | None) -> Sandbox:
        """A ``Sandbox`` from itself, a mode name, or ``None`` (off)."""
        if value is None:
            return cls()
        if isinstance(value, Sandbox):
            return value
        if isinstance(value, str):
            return cls(mode=value)  # type: ignore[arg-type]
        raise TypeError(f"sandbox takes a Sandbox or one of {', '.join(SANDBOX_MODES)}; got {value!r}")

    def spec(self) -> SandboxSpec:
        return SandboxSpec(read_paths=self.read_paths, scratch_bytes=self.scratch_bytes, processes=self.processes)


def _positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:  # also refuses NaN, which compares false
        raise ValueError(f"{name} must be positive or None; got {value}")


@dataclass(frozen=True)
class RestartPolicy:
    """When to replace a child. ``None`` turns a knob off.

    - ``max_requests``: cycle before a request once the child has served this many.
    - ``max_imports``: cycle before an import-like request once the child has served this
      many import-like requests (each fresh Lean import leaves residue only exit frees).
    - ``rss_ceiling_bytes``: cycle before a request when the child's process tree uses more
      (RSS, confirmed with PSS so shared pages are not double-counted). A child that was
      already above the ceiling right after its handshake is never cycled for it: a
      replacement would be too, and cycling would loop.
    - ``rss_hard_limit_bytes``: sampled every ``rss_sample_interval_s`` during a request;
      above it (confirmed with PSS) the request is killed with ``MemoryLimitExceeded``.
    - ``idle_restart_s``: a child idle this long is retired; the next request starts one.
    - ``restart_on_timeout``: on a request timeout, end the child (True: SIGTERM to its
      group, SIGKILL after ``kill_grace_s``) or first send a cancel and keep the child if it
      answers within ``cancel_grace_s`` (False).
    - ``max_restarts`` per ``restart_window_s``: unplanned restarts (crash, timeout,
      protocol violation, RSS hard limit, failed start) beyond this raise
      ``RestartLimitExceeded`` instead of spawning.
    """

    max_requests: int | None = None
    max_imports: int | None = None
    rss_ceiling_bytes: int | None = None
    rss_hard_limit_bytes: int | None = None
    rss_sample_interval_s: float = 0.1
    idle_restart_s: float | None = None
    restart_on_timeout: bool = True
    max_restarts: int = 16
    restart_window_s: float = 60.0

    def __post_init__(self) -> None:
        for name in ("max_requests", "max_imports", "rss_ceiling_bytes", "rss_hard_limit_bytes", "idle_restart_s"):
            _positive(name, getattr(self, name))
        _positive("rss_sample_interval_s", self.rss_sample_interval_s)
        _positive("restart_window_s", self.restart_window_s)
        if self.max_restarts < 1:
            raise ValueError(f"max_restarts must be at least 1; got {self.max_restarts}")


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a supervised worker needs. Only ``child`` is required.

    Timeouts are on by default: a request that runs longer than ``request_timeout_s`` kills
    and replaces the child (pass ``None`` to wait forever, or a per-call ``timeout``).
    """

    child: ChildCommand
    env: ChildEnv = field(default_factory=ChildEnv)
    cwd: str | None = None
    rlimits: Rlimits = field(default_factory=Rlimits)
    sandbox: Sandbox = field(default_factory=Sandbox)
    """Off by default for a generic worker (its own trusted code); ``"auto"`` or
    ``"required"`` (or a ``Sandbox``) for a child that runs untrusted input."""
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    startup_timeout_s: float = 30.0
    request_timeout_s: float | None = 300.0
    cancel_grace_s: float = 2.0
    shutdown_grace_s: float = 2.0
    kill_grace_s: float = 1.0
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    output_tail_bytes: int = 64 * 1024
    row_batch_rows: int = 1024
    row_batch_bytes: int = 256 * 1024
    row_flush_interval_s: float = 0.01
    spin_wait_us: float = 100.0
    """Busy-poll up to this long for the reply of a ``call`` before parking in the event
    loop, for commands whose recent round trips fit (a moving average under it) and only
    when no other task is ready to run. A spin that times out (a contended core) backs off
    exponentially: the next 2, 4, ... 1024 calls of that command do not spin. Cuts a no-op
    round trip roughly in half (architecture/40-core-benchmarks.md); costs at most this
    much CPU per call. 0 disables it."""
    name: str = "worker"
    expected_worker_name: str | None = None
    session_limit: int | None = None
    """How many warm sessions (keys) the child keeps before it evicts the least recently
    used; a ``Pool`` remembers this many keys per worker. ``None``: the child does not say
    (the pool then remembers 8)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "sandbox", Sandbox.of(self.sandbox))
        check_max_frame_bytes(self.max_frame_bytes)
        for name in ("startup_timeout_s", "cancel_grace_s", "shutdown_grace_s", "kill_grace_s", "row_flush_interval_s"):
            _positive(name, getattr(self, name))
        _positive("request_timeout_s", self.request_timeout_s)
        if not 0 <= self.spin_wait_us <= 10_000:
            raise ValueError(f"spin_wait_us must be within 0..10000 (a spin blocks the event loop); got {self.spin_wait_us}")
        if self.output_tail_bytes < 1024:
            raise ValueError("output_tail_bytes must be at least 1024")
        if self.row_batch_rows < 1 or self.row_batch_bytes < 1:
            raise ValueError("row_batch_rows and row_batch_bytes must be positive")
        if self.session_limit is not None and self.session_limit < 1:
            raise ValueError(f"session_limit must be >= 1 or None; got {self.session_limit}")

    @classmethod
    def for_module(cls, module: str, *args: str, **options: object) -> WorkerConfig:
        """Config for a child started as ``python -m module``."""
        return cls(child=ChildCommand.module(module, *args), **options)  # type: ignore[arg-type]

    @classmethod
    def for_argv(cls, argv: Sequence[str], **options: object) -> WorkerConfig:
        return cls(child=ChildCommand(tuple(argv)), **options)  # type: ignore[arg-type]
