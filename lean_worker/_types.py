"""The public result types of a worker: stats, row batches, summaries, shutdown reports,
trace events, and the ``DEFAULT`` marker for per-call options."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from lean_worker_protocol import Diagnostic, Progress

from ._exit import ExitInfo

RowT = TypeVar("RowT")
SummaryT = TypeVar("SummaryT")

DiagnosticCallback = Callable[[Diagnostic], object]
ProgressCallback = Callable[[Progress], object]


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Any = _Default()
"""Use the configured value (``WorkerConfig.request_timeout_s`` for ``timeout``)."""

@dataclass
class WorkerStats:
    """Counters of one worker across all its generations (a snapshot; see ``Worker.stats``)."""

    generation: int = 0
    requests: int = 0
    imports: int = 0
    requests_this_generation: int = 0
    imports_this_generation: int = 0
    restarts: dict[str, int] = field(default_factory=dict)
    """Child replacements by ``RestartReason`` code."""
    last_exit: ExitInfo | None = None
    last_rss_bytes: int | None = None
    rows_delivered: int = 0
    backpressure_waits: int = 0
    """Times the child had to wait for the parent to read (its pipe write would block)."""
    spawn_handshake_s: float | None = None
    """Spawn-to-ready time of the current generation."""
    first_request_s: float | None = None
    """Round trip of the first request the current generation served."""
    rss_over_ceiling_when_fresh: int = 0
    """RSS-ceiling breaches not acted on because the child had not served yet or was already
    above the ceiling right after its handshake: cycling could not help, so no loop."""


@dataclass(frozen=True)
class SandboxStatus:
    """Whether a worker's children run sandboxed (``Worker.sandbox``)."""

    mode: str
    """The configured mode: ``off``, ``auto`` or ``required``."""
    active: bool
    """Children are started in the sandbox."""
    fallback_reason: str | None = None
    """With ``auto``: why the sandbox could not be built here, so children run without it
    (``step=... errno=...: ...``)."""
    fallback_fix: str | None = None
    """What to change on the machine so that it can be built."""

    def describe(self) -> str:
        if self.active:
            return f"sandbox {self.mode}: active"
        if self.fallback_reason:
            return f"sandbox {self.mode}: NOT ACTIVE, running unsandboxed; {self.fallback_reason}; fix: {self.fallback_fix}"
        return "sandbox off"


@dataclass(frozen=True, slots=True)
class RowBatch(Generic[RowT]):
    """Rows of one stream as they arrived; ``seq`` is the index of the first row."""

    stream: str
    seq: int
    rows: list[RowT]


@dataclass(frozen=True, slots=True)
class StreamSummary(Generic[SummaryT]):
    """Terminal success of a streaming request. Rows delivered before it were tentative."""

    summary: SummaryT
    rows: dict[str, int]
    total_rows: int
    elapsed_s: float
    child_elapsed_s: float
    generation: int
    request_id: int


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One step of a worker's life, for a ``tracer`` (tests, debugging, metrics).

    ``kind`` is one of:

    - ``started``: a child completed its handshake (``detail``: its pid);
    - ``request``: a request began; its frame goes to the child (``detail``: the command);
    - ``rows``: rows of a stream were delivered, tentatively (``detail``: how many);
    - ``outcome``: the request's terminal outcome, exactly once per request that began: ``ok``, the error's ``code``, or ``abandoned`` (the caller left before the end);
    - ``stopping``: the supervisor began stopping the child (``detail``: the reason);
    - ``reaped``: the child ended and was reaped (``detail``: its exit cause;
      ``request_id``: the request in flight, if any).
    """

    kind: str
    worker: str
    """The worker's ``config.name`` (``<name>-<index>`` in a pool)."""
    generation: int
    request_id: int | None
    detail: str


Tracer = Callable[[TraceEvent], object]


@dataclass(frozen=True, slots=True)
class ShutdownReport:
    """How a child was stopped: which step ended it."""

    step: str
    """``already_exited``, ``shutdown_frame``, ``sigterm`` or ``sigkill``."""
    elapsed_s: float
    exit: ExitInfo | None
