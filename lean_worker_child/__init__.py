"""lean-worker child runtime: build a worker entrypoint that a ``lean_worker`` parent supervises.

Imports only the protocol package, never the parent's supervisor or pool, so a child starts
fast. See ``recipes/01-typed-streaming-command.md`` for a walkthrough.
"""

from lean_worker_protocol import DEFAULT_STREAM, Call, FrameTooLarge, Position, Rlimits, Stream

from ._app import WorkerApp
from ._boot import popen_kwargs
from ._connection import Cancelled, RequestContext


def sandboxed() -> bool:
    """Whether this child runs in a sandbox (the parent asked for one and it holds)."""
    from . import _boot

    return _boot.sandbox_report is not None

__all__ = [
    "DEFAULT_STREAM",
    "Call",
    "Cancelled",
    "FrameTooLarge",
    "Position",
    "RequestContext",
    "Rlimits",
    "Stream",
    "WorkerApp",
    "popen_kwargs",
    "sandboxed",
]
