"""Probes: the built-in ``worker.doctor`` command and the reports of ``check`` and ``doctor``.

Pure types, shared by both sides:

- ``DOCTOR`` is served by every ``WorkerApp``. Its report lists what the child's own
  capabilities diagnose about themselves (the Lean capability: toolchain, search path,
  cache, fixture state), one ``DoctorItem`` each. An app with no contributors answers
  with an empty list.
- ``CheckReport`` is what the parent's ``lean_worker.check`` returns: named checks of the
  whole path from the parent to a working child, each with a stable ``code``
  (``check.child_not_found``, ``check.schema_mismatch``...; the table is in
  ``architecture/80-probes-and-packaging.md``) and a repair hint.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from ._commands import Call

__all__ = ["DOCTOR", "SEVERITIES", "CheckItem", "CheckReport", "DoctorItem", "DoctorReport", "DoctorRequest", "Severity"]

Severity = Literal["ok", "warning", "error"]
SEVERITIES: tuple[str, ...] = ("ok", "warning", "error")


class DoctorItem(msgspec.Struct, frozen=True):
    """One diagnosis a capability makes about itself."""

    name: str
    """What is diagnosed, dotted by capability: ``lean.toolchain``, ``lean.search_path``."""
    severity: Severity
    message: str
    hint: str = ""
    """What to do about it; empty when nothing needs doing."""
    data: dict[str, str] = {}
    """The facts behind the message, for machines: ``{"version": "4.35.0", ...}``."""


class DoctorRequest(msgspec.Struct, frozen=True):
    pass


class DoctorReport(msgspec.Struct, frozen=True):
    worker: str
    """The child's ``WorkerApp`` name."""
    version: str
    items: list[DoctorItem]

    @property
    def ok(self) -> bool:
        """No item is an error (warnings allowed)."""
        return all(item.severity != "error" for item in self.items)


DOCTOR = Call("worker.doctor", request=DoctorRequest, response=DoctorReport)
"""Served by every ``WorkerApp``: the diagnostics of its registered doctor contributors."""


class CheckItem(msgspec.Struct, frozen=True):
    """One check of ``lean_worker.check``: passed (``...ok`` codes) or what failed and how to fix it."""

    code: str
    """Stable: match on it. ``check.<what>_ok`` for a pass."""
    severity: Severity
    subject: str
    """What was checked: an argv, a command name, ``handshake``, ``lean.toolchain``."""
    message: str
    hint: str = ""


class CheckReport(msgspec.Struct, frozen=True):
    target: str
    """The child command that was checked, as a shell-like line."""
    items: list[CheckItem]

    @property
    def ok(self) -> bool:
        """No item is an error (warnings allowed)."""
        return all(item.severity != "error" for item in self.items)

    @property
    def errors(self) -> list[CheckItem]:
        return [item for item in self.items if item.severity == "error"]

    def codes(self) -> list[str]:
        return [item.code for item in self.items]
