"""lean-worker: supervised worker processes for Lean 4 work.

The parent side. ``Worker`` (async, anyio) and ``SyncWorker`` run one supervised child that
serves typed commands (``Call``, ``Stream``) declared with msgspec types and implemented
with ``lean_worker_child.WorkerApp``.
"""

from lean_worker_protocol import (
    DEFAULT_STREAM,
    PROTOCOL_VERSION,
    Call,
    Diagnostic,
    Position,
    Progress,
    Rlimits,
    Stream,
)

from ._config import ChildCommand, ChildEnv, RestartPolicy, RestartReason, WorkerConfig
from ._errors import (
    BadRequest,
    ChannelClosed,
    CorruptStream,
    HandshakeError,
    LeanCrashed,
    LeanError,
    LeanHeaderError,
    LeanTimeout,
    MemoryLimitExceeded,
    OversizeFrame,
    ProtocolViolation,
    RemoteError,
    RequestCancelled,
    RequestError,
    RequestTimeout,
    RequestTooLarge,
    ResponseDecodeError,
    RestartLimitExceeded,
    SchemaMismatch,
    SchemaViolation,
    StartupError,
    StartupTimeout,
    ToolchainNotFound,
    UnexpectedFrame,
    UnknownCommand,
    WorkerClosed,
    WorkerCrashed,
    WorkerError,
)
from ._exit import ExitCause, ExitInfo
from ._errors import LeaseInvalidated, PoolBudgetExceeded, PoolClosed, PoolError, QueueTimeout
from ._pool import Lease, Outcome, Pool, PoolSnapshot, WorkerSnapshot
from ._sync import SyncStreamCall, SyncWorker
from ._worker import DEFAULT, RowBatch, ShutdownReport, StreamCall, StreamSummary, Worker, WorkerStats
from lean_worker_protocol.probe import DOCTOR, CheckItem, CheckReport, DoctorItem, DoctorReport
from ._errors import ChildNotFound
from ._probe import check, check_sync, doctor, doctor_sync
from ._resolve import resolve_child, sibling

__version__ = "0.1.0"

__all__ = [
    "DEFAULT",
    "DEFAULT_STREAM",
    "PROTOCOL_VERSION",
    "BadRequest",
    "Call",
    "ChannelClosed",
    "ChildCommand",
    "ChildEnv",
    "CorruptStream",
    "Diagnostic",
    "ExitCause",
    "ExitInfo",
    "HandshakeError",
    "LeanCrashed",
    "LeanError",
    "LeanHeaderError",
    "LeanTimeout",
    "MemoryLimitExceeded",
    "OversizeFrame",
    "Position",
    "Progress",
    "ProtocolViolation",
    "RemoteError",
    "RequestCancelled",
    "RequestError",
    "RequestTimeout",
    "RequestTooLarge",
    "ResponseDecodeError",
    "RestartLimitExceeded",
    "RestartPolicy",
    "RestartReason",
    "Rlimits",
    "RowBatch",
    "SchemaMismatch",
    "SchemaViolation",
    "ShutdownReport",
    "StartupError",
    "StartupTimeout",
    "ToolchainNotFound",
    "Stream",
    "StreamCall",
    "StreamSummary",
    "SyncStreamCall",
    "SyncWorker",
    "UnexpectedFrame",
    "UnknownCommand",
    "Worker",
    "WorkerClosed",
    "WorkerConfig",
    "WorkerCrashed",
    "WorkerError",
    "WorkerStats",
    "DOCTOR",
    "CheckItem",
    "CheckReport",
    "ChildNotFound",
    "DoctorItem",
    "DoctorReport",
    "check",
    "check_sync",
    "doctor",
    "doctor_sync",
    "resolve_child",
    "sibling",
    "Lease",
    "LeaseInvalidated",
    "Outcome",
    "Pool",
    "PoolBudgetExceeded",
    "PoolClosed",
    "PoolError",
    "PoolSnapshot",
    "QueueTimeout",
    "WorkerSnapshot",
]
