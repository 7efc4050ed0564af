"""Kimina Lean Server's wire format: its request bodies, and its replies built from outcomes.

Two generations of clients are answered:

- ``kimina-client`` (0.1.9-0.2.1): ``POST /api/check`` with ``{"snippets": [{"id",
  "code"}], "timeout", "debug", "reuse", "infotree"}``; the reply is ``{"results": [{"id",
  "time", "error" | "response", "diagnostics"?}]}`` in input order. The client classifies
  an item by its own ``analyze()``: an ``error`` containing "timed out" is a timeout, any
  other ``error`` a server error; in a ``response``, a message of severity ``error`` is a
  Lean error, a non-empty ``sorries`` a sorry, else valid. Its models are strict: exactly
  one of ``error``/``response``; severities ``trace|info|warning|error``; a sorry needs
  ``pos``, ``endPos`` and ``goal``; ``tactics`` positions are typed wrongly, so none are sent.
- The older ``Lean4Client`` copied into many projects: ``POST /verify`` (and
  ``/one_pass_verify_batch``) with ``{"codes": [{"custom_id", "proof" | "code"}],
  "timeout", "infotree_type", "disable_cache"}``; the reply is ``{"results": [{"custom_id",
  "error", "response"}]}`` with ``error`` always present (callers index it) and the time
  inside ``response``.

What is accepted and not acted on: ``reuse`` and ``disable_cache`` (warm reuse is by
header, always safe here: a snippet never sees another's declarations), ``infotree`` and
``infotree_type`` (no info trees are produced; a reply to a request that asked for one
carries the header ``X-Lean-Worker-Ignored``). ``env`` is always 0: environments are not
addressable through this API (the native session routes are).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from lean_worker._errors import WorkerError
from lean_worker._pool import Outcome
from lean_worker._verify import _error_code, _error_text
from lean_worker.lean import CheckRequest, CheckResult, Message, Pos

_Seconds = Annotated[float, msgspec.Meta(ge=0)]


class Snippet(msgspec.Struct, frozen=True):
    id: str
    code: str


class CheckBody(msgspec.Struct, frozen=True):
    """``POST /api/check``."""

    snippets: Annotated[list[Snippet], msgspec.Meta(min_length=1)]
    timeout: _Seconds = 30
    debug: bool = False
    reuse: bool = True
    infotree: str | None = None


class Code(msgspec.Struct, frozen=True):
    custom_id: str | int
    proof: str | None = None
    code: str | None = None


class VerifyBody(msgspec.Struct, frozen=True):
    """``POST /verify`` and ``/one_pass_verify_batch``."""

    codes: Annotated[list[Code], msgspec.Meta(min_length=1)]
    timeout: _Seconds = 300
    infotree_type: str | None = None
    disable_cache: bool = False


TIMEOUT_CODES = frozenset({"lean.timeout", "worker.request_timeout", "service.deadline"})
"""Item errors a Kimina client must count as timeouts: their text says "timed out"."""


def error_text(error: WorkerError, limit: int = 1000) -> str:
    """One line for an item's ``error``: its stable code, then what happened. A timeout
    says "timed out" (what the client's ``analyze()`` looks for); nothing else does."""
    code = _error_code(error)
    line = (_error_text(error).splitlines() or [""])[0]
    if code in TIMEOUT_CODES:
        if "timed out" not in line:
            line = f"timed out: {line}"
    else:
        line = line.replace("timed out", "timed-out")
    return f"{code}: {line}"[:limit]


_SEVERITY = {"error": "error", "warning": "warning", "information": "info"}


def _pos(pos: Pos) -> dict[str, int]:
    return {"line": pos.line, "column": pos.column}


def message(m: Message) -> dict[str, Any]:
    return {
        "severity": _SEVERITY.get(m.severity, "info"),
        "pos": _pos(m.pos),
        "endPos": _pos(m.end_pos) if m.end_pos is not None else None,
        "data": m.text,
    }


def command_response(result: CheckResult) -> dict[str, Any]:
    """The REPL-shaped ``response`` of a checked snippet."""
    response: dict[str, Any] = {"env": 0, "messages": [message(m) for m in result.messages]}
    sorries = [{"pos": _pos(h.pos), "endPos": _pos(h.end_pos), "goal": h.goal} for h in result.holes]
    if not sorries and result.sorries:
        # No hole's goal could be read (the cold engine; a hole Lean did not elaborate):
        # where Lean said a declaration uses sorry, so the item still counts as a sorry.
        sorries = [{"pos": _pos(p), "endPos": _pos(p), "goal": ""} for p in result.sorries]
    if sorries:
        response["sorries"] = sorries
    return response


def item_time(outcome: Outcome[CheckRequest, CheckResult]) -> float:
    """Seconds: Lean's time for a result, the time until it failed for an error."""
    if outcome.value is not None:
        return round(outcome.value.elapsed_ms / 1e3, 6)
    return round(outcome.elapsed_s, 6)


def check_result(snippet_id: str, outcome: Outcome[CheckRequest, CheckResult], debug: bool) -> dict[str, Any]:
    """One item of an ``/api/check`` reply."""
    item: dict[str, Any] = {"id": snippet_id, "time": item_time(outcome)}
    if outcome.value is not None:
        item["response"] = command_response(outcome.value)
    else:
        assert outcome.error is not None
        item["error"] = error_text(outcome.error)
    if debug:
        item["diagnostics"] = {"repl_uuid": f"worker-{outcome.worker}-generation-{outcome.generation}"}
    return item


def verify_result(custom_id: str | int, outcome: Outcome[CheckRequest, CheckResult]) -> dict[str, Any]:
    """One item of a ``/verify`` reply."""
    if outcome.value is not None:
        return {"custom_id": custom_id, "error": None,
                "response": {**command_response(outcome.value), "time": item_time(outcome)}}
    assert outcome.error is not None
    return {"custom_id": custom_id, "error": error_text(outcome.error), "response": None}


def bad_item(custom_id: str | int) -> dict[str, Any]:
    """A ``/verify`` item with neither ``proof`` nor ``code``: its own error."""
    return {"custom_id": custom_id, "error": "service.bad_item: the item has neither `proof` nor `code`",
            "response": None}
