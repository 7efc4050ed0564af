"""Commands of the first-party Lean capability, and the pure header parser they key on.

The parent imports this module to call a Lean worker; the child (``lean_worker_child.lean``)
serves it. Nothing here runs Lean: only the child talks to Lean.

Positions follow Lean's own convention: ``line`` is 1-based, ``column`` is 0-based and
counts Unicode code points, both relative to the snippet as the caller sent it.

A **session** is an imported environment kept warm in the child. Its key is the snippet's
header (``module``, ``prelude`` and the ordered imports with their modifiers); the
toolchain and search path are fixed per worker. Opening a session is an import; a check
whose header matches a warm session is not charged as one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

import msgspec

from ._commands import Call, Stream

__all__ = [
    "CHECK",
    "CHECK_BATCH",
    "FIXTURES",
    "INDEX",
    "OPEN",
    "TOOLCHAIN",
    "BatchRow",
    "BatchSummary",
    "CheckBatch",
    "CheckRequest",
    "CheckResult",
    "Declaration",
    "FixturesReport",
    "FixturesRequest",
    "Header",
    "HeaderError",
    "Hole",
    "IndexRequest",
    "IndexSummary",
    "ItemError",
    "LeanSettings",
    "Message",
    "OpenRequest",
    "Pos",
    "SessionInfo",
    "ToolchainQuery",
    "ToolchainReport",
    "parse_header",
    "session_key",
]

Severity = Literal["error", "warning", "information"]
Verdict = Literal["ok", "errors", "sorry"]
Engine = Literal["auto", "warm", "cold"]


class Pos(msgspec.Struct, frozen=True):
    line: int
    """1-based."""
    column: int
    """0-based, in Unicode code points."""


class Message(msgspec.Struct, frozen=True):
    """One message Lean reported for a snippet."""

    severity: Severity
    pos: Pos
    end_pos: Pos | None
    text: str
    kind: str = ""
    """Lean's tag for the message when the engine gets one: the cold engine gets every tag
    (``hasSorry``, ``runtime.maxHeartbeats``, ``lean.unknownIdentifier``); the warm engine
    gets only named errors (``lean.unknownIdentifier``), as the LSP carries no other tags."""


class CheckRequest(msgspec.Struct, frozen=True):
    """Check one snippet: a header (``prelude``/``import`` lines) and a body."""

    code: str
    id: str = ""
    timeout_s: float | None = None
    """A deadline enforced in the child: past it the Lean process for this snippet is killed
    and the check fails with ``lean.timeout`` while the worker lives on. ``None`` leaves
    only the parent's request timeout."""
    engine: Engine = "auto"
    """``warm`` keeps the imported header alive between checks; ``cold`` runs one
    ``lean --json`` process per check; ``auto`` is the worker's default engine."""
    sorry_goals: bool = False
    """Also report every ``sorry`` hole with its goal (``CheckResult.holes``). Warm engine
    only; it costs one LSP query per ``sorry`` token of the body (two for one written where
    a tactic goes), after the diagnostics, within ``timeout_s``."""


class Hole(msgspec.Struct, frozen=True):
    """A ``sorry`` that Lean elaborated, with the goal it stands for."""

    pos: Pos
    """Where the ``sorry`` token starts."""
    end_pos: Pos
    """Just past the ``sorry`` token."""
    goal: str
    """The goal as Lean prints it (hypotheses, then ``⊢ target``); several goals (a
    ``sorry`` standing as a tactic) are separated by a blank line, as in the ``goal`` of
    the Lean REPL's ``sorries``."""


class CheckResult(msgspec.Struct, frozen=True):
    id: str
    verdict: Verdict
    """``errors`` if any message is an error; else ``sorry`` if a declaration uses ``sorry``;
    else ``ok``."""
    messages: list[Message]
    sorries: list[Pos]
    """Where Lean reported that a declaration uses ``sorry`` (the declaration's name)."""
    elapsed_ms: float
    imports: list[str]
    session: Literal["warm", "import", "cold"]
    """``warm``: reused a warm session; ``import``: opened one; ``cold``: a one-shot process."""
    limit: Literal["heartbeats", "memory"] | None = None
    """Set when one of Lean's own limits stopped elaboration (also an error message)."""
    holes: list[Hole] = []
    """With ``CheckRequest.sorry_goals`` on the warm engine: every ``sorry`` of the body that
    Lean elaborated, in source order (a ``sorry`` in a comment or a string is none, and
    nor is one Lean did not reach). Always empty from the cold engine, which cannot ask
    Lean for goals (``lean --json`` only prints messages)."""


class ItemError(msgspec.Struct, frozen=True):
    """Why one snippet of a batch has no result. The rest of the batch is unaffected."""

    code: str
    """``lean.crashed``, ``lean.timeout``, ``lean.toolchain_not_found`` or ``lean.error``."""
    message: str
    cause: str | None = None
    """For ``lean.crashed``: the exit classification (e.g. ``worker.exit.sigabrt``)."""
    detail: str | None = None
    """What Lean said about its death (e.g. ``Stack overflow detected. Aborting.``)."""
    returncode: int | None = None
    limit: Literal["memory"] | None = None
    """For ``lean.crashed``: ``memory`` when Lean aborted on its own limit (``lean -M``)."""


class CheckBatch(msgspec.Struct, frozen=True):
    items: list[CheckRequest]
    timeout_s: float | None = 60.0
    """Per-snippet deadline for items that set none (see ``CheckRequest.timeout_s``)."""


class BatchRow(msgspec.Struct, frozen=True):
    index: int
    id: str
    result: CheckResult | None
    error: ItemError | None


class BatchSummary(msgspec.Struct, frozen=True):
    items: int
    verdicts: dict[str, int]
    errors: dict[str, int]
    imports: int
    elapsed_ms: float


class IndexRequest(msgspec.Struct, frozen=True):
    modules: list[str] = []
    """Module names to index; empty means every module with an ``.ilean`` on the search path."""


class Declaration(msgspec.Struct, frozen=True):
    module: str
    name: str
    pos: Pos
    end_pos: Pos
    selection: Pos
    """Position of the declaration's name."""


class IndexSummary(msgspec.Struct, frozen=True):
    modules: int
    declarations: int
    missing: list[str]
    """Requested modules without an ``.ilean`` on the search path."""


class OpenRequest(msgspec.Struct, frozen=True):
    """Open (import) a session ahead of the checks that will use it."""

    header: str
    """A snippet header (``prelude``/``import`` lines); anything after it is ignored."""


class SessionInfo(msgspec.Struct, frozen=True):
    key: list[str]
    session: Literal["warm", "import"]
    """``import`` if this request opened it, ``warm`` if it was already open."""
    elapsed_ms: float
    messages: list[Message]
    """What Lean said about the header (e.g. an unknown module)."""


class FixturesRequest(msgspec.Struct, frozen=True):
    heavy: bool = False
    """Also build the heavy header (about 30 s once, then cached)."""


class FixturesReport(msgspec.Struct, frozen=True):
    """The bundled prelude library, built for the worker's toolchain."""

    library_root: str
    """Put this on the search path to import ``LwFix.*``."""
    library_modules: list[str]
    snippets_dir: str
    """The bundled snippets (``lean/snippets``)."""
    build_s: float
    """0 when it was already built."""
    heavy_root: str | None = None
    heavy_modules: list[str] = []


class ToolchainQuery(msgspec.Struct, frozen=True):
    pass


class ToolchainReport(msgspec.Struct, frozen=True):
    lean: str
    source: str
    version: str
    commit: str | None
    prefix: str | None
    stdlib_present: bool
    search_path: list[str]


# -- the worker's settings ---------------------------------------------------------------------


WorkerEngine = Literal["warm", "cold"]


class LeanSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How one Lean worker child runs, fixed for its life. The parent
    (``lean_worker.lean.lean_config``) passes it as the child's one argument,
    ``--settings <JSON>``; the child decodes it with this type, so a bad value fails in
    the parent (``ValueError`` on construction) and again, typed, in the child.

    - ``lean``: the ``lean`` executable; ``None``: ``$LEAN_WORKER_LEAN``, then ``lake env``
      in ``project`` (default: the child's working directory), then PATH, then the test
      toolchain.
    - ``search_path``: directories of ``.olean`` files, ahead of Lake's and ``$LEAN_PATH``.
    - ``engine``: ``warm`` (sessions kept alive) or ``cold`` (one process per check): the
      engine of requests that say ``auto``.
    - ``max_sessions``: warm sessions the child keeps; opening one more closes the least
      recently used.
    - ``lean_args``: extra arguments for every Lean process (e.g. ``-DmaxHeartbeats=1000``).
    - ``max_documents``: session states (``lean_worker_protocol.lean_session``) the child
      keeps materialized, one ``lean --worker`` each; one more retires the least recently
      used (it is rebuilt from its value when asked for again).
    - ``max_document_edits``: edits of one such document before it is retired, which
      bounds what Lean keeps per edit.
    - ``report_delay_ms``: how long a warm session's Lean waits after an edit before it
      reports progress and diagnostics (``server.reportDelayMs``). At 0 it reports every
      intermediate state of every command: for light snippets that cost Lean 40% more CPU
      and the child four times as much (architecture/90-pool-and-verify.md); a few
      milliseconds let a short check finish first and report once. Also the least time a
      warm check takes.
    - ``session_report_delay_ms``: the same for the documents of session states
      (``lean_worker_protocol.lean_session``). 2 by default: a proof search step is waited
      on, and at 2 ms a step cost Lean 15-25% less CPU than at 0 and was no slower (on a
      40-command document 17% faster: the reporting no longer competes with the
      elaboration; architecture/95-sessions.md).
    """

    lean: str | None = None
    project: str | None = None
    search_path: tuple[str, ...] = ()
    engine: WorkerEngine = "warm"
    max_sessions: int = 8
    lean_args: tuple[str, ...] = ()
    max_documents: int = 4
    max_document_edits: int = 2000
    report_delay_ms: int = 5
    session_report_delay_ms: int = 2

    def __post_init__(self) -> None:
        for name in ("lean", "project"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"LeanSettings.{name} must be a non-empty path string or None; got {value!r}")
        if self.engine not in ("warm", "cold"):
            raise ValueError(f"LeanSettings.engine must be 'warm' or 'cold'; got {self.engine!r}")
        if not isinstance(self.max_sessions, int) or isinstance(self.max_sessions, bool) or self.max_sessions < 1:
            raise ValueError(f"LeanSettings.max_sessions must be an int >= 1; got {self.max_sessions!r}")
        for name in ("max_documents", "max_document_edits"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LeanSettings.{name} must be an int >= 1; got {value!r}")
        for name in ("report_delay_ms", "session_report_delay_ms"):
            delay = getattr(self, name)
            if not isinstance(delay, int) or isinstance(delay, bool) or not 0 <= delay <= 10_000:
                raise ValueError(f"LeanSettings.{name} must be an int within 0..10000; got {delay!r}")
        if not all(isinstance(p, str) and p for p in self.search_path):
            raise ValueError(f"LeanSettings.search_path must hold non-empty path strings; got {self.search_path!r}")
        if not all(isinstance(a, str) for a in self.lean_args):
            raise ValueError(f"LeanSettings.lean_args must hold strings; got {self.lean_args!r}")


# -- header ------------------------------------------------------------------------------


class HeaderError(ValueError):
    code = "lean.bad_header"


class Header(msgspec.Struct, frozen=True):
    """The header of a snippet, as Lean's header parser sees it."""

    module: bool
    prelude: bool
    imports: tuple[str, ...]
    """One entry per ``import``: modifiers and module name, e.g. ``"public import all A.B"``
    normalised to single spaces, in source order."""
    offsets: tuple[int, ...]
    """Start offset (in characters) of each header item: ``module``, ``prelude``, then each
    import, in that order."""
    end: int
    """Offset just past the last header token: the body starts here."""

    @property
    def modules(self) -> tuple[str, ...]:
        """The imported module names, without modifiers."""
        return tuple(item.rsplit(" ", 1)[-1] for item in self.imports)

    def key(self) -> tuple[str, ...]:
        """The session key: equal for headers Lean treats as the same import."""
        items = (["module"] if self.module else []) + (["prelude"] if self.prelude else [])
        return (*items, *self.imports)

    def canonical(self) -> str:
        """The header written one item per line (ends with a newline unless empty)."""
        return "".join(f"{item}\n" for item in self.key())


_IMPORT_MODIFIERS = ("public", "meta", "private")


_SPACE = re.compile(r"[ \t\r\n]*")
_WORD = re.compile(r"(?:(?!--|/-)\S)*")
"""A run of non-space characters up to a comment: the header's tokens. Both regexes run in
C: the parent parses the header of every snippet it routes, and the child again, so the
character loops they replaced were a quarter of the parent's CPU per warm check
(architecture/90-pool-and-verify.md)."""


def _skip_space(code: str, i: int) -> int:
    """Skip whitespace and comments (not doc comments, which are commands)."""
    n = len(code)
    while i < n:
        i = _SPACE.match(code, i).end()  # type: ignore[union-attr]  (``*`` always matches)
        if code.startswith("--", i):
            j = code.find("\n", i)
            i = n if j < 0 else j + 1
        elif code.startswith("/-", i) and not code.startswith(("/--", "/-!"), i):
            depth, i = 1, i + 2
            while depth:
                if i >= n:
                    raise HeaderError("unterminated comment in the header")
                if code.startswith("/-", i):
                    depth, i = depth + 1, i + 2
                elif code.startswith("-/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        else:
            break
    return i


def _word(code: str, i: int) -> str:
    return _WORD.match(code, i).group()  # type: ignore[union-attr]  (``*`` always matches)


def _is_ident(word: str) -> bool:
    parts = word.split(".")
    return all(p and (p[0].isalpha() or p[0] in "_«") for p in parts)


def parse_header(code: str) -> Header:
    """Parse the header (``module``? ``prelude``? ``import``*) of a Lean snippet.

    Raises ``HeaderError`` for an ``import`` without a module name.
    """
    i = _skip_space(code, 0)
    end = 0
    module = prelude = False
    offsets: list[int] = []
    imports: list[str] = []
    word = _word(code, i)
    if word == "module":
        module, end = True, i + len(word)
        offsets.append(i)
        i = _skip_space(code, end)
        word = _word(code, i)
    if word == "prelude":
        prelude, end = True, i + len(word)
        offsets.append(i)
        i = _skip_space(code, end)
        word = _word(code, i)
    while True:
        start = i
        tokens: list[str] = []
        while word in _IMPORT_MODIFIERS:
            tokens.append(word)
            i = _skip_space(code, i + len(word))
            word = _word(code, i)
        if word != "import":  # the body starts (`public def ...` included)
            break
        tokens.append(word)
        i = _skip_space(code, i + len(word))
        word = _word(code, i)
        if word == "all":
            tokens.append(word)
            i = _skip_space(code, i + len(word))
            word = _word(code, i)
        if not _is_ident(word):
            raise HeaderError(f"`import` without a module name at offset {start}")
        tokens.append(word)
        imports.append(" ".join(tokens))
        offsets.append(start)
        end = i + len(word)
        i = _skip_space(code, end)
        word = _word(code, i)
    return Header(module, prelude, tuple(imports), tuple(offsets), end)


def session_key(code: str) -> tuple[str, ...] | None:
    """The session key of a snippet, or ``None`` if its header does not parse."""
    try:
        return parse_header(code).key()
    except HeaderError:
        return None


def _check_keys(request: CheckRequest) -> Iterable[tuple[str, ...]]:
    if request.engine == "cold":
        return ()
    key = session_key(request.code)
    return () if key is None else (key,)


def _open_keys(request: OpenRequest) -> Iterable[tuple[str, ...]]:
    key = session_key(request.header)
    return () if key is None else (key,)


def _batch_keys(request: CheckBatch) -> Iterable[tuple[str, ...]]:
    keys: list[tuple[str, ...]] = []
    for item in request.items:
        keys.extend(_check_keys(item))
    return keys


CHECK = Call("lean.check", request=CheckRequest, response=CheckResult, session_keys=_check_keys)
"""Check one snippet. Lean-side failures raise ``LeanCrashed`` (``lean.crashed``) or
``LeanTimeout`` (``lean.timeout``) in the parent; the worker lives on. A header that does
not parse is checked cold, and Lean reports it as a message."""

OPEN = Call("lean.open", request=OpenRequest, response=SessionInfo, session_keys=_open_keys)
"""Import a header into a warm session now (an import-like request), so the checks that
follow are warm; a header that is already open is a warm hit."""

CHECK_BATCH = Stream(
    "lean.check_batch", request=CheckBatch, row=BatchRow, summary=BatchSummary, session_keys=_batch_keys
)
"""Check many snippets: one row per snippet, in order; a failing snippet is a row with
``error`` set, never a failed batch."""

INDEX = Stream("lean.index", request=IndexRequest, row=Declaration, summary=IndexSummary)
"""Index the declarations of compiled modules from their ``.ilean`` files."""

FIXTURES = Call("lean.fixtures", request=FixturesRequest, response=FixturesReport)
"""Build (once, cached) the bundled prelude library for the worker's toolchain."""

TOOLCHAIN = Call("lean.toolchain", request=ToolchainQuery, response=ToolchainReport)
"""Report the toolchain the worker resolved."""
