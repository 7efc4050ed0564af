"""Typed failures of the Lean capability. Each has a stable ``code`` that crosses the
protocol in the error response; the parent raises the class ``lean_worker.lean`` registered
for it (``LeanCrashed``, ``LeanTimeout``...)."""

from __future__ import annotations


class LeanError(Exception):
    code = "lean.error"


class LeanCrashed(LeanError):
    """A Lean process died while it held a snippet. The worker lives on."""

    code = "lean.crashed"

    def __init__(self, message: str, *, cause: str, returncode: int | None, detail: str | None, stderr_tail: str) -> None:
        self.cause = cause
        self.returncode = returncode
        self.detail = detail
        self.stderr_tail = stderr_tail
        self.limit = "memory" if "memory_exception" in stderr_tail or "excessive memory" in stderr_tail else None
        """``memory`` when Lean aborted on its own memory limit (``lean -M``)."""
        self.facts = {"cause": cause, "returncode": returncode, "detail": detail, "limit": self.limit}
        text = f"{message}; cause={cause} returncode={returncode}"
        if self.limit:
            text += f" limit={self.limit}"
        if detail:
            text += f"; lean said: {detail}"
        super().__init__(text)


class LeanTimeout(LeanError):
    """A snippet ran past its deadline; its Lean process was killed."""

    code = "lean.timeout"

    def __init__(self, message: str, *, limit_s: float) -> None:
        self.limit_s = limit_s
        self.facts = {"limit_s": limit_s}
        super().__init__(f"{message}; limit_s={limit_s:g}")


class LeanStateInvalid(LeanError):
    """A session state this worker cannot use, or a step that names nothing to do.

    ``reason``: ``context_mismatch`` (made by a worker with another toolchain, search path
    or Lean arguments), ``id_mismatch`` (its id does not match its content), ``bad_hole``
    (its hole is not a ``sorry`` of its command) or ``empty_tactic``."""

    code = "lean.state_invalid"

    def __init__(self, message: str, *, reason: str) -> None:
        self.reason = reason
        self.facts = {"reason": reason}
        super().__init__(f"{message}; reason={reason}")
