"""Check a batch of Lean snippets through a pool of Lean workers: the engine behind
``lean_worker.verify`` (the Python API) and ``lean-worker verify`` (the command line).

    async with verify_snippets("snippets/", VerifyOptions(workers=4)) as run:
        async for result in run:          # a VerifyResult per snippet, as each finishes
            ...
    run.summary                           # a VerifySummary

- **Input.** A directory (every ``*.lean`` below it, sorted; the id is the relative path),
  a JSONL file of ``{"id": ..., "code": ...}`` lines, or ``Snippet``s. Files are read as
  UTF-8, a leading byte order mark is dropped, an undecodable byte becomes U+FFFD. A JSONL
  line that is not an object with a string ``code`` (and an ``id`` that is a string or an
  integer, when it has one) becomes a ``failed`` result with ``verify.bad_item`` and keeps
  its ``id`` when it has a readable one, else ``line-<n>``; blank lines are skipped. The
  input is read, in a worker thread, before any child starts: an unreadable input raises
  ``VerifyInputError`` and nothing runs.
- **Positions.** Every result has ``index``, its item's 0-based position in the input (the
  directory listing, or the non-blank JSONL lines), and for JSONL ``line``, the 1-based line
  number. Results are matched to items by position, never by id, so duplicate ids are
  fine: a result whose id an earlier item already has carries ``duplicate_of``, the index
  of the first item with that id.
- **Header parsing.** Each snippet's session key (its header, see
  ``lean_worker_protocol.lean``) is computed once, in the same worker thread that reads the
  input, and handed to the pool with the requests (``Pool.map(..., keys=...)``): the
  parent's event loop parses no header, and no header twice. With ``engine="cold"`` no key is computed: a cold check keeps no session.
- **Order of work.** Read the input; build the bundled fixtures if asked (a Lean worker
  builds them for its own toolchain: the parent runs no Lean); start the pool; ask one
  worker for its toolchain (``ToolchainNotFound`` is raised once, instead of failing every
  snippet); then the bad items' results, then one result per snippet as it finishes. A
  snippet that fails (a crash, a timeout) is a ``failed`` result and the batch goes on.
- **On a Ray cluster** (``VerifyOptions.ray``, ``--ray``): the batch runs on a
  ``lean_worker_ray.ClusterPool`` (imported only then): each node builds its own config
  (``node_config``: the fixtures for its toolchain), results carry the ``node`` that ran
  them and ``retried``, the summary a line per node (architecture/100-cluster.md).
- **Leaving early.** Leaving the block (a ``break``, an exception, a cancellation) cancels
  the snippets still running, closes the pool and its Lean processes; ``run.summary`` then
  counts what finished (``complete`` is false).

The command line (``run_command``) writes each result's JSON (``VerifyResult.to_json``) as
a line, draws a progress line on a terminal, prints the summary, and on SIGINT stops, prints
the summary of what finished and exits 130. Its arguments are declared and checked in
``cli.py``, before anything is read, built or spawned.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Hashable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import anyio
import msgspec
import orjson
from anyio.from_thread import start_blocking_portal
from anyio.streams.memory import MemoryObjectReceiveStream

from lean_worker_protocol import lean as _protocol

from ._config import SANDBOX_MODES, RestartPolicy, SandboxMode, WorkerConfig
from ._errors import RemoteError, WorkerError
from ._pool import Outcome, Pool, PoolSnapshot
from ._types import SandboxStatus
from ._worker import Worker
from .lean import (
    CHECK,
    FIXTURES,
    TOOLCHAIN,
    CheckRequest,
    CheckResult,
    FixturesReport,
    FixturesRequest,
    Message,
    Pos,
    ToolchainNotFound,
    ToolchainQuery,
    lean_config,
)

MIB = 1024 * 1024
FIXTURES_TIMEOUT_S = 600.0
"""Bound on building the bundled fixtures (a few seconds; the heavy header about 30 s)."""

Verdict = Literal["ok", "errors", "sorry", "failed"]


# -- errors ------------------------------------------------------------------------------------


class VerifyError(WorkerError):
    """A batch that cannot start: the options, the input or the fixtures are wrong."""

    code = "verify.error"


class VerifyOptionError(VerifyError, ValueError):
    """An option out of range (``option``, ``value``)."""

    code = "verify.bad_option"

    def __init__(self, option: str, value: object, expected: str) -> None:
        self.option = option
        self.value = value
        super().__init__(f"verify option {option} must be {expected}; option={option} value={value!r}")


class VerifyInputError(VerifyError):
    """The snippets cannot be read (``path``, or ``index`` of a bad ``Snippet``)."""

    code = "verify.bad_input"

    def __init__(self, message: str, *, path: str | None = None, index: int | None = None) -> None:
        self.path = path
        self.index = index
        super().__init__(message)


class ClusterUnavailableError(VerifyError):
    """``ray`` was asked for and the cluster cannot run the batch: Ray is not installed, no
    cluster answers at the address, or no node could start its workers (``cause_code``)."""

    code = "verify.cluster"

    def __init__(self, message: str, *, cause_code: str) -> None:
        self.cause_code = cause_code
        super().__init__(message)


class FixturesUnavailable(VerifyError):
    """A Lean worker could not build the bundled fixtures (``cause_code``: its error's code)."""

    code = "verify.fixtures_failed"

    def __init__(self, cause: WorkerError) -> None:
        self.cause_code = _error_code(cause)
        super().__init__(f"cannot build the fixtures; cause={self.cause_code}: {_first_line(_error_text(cause))}")


# -- public types ------------------------------------------------------------------------------


class Snippet(msgspec.Struct, frozen=True):
    """One snippet to check."""

    id: str
    code: str


class ResultError(msgspec.Struct, frozen=True):
    """Why a snippet has no Lean result: a stable ``code`` (``lean.crashed``, ``lean.timeout``,
    ``worker.request_timeout``, ``verify.bad_item``...), the first line of the message, and the
    facts the child attached (for a crash: ``cause``, ``returncode``, ``detail``)."""

    code: str
    message: str
    facts: dict[str, Any] = {}


class VerifyResult(msgspec.Struct, frozen=True):
    """The result of one snippet."""

    id: str
    index: int
    """0-based position of the item in the input."""
    verdict: Verdict
    """``ok``, ``errors``, ``sorry`` (see ``CheckResult.verdict``), or ``failed``: no result."""
    messages: list[Message]
    sorries: list[Pos]
    time_ms: float
    """Lean's time for a result; for a failed one, the time until it failed."""
    worker: int
    """Index of the pool worker that ran it; -1 if none did (a bad item)."""
    generation: int
    line: int | None = None
    """1-based line number, for a JSONL input."""
    duplicate_of: int | None = None
    """The index of the first item with the same id, when this is not the first."""
    session: Literal["warm", "import", "cold"] | None = None
    limit: Literal["heartbeats", "memory"] | None = None
    error: ResultError | None = None
    node: str | None = None
    """On a Ray cluster (``VerifyOptions.ray``): the id of the node that ran it."""
    retried: int | None = None
    """On a Ray cluster: how often it was sent again because its node died under it."""

    def to_builtins(self) -> dict[str, Any]:
        """The JSON object ``lean-worker verify`` writes: fields that are ``None`` are left
        out, and the error's facts sit beside its ``code`` and ``message``."""
        record: dict[str, Any] = {"id": self.id, "index": self.index}
        if self.line is not None:
            record["line"] = self.line
        if self.duplicate_of is not None:
            record["duplicate_of"] = self.duplicate_of
        record.update(
            verdict=self.verdict,
            messages=msgspec.to_builtins(self.messages),
            sorries=msgspec.to_builtins(self.sorries),
            time_ms=self.time_ms,
            worker=self.worker,
            generation=self.generation,
        )
        if self.session is not None:
            record["session"] = self.session
        if self.limit is not None:
            record["limit"] = self.limit
        if self.node is not None:
            record["node"] = self.node
        if self.retried:
            record["retried"] = self.retried
        if self.error is not None:
            facts = {k: v for k, v in self.error.facts.items() if k not in ("code", "message")}
            record["error"] = {"code": self.error.code, "message": self.error.message, **facts}
        return record

    def to_json(self) -> str:
        """One line of JSON (no newline)."""
        return orjson.dumps(self.to_builtins()).decode()

    @classmethod
    def from_json(cls, line: str | bytes) -> VerifyResult:
        """Read back a line that ``to_json`` wrote."""
        data = orjson.loads(line)
        error = data.pop("error", None)
        if error is not None:
            code, message = error.pop("code"), error.pop("message")
            data["error"] = {"code": code, "message": message, "facts": error}
        return msgspec.convert(data, cls)


class NodeSummary(msgspec.Struct, frozen=True):
    """One node of a Ray cluster run (``VerifySummary.nodes``)."""

    node: str
    hostname: str
    workers: int
    requests: int
    """Requests this node answered: the batch's checks and verify's own (toolchain, fixtures)."""
    imports: int
    hit_rate: float
    """Its pool's warm-key hits over all its leases with a key."""
    lost_items: int
    """Items in flight here when the node (or its supervisor) died; each was sent again."""
    out: str | None = None
    """Why the node takes no work (``actor_died``, ``node_gone``, ``start_failed: ...``)."""

    def render(self) -> str:
        text = (f"{self.node[:12]} {self.hostname}: workers={self.workers} requests={self.requests} "
                f"imports={self.imports} hit_rate={self.hit_rate:.2f}")
        if self.lost_items:
            text += f" lost={self.lost_items}"
        return text + (f" out={self.out}" if self.out else "")


class VerifySummary(msgspec.Struct, frozen=True):
    """What a batch did; ``render()`` is the table ``lean-worker verify`` prints."""

    snippets: int
    """Items in the input."""
    done: int
    """Results delivered (all of them unless the batch was left early)."""
    verdicts: dict[str, int]
    errors: dict[str, int]
    """Failed results per error code."""
    imports: int
    restarts: dict[str, int]
    workers: int
    elapsed_s: float
    nodes: list[NodeSummary] = []
    """On a Ray cluster: one entry per node that was ever used."""
    retried: int = 0
    """On a Ray cluster: items sent again because their node died under them."""
    sandbox: str = ""
    """Whether the checks ran sandboxed (``required: active``, ``off``), or with ``auto``
    why they did not (``auto: NOT ACTIVE, ...``)."""

    @property
    def complete(self) -> bool:
        return self.done == self.snippets

    def render(self) -> str:
        rows = [("snippets", str(self.snippets))]
        if not self.complete:
            rows.append(("interrupted", f"after {self.done} of {self.snippets} snippets"))
        rows += [(f"  {v}", str(self.verdicts[v])) for v in ("ok", "errors", "sorry", "failed") if self.verdicts.get(v)]
        rows += [(f"  failed: {code}", str(n)) for code, n in sorted(self.errors.items())]
        rows.append(("imports", str(self.imports)))
        rows.append(("restarts", ", ".join(f"{k}={v}" for k, v in sorted(self.restarts.items())) or "0"))
        rows.append(("workers", str(self.workers)))
        if self.sandbox:
            rows.append(("sandbox", self.sandbox))
        if self.nodes:
            rows += [(f"  node {i}", n.render()) for i, n in enumerate(self.nodes)]
            rows.append(("retried", str(self.retried)))
        rows.append(("elapsed", f"{self.elapsed_s:.2f} s"))
        rate = f"{self.done / self.elapsed_s:.1f} snippets/s" if self.elapsed_s > 0 else "-"
        rows.append(("throughput", rate))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def default_workers() -> int:
    """The local pool's default size: two workers per core.

    A warm check leaves its worker idle for part of the time (the hand-offs between the
    parent, the child and Lean, and the report delay of ``LeanSettings.report_delay_ms``:
    a light check's elaboration is done in 3-4 ms, and Lean reports it 5 ms after the
    edit), so as many workers as cores leave a third of the machine idle. Measured on 2
    cores with light snippets (``python bench/pool.py --sizes 3,4,5,6``,
    architecture/90-pool-and-verify.md, four runs): 2 workers kept the cores 67-69% busy,
    3 workers 80-83%, 4 workers 89-91% (5-10% more checks per second than 3), 5 workers
    91-95% (0-7% more than 4), 6 workers no faster. With heavier snippets the idle share
    shrinks (six proofs of ~30 ms: 3 and 4 workers both 96-98% busy), so more than two per
    core buys little there. Each worker holds a Lean session per warm header: with heavy
    imports memory, not CPU, bounds the pool; set ``workers`` (``-j``) then."""
    return 2 * (os.cpu_count() or 1)


def _at_least_one(option: str, value: int | None, *, optional: bool = True) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise VerifyOptionError(option, value, "an integer >= 1" + (" or None" if optional else ""))


@dataclass(frozen=True)
class VerifyOptions:
    """How to run a batch. Every value is checked here (``VerifyOptionError``)."""

    workers: int = field(default_factory=lambda: default_workers())
    """Pool size (at most one worker per snippet is started); default ``default_workers()``."""
    timeout_s: float = 60.0
    """Each snippet's own deadline, enforced in the child: past it only that snippet's Lean
    process is killed (``lean.timeout``). The request timeout is 30 s above it."""
    lean: str | os.PathLike[str] | None = None
    project: str | os.PathLike[str] | None = None
    search_path: Sequence[str | os.PathLike[str]] = ()
    """Directories of ``.olean`` files; each must exist."""
    fixtures: bool = False
    """Put the bundled library on the search path (a Lean worker builds it once for its
    toolchain); with no input, check the bundled snippets."""
    engine: Literal["warm", "cold"] = "warm"
    max_sessions: int = 8
    """Warm headers kept per worker."""
    max_imports: int | None = None
    max_requests: int | None = None
    rss_ceiling_bytes: int | None = None
    lean_memory_mb: int | None = None
    """Lean's own memory limit per Lean process (``lean -M``)."""
    lean_threads: int | None = None
    """Threads of each Lean process (``lean -j``); default Lean's own, one per core. With
    ``1`` the pool, not Lean, spreads the work over the cores: on light snippets Lean spent
    11% less CPU per check and a busy pool did 4-9% more checks per second, but a heavy
    snippet alone on a worker took about 30% longer (architecture/90-pool-and-verify.md)."""
    ray: str | None = None
    """Run on a Ray cluster at this address (``"auto"``, ``"HOST:PORT"``) instead of a local
    pool: one supervisor per node owns that node's workers (``lean_worker_ray``; needs
    ``pip install 'lean-worker[ray]'``). ``workers`` is then ignored."""
    workers_per_node: int | None = None
    """With ``ray``: workers per node (default: the node's CPUs)."""
    sandbox: SandboxMode = "auto"
    """Check in a sandbox (architecture/120-sandbox.md): ``auto`` by default, since snippets
    are untrusted and may run code while they elaborate; where the machine cannot build
    one, the batch runs unsandboxed and the summary says so. ``required`` refuses to start
    instead (``SandboxUnavailable``); ``off`` for trusted input."""

    def __post_init__(self) -> None:
        _at_least_one("workers", self.workers, optional=False)
        _at_least_one("max_sessions", self.max_sessions, optional=False)
        if self.ray is not None and (not isinstance(self.ray, str) or not self.ray.strip()):
            raise VerifyOptionError("ray", self.ray, "a Ray address ('auto' or 'HOST:PORT') or None")
        for name in ("max_imports", "max_requests", "rss_ceiling_bytes", "lean_memory_mb", "lean_threads", "workers_per_node"):
            _at_least_one(name, getattr(self, name))
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, int | float) or not (
            math.isfinite(self.timeout_s) and self.timeout_s > 0
        ):
            raise VerifyOptionError("timeout_s", self.timeout_s, "a finite number of seconds > 0")
        if self.engine not in ("warm", "cold"):
            raise VerifyOptionError("engine", self.engine, "'warm' or 'cold'")
        if self.sandbox not in SANDBOX_MODES:
            raise VerifyOptionError("sandbox", self.sandbox, " or ".join(f"'{m}'" for m in SANDBOX_MODES))
        if isinstance(self.search_path, str | os.PathLike):
            raise VerifyOptionError("search_path", self.search_path, "a sequence of directories, not one path")
        for path in self.search_path:
            if not Path(path).is_dir():
                raise VerifyOptionError("search_path", os.fspath(path), "a sequence of existing directories")

    def worker_config(self, extra_search_path: Sequence[str] = ()) -> WorkerConfig:
        """The config of each pool worker."""
        return lean_config(
            lean=self.lean,
            project=self.project,
            search_path=[*map(os.fspath, self.search_path), *extra_search_path],
            engine=self.engine,
            max_sessions=self.max_sessions,
            lean_args=[
                *(["-M", str(self.lean_memory_mb)] if self.lean_memory_mb else []),
                *(["-j", str(self.lean_threads)] if self.lean_threads else []),
            ],
            restart=RestartPolicy(
                max_imports=self.max_imports,
                max_requests=self.max_requests,
                rss_ceiling_bytes=self.rss_ceiling_bytes,
            ),
            request_timeout_s=self.timeout_s + 30.0,  # the child's own deadline fires first
            sandbox=self.sandbox,
        )


# -- reading the input -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    index: int
    id: str
    code: str | None
    line: int | None = None
    problem: str | None = None
    """Why this item cannot be checked (a bad JSONL line); it becomes a failed result."""
    duplicate_of: int | None = None
    keys: tuple[Hashable, ...] = ()
    """The session keys of its check, computed once (given to ``Pool.map``)."""


def _read_source(source: Path) -> list[tuple[str, str | None, int | None, str | None]]:
    """``(id, code, line, problem)`` per item of a directory or a JSONL file."""
    if not source.exists():
        raise VerifyInputError(f"cannot read the snippets; path={source} does not exist", path=str(source))
    try:
        if source.is_dir():
            files = sorted(p for p in source.rglob("*.lean") if p.is_file())
            return [
                (p.relative_to(source).as_posix(), p.read_text(encoding="utf-8-sig", errors="replace"), None, None)
                for p in files
            ]
        items: list[tuple[str, str | None, int | None, str | None]] = []
        with source.open(encoding="utf-8-sig", errors="replace") as fh:
            for number, text in enumerate(fh, 1):
                if text.strip():
                    items.append(_parse_line(number, text))
        return items
    except OSError as exc:
        raise VerifyInputError(f"cannot read the snippets; path={source} error={exc.strerror or exc}",
                               path=str(source)) from None


def _parse_line(number: int, text: str) -> tuple[str, str | None, int | None, str | None]:
    fallback = f"line-{number}"
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return fallback, None, number, f"line {number} is not JSON: {exc}"
    if not isinstance(data, dict):
        return fallback, None, number, f"line {number} is not a JSON object"
    raw_id = data.get("id")
    if raw_id is None:
        item_id = fallback
    elif isinstance(raw_id, str):
        item_id = raw_id
    elif isinstance(raw_id, int) and not isinstance(raw_id, bool):
        item_id = str(raw_id)
    else:
        return fallback, None, number, f"line {number}: `id` is not a string or an integer"
    code = data.get("code")
    if not isinstance(code, str):
        what = "has no `code`" if code is None else "has a `code` that is not a string"
        return item_id, None, number, f"line {number} {what}"
    return item_id, code, number, None


def _snippet_rows(snippets: Iterable[Snippet | tuple[str, str]]) -> list[tuple[str, str | None, int | None, str | None]]:
    rows: list[tuple[str, str | None, int | None, str | None]] = []
    for index, snippet in enumerate(snippets):
        if isinstance(snippet, Snippet):
            item_id, code = snippet.id, snippet.code
        elif isinstance(snippet, tuple) and len(snippet) == 2:
            item_id, code = snippet
        else:
            raise VerifyInputError(f"snippet {index} is not a Snippet or an (id, code) pair; index={index}", index=index)
        if not isinstance(item_id, str) or not isinstance(code, str):
            raise VerifyInputError(f"snippet {index}: id and code must be strings; index={index}", index=index)
        rows.append((item_id, code, None, None))
    return rows


def _items(rows: list[tuple[str, str | None, int | None, str | None]], keyed: bool) -> list[_Item]:
    """Number the items, mark duplicate ids, and compute each check's session key once."""
    first: dict[str, int] = {}
    items = []
    for index, (item_id, code, line, problem) in enumerate(rows):
        duplicate_of = first.setdefault(item_id, index)
        keys: tuple[Hashable, ...] = ()
        if keyed and code is not None:
            key = _protocol.session_key(code)
            keys = () if key is None else (key,)
        items.append(_Item(index, item_id, code, line, problem, None if duplicate_of == index else duplicate_of, keys))
    return items


def _load(source: str | os.PathLike[str] | Iterable[Snippet | tuple[str, str]], keyed: bool) -> list[_Item]:
    if isinstance(source, str | os.PathLike):
        rows = _read_source(Path(source))
    else:
        rows = _snippet_rows(source)
    return _items(rows, keyed)


# -- running a batch ---------------------------------------------------------------------------


def _first_line(text: str, limit: int = 500) -> str:
    return text.splitlines()[0][:limit] if text else ""


def _error_code(error: WorkerError) -> str:
    return error.remote_code if isinstance(error, RemoteError) else error.code


def _error_text(error: WorkerError) -> str:
    """What the error says: the child's own message for a remote one."""
    return error.remote_message if isinstance(error, RemoteError) else str(error)


def result_error(error: WorkerError, limit: int = 500) -> ResultError:
    """Why an item has no result: its stable code, the first line of its message (at most
    ``limit`` characters) and the facts the child attached (``None`` ones left out)."""
    facts = {k: v for k, v in error.facts.items() if v is not None} if isinstance(error, RemoteError) else {}
    return ResultError(_error_code(error), _first_line(_error_text(error), limit), facts)


def _result(item: _Item, outcome: Outcome[CheckRequest, CheckResult]) -> VerifyResult:
    common: dict[str, Any] = dict(
        id=item.id, index=item.index, line=item.line, duplicate_of=item.duplicate_of,
        worker=outcome.worker, generation=outcome.generation,
        # A ClusterOutcome (lean_worker_ray) also says where it ran and how often it was resent.
        node=getattr(outcome, "node", None) or None, retried=getattr(outcome, "retried", 0) or None,
    )
    value = outcome.value
    if value is not None:
        return VerifyResult(
            verdict=value.verdict, messages=value.messages, sorries=value.sorries,
            time_ms=round(value.elapsed_ms, 2), session=value.session, limit=value.limit, **common,
        )
    assert outcome.error is not None
    return VerifyResult(
        verdict="failed", messages=[], sorries=[], time_ms=round(outcome.elapsed_s * 1e3, 2),
        error=result_error(outcome.error), **common,
    )


def _bad_item_result(item: _Item) -> VerifyResult:
    return VerifyResult(
        id=item.id, index=item.index, line=item.line, duplicate_of=item.duplicate_of, verdict="failed",
        messages=[], sorries=[], time_ms=0.0, worker=-1, generation=0,
        error=ResultError("verify.bad_item", item.problem or ""),
    )


class VerifyRun:
    """The results of a running batch: ``async for result in run``, then ``run.summary``."""

    def __init__(self, items: list[_Item], max_workers: int) -> None:
        self._items = items
        self._pending = deque(_bad_item_result(i) for i in items if i.problem is not None)
        self._checkable = [i for i in items if i.problem is None]
        self.workers = min(max_workers, max(1, len(self._checkable)))
        """Pool size: at most one worker per snippet to check."""
        self._outcomes: MemoryObjectReceiveStream[Outcome[Any, Any]] | None = None
        self._pool: Any = None
        """A ``Pool``, or a ``lean_worker_ray.ClusterPool`` (whose snapshot is awaited)."""
        self._stats: _Stats | None = None
        self._started = time.monotonic()
        self._ended: float | None = None
        self._verdicts: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()

    @property
    def total(self) -> int:
        """Items in the input."""
        return len(self._items)

    @property
    def done(self) -> int:
        """Results delivered so far."""
        return sum(self._verdicts.values())

    @property
    def failed(self) -> int:
        """Results delivered so far with verdict ``failed``."""
        return self._verdicts["failed"]

    def __aiter__(self) -> VerifyRun:
        return self

    async def __anext__(self) -> VerifyResult:
        if self._pending:
            return self._count(self._pending.popleft())
        if self._outcomes is None:
            raise StopAsyncIteration
        try:
            outcome = await self._outcomes.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            await self._finish()
            raise StopAsyncIteration from None
        return self._count(_result(self._checkable[outcome.index], outcome))

    def _count(self, result: VerifyResult) -> VerifyResult:
        self._verdicts[result.verdict] += 1
        if result.error is not None:
            self._errors[result.error.code] += 1
        return result

    async def _finish(self) -> None:
        if self._ended is None:
            self._ended = time.monotonic()
            if self._pool is not None:
                with anyio.CancelScope(shield=True):
                    self._stats = await _stats_of(self._pool)
        self._outcomes = None

    @property
    def summary(self) -> VerifySummary:
        """What finished so far (all of it once the iteration ended). On a cluster, the
        counts of the pools are read when the batch ends."""
        stats = self._stats
        if stats is None and isinstance(self._pool, Pool):
            stats = _pool_stats(self._pool.snapshot())
        stats = stats or _Stats(0, {}, [], 0)
        ended = self._ended if self._ended is not None else time.monotonic()
        return VerifySummary(
            snippets=self.total,
            done=self.done,
            verdicts=dict(self._verdicts),
            errors=dict(self._errors),
            imports=stats.imports,
            restarts=stats.restarts,
            workers=self.workers,
            elapsed_s=ended - self._started,
            nodes=stats.nodes,
            retried=stats.retried,
            sandbox=stats.sandbox,
        )


@dataclass(frozen=True)
class _Stats:
    imports: int
    restarts: dict[str, int]
    nodes: list[NodeSummary]
    retried: int
    sandbox: str = ""


def sandbox_line(statuses: Iterable[SandboxStatus | None]) -> str:
    """One line for the sandbox state of many workers: a fallback wins (it must be seen)."""
    known = [s for s in statuses if s is not None]
    if not known:
        return ""
    fallen = next((s for s in known if s.fallback_reason), None)
    if fallen is not None:
        return f"{fallen.mode}: NOT ACTIVE, checks ran unsandboxed; {fallen.fallback_reason}; fix: {fallen.fallback_fix}"
    return f"{known[0].mode}: active" if known[0].active else "off"


def _pool_stats(snap: PoolSnapshot) -> _Stats:
    return _Stats(sum(w.imports for w in snap.workers), dict(snap.restarts), [], 0,
                  sandbox_line(w.sandbox for w in snap.workers))


async def _stats_of(pool: Any) -> _Stats:
    if isinstance(pool, Pool):
        return _pool_stats(pool.snapshot())
    snap = await pool.snapshot()  # a lean_worker_ray.ClusterSnapshot
    nodes = []
    for node in snap.nodes:
        own = node.pool
        hits, misses = (own.key_hits, own.key_misses) if own else (0, 0)
        nodes.append(NodeSummary(
            node.node_id, node.hostname, node.workers, node.items,
            sum(w.imports for w in own.workers) if own else 0,
            hits / (hits + misses) if hits + misses else 0.0, node.lost_items, node.out,
        ))
    imports = sum(n.imports for n in nodes)
    statuses = [w.sandbox for node in snap.nodes if node.pool for w in node.pool.workers]
    return _Stats(imports, dict(snap.restarts), nodes, snap.retried, sandbox_line(statuses))


async def build_fixtures(
    *, lean: str | os.PathLike[str] | None = None, project: str | os.PathLike[str] | None = None, heavy: bool = False
) -> FixturesReport:
    """Ask a Lean worker to build (once, cached) the bundled library for its toolchain and say
    where it is: ``report.library_root`` goes on the search path to import ``LwFix.*``.
    Raises ``FixturesUnavailable`` (with the worker's error code) when it cannot."""
    config = lean_config(lean=lean, project=project, startup_timeout_s=60, request_timeout_s=FIXTURES_TIMEOUT_S)
    try:
        async with Worker(config) as worker:
            return await worker.call(FIXTURES, FixturesRequest(heavy=heavy))  # type: ignore[no-any-return]
    except WorkerError as exc:
        raise FixturesUnavailable(exc) from exc


def _source_required(source: object, options: VerifyOptions) -> None:
    if source is None and not options.fixtures:
        raise VerifyInputError("no snippets: give a directory, a JSONL file or Snippets, or fixtures=True")


@asynccontextmanager
async def verify_snippets(
    source: str | os.PathLike[str] | Iterable[Snippet | tuple[str, str]] | None = None,
    options: VerifyOptions | None = None,
) -> AsyncIterator[VerifyRun]:
    """Check ``source`` (a directory, a JSONL file, or ``Snippet``s) on a pool of Lean workers.

    ``async with verify_snippets(path, VerifyOptions(workers=4)) as run: async for r in run``
    yields a ``VerifyResult`` per item as it finishes; ``run.summary`` says what finished.
    Raises, before the batch: ``VerifyInputError``, ``FixturesUnavailable``,
    ``ToolchainNotFound``, ``ClusterUnavailableError`` (with ``ray``), or the pool's
    start-up errors.
    """
    options = options or VerifyOptions()
    _source_required(source, options)
    keyed = options.engine != "cold"
    items = None if source is None else await anyio.to_thread.run_sync(_load, source, keyed)
    if options.ray is not None:
        async with _open_cluster(options) as cluster:
            if items is None:  # --fixtures alone: the bundled snippets, where a node found them
                report = await cluster.call(FIXTURES, FixturesRequest())
                items = await anyio.to_thread.run_sync(_load, report.snippets_dir, keyed)
            run = VerifyRun(items, options.workers)
            run.workers = (await cluster.snapshot()).workers
            async with _batch_on(cluster, run, options) as running:
                yield running
        return
    extra: list[str] = []
    if options.fixtures:
        report = await build_fixtures(lean=options.lean, project=options.project)
        extra.append(report.library_root)
        if items is None:
            items = await anyio.to_thread.run_sync(_load, report.snippets_dir, keyed)
    assert items is not None
    run = VerifyRun(items, options.workers)
    async with Pool(options.worker_config(extra), size=run.workers) as pool:
        async with _batch_on(pool, run, options) as running:
            yield running


@asynccontextmanager
async def _batch_on(pool: Any, run: VerifyRun, options: VerifyOptions) -> AsyncIterator[VerifyRun]:
    """The batch on an open ``Pool`` or ``ClusterPool`` (the same ``call``/``map`` shape)."""
    requests = [CheckRequest(i.code or "", id=i.id, timeout_s=options.timeout_s) for i in run._checkable]
    keys = [i.keys for i in run._checkable]
    thrown: BaseException | None = None
    run._pool = pool
    try:
        await pool.call(TOOLCHAIN, ToolchainQuery())  # fail once, not once per snippet
        try:
            async with pool.map(CHECK, requests, keys=keys) as outcomes:
                run._outcomes = outcomes
                try:
                    yield run
                except BaseException as exc:
                    thrown = exc
                    raise
        except BaseExceptionGroup as group:
            # The map's task group wraps what the caller's block raised; give it back as
            # itself (raised below, outside this handler, so that its context stays its own).
            if thrown is None or list(group.exceptions) != [thrown]:
                raise
    finally:
        await run._finish()
    if thrown is not None:
        raise thrown


async def node_config(options: VerifyOptions) -> WorkerConfig:
    """The worker config of one cluster node, computed on that node: with ``fixtures``, the
    bundled library is built there, for that node's toolchain, and put on the search path."""
    extra: list[str] = []
    if options.fixtures:
        extra.append((await build_fixtures(lean=options.lean, project=options.project)).library_root)
    return options.worker_config(extra)


@asynccontextmanager
async def _open_cluster(options: VerifyOptions) -> AsyncIterator[Any]:
    """A ``lean_worker_ray.ClusterPool`` for ``options`` (Ray is imported only here)."""
    try:
        from lean_worker_ray import ClusterError, ClusterPool
    except ImportError as exc:
        raise ClusterUnavailableError(
            f"--ray needs Ray, which is not installed here: pip install 'lean-worker[ray]' ({exc.name or exc})",
            cause_code="ray.not_installed",
        ) from None
    cluster = ClusterPool(
        functools.partial(node_config, options), address=options.ray, workers_per_node=options.workers_per_node,
    )
    try:
        await cluster.__aenter__()
    except ClusterError as exc:
        raise ClusterUnavailableError(f"{exc.code}: {exc}", cause_code=exc.code) from None
    try:
        yield cluster
    finally:
        await cluster.__aexit__(None, None, None)


@contextmanager
def verify_snippets_sync(
    source: str | os.PathLike[str] | Iterable[Snippet | tuple[str, str]] | None = None,
    options: VerifyOptions | None = None,
) -> Iterator[SyncVerifyRun]:
    """``verify_snippets`` for code without an event loop: ``with verify_snippets_sync(path)
    as run: for r in run``. The pool runs on an event loop in a background thread."""
    with start_blocking_portal("asyncio") as portal:
        with portal.wrap_async_context_manager(verify_snippets(source, options)) as run:
            yield SyncVerifyRun(run, portal)


class SyncVerifyRun:
    """``VerifyRun`` for synchronous code: iterate for results, then read ``summary``."""

    def __init__(self, run: VerifyRun, portal: Any) -> None:
        self._run = run
        self._portal = portal

    @property
    def total(self) -> int:
        return self._run.total

    @property
    def summary(self) -> VerifySummary:
        return self._run.summary

    def __iter__(self) -> Iterator[VerifyResult]:
        while True:
            result = self._portal.call(_next_or_none, self._run)
            if result is None:
                return
            yield result


async def _next_or_none(run: VerifyRun) -> VerifyResult | None:
    try:
        return await run.__anext__()
    except StopAsyncIteration:
        return None


# -- the command line --------------------------------------------------------------------------


class Progress:
    """One self-rewriting status line on a terminal: done/total, rate, ETA and failures.

    Each update returns to the start of the line and pads with spaces to the length of the
    previous one, so a shorter line leaves no characters of a longer one behind."""

    def __init__(self, total: int, stream: IO[str], enabled: bool) -> None:
        self.total = total
        self.stream = stream
        self.enabled = enabled
        self.started = time.monotonic()
        self.last = 0.0
        self.width = 0

    def update(self, done: int, failed: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < 0.1:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 else math.inf
        width = 30
        filled = int(width * done / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        eta_text = f"{eta:.0f}s" if eta != math.inf else "?"
        text = f"[{bar}] {done}/{self.total} {rate:.1f}/s ETA {eta_text} failed={failed}"
        self.stream.write("\r" + text.ljust(self.width))
        self.width = len(text)
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self.width:
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0


def options_from_args(args: argparse.Namespace) -> VerifyOptions:
    return VerifyOptions(
        workers=args.workers or default_workers(),
        ray=args.ray,
        workers_per_node=args.workers if args.ray else None,
        timeout_s=args.timeout,
        lean=args.lean,
        project=args.project,
        search_path=list(args.search_path),
        fixtures=args.fixtures,
        engine=args.engine,
        max_sessions=args.max_sessions,
        max_imports=args.max_imports,
        max_requests=args.max_requests,
        rss_ceiling_bytes=args.rss_ceiling_mb * MIB if args.rss_ceiling_mb else None,
        lean_memory_mb=args.lean_memory_mb,
        lean_threads=args.lean_threads,
        sandbox=args.sandbox,
    )


@dataclass
class _Cli:
    args: argparse.Namespace
    run: VerifyRun | None = None
    progress: Progress | None = None
    report: IO[str] = field(default_factory=lambda: sys.stderr)


def _say(text: str) -> None:
    print(f"lean-worker verify: {text}", file=sys.stderr)


def run_command(args: argparse.Namespace) -> int:
    """``lean-worker verify`` after its arguments were parsed and checked (see ``cli.py``).

    Exit status: 0 when the run completed (whatever the verdicts); 1 with ``--strict`` when
    a snippet is not ok; 2 for bad options, unreadable input, fixtures that cannot be built,
    an output that cannot be opened, or no toolchain; 130 on SIGINT (Ctrl-C); 141 (quietly)
    when the reader of stdout went away."""
    if args.snippets is None and not args.fixtures:
        _say("give a directory or a JSONL file of snippets, or --fixtures")
        return 2
    try:
        options = options_from_args(args)
    except VerifyOptionError as exc:
        _say(f"{exc.code}: {exc}")
        return 2
    try:
        return anyio.run(_command, _Cli(args), options)
    except KeyboardInterrupt:  # before the SIGINT handler was installed, or after it was removed
        _say("interrupted")
        return 130


async def _command(cli: _Cli, options: VerifyOptions) -> int:
    code: int | None = None
    with anyio.open_signal_receiver(signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:
            work = anyio.CancelScope()

            async def stop_on_sigint() -> None:
                async for _ in signals:
                    work.cancel()
                    return

            tg.start_soon(stop_on_sigint)
            try:
                with work:
                    code = await _batch(cli, options)
            finally:
                tg.cancel_scope.cancel()
    if code is not None:
        return code
    # Interrupted: the results written so far stay; say what finished.
    if cli.progress is not None:
        cli.progress.finish()
    if cli.run is None:
        _say("interrupted before any snippet was checked")
    else:
        cli.report.write(cli.run.summary.render() + "\n")
        cli.report.flush()
        _say(f"interrupted; {cli.run.done} of {cli.run.total} results written")
    return 130


async def _batch(cli: _Cli, options: VerifyOptions) -> int:
    args = cli.args
    try:
        async with verify_snippets(args.snippets, options) as run:
            cli.run = run
            if args.output == "-":
                out, close = sys.stdout, False
            else:
                try:
                    out, close = open(args.output, "w", encoding="utf-8"), True
                except OSError as exc:
                    _say(f"cannot write {args.output}: {exc.strerror or exc}")
                    return 2
            cli.report = sys.stderr if out is sys.stdout else sys.stdout
            progress = cli.progress = Progress(run.total, sys.stderr, sys.stderr.isatty() and not args.no_progress)
            try:
                async for result in run:
                    out.write(result.to_json() + "\n")
                    out.flush()
                    progress.update(run.done, run.failed)
            except BrokenPipeError:
                # Whoever read the results went away (``| head``): stop quietly, as a Unix
                # filter does, and keep Python from failing on the final flush of stdout.
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return 128 + signal.SIGPIPE
            finally:
                if close:
                    out.close()
    except ToolchainNotFound as exc:
        _say(f"{exc.remote_code}: {_first_line(exc.remote_message)}")
        return 2
    except VerifyError as exc:
        _say(f"{exc.code}: {exc}")
        return 2
    progress.update(run.done, run.failed, force=True)
    progress.finish()
    summary = run.summary
    cli.report.write(summary.render() + "\n")
    cli.report.flush()
    if args.strict and summary.verdicts.get("ok", 0) != summary.snippets:
        return 1
    return 0
