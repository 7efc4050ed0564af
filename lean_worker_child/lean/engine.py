"""Engines that check snippets with a real Lean, and the sessions the warm one keeps.

- ``WarmEngine``: one ``lean --worker`` process per session (header), kept alive between
  checks. The header is imported once; each check replaces the document's body.
- ``ColdEngine``: one ``lean --json --stdin`` process per check. The baseline, and the
  fallback for a snippet whose header cannot be parsed.

Both return ``CheckResult`` with positions relative to the caller's snippet. Only the warm
engine can report the goal of each ``sorry`` (``CheckRequest.sorry_goals``): it asks the
session's document after the diagnostics are in.
"""

from __future__ import annotations

import bisect
import itertools
import re
import subprocess
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from lean_worker_exit import classify
from lean_worker_protocol.lean import CheckResult, Header, HeaderError, Hole, Message, Pos, parse_header
from lean_worker_protocol.lean_session import SORRY, HoleMode, find_sorries

from .._boot import die_with_parent
from .errors import LeanCrashed, LeanTimeout
from .lsp import FileWorker, WorkDir, _death_detail

_SEVERITY = {1: "error", 2: "warning", 3: "information", 4: "information"}
# "declaration uses `sorry`" in Lean 4.35, "declaration uses 'sorry'" before; the LSP
# carries no message tags, so the text is the one signal both engines share.
_SORRY = re.compile(r"declaration uses [`']sorry[`']")
_HEARTBEATS = "maxHeartbeats"
_MEMORY = "memory limit"


# -- positions --------------------------------------------------------------------------------


class _Lines:
    """Offsets (in code points) of line starts, for line/column <-> offset conversion."""

    def __init__(self, text: str) -> None:
        self.text = text
        # One str.find per line, not a Python step per character: this runs for every
        # check that has messages, on the snippet and on the document.
        starts = [0]
        at = text.find("\n")
        while at >= 0:
            starts.append(at + 1)
            at = text.find("\n", at + 1)
        self.starts = starts

    def offset_of_utf16(self, line0: int, char16: int) -> int:
        """Offset of an LSP position (0-based line, UTF-16 code units)."""
        if line0 >= len(self.starts):
            return len(self.text)
        start = self.starts[line0]
        end = self.starts[line0 + 1] - 1 if line0 + 1 < len(self.starts) else len(self.text)
        units = 0
        i = start
        while i < end and units < char16:
            units += 2 if ord(self.text[i]) > 0xFFFF else 1
            i += 1
        return i

    def pos(self, offset: int) -> Pos:
        line0 = bisect.bisect_right(self.starts, offset) - 1
        return Pos(line0 + 1, offset - self.starts[line0])


class _Text(_Lines):
    """A document's text with LSP position conversions both ways."""

    def lsp(self, offset: int) -> dict[str, int]:
        line0 = self.pos(offset).line - 1
        start = self.starts[line0]
        units = sum(2 if ord(c) > 0xFFFF else 1 for c in self.text[start:offset])
        return {"line": line0, "character": units}

    def offset(self, p: dict[str, Any]) -> int:
        return self.offset_of_utf16(p["line"], p["character"])


# -- the goal of a `sorry` ------------------------------------------------------------------------
# Shared by the warm engine (``CheckRequest.sorry_goals``) and the session engine (``RUN``).


def _goal_list(result: Any, key: str) -> list[str] | None:
    if not isinstance(result, dict):
        return None
    if key == "goals":
        goals = result.get("goals")
        return [str(g) for g in goals] if isinstance(goals, list) else None
    goal = result.get("goal")
    return [str(goal)] if isinstance(goal, str) else None


_TACTIC_LEADS = ("by", "·", ".", "=>", ";", "<;>")


def _stands_as_tactic(command: str, hole: int) -> bool:
    """Whether the ``sorry`` at ``hole`` is written where a tactic goes: first on its line,
    or after ``by``, ``·``, ``=>`` or ``;``. Lean then confirms it with a tactic goal; a
    term ``sorry`` inside a tactic (``exact sorry``) is not one."""
    before = command[command.rfind("\n", 0, hole) + 1:hole].rstrip()
    return not before or before.endswith(_TACTIC_LEADS)


Query = Callable[[str, int], Any]
"""``query(method, offset)``: one LSP request about a position of the document, its ``result``."""


def _hole_goals(query: Query, lines: _Text, at: int) -> tuple[HoleMode, list[str]] | None:
    """The goals at the ``sorry`` at offset ``at`` of the document ``lines``, and how it
    stands: ``tactic`` (``$/lean/plainGoal`` answered there) or ``term``
    (``$/lean/plainTermGoal``, whose range must start at the hole). ``None``: not a hole
    Lean elaborated (a failed declaration, a quotation...)."""
    if _stands_as_tactic(lines.text, at):
        goals = _goal_list(query("$/lean/plainGoal", at), "goals")
        # No goals: the `sorry` only starts a line inside a tactic (`exact` above it), and
        # Lean answered with the goals after that tactic. A tactic always has a goal before it.
        if goals:
            return "tactic", goals
    term = query("$/lean/plainTermGoal", at)
    where = term.get("range", {}).get("start") if isinstance(term, dict) else None
    if not isinstance(where, dict) or lines.offset(where) != at:
        return None
    goals = _goal_list(term, "goal")
    return None if goals is None else ("term", goals)


def _kind(raw: str | None) -> str:
    if not raw or raw == "[anonymous]":
        return ""
    return raw.removesuffix("._namedError")


def _verdict(messages: list[Message]) -> tuple[str, list[Pos], str | None]:
    sorries = [m.pos for m in messages if m.severity == "warning" and (m.kind == "hasSorry" or _SORRY.search(m.text))]
    limit = None
    for m in messages:
        if m.severity == "error":
            if _HEARTBEATS in m.text:
                limit = "heartbeats"
            elif _MEMORY in m.text:
                limit = limit or "memory"
    if any(m.severity == "error" for m in messages):
        return "errors", sorries, limit
    return ("sorry" if sorries else "ok"), sorries, limit


def _result(
    id: str, messages: list[Message], started: float, header: Header | None, session: str, holes: list[Hole] | None = None
) -> CheckResult:
    verdict, sorries, limit = _verdict(messages)
    return CheckResult(
        id=id,
        verdict=verdict,  # type: ignore[arg-type]
        messages=messages,
        sorries=sorries,
        elapsed_ms=(time.perf_counter() - started) * 1e3,
        imports=list(header.modules) if header is not None else [],
        session=session,  # type: ignore[arg-type]
        limit=limit,  # type: ignore[arg-type]
        holes=holes or [],
    )


# -- warm ---------------------------------------------------------------------------------------


@dataclass
class Session:
    key: tuple[str, ...]
    worker: FileWorker
    checks: int = 0


class WarmEngine:
    """Sessions keyed by header, each a ``lean --worker`` process; least recently used first out.

    A session's document is ``canonical header + body``: every snippet with the same header
    key reuses the same imported environment, whatever comments or spacing its own header
    has. Positions are mapped back to the caller's text.
    """

    def __init__(
        self,
        lean: str,
        *,
        env: Mapping[str, str],
        max_sessions: int = 8,
        extra_args: Sequence[str] = (),
        report_delay_ms: int = 0,
    ) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1; got {max_sessions}")
        self.lean = lean
        self.env = dict(env)
        self.max_sessions = max_sessions
        self.extra_args = tuple(extra_args)
        self.report_delay_ms = report_delay_ms
        self.sessions: OrderedDict[tuple[str, ...], Session] = OrderedDict()
        self._dir = WorkDir("lean-worker-sessions-")
        self._names = itertools.count(1)
        self.imports = 0

    def session_pids(self) -> list[int]:
        return [s.worker.pid for s in self.sessions.values()]

    def _open(self, key: tuple[str, ...]) -> Session:
        while len(self.sessions) >= self.max_sessions:
            _, old = self.sessions.popitem(last=False)
            old.worker.close()
        uri = f"file://{self._dir.path}/Session{next(self._names)}.lean"
        worker = FileWorker(self.lean, uri=uri, cwd=self._dir.path, env=self._dir.env(self.env),
                            extra_args=self.extra_args, report_delay_ms=self.report_delay_ms)
        session = self.sessions[key] = Session(key, worker)
        self.imports += 1
        return session

    def drop(self, key: tuple[str, ...]) -> None:
        session = self.sessions.pop(key, None)
        if session is not None:
            session.worker.close()

    def check(
        self, code: str, *, id: str = "", header: Header, timeout_s: float | None, sorry_goals: bool = False
    ) -> tuple[CheckResult, bool]:
        """Check ``code``; return the result and whether a session was opened (an import).

        ``sorry_goals``: then ask Lean for the goal of each ``sorry`` of the body, within
        the same ``timeout_s`` (``CheckResult.holes``)."""
        started = time.perf_counter()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        key = header.key()
        session = self.sessions.get(key)
        fresh = session is None or not session.worker.alive
        if session is not None and fresh:
            self.drop(key)
        if fresh:
            session = self._open(key)
        else:
            self.sessions.move_to_end(key)
        assert session is not None
        canonical = header.canonical()
        body = code[header.end:]
        doc = canonical + body
        try:
            raw = session.worker.check(doc, timeout_s=timeout_s, deadline=deadline)
            # Without the flag or a `sorry` token, not one request more than a plain check.
            hits = find_sorries(body) if sorry_goals else []
            holes = self._holes(session.worker, code, doc, header, len(canonical), hits, deadline, timeout_s)
        except (LeanCrashed, LeanTimeout):
            self.drop(key)
            raise
        session.checks += 1
        messages = self._messages(raw, code, doc, header, len(canonical))
        return _result(id, messages, started, header, "import" if fresh else "warm", holes), fresh

    @staticmethod
    def _holes(
        worker: FileWorker, code: str, doc: str, header: Header, head_len: int, hits: list[int],
        deadline: float | None, timeout_s: float | None,
    ) -> list[Hole]:
        """The goal of each ``sorry`` at ``hits`` (offsets in the body) that Lean elaborated."""
        if not hits:
            return []
        lines = _Text(doc)
        user = _Lines(code)

        def query(method: str, at: int) -> Any:
            params = {"textDocument": {"uri": worker.uri}, "position": lines.lsp(at)}
            return worker.request(method, params, deadline=deadline, limit_s=timeout_s or 0.0)

        holes = []
        for hit in hits:
            found = _hole_goals(query, lines, head_len + hit)
            if found is None:
                continue
            start = header.end + hit
            holes.append(Hole(user.pos(start), user.pos(start + len(SORRY)), "\n\n".join(found[1])))
        return holes

    @staticmethod
    def _messages(raw: list[dict[str, Any]], code: str, doc: str, header: Header, head_len: int) -> list[Message]:
        if not raw:
            return []
        user = _Lines(code)
        lines = _Lines(doc)

        def to_user(p: dict[str, Any]) -> Pos:
            off = lines.offset_of_utf16(p["line"], p["character"])
            if off >= head_len:
                return user.pos(off - head_len + header.end)
            # Inside the canonical header: line k is header item k.
            k = min(p["line"], len(header.offsets) - 1)
            return user.pos(header.offsets[k] if k >= 0 else 0)

        out = []
        for d in raw:
            rng = d.get("fullRange") or d["range"]
            out.append(
                Message(
                    severity=_SEVERITY.get(d.get("severity", 1), "error"),  # type: ignore[arg-type]
                    pos=to_user(rng["start"]),
                    end_pos=to_user(rng["end"]),
                    text=d.get("message", ""),
                    kind=_kind(d.get("code") if isinstance(d.get("code"), str) else None),
                )
            )
        out.sort(key=lambda m: (m.pos.line, m.pos.column))
        return out

    def close(self) -> None:
        for key in list(self.sessions):
            self.drop(key)
        self._dir.remove()


# -- cold ---------------------------------------------------------------------------------------


class ColdEngine:
    """One ``lean --json --stdin`` process per check."""

    def __init__(self, lean: str, *, env: Mapping[str, str], extra_args: Sequence[str] = ()) -> None:
        self.lean = lean
        self.env = dict(env)
        self.extra_args = tuple(extra_args)
        self.pids: set[int] = set()

    def check(self, code: str, *, id: str = "", timeout_s: float | None) -> CheckResult:
        started = time.perf_counter()
        try:
            header: Header | None = parse_header(code)
        except HeaderError:
            header = None
        proc = subprocess.Popen(
            [self.lean, "--json", "--stdin", *self.extra_args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
            preexec_fn=die_with_parent,
        )
        self.pids.add(proc.pid)
        try:
            out, err = proc.communicate(code.encode(), timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise LeanTimeout("the snippet did not finish in time; its Lean process was killed", limit_s=timeout_s or 0.0) from None
        finally:
            self.pids.discard(proc.pid)
        messages = []
        for line in out.splitlines():
            if not line.startswith(b"{"):
                continue
            try:
                m = orjson.loads(line)
                end = m.get("endPos")
                messages.append(
                    Message(
                        severity=m.get("severity", "error"),
                        pos=Pos(m["pos"]["line"], m["pos"]["column"]),
                        end_pos=Pos(end["line"], end["column"]) if end else None,
                        text=m.get("data", ""),
                        kind=_kind(m.get("kind")),
                    )
                )
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue
        # Lean exits 1 when the snippet has errors; a signal or another status is a death.
        if proc.returncode not in (0, 1) or (proc.returncode == 1 and not messages):
            stderr = err.decode("utf-8", "replace")
            cause, _ = classify(proc.returncode, in_flight=True, supervisor_reason=None, graceful=False, oom_kills_seen=False)
            raise LeanCrashed(
                "the Lean process died while checking the snippet",
                cause=cause.value,
                returncode=proc.returncode,
                detail=_death_detail(stderr),
                stderr_tail=stderr[-4000:],
            )
        messages.sort(key=lambda m: (m.pos.line, m.pos.column))
        return _result(id, messages, started, header, "cold")
