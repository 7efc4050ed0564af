"""The parent's errors of the Lean capability, registered for their codes.

``lean_worker.lean`` imports this module, which registers each class with
``register_remote_error``: a child error with code ``lean.crashed`` then arrives as
``LeanCrashed``. The generic core (``_errors.py``) knows none of these codes.

    RemoteError                          worker.handler_error
    └── LeanError                        lean.error                    the Lean capability failed
        ├── LeanCrashed                  lean.crashed                  a Lean process died
        ├── LeanTimeout                  lean.timeout                  past the check's own deadline
        ├── LeanHeaderError              lean.bad_header
        ├── LeanStateInvalid             lean.state_invalid            a session state this worker cannot use
        └── ToolchainNotFound            lean.toolchain_not_found

The child raises the same codes from ``lean_worker_child.lean.errors`` (and
``ToolchainError``); a batch reports them per row as ``ItemError.code`` instead.
"""

from __future__ import annotations

from ._errors import RemoteError, register_remote_error

__all__ = ["LeanCrashed", "LeanError", "LeanHeaderError", "LeanStateInvalid", "LeanTimeout", "ToolchainNotFound"]


@register_remote_error
class LeanError(RemoteError):
    """The Lean capability failed on this request; the worker lives on.

    ``facts`` holds what the child knew (for a crash: ``cause``, ``returncode``,
    ``detail``, ``limit``; for a timeout: ``limit_s``), also as properties."""

    code = "lean.error"


@register_remote_error
class LeanCrashed(LeanError):
    code = "lean.crashed"

    @property
    def cause(self) -> str | None:
        """The exit classification of the Lean process, e.g. ``worker.exit.sigabrt``."""
        return self.facts.get("cause")  # type: ignore[return-value]

    @property
    def returncode(self) -> int | None:
        return self.facts.get("returncode")  # type: ignore[return-value]

    @property
    def detail(self) -> str | None:
        """What Lean printed before it died, e.g. ``Stack overflow detected. Aborting.``"""
        return self.facts.get("detail")  # type: ignore[return-value]

    @property
    def limit(self) -> str | None:
        """``memory`` when Lean aborted on its own memory limit (``lean -M``)."""
        return self.facts.get("limit")  # type: ignore[return-value]


@register_remote_error
class LeanTimeout(LeanError):
    code = "lean.timeout"

    @property
    def limit_s(self) -> float | None:
        return self.facts.get("limit_s")  # type: ignore[return-value]


@register_remote_error
class LeanHeaderError(LeanError):
    code = "lean.bad_header"


@register_remote_error
class LeanStateInvalid(LeanError):
    """A session state the worker refused: ``reason`` is ``context_mismatch`` (made in
    another context: toolchain, search path or Lean arguments), ``id_mismatch`` (edited
    by hand), ``bad_hole`` or ``empty_tactic``. Nothing was run."""

    code = "lean.state_invalid"

    @property
    def reason(self) -> str | None:
        return self.facts.get("reason")  # type: ignore[return-value]


@register_remote_error
class ToolchainNotFound(LeanError):
    code = "lean.toolchain_not_found"
