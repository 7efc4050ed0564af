"""The native API's wire types (``/v1``), for clients: msgspec only, no web framework.

``POST /v1/check`` takes a ``BatchRequest`` and answers ``application/x-ndjson``: one
``ItemLine`` per snippet as it finishes (completion order; ``index`` says which), then one
``EndLine``. Decode a line with ``msgspec.json.decode(line, type=Line)``; a reader that
never sees the ``EndLine`` knows the stream was cut.

The session routes take and answer the Lean worker's own session types
(``lean_worker_protocol.lean_session``): ``POST /v1/session/start`` a ``StartRequest``
→ ``StartResult``, ``/v1/session/run`` a ``RunRequest`` → ``RunResult``,
``/v1/session/goals`` a ``GoalsRequest`` → ``GoalsResult``, ``/v1/session/apply`` an
``ApplyRequest`` → ``ApplyResult``. States travel by value, so any server with the same
toolchain and search path continues any state.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from lean_worker_protocol.lean import CheckResult

__all__ = ["BatchRequest", "EndLine", "ItemError", "ItemLine", "Line", "Snippet"]


class Snippet(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    code: str


class BatchRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    snippets: Annotated[list[Snippet], msgspec.Meta(min_length=1)]
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    """Each snippet's own deadline (at most the server's ``max_timeout_s``); default: the
    server's ``--timeout``."""
    engine: Literal["auto", "warm", "cold"] = "auto"
    sorry_goals: bool = False
    """Also report each ``sorry`` hole with its goal (``CheckResult.holes``)."""


class ItemError(msgspec.Struct, frozen=True):
    """Why a snippet has no result: a stable ``code`` (``lean.crashed``, ``lean.timeout``,
    ``service.deadline``...), its message, and the facts the worker attached."""

    code: str
    message: str
    facts: dict[str, Any] = {}


class ItemLine(msgspec.Struct, frozen=True, tag="result"):
    index: int
    id: str
    result: CheckResult | None
    error: ItemError | None
    elapsed_ms: float
    """From admission to result (queueing included)."""
    worker: int
    """The pool worker that ran it; -1 if none did."""
    generation: int
    node: str | None = None
    """On a Ray cluster: the node that ran it."""


class EndLine(msgspec.Struct, frozen=True, tag="end"):
    items: int
    verdicts: dict[str, int]
    """``ok``, ``errors``, ``sorry``, and ``failed`` for items with an ``error``."""
    errors: dict[str, int]
    elapsed_ms: float


Line = ItemLine | EndLine
