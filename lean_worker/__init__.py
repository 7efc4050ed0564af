"""lean-worker: supervised worker processes for Lean 4 work.

The parent side. ``Worker`` (async, anyio) and ``SyncWorker`` run one supervised child that
serves typed commands (``Call``, ``Stream``) declared with msgspec types and implemented
with ``lean_worker_child.WorkerApp``; ``Pool`` and ``SyncPool`` run many. The Lean API
(commands, ``lean_config``, the Lean errors) is ``lean_worker.lean``; the batch job is
``lean_worker.verify``.
"""

from lean_worker_protocol import (
    DEFAULT_STREAM,
    PROTOCOL_VERSION,
    VERSION,
    Call,
    Diagnostic,
    Position,
    Progress,
    Rlimits,
    Stream,
)
from lean_worker_protocol.probe import DOCTOR, CheckItem, CheckReport, DoctorItem, DoctorReport

from ._clock import Clock, ManualClock
from ._config import ChildCommand, ChildEnv, RestartPolicy, RestartReason, Sandbox, WorkerConfig
from ._errors import (
    BadRequest,
    ChannelClosed,
    ChildNotFound,
    CorruptStream,
    HandshakeError,
    InvalidRequest,
    LeaseInvalidated,
    MemoryLimitExceeded,
    OversizeFrame,
    PoolBudgetExceeded,
    PoolClosed,
    PoolError,
    PoolUnavailable,
    ProtocolViolation,
    QueueTimeout,
    ReentrantRequest,
    RemoteError,
    RequestCancelled,
    RequestError,
    RequestTimeout,
    RequestTooLarge,
    ResponseDecodeError,
    RestartLimitExceeded,
    SandboxUnavailable,
    SchemaMismatch,
    SchemaViolation,
    StartupError,
    StartupTimeout,
    UnexpectedFrame,
    UnknownCommand,
    WorkerBusy,
    WorkerClosed,
    WorkerCrashed,
    WorkerError,
    register_remote_error,
    remote_error_class,
)
from ._exit import ExitCause, ExitInfo
from ._pool import Lease, Outcome, Pool, PoolSnapshot, WorkerSnapshot
from ._probe import check, check_sync, doctor, doctor_sync
from ._resolve import resolve_child, sibling
from ._sync import SyncStreamCall, SyncWorker
from ._sync_pool import SyncLease, SyncPool
from ._worker import (
    DEFAULT,
    RowBatch,
    SandboxStatus,
    ShutdownReport,
    StreamCall,
    StreamSummary,
    TraceEvent,
    Tracer,
    Worker,
    WorkerStats,
)

__version__ = VERSION
"""Written once, in ``lean_worker_protocol/_version.py``; ``pyproject.toml`` reads it, so
the package metadata agrees (``tests/test_public_api.py``)."""

__all__ = [
    # Declaring commands (from the protocol package)
    "DEFAULT_STREAM",
    "PROTOCOL_VERSION",
    "Call",
    "Diagnostic",
    "Position",
    "Progress",
    "Stream",
    # Configuring a worker
    "ChildCommand",
    "ChildEnv",
    "Clock",
    "ManualClock",
    "RestartPolicy",
    "RestartReason",
    "Rlimits",
    "Sandbox",
    "WorkerConfig",
    # One worker
    "DEFAULT",
    "RowBatch",
    "SandboxStatus",
    "ShutdownReport",
    "StreamCall",
    "StreamSummary",
    "SyncStreamCall",
    "SyncWorker",
    "TraceEvent",
    "Tracer",
    "Worker",
    "WorkerStats",
    # Many workers
    "Lease",
    "Outcome",
    "Pool",
    "PoolSnapshot",
    "SyncLease",
    "SyncPool",
    "WorkerSnapshot",
    # How a child ended
    "ExitCause",
    "ExitInfo",
    # Errors (the tree is drawn in lean_worker/_errors.py)
    "BadRequest",
    "ChannelClosed",
    "ChildNotFound",
    "CorruptStream",
    "HandshakeError",
    "InvalidRequest",
    "LeaseInvalidated",
    "MemoryLimitExceeded",
    "OversizeFrame",
    "PoolBudgetExceeded",
    "PoolClosed",
    "PoolError",
    "PoolUnavailable",
    "ProtocolViolation",
    "QueueTimeout",
    "ReentrantRequest",
    "RemoteError",
    "RequestCancelled",
    "RequestError",
    "RequestTimeout",
    "RequestTooLarge",
    "ResponseDecodeError",
    "RestartLimitExceeded",
    "SandboxUnavailable",
    "SchemaMismatch",
    "SchemaViolation",
    "StartupError",
    "StartupTimeout",
    "UnexpectedFrame",
    "UnknownCommand",
    "WorkerBusy",
    "WorkerClosed",
    "WorkerCrashed",
    "WorkerError",
    "register_remote_error",
    "remote_error_class",
    # Probes and child resolution
    "DOCTOR",
    "CheckItem",
    "CheckReport",
    "DoctorItem",
    "DoctorReport",
    "check",
    "check_sync",
    "doctor",
    "doctor_sync",
    "resolve_child",
    "sibling",
]
