"""The session engine: environments and proof states materialized in ``lean --worker`` documents.

A state arrives as a value (``lean_worker_protocol.lean_session``); its document is a text
(``env_text``, ``proof_layout``). The engine keeps at most ``max_documents`` file workers,
each holding one document, least recently used first out. To materialize a state it
edits the document that shares the longest prefix with the state's text (same header);
Lean then reuses every command snapshot before the first changed character, and inside a
top-level ``by`` block every tactic snapshot before it. A step still pays a little per
command of the file (Lean walks its snapshots to report), so it grows slowly with the
file (``architecture/95-sessions.md`` has the numbers). With no document for the header,
or none sharing more than the header while there is room, it opens one (an import).

Steps and goal queries return as soon as Lean has processed the edit, without waiting
for the reference index Lean then computes over the whole file (``FileWorker.check``,
``early``); a ``complete`` step waits for Lean's barrier before it answers.

A document is retired after ``max_edits`` edits and the next request opens a fresh one:
Lean's file worker keeps per-edit residue (about 1 MiB per 1000 edits, measured in
``architecture/95-sessions.md``), and a bounded number of edits bounds it.

Goals come from ``$/lean/plainGoal`` after the last tactic (or at a ``sorry`` tactic)
and ``$/lean/plainTermGoal`` at a term ``sorry``.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lean_worker_protocol.lean import HeaderError, Message, parse_header
from lean_worker_protocol.lean_session import (
    ApplyRequest,
    ApplyResult,
    Env,
    GoalsRequest,
    GoalsResult,
    Materialized,
    ProofState,
    RunRequest,
    RunResult,
    Sorry,
    StartRequest,
    StartResult,
    env_text,
    find_sorries,
    make_env,
    make_proof_state,
    proof_layout,
)

from .engine import _SEVERITY, _goal_list, _hole_goals, _kind, _Lines, _Text
from .errors import LeanCrashed, LeanError, LeanStateInvalid, LeanTimeout
from .lsp import FileWorker, WorkDir

DEFAULT_MAX_EDITS = 2000
"""Edits of one document before it is retired (see the module docstring)."""


def _common_prefix(a: str, b: str) -> int:
    """The length of the longest common prefix of ``a`` and ``b`` (string slices compare in C)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass
class Document:
    """One ``lean --worker`` and the text it holds (``None`` before the first check)."""

    worker: FileWorker
    header: str
    text: str | None = None
    diagnostics: list[dict[str, Any]] = field(default_factory=list)
    edits: int = 0


@dataclass
class _Budget:
    """A request's deadline, shared by its edit and its goal queries."""

    limit_s: float | None
    deadline: float | None

    @classmethod
    def of(cls, timeout_s: float | None) -> _Budget:
        return cls(timeout_s, None if timeout_s is None else time.monotonic() + timeout_s)


class SessionEngine:
    """Materializes session states in a bounded set of ``lean --worker`` documents."""

    def __init__(
        self,
        lean: str,
        *,
        env: Mapping[str, str],
        context: str,
        max_documents: int = 4,
        max_edits: int = DEFAULT_MAX_EDITS,
        extra_args: Sequence[str] = (),
        report_delay_ms: int = 0,
    ) -> None:
        if max_documents < 1:
            raise ValueError(f"max_documents must be >= 1; got {max_documents}")
        if max_edits < 1:
            raise ValueError(f"max_edits must be >= 1; got {max_edits}")
        self.lean = lean
        self.env = dict(env)
        self.context = context
        self.max_documents = max_documents
        self.max_edits = max_edits
        self.extra_args = tuple(extra_args)
        self.report_delay_ms = report_delay_ms
        self.documents: OrderedDict[int, Document] = OrderedDict()
        self._dir = WorkDir("lean-worker-states-")
        self._names = itertools.count(1)
        self.imports = 0
        """Documents opened (each imports its header)."""
        self.retired = 0

    def pids(self) -> list[int]:
        return [d.worker.pid for d in self.documents.values()]

    # -- documents ------------------------------------------------------------------------------
    def _open(self, header: str) -> tuple[int, Document]:
        while len(self.documents) >= self.max_documents:
            _, old = self.documents.popitem(last=False)
            old.worker.close()
        serial = next(self._names)
        uri = f"file://{self._dir.path}/State{serial}.lean"
        worker = FileWorker(self.lean, uri=uri, cwd=self._dir.path, env=self._dir.env(self.env),
                            extra_args=self.extra_args, report_delay_ms=self.report_delay_ms)
        doc = self.documents[serial] = Document(worker, header)
        self.imports += 1
        return serial, doc

    def _drop(self, serial: int) -> None:
        doc = self.documents.pop(serial, None)
        if doc is not None:
            doc.worker.close()

    def _choose(self, header: str, text: str) -> tuple[int | None, int]:
        """The document to edit into ``text`` and the prefix it shares; ``None``: open one."""
        best: int | None = None
        best_len = -1
        extends = False
        for serial, doc in list(self.documents.items()):
            if not doc.worker.alive or doc.edits >= self.max_edits:
                if doc.edits >= self.max_edits:
                    self.retired += 1
                self._drop(serial)
                continue
            if doc.header != header or doc.text is None:
                continue
            shared = _common_prefix(doc.text, text)
            if shared > best_len:
                best, best_len, extends = serial, shared, shared == len(doc.text)
        if best is not None and not extends and best_len <= len(header) and len(self.documents) < self.max_documents:
            return None, 0  # only the header in common: keep that document's state, open another
        return best, best_len

    def materialize(self, header: str, text: str, budget: _Budget, *, early: bool = False) -> tuple[Document, Materialized]:
        """A document holding ``text``, elaborated; its diagnostics are ``doc.diagnostics``.

        ``early``: return when Lean has processed the edit, before it has indexed the
        file's references (``FileWorker.check``); ``settle`` makes the diagnostics final."""
        serial, _ = self._choose(header, text)
        if serial is not None:
            doc = self.documents[serial]
            self.documents.move_to_end(serial)
            if doc.text == text:
                return doc, "warm"
            how: Materialized = "edited"
        else:
            serial, doc = self._open(header)
            how = "opened"
        try:
            doc.diagnostics = doc.worker.check(text, timeout_s=budget.limit_s, deadline=budget.deadline, early=early)
        except (LeanCrashed, LeanTimeout):
            self._drop(serial)
            raise
        doc.text = text
        doc.edits += 1
        return doc, how

    def settle(self, doc: Document, budget: _Budget) -> None:
        """Wait until Lean's diagnostics of ``doc`` are final (after an ``early`` edit)."""
        try:
            late = doc.worker.settle(deadline=budget.deadline, limit_s=budget.limit_s or 0.0)
        except (LeanCrashed, LeanTimeout):
            for serial, d in list(self.documents.items()):
                if d is doc:
                    self._drop(serial)
            raise
        if late is not None:
            doc.diagnostics = late

    def _query(self, doc: Document, method: str, offset: int, lines: _Text, budget: _Budget) -> Any:
        params = {"textDocument": {"uri": doc.worker.uri}, "position": lines.lsp(offset)}
        try:
            return doc.worker.request(method, params, deadline=budget.deadline, limit_s=budget.limit_s or 0.0)
        except (LeanCrashed, LeanTimeout):
            for serial, d in list(self.documents.items()):
                if d is doc:
                    self._drop(serial)
            raise

    def _messages(self, doc: Document, lines: _Text, start: int, end: int, origin: int, rel: _Lines) -> list[Message]:
        """The diagnostics of ``doc`` that start in ``[start, end]``, positions relative to
        ``origin`` (the first character of what the caller wrote; ``rel`` is its text)."""
        out = []
        for d in doc.diagnostics:
            rng = d.get("fullRange") or d["range"]
            begin = lines.offset(rng["start"])
            if not start <= begin <= end:
                continue
            stop = max(begin, lines.offset(rng["end"]))
            out.append(Message(
                severity=_SEVERITY.get(d.get("severity", 1), "error"),  # type: ignore[arg-type]
                pos=rel.pos(begin - origin),
                end_pos=rel.pos(stop - origin),
                text=d.get("message", ""),
                kind=_kind(d.get("code") if isinstance(d.get("code"), str) else None),
            ))
        out.sort(key=lambda m: (m.pos.line, m.pos.column))
        return out

    # -- checks of values -------------------------------------------------------------------------
    def _check_env(self, env: Env) -> None:
        if env.context != self.context:
            raise LeanStateInvalid(
                f"the state was made by a worker with another context (toolchain, search path or Lean "
                f"arguments); state_context={env.context} worker_context={self.context}",
                reason="context_mismatch",
            )
        if not env.valid():
            raise LeanStateInvalid(f"the environment's id does not match its content; id={env.id}", reason="id_mismatch")

    def _check_state(self, state: ProofState) -> None:
        self._check_env(state.env)
        if not state.decl.startswith("sorry", state.hole) or state.hole < 0:
            raise LeanStateInvalid(f"the proof state's hole is not a `sorry` of its command; hole={state.hole}",
                                   reason="bad_hole")
        if not state.valid():
            raise LeanStateInvalid(f"the proof state's id does not match its content; id={state.id}", reason="id_mismatch")

    # -- goals ------------------------------------------------------------------------------
    def _goals_at(self, doc: Document, state: ProofState, layout: Any, budget: _Budget) -> list[str] | None:
        lines = _Text(layout.text)
        if state.tactics or state.mode == "tactic":
            return _goal_list(self._query(doc, "$/lean/plainGoal", layout.goal_offset, lines, budget), "goals")
        return _goal_list(self._query(doc, "$/lean/plainTermGoal", layout.goal_offset, lines, budget), "goal")

    # -- commands ---------------------------------------------------------------------------------
    def start(self, request: StartRequest) -> StartResult:
        started = time.perf_counter()
        header = parse_header(request.header)
        if request.header[header.end:].strip():
            raise HeaderError("lean.session.start takes a header only (prelude/import lines); run the rest with RUN")
        env = make_env(self.context, request.header)
        doc, how = self.materialize(env.header, env.header, _Budget.of(request.timeout_s))
        lines = _Text(env.header)
        messages = self._messages(doc, lines, 0, len(env.header), 0, lines)
        errors = [m for m in messages if m.severity == "error"]
        if errors:
            first = errors[0]
            raise HeaderError(f"the header does not import; at {first.pos.line}:{first.pos.column}: {first.text[:500]}")
        return StartResult(env, messages, (time.perf_counter() - started) * 1e3, how)

    def run(self, request: RunRequest) -> RunResult:
        started = time.perf_counter()
        self._check_env(request.env)
        try:
            stray = parse_header(request.command).key()
        except HeaderError:
            stray = ("import",)
        if stray:
            # Right after the header, Lean would read it as more header, and a file worker
            # whose header changes exits.
            raise HeaderError(f"a command cannot start with {stray[0].split()[0]!r}: put imports in the header given to start")
        budget = _Budget.of(request.timeout_s)
        old = request.env
        new = make_env(self.context, old.header, (*old.commands, request.command))
        text, starts = env_text(new)
        origin = starts[-1]
        doc, how = self.materialize(new.header, text, budget)
        lines = _Text(text)
        rel = _Lines(request.command)
        messages = self._messages(doc, lines, origin, len(text), origin, rel)
        sorries = []

        def query(method: str, at: int) -> Any:
            return self._query(doc, method, at, lines, budget)

        for hole in find_sorries(request.command):
            # The command starts a line of the document, so `sorry` stands there as in the command.
            found = _hole_goals(query, lines, origin + hole)
            if found is None:
                continue  # not a hole Lean elaborated (a failed declaration, a quotation...)
            mode, goals = found
            state = make_proof_state(old, request.command, hole, mode)
            sorries.append(Sorry(rel.pos(hole), state, goals))
        return RunResult(new, messages, sorries, (time.perf_counter() - started) * 1e3, how)

    def goals(self, request: GoalsRequest) -> GoalsResult:
        started = time.perf_counter()
        state = request.state
        self._check_state(state)
        budget = _Budget.of(request.timeout_s)
        layout = proof_layout(state)
        doc, how = self.materialize(state.env.header, layout.text, budget, early=True)
        goals = self._goals_at(doc, state, layout, budget)
        if goals is None:
            raise LeanError(f"Lean reported no goal at the proof state's position; id={state.id}")
        return GoalsResult(state.id, goals, (time.perf_counter() - started) * 1e3, how)

    def apply(self, request: ApplyRequest) -> ApplyResult:
        started = time.perf_counter()
        parent = request.state
        self._check_state(parent)
        if not request.tactic.strip():
            raise LeanStateInvalid("the tactic is empty", reason="empty_tactic")
        budget = _Budget.of(request.timeout_s)
        state = make_proof_state(parent.env, parent.decl, parent.hole, parent.mode, (*parent.tactics, request.tactic))
        layout = proof_layout(state)
        # Early: a step's answer needs its own messages and goals, not the file's index.
        doc, how = self.materialize(state.env.header, layout.text, budget, early=True)
        lines = _Text(layout.text)
        tactic_start, tactic_end = layout.tactics[-1]
        # What the tactic may have broken: its own text, and the first token after it (where
        # a parse error that runs past the tactic is reported).
        after = tactic_end
        while after < len(layout.text) and layout.text[after].isspace():
            after += 1
        written = layout.text[tactic_start:tactic_end]
        messages = self._messages(doc, lines, tactic_start, after, tactic_start, _Lines(written))
        elapsed = lambda: (time.perf_counter() - started) * 1e3  # noqa: E731
        if any(m.severity == "error" for m in messages):
            return ApplyResult("error", None, [], messages, elapsed(), how)
        goals = self._goals_at(doc, state, layout, budget)
        if goals == []:
            # `complete` is the one answer a search acts on without looking back: confirm
            # it with Lean's own barrier (Lean only ever adds diagnostics to a version).
            self.settle(doc, budget)
            messages = self._messages(doc, lines, tactic_start, after, tactic_start, _Lines(written))
            if any(m.severity == "error" for m in messages):
                return ApplyResult("error", None, [], messages, elapsed(), how)
        if goals is None:
            note = Message("error", _Lines(written).pos(0), None, "Lean reported no goals after this tactic")
            return ApplyResult("error", None, [], [*messages, note], elapsed(), how)
        return ApplyResult("complete" if not goals else "incomplete", state, goals, messages, elapsed(), how)

    def close(self) -> None:
        for serial in list(self.documents):
            self._drop(serial)
        self._dir.remove()
