"""lean-worker wire protocol: frames, codec and typed command declarations.

Pure types and codec: imports neither the parent (``lean_worker``) nor the child
(``lean_worker_child``), so both sides and downstream command modules can depend on it.
"""

from ._codec import (
    DEFAULT_MAX_FRAME_BYTES,
    HEADER_SIZE,
    CorruptFrame,
    FrameEncoder,
    FrameReader,
    FrameSchemaError,
    FrameTooLarge,
    ProtocolError,
)
from ._commands import DEFAULT_STREAM, Call, Command, Stream
from ._version import VERSION
from ._frames import (
    BOOTSTRAP_ENV,
    NIL,
    PROTOCOL_VERSION,
    Bootstrap,
    Rlimits,
    AnyFrame,
    Cancel,
    ChildFrame,
    CommandInfo,
    Diagnostic,
    ErrorInfo,
    Hello,
    ParentFrame,
    Position,
    Progress,
    Request,
    Response,
    Rows,
    Shutdown,
    Welcome,
)

__all__ = [
    "VERSION",
    "BOOTSTRAP_ENV",
    "NIL",
    "Bootstrap",
    "Rlimits",
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_STREAM",
    "HEADER_SIZE",
    "PROTOCOL_VERSION",
    "AnyFrame",
    "Call",
    "Cancel",
    "ChildFrame",
    "Command",
    "CommandInfo",
    "CorruptFrame",
    "Diagnostic",
    "ErrorInfo",
    "FrameEncoder",
    "FrameReader",
    "FrameSchemaError",
    "FrameTooLarge",
    "Hello",
    "ParentFrame",
    "Position",
    "Progress",
    "ProtocolError",
    "Request",
    "Response",
    "Rows",
    "Shutdown",
    "Stream",
    "Welcome",
]
