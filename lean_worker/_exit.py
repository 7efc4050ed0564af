"""How a child ended: the facts kept about every exit. The causes and their classification
are in ``lean_worker_exit``, shared with the child's Lean engine; re-exported here for the
supervisor."""

from __future__ import annotations

from dataclasses import dataclass

from lean_worker_exit import ExitCause, classify, signal_name

__all__ = ["ExitCause", "ExitInfo", "classify", "signal_name"]


@dataclass(frozen=True, slots=True)
class ExitInfo:
    """Facts about one child's end, attached to the error it caused and to ``WorkerStats``."""

    cause: ExitCause
    pid: int
    generation: int
    returncode: int | None
    signal: str | None
    stderr_tail: str
    """The last lines the child wrote to stderr (bounded)."""
    stdout_tail: str
    """The last lines the child wrote to stdout (bounded)."""
    request_id: int | None
    command: str | None
    work_entered: bool
    """True when the request frame had been fully written to the child: it may have acted."""
    hint: str | None = None

    @property
    def code(self) -> str:
        return self.cause.value

    def describe(self) -> str:
        parts = [f"cause={self.cause.value}", f"pid={self.pid}", f"generation={self.generation}"]
        if self.signal:
            parts.append(f"signal={self.signal}")
        elif self.returncode is not None:
            parts.append(f"returncode={self.returncode}")
        if self.command is not None:
            parts.append(f"request_id={self.request_id} command={self.command} work_entered={self.work_entered}")
        text = " ".join(parts)
        if self.hint:
            text += f"; hint: {self.hint}"
        return text
