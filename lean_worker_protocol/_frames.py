"""Wire frames: the tagged union that crosses the protocol pipe.

Every frame is a msgspec ``Struct`` encoded as a msgpack array whose first element is the
frame kind. Payloads that depend on a command's schema (requests, responses, rows,
summaries) travel as ``msgspec.Raw``: the protocol carries them without decoding, and each
side decodes them once with the command's own typed decoder.

Who sends what:

    child -> parent   Hello, Response, Rows, Diagnostic, Progress
    parent -> child   Welcome, Request, Cancel, Shutdown
"""

from __future__ import annotations

from typing import Literal

import msgspec

PROTOCOL_VERSION = 1
"""Bumped on any incompatible change to the frames below."""

NIL = msgspec.Raw(b"\xc0")
"""The msgpack encoding of nil: the payload of an error response."""


class _Frame(msgspec.Struct, array_like=True, tag=True, frozen=True):
    pass


class CommandInfo(msgspec.Struct, array_like=True, frozen=True):
    """One command a child serves, as announced in its ``Hello``."""

    name: str
    kind: Literal["call", "stream"]
    import_like: bool
    fingerprint: str
    streams: tuple[str, ...] = ()


class Hello(_Frame, tag="hello", frozen=True):
    """First frame of every child: who it is and what it serves."""

    protocol_version: int
    worker_name: str
    worker_version: str
    pid: int
    commands: tuple[CommandInfo, ...]
    max_frame_bytes: int


class Welcome(_Frame, tag="welcome", frozen=True):
    """The parent's answer to ``Hello``: settings for this generation."""

    protocol_version: int
    generation: int
    row_batch_rows: int
    row_batch_bytes: int
    row_flush_interval_s: float


class Request(_Frame, tag="req", frozen=True):
    id: int
    generation: int
    command: str
    payload: msgspec.Raw


class ErrorInfo(msgspec.Struct, array_like=True, frozen=True):
    """A failure inside the child that did not end it (handler exception, bad request)."""

    type: str
    code: str
    message: str
    traceback: str = ""
    facts: dict[str, str | int | float | bool | None] = {}
    """Typed facts about the failure (an exception's ``facts`` attribute), e.g. a Lean
    crash's ``cause`` and ``returncode``."""


class Response(_Frame, tag="resp", frozen=True):
    """Terminal frame of a request: success with a payload, or an error.

    For a streaming command the payload is the summary and ``rows`` holds the row count
    of every stream the request wrote to. With an error the payload is msgpack nil.
    """

    id: int
    generation: int
    payload: msgspec.Raw
    error: ErrorInfo | None
    rows: dict[str, int]
    elapsed_s: float
    write_stalls: int
    imports: int = -1
    """Fresh imports the request performed, as the handler charged them
    (``RequestContext.charge_imports``); -1 when it did not say, and then the parent charges
    one import for an ``import_like`` command and none otherwise."""


class Rows(_Frame, tag="rows", frozen=True):
    """A batch of rows of one stream; ``seq`` is the index of the first row in the stream."""

    id: int
    generation: int
    stream: str
    seq: int
    count: int
    rows: msgspec.Raw


class Position(msgspec.Struct, array_like=True, frozen=True):
    line: int
    column: int
    end_line: int | None = None
    end_column: int | None = None
    file: str | None = None


class Diagnostic(_Frame, tag="diag", frozen=True):
    id: int
    generation: int
    severity: Literal["error", "warning", "info", "hint"]
    code: str
    message: str
    position: Position | None = None


class Progress(_Frame, tag="prog", frozen=True):
    id: int
    generation: int
    phase: str
    current: int
    total: int | None = None


class Cancel(_Frame, tag="cancel", frozen=True):
    id: int
    generation: int


class Shutdown(_Frame, tag="shutdown", frozen=True):
    reason: str


ChildFrame = Hello | Response | Rows | Diagnostic | Progress
ParentFrame = Welcome | Request | Cancel | Shutdown
AnyFrame = ChildFrame | ParentFrame

REQUEST_FRAMES = (Response, Rows, Diagnostic, Progress)
"""Child frames that belong to a request and must name the one in flight."""


BOOTSTRAP_ENV = "LEAN_WORKER_BOOTSTRAP"
"""Environment variable through which the parent hands a child its start-up facts."""


class Rlimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Resource limits the child applies to itself before its handshake (``None``: unchanged).

    ``address_space_bytes`` is RLIMIT_AS. Lean maps .olean files into the address space, so
    set it far above real use; an RSS ceiling in the restart policy is the better memory bound.
    """

    address_space_bytes: int | None = None
    cpu_seconds: int | None = None
    open_files: int | None = None
    processes: int | None = None
    """RLIMIT_NPROC: tasks (processes and threads) of this user. Outside a sandbox it counts
    every process of the user on the machine; inside one, only the sandbox's. The kernel does
    not enforce it for root (uid 0); a sandbox also bounds its PID namespace."""
    file_size_bytes: int | None = None
    """RLIMIT_FSIZE: the largest file a process may write (a bigger write fails with EFBIG)."""


SANDBOX_EXIT_CODE = 5
"""A child that cannot enter the sandbox it was asked for exits with this status, after
writing one ``SANDBOX_ERROR_MARK`` line to stderr."""
SANDBOX_ERROR_MARK = "lean-worker-sandbox-error: "
"""Prefix of the stderr line (then a ``SandboxFailure`` as JSON) that says why."""


class SandboxSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a child builds around itself before its handshake (see architecture/120-sandbox.md).

    New user, PID, network and mount namespaces; the filesystem is a read-only view of the
    system directories, the child's own interpreter and packages, and ``read_paths``; the one
    writable place is a private tmpfs of ``scratch_bytes`` at ``/scratch``. ``processes`` bounds
    the tasks in the PID namespace.
    """

    read_paths: tuple[str, ...] = ()
    scratch_bytes: int = 64 * 1024 * 1024
    processes: int = 1024


class SandboxFailure(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Why a child could not enter its sandbox: the step, what failed, and how to fix it."""

    step: str
    message: str
    fix: str
    path: str | None = None
    errno: str | None = None


class Bootstrap(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Start-up facts a child needs before it can read its first frame."""

    read_fd: int
    write_fd: int
    parent_pid: int
    generation: int
    max_frame_bytes: int
    rlimits: Rlimits = Rlimits()
    sandbox: SandboxSpec | None = None
