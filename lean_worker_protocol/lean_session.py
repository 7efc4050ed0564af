"""Stateful Lean sessions: environments and tactic proof states, as values.

The commands of ``lean_worker_child.lean`` for proof search, and the pure functions that
both sides agree on. Nothing here runs Lean.

**States are values, not handles.** An ``Env`` is a header and an ordered chain of command
texts; a ``ProofState`` is an ``Env``, one command holding a ``sorry`` (the *hole*), and the
tactics applied in its place so far. A state's ``id`` is a content hash of its value and of
the worker *context* (toolchain, search path, Lean arguments) that gives it meaning, so any
worker with the same context can rebuild any state from the value alone: a state survives a
crash, a memory cycle or a move to another worker, and exports as plain JSON
(``msgspec.json.encode(state)``). A worker refuses a state whose id does not match its
content in its own context (``lean.state_invalid``).

**The document of a state** (``env_text``, ``proof_layout``) is the text a ``lean --worker``
holds to have that state elaborated: the canonical header, each command on its own lines,
then, for a proof state, the hole's command with the ``sorry`` replaced by the tactics, one
per line. Stepping appends a tactic, so Lean reuses every snapshot before it.

Positions in results are relative to what the caller wrote: a command's messages to the
command text, a tactic's messages to the tactic text (``line`` 1-based, ``column`` 0-based
code points, as in ``lean_worker_protocol.lean``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, TypeVar

import msgspec

from ._commands import Call
from .lean import HeaderError, Message, Pos, parse_header

__all__ = [
    "APPLY",
    "GOALS",
    "RUN",
    "START",
    "ApplyRequest",
    "ApplyResult",
    "Env",
    "GoalsRequest",
    "GoalsResult",
    "ProofLayout",
    "ProofState",
    "RunRequest",
    "RunResult",
    "Sorry",
    "StartRequest",
    "StartResult",
    "context_id",
    "env_text",
    "find_sorries",
    "make_env",
    "make_proof_state",
    "proof_layout",
]

HoleMode = Literal["term", "tactic"]
Status = Literal["complete", "incomplete", "error"]
Materialized = Literal["warm", "edited", "opened"]

_ID_CHARS = 32
StateT = TypeVar("StateT", "Env", "ProofState")


def _digest(*parts: str) -> str:
    """A content hash of ``parts``; each part is length-prefixed, so no two lists collide."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:_ID_CHARS]


def context_id(version: str, commit: str, search_path: Iterable[str], lean_args: Iterable[str]) -> str:
    """The id of a worker context: what, besides a state's text, decides what it means."""
    return _digest("lean-worker.context.v1", version, commit, "\0".join(search_path), "\0".join(lean_args))


class Env(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An environment: ``header`` (canonical, as ``Header.canonical()`` writes it) and the
    commands run in it, oldest first. Made by the worker (``START``, ``RUN``); ``id`` is
    the last element of ``chain()``."""

    context: str
    header: str
    commands: tuple[str, ...]
    id: str

    def chain(self) -> list[str]:
        """The ids of every prefix of this environment: the header's, then one per command."""
        ids = [_digest("env", self.context, self.header)]
        for command in self.commands:
            ids.append(_digest("cmd", ids[-1], command))
        return ids

    def valid(self) -> bool:
        return self.chain()[-1] == self.id

    def to_json(self) -> bytes:
        """The state as JSON: everything a worker needs to rebuild it."""
        return _json.encode(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> Env:
        """An exported ``Env``; ``ValueError`` if it is malformed or its id does not match."""
        return _load(cls, data)


class ProofState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A tactic proof state: ``decl`` (a command text) run in ``env`` with the ``sorry`` at
    code-point offset ``hole`` replaced by ``tactics``. ``mode`` says how the hole is
    filled: ``term`` (``by`` and the tactics) or ``tactic`` (the tactics in place of a
    ``sorry`` tactic). Made by the worker (``RUN``, ``APPLY``)."""

    env: Env
    decl: str
    hole: int
    mode: HoleMode
    tactics: tuple[str, ...]
    id: str

    def chain(self) -> list[str]:
        """The ids of every prefix: the environment's, the hole's, then one per tactic."""
        ids = self.env.chain()
        ids.append(_digest("hole", ids[-1], self.decl, str(self.hole), self.mode))
        for tactic in self.tactics:
            ids.append(_digest("tactic", ids[-1], tactic))
        return ids

    def valid(self) -> bool:
        return self.env.valid() and self.chain()[-1] == self.id

    def to_json(self) -> bytes:
        """The state as JSON: everything a worker needs to rebuild it."""
        return _json.encode(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> ProofState:
        """An exported ``ProofState``; ``ValueError`` if it is malformed or its id does not match."""
        return _load(cls, data)

    def text(self) -> str:
        """The whole document of this state: run it with ``lean`` (``CHECK``) to check the
        proof. A ``complete`` state checks without an error."""
        return proof_layout(self).text


_json = msgspec.json.Encoder()


def _load(cls: type[StateT], data: bytes | str) -> StateT:
    try:
        state = msgspec.json.decode(data, type=cls)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not an exported {cls.__name__}: {exc}") from None
    if not state.valid():
        raise ValueError(f"the exported {cls.__name__}'s id does not match its content; id={state.id}")
    return state


def make_env(context: str, header: str, commands: Iterable[str] = ()) -> Env:
    """An ``Env`` with its id; ``header`` is canonicalised (``parse_header``)."""
    canonical = parse_header(header).canonical()
    commands = tuple(commands)
    draft = Env(context, canonical, commands, "")
    return Env(context, canonical, commands, draft.chain()[-1])


def make_proof_state(env: Env, decl: str, hole: int, mode: HoleMode, tactics: Iterable[str] = ()) -> ProofState:
    draft = ProofState(env, decl, hole, mode, tuple(tactics), "")
    return ProofState(env, decl, hole, mode, draft.tactics, draft.chain()[-1])


# -- documents ------------------------------------------------------------------------------


def env_text(env: Env) -> tuple[str, list[int]]:
    """The document of ``env`` and the offset where each command starts in it.

    Every command starts on a line of its own (a newline is added after one that lacks
    it), so the document of ``env`` is a prefix of the document of every environment and
    proof state built on it: what Lean reuses on the next edit."""
    parts = [env.header]
    size = len(env.header)
    starts = []
    for command in env.commands:
        starts.append(size)
        parts.append(command)
        size += len(command)
        if not command.endswith("\n"):
            parts.append("\n")
            size += 1
    return "".join(parts), starts


@dataclass(frozen=True)
class ProofLayout:
    """Where things are in the document of a proof state (offsets in code points)."""

    text: str
    decl_start: int
    hole_start: int
    """Where the ``sorry`` was, and where the filled block starts."""
    tactics: list[tuple[int, int]]
    """Start and end of each tactic in ``text``."""

    @property
    def goal_offset(self) -> int:
        """Where to ask Lean for the goals: after the last tactic; at the hole without one."""
        return self.tactics[-1][1] if self.tactics else self.hole_start


SORRY = "sorry"


def _line_start(text: str, offset: int) -> int:
    return text.rfind("\n", 0, offset) + 1


def _indent_of_line(text: str, offset: int) -> int:
    start = _line_start(text, offset)
    i = start
    while i < len(text) and text[i] in " \t":
        i += 1
    return i - start


def _ends_its_declaration(after: str) -> bool:
    """Whether nothing of the declaration follows the hole: the rest of its line is blank
    or a line comment, and so is every line up to one that starts at column 0."""
    first, _, rest = after.partition("\n")
    first = first.strip()
    if first and not first.startswith("--"):
        return False
    for line in rest.split("\n"):
        if not line.strip():
            continue
        return not line[0].isspace()
    return True


def proof_layout(state: ProofState) -> ProofLayout:
    """The document of ``state``: its environment's, then the hole's command with the
    ``sorry`` replaced by the tactics.

    - ``tactic`` mode: the tactics go where the ``sorry`` tactic was, one per line at its
      column.
    - ``term`` mode: ``by`` and the tactics, one per line, two columns deeper than the
      hole's line. When the ``sorry`` is a declaration's whole body (``:= sorry`` and
      nothing after), the block stands as it is, so Lean elaborates it incrementally;
      elsewhere it is wrapped in parentheses, the closing one on a line of its own, to the
      left of the tactics (where no tactic can take it as an argument).
    A tactic of several lines keeps its own relative indentation."""
    base, _ = env_text(state.env)
    decl = state.decl
    hole = state.hole
    before, after = decl[:hole], decl[hole + len(SORRY):]
    decl_start = len(base)
    hole_start = decl_start + hole
    if not state.tactics:
        text = base + decl + ("" if decl.endswith("\n") else "\n")
        return ProofLayout(text, decl_start, hole_start, [])
    if state.mode == "tactic":
        column = hole - _line_start(decl, hole)
        prefix, indent, suffix = "", " " * column, ""
        first_pad = ""
    else:
        line_indent = _indent_of_line(decl, hole)
        indent = " " * (line_indent + 2)
        standalone = before.rstrip().endswith(":=") and _ends_its_declaration(after)
        prefix = "by" if standalone else "(by"
        suffix = "" if standalone else "\n" + " " * (line_indent + 1) + ")"
        first_pad = "\n" + indent
    parts = [base, before, prefix]
    offset = hole_start + len(prefix)
    spans = []
    for n, tactic in enumerate(state.tactics):
        body = tactic.strip("\n").rstrip()
        body = body.replace("\n", "\n" + indent)
        lead = first_pad if n == 0 else "\n" + indent
        parts.append(lead)
        offset += len(lead)
        parts.append(body)
        spans.append((offset, offset + len(body)))
        offset += len(body)
    parts.append(suffix)
    parts.append(after)
    text = "".join(parts)
    if not text.endswith("\n"):
        text += "\n"
    return ProofLayout(text, decl_start, hole_start, spans)


def find_sorries(text: str) -> list[int]:
    """Offsets of every ``sorry`` token of ``text`` outside comments, strings and
    characters, and not part of a longer identifier. The worker asks Lean which of these
    are holes (have a goal)."""
    out = []
    n = len(text)
    i = 0
    while i < n:
        c = text[i]
        if text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
        elif text.startswith("/-", i):
            depth, i = 1, i + 2
            while depth and i < n:
                if text.startswith("/-", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("-/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
        elif c == "«":
            j = text.find("»", i)
            i = n if j < 0 else j + 1
        elif c.isalnum() or c in "_'!?." or ord(c) > 127:
            j = i
            while j < n and (text[j].isalnum() or text[j] in "_'!?." or (ord(text[j]) > 127 and text[j].isalpha())):
                j += 1
            if j == i:
                j = i + 1
            elif text[i:j] == SORRY:
                out.append(i)
            i = j
        else:
            i += 1
    return out


# -- commands ---------------------------------------------------------------------------------


class StartRequest(msgspec.Struct, frozen=True):
    """Open an environment: import ``header`` (``prelude``/``import`` lines, nothing else)."""

    header: str
    timeout_s: float | None = None
    """As ``CheckRequest.timeout_s``: past it the Lean process is killed (``lean.timeout``)."""


class StartResult(msgspec.Struct, frozen=True):
    env: Env
    messages: list[Message]
    """What Lean said about the header (an unknown module is an error here)."""
    elapsed_ms: float
    materialized: Materialized


class RunRequest(msgspec.Struct, frozen=True):
    """Run ``command`` (one or more Lean commands) in ``env``."""

    env: Env
    command: str
    timeout_s: float | None = None


class Sorry(msgspec.Struct, frozen=True):
    """A ``sorry`` of a command that Lean elaborated, as a proof state with its goals."""

    pos: Pos
    """Where the ``sorry`` is, relative to the command."""
    state: ProofState
    goals: list[str]
    """Each goal as Lean prints it: hypotheses, then ``⊢ target``."""


class RunResult(msgspec.Struct, frozen=True):
    env: Env
    """The environment after the command: always made, errors or not, as Lean carries on
    past an error (a declaration that failed is not in it)."""
    messages: list[Message]
    """The command's messages, positions relative to the command."""
    sorries: list[Sorry]
    elapsed_ms: float
    materialized: Materialized


class GoalsRequest(msgspec.Struct, frozen=True):
    state: ProofState
    timeout_s: float | None = None


class GoalsResult(msgspec.Struct, frozen=True):
    id: str
    goals: list[str]
    elapsed_ms: float
    materialized: Materialized
    """``warm``: the worker had this state's document; ``edited``: it edited a document
    holding a prefix; ``opened``: it started a Lean process for it (an import)."""


class ApplyRequest(msgspec.Struct, frozen=True):
    """Apply ``tactic`` to the main goal of ``state``."""

    state: ProofState
    tactic: str
    timeout_s: float | None = None


class ApplyResult(msgspec.Struct, frozen=True):
    status: Status
    """``complete``: no goal is left; ``incomplete``: goals are left; ``error``: the
    tactic failed (``messages`` says why) and no state was made."""
    state: ProofState | None
    """The new state; ``None`` on ``error`` (the parent state is unchanged and usable)."""
    goals: list[str]
    messages: list[Message]
    """The tactic's messages, positions relative to the tactic text."""
    elapsed_ms: float
    materialized: Materialized


def _keys_of_env(env: Env) -> tuple[tuple[str, ...], ...]:
    try:
        return (parse_header(env.header).key(),)
    except HeaderError:
        return ()


def _start_keys(request: StartRequest) -> Iterable[tuple[str, ...]]:
    try:
        return (parse_header(request.header).key(),)
    except HeaderError:
        return ()


START = Call("lean.session.start", request=StartRequest, response=StartResult, session_keys=_start_keys)
"""Open an environment on a header. Fails with ``lean.bad_header`` when the text is more
than a header."""

RUN = Call("lean.session.run", request=RunRequest, response=RunResult,
           session_keys=lambda r: _keys_of_env(r.env))
"""Run a command in an environment: the new environment, the command's messages, and a
proof state (with goals) for each ``sorry`` in it."""

GOALS = Call("lean.session.goals", request=GoalsRequest, response=GoalsResult,
             session_keys=lambda r: _keys_of_env(r.state.env))
"""The goals of a proof state, materializing it if this worker does not hold it."""

APPLY = Call("lean.session.apply", request=ApplyRequest, response=ApplyResult,
             session_keys=lambda r: _keys_of_env(r.state.env))
"""Apply a tactic to a proof state: the next state and its goals, or ``error``."""
