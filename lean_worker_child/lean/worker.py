"""The first-party Lean worker child: ``python -m lean_worker_child.lean``.

    python -m lean_worker_child.lean [--settings JSON]

Its one argument is a ``lean_worker_protocol.lean.LeanSettings`` as JSON (the parent's
``lean_config`` writes it; omitted: the defaults). It is decoded once, at start-up, into an
immutable ``LeanRuntime``: the settings, the toolchain resolved for them and the engines.

Serves ``lean_worker_protocol.lean``: ``lean.check``, ``lean.check_batch``, ``lean.index``
and ``lean.toolchain``; ``lean_worker_protocol.lean_session``: ``lean.session.start``,
``run``, ``goals`` and ``apply`` (the ``SessionEngine``); and the Lean items of
``worker.doctor`` (``lean_doctor``). The
toolchain is resolved once at start-up
(``toolchain.resolve_toolchain``); if none is found the worker still starts and every
command fails with ``lean.toolchain_not_found``, so probes can report it.
"""

from __future__ import annotations

import argparse
import atexit
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from lean_worker_protocol import VERSION
from lean_worker_protocol.lean import (
    CHECK,
    CHECK_BATCH,
    INDEX,
    OPEN,
    TOOLCHAIN,
    BatchRow,
    BatchSummary,
    CheckBatch,
    CheckRequest,
    CheckResult,
    Declaration,
    HeaderError,
    IndexRequest,
    IndexSummary,
    ItemError,
    LeanSettings,
    OpenRequest,
    Pos,
    SessionInfo,
    ToolchainQuery,
    ToolchainReport,
    parse_header,
)
from lean_worker_protocol.lean_session import (
    APPLY,
    GOALS,
    RUN,
    START,
    ApplyRequest,
    ApplyResult,
    GoalsRequest,
    GoalsResult,
    RunRequest,
    RunResult,
    StartRequest,
    StartResult,
    context_id,
)
from lean_worker_protocol.probe import DoctorItem

from .. import RequestContext, WorkerApp, sandboxed
from .engine import ColdEngine, WarmEngine
from .errors import LeanCrashed, LeanError
from .fixtures import FixtureError, default_library_source, library_state
from .provision import cache_dir
from .session import SessionEngine
from .toolchain import LEAN_ENV, Toolchain, ToolchainError, resolve_toolchain

app = WorkerApp("lean-worker-lean", version=VERSION)


@dataclass(frozen=True)
class LeanRuntime:
    """What this child resolved from its settings at start-up; fixed for its life."""

    settings: LeanSettings
    requested_search_path: tuple[str, ...]
    """``settings.search_path`` resolved, known even when no toolchain was found."""
    toolchain: Toolchain | None = None
    toolchain_error: ToolchainError | None = None
    search_path: tuple[str, ...] = ()
    """What Lean searches: the requested directories, the toolchain's, then ``$LEAN_PATH``."""
    warm: WarmEngine | None = None
    cold: ColdEngine | None = None
    states: SessionEngine | None = None

    @classmethod
    def start(cls, settings: LeanSettings) -> LeanRuntime:
        """Resolve the toolchain and build the engines; without a toolchain the runtime
        keeps the error, and every command answers with it."""
        requested = tuple(str(Path(p).resolve()) for p in settings.search_path)
        try:
            toolchain = resolve_toolchain(settings.lean, project=settings.project)
        except ToolchainError as exc:
            return cls(settings, requested, toolchain_error=exc)
        inherited = [p for p in os.environ.get("LEAN_PATH", "").split(os.pathsep) if p]
        search_path = (*requested, *toolchain.search_path, *inherited)
        env = dict(os.environ)
        env["LEAN_PATH"] = os.pathsep.join(search_path)
        extra = list(settings.lean_args)
        warm = WarmEngine(toolchain.lean, env=env, max_sessions=settings.max_sessions, extra_args=extra,
                          report_delay_ms=settings.report_delay_ms)
        cold = ColdEngine(toolchain.lean, env=env, extra_args=extra)
        context = context_id(toolchain.version, toolchain.commit or "", search_path, extra)
        states = SessionEngine(
            toolchain.lean, env=env, context=context, max_documents=settings.max_documents,
            max_edits=settings.max_document_edits, extra_args=extra,
            report_delay_ms=settings.session_report_delay_ms,
        )
        atexit.register(warm.close)
        atexit.register(states.close)
        return cls(settings, requested, toolchain, None, search_path, warm, cold, states)

    def readable(self) -> list[str]:
        """What Lean reads while serving, for the sandbox: the toolchain (its executable,
        prefix and library), the search path and the project."""
        paths = [*self.requested_search_path, *self.search_path]
        if self.settings.project:
            paths.append(self.settings.project)
        tc = self.toolchain
        if tc is not None:
            paths += [tc.lean, os.path.dirname(os.path.realpath(tc.lean)), tc.prefix, tc.library_dir]
        # The cache (built toolchains and fixtures) and the fixture sources, for the doctor.
        return [*paths, str(cache_dir()), str(default_library_source())]

    def session_engine(self) -> SessionEngine:
        if self.states is None:
            raise self.toolchain_error or ToolchainError("the Lean worker is not configured")
        return self.states

    def engines(self) -> tuple[WarmEngine, ColdEngine]:
        if self.warm is None or self.cold is None:
            raise self.toolchain_error or ToolchainError("the Lean worker is not configured")
        return self.warm, self.cold


_runtime: LeanRuntime | None = None
"""Set once by ``main`` before the app serves; handlers read it through ``runtime()``."""


def runtime() -> LeanRuntime:
    if _runtime is None:
        raise ToolchainError("the Lean worker is not configured: start it with main()")
    return _runtime


def _engines() -> tuple[WarmEngine, ColdEngine]:
    return runtime().engines()


def parse_settings(argv: list[str] | None = None) -> LeanSettings:
    """The ``LeanSettings`` of ``--settings JSON`` (default: ``LeanSettings()``); a bad
    value exits with status 2 and says which field is wrong."""
    parser = argparse.ArgumentParser(prog="python -m lean_worker_child.lean")
    parser.add_argument("--settings", metavar="JSON",
                        help="a LeanSettings as JSON, as lean_worker.lean.lean_child_args writes it")
    args = parser.parse_args(argv)
    if args.settings is None:
        return LeanSettings()
    try:
        return msgspec.json.decode(args.settings, type=LeanSettings)
    except msgspec.DecodeError as exc:  # ValidationError included
        parser.error(f"--settings: {exc}")


def check_one(request: CheckRequest, timeout_s: float | None) -> CheckResult:
    """Check one snippet (the handlers charge imports by the sessions the warm engine opened).

    ``request.sorry_goals`` is served by the warm engine alone: a cold check (asked for,
    the worker's engine, or a header that does not parse) has no ``holes``."""
    warm, cold = _engines()
    engine = runtime().settings.engine if request.engine == "auto" else request.engine
    if engine == "cold":
        return cold.check(request.code, id=request.id, timeout_s=timeout_s)
    try:
        header = parse_header(request.code)
    except HeaderError:
        # Lean reports the malformed header itself, with its position.
        return cold.check(request.code, id=request.id, timeout_s=timeout_s)
    result, _ = warm.check(
        request.code, id=request.id, header=header, timeout_s=timeout_s, sorry_goals=request.sorry_goals
    )
    return result


@app.handler(CHECK)
def check(request: CheckRequest, ctx: RequestContext) -> CheckResult:
    warm, _ = _engines()
    before = warm.imports
    try:
        result = check_one(request, request.timeout_s)
    finally:
        # Sessions opened, whether or not the check then succeeded.
        ctx.charge_imports(warm.imports - before)
    return result


@app.handler(OPEN)
def open_session(request: OpenRequest, ctx: RequestContext) -> SessionInfo:
    warm, _ = _engines()
    header = parse_header(request.header)
    before = warm.imports
    try:
        result, fresh = warm.check(request.header[: header.end], header=header, timeout_s=None)
    finally:
        ctx.charge_imports(warm.imports - before)
    return SessionInfo(list(header.key()), "import" if fresh else "warm", result.elapsed_ms, result.messages)


# -- sessions: environments and proof states (lean_worker_protocol.lean_session) ---------------


def _charged(ctx: RequestContext, run: Any) -> Any:
    """Run ``run(engine)`` and charge the documents it opened as imports."""
    engine = runtime().session_engine()
    before = engine.imports
    try:
        return run(engine)
    finally:
        ctx.charge_imports(engine.imports - before)


@app.handler(START)
def session_start(request: StartRequest, ctx: RequestContext) -> StartResult:
    return _charged(ctx, lambda engine: engine.start(request))


@app.handler(RUN)
def session_run(request: RunRequest, ctx: RequestContext) -> RunResult:
    return _charged(ctx, lambda engine: engine.run(request))


@app.handler(GOALS)
def session_goals(request: GoalsRequest, ctx: RequestContext) -> GoalsResult:
    return _charged(ctx, lambda engine: engine.goals(request))


@app.handler(APPLY)
def session_apply(request: ApplyRequest, ctx: RequestContext) -> ApplyResult:
    return _charged(ctx, lambda engine: engine.apply(request))


def _item_error(exc: Exception) -> ItemError:
    if isinstance(exc, LeanCrashed):
        return ItemError(exc.code, str(exc), exc.cause, exc.detail, exc.returncode, exc.limit)  # type: ignore[arg-type]
    code = getattr(exc, "code", None)
    return ItemError(code if isinstance(code, str) else "lean.error", str(exc))


@app.handler(CHECK_BATCH)
def check_batch(request: CheckBatch, ctx: RequestContext) -> BatchSummary:
    warm, _ = _engines()
    started = time.perf_counter()
    verdicts: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    before = warm.imports
    total = len(request.items)
    try:
        for index, item in enumerate(request.items):
            ctx.check_cancelled()
            ctx.progress("check", index, total)
            timeout_s = item.timeout_s if item.timeout_s is not None else request.timeout_s
            try:
                result = check_one(item, timeout_s)
            except (LeanError, ToolchainError, OSError) as exc:
                error = _item_error(exc)
                errors[error.code] += 1
                ctx.emit(BatchRow(index, item.id, None, error))
                continue
            verdicts[result.verdict] += 1
            ctx.emit(BatchRow(index, item.id, result, None))
    finally:
        ctx.charge_imports(warm.imports - before)
    ctx.progress("check", total, total)
    return BatchSummary(total, dict(verdicts), dict(errors), warm.imports - before, (time.perf_counter() - started) * 1e3)


def _ilean_files(modules: list[str], search_path: tuple[str, ...]) -> tuple[list[tuple[str, Path]], list[str]]:
    found: list[tuple[str, Path]] = []
    missing: list[str] = []
    if modules:
        for module in modules:
            rel = Path(*module.split(".")).with_suffix(".ilean")
            for root in search_path:
                if (Path(root) / rel).is_file():
                    found.append((module, Path(root) / rel))
                    break
            else:
                missing.append(module)
        return found, missing
    seen: set[str] = set()
    for root in search_path:
        base = Path(root)
        for path in sorted(base.rglob("*.ilean")):
            module = ".".join(path.relative_to(base).with_suffix("").parts)
            if module not in seen:
                seen.add(module)
                found.append((module, path))
    return found, missing


@app.handler(INDEX)
def index(request: IndexRequest, ctx: RequestContext) -> IndexSummary:
    """One row per declaration of each module, from the ``.ilean`` files Lean wrote with ``-i``.

    An ``.ilean`` records, per declaration, its range and its name's range (0-based lines,
    UTF-16 columns; exact code points for ASCII sources).
    """
    import orjson

    _engines()
    found, missing = _ilean_files(request.modules, runtime().search_path)
    count = 0
    for n, (module, path) in enumerate(found):
        ctx.check_cancelled()
        ctx.progress(module, n, len(found))
        data = orjson.loads(path.read_bytes())
        decls = data.get("decls") or {}
        rows = []
        for name, r in sorted(decls.items(), key=lambda kv: (kv[1][0], kv[1][1])):
            rows.append(Declaration(module, name, Pos(r[0] + 1, r[1]), Pos(r[2] + 1, r[3]), Pos(r[4] + 1, r[5])))
        ctx.emit_many(rows)
        count += len(rows)
    return IndexSummary(len(found), count, missing)


@app.handler(TOOLCHAIN)
def toolchain(request: ToolchainQuery, ctx: RequestContext) -> ToolchainReport:
    _engines()
    rt = runtime()
    tc = rt.toolchain
    assert tc is not None
    return ToolchainReport(tc.lean, tc.source, tc.version, tc.commit or None, tc.prefix or None, tc.stdlib_present, list(rt.search_path))


@app.doctor
def lean_doctor() -> Iterator[DoctorItem]:
    """What ``lean-worker doctor`` shows for the Lean capability: toolchain, standard
    library, search path, cache, fixture library and engine."""
    rt = runtime()
    tc = rt.toolchain
    if tc is None:
        yield DoctorItem(
            "lean.toolchain",
            "error",
            str(rt.toolchain_error or "the Lean worker is not configured"),
            f"pass --lean PATH (lean_config(lean=...)), set ${LEAN_ENV}, run in a Lake project, "
            "put lean on PATH, or install the test toolchain: pip install -e '.[toolchain]'",
        )
    else:
        facts = {"lean": tc.lean, "source": tc.source, "version": tc.version, "commit": tc.commit,
                 "target": tc.target, "prefix": tc.prefix, "library_dir": tc.library_dir}
        yield DoctorItem("lean.toolchain", "ok", f"Lean {tc.version} found by {tc.source}: {tc.lean}", data=facts)
        if tc.stdlib_present:
            yield DoctorItem("lean.stdlib", "ok", f"standard library present in {tc.library_dir}")
        else:
            yield DoctorItem(
                "lean.stdlib",
                "warning",
                f"no standard library (no Init.olean in {tc.library_dir}): only prelude files check",
                "use a full toolchain (elan, a Lake project) to import Init, Std or Mathlib",
            )
    yield _search_path_item(list(rt.search_path if tc is not None else rt.requested_search_path))
    yield _cache_item()
    if tc is not None:
        yield _fixtures_item(tc)
    sessions = len(rt.warm.session_pids()) if rt.warm is not None else 0
    documents = len(rt.states.pids()) if rt.states is not None else 0
    engine, max_sessions, max_documents = rt.settings.engine, rt.settings.max_sessions, rt.settings.max_documents
    yield DoctorItem(
        "lean.engine",
        "ok",
        f"engine={engine} max_sessions={max_sessions} open_sessions={sessions} "
        f"max_documents={max_documents} open_documents={documents}",
        data={"engine": engine, "max_sessions": str(max_sessions), "open_sessions": str(sessions),
              "max_documents": str(max_documents), "open_documents": str(documents)},
    )


def _search_path_item(dirs: list[str]) -> DoctorItem:
    if not dirs:
        return DoctorItem("lean.search_path", "ok", "empty: only the toolchain's own library is importable")
    found = {d: ("exists" if Path(d).is_dir() else "missing") for d in dirs}
    missing = [d for d, s in found.items() if s == "missing"]
    if missing:
        return DoctorItem(
            "lean.search_path",
            "warning",
            f"{len(missing)} of {len(dirs)} search path directories are missing: {', '.join(missing)}",
            "build the library that should be there (lake build), or fix --search-path / $LEAN_PATH",
            found,
        )
    return DoctorItem("lean.search_path", "ok", f"{len(dirs)} directories, all present", data=found)


def _cache_item() -> DoctorItem:
    root = cache_dir()
    data = {"path": str(root), "exists": str(root.is_dir()).lower()}
    if sandboxed():
        return DoctorItem("lean.cache", "ok", f"cache {root} (read-only in the sandbox: builds happen outside it)", data=data)
    if root.is_dir() and not os.access(root, os.W_OK | os.X_OK):
        return DoctorItem("lean.cache", "warning", f"cache {root} is not writable", "set LEAN_WORKER_CACHE", data)
    return DoctorItem("lean.cache", "ok", f"cache {root}" + ("" if root.is_dir() else " (created on first build)"), data=data)


def _fixtures_item(tc: Toolchain) -> DoctorItem:
    try:
        built = library_state(tc.lean)
    except (FixtureError, OSError) as exc:
        return DoctorItem("lean.fixtures", "ok", f"fixture library unavailable (it is for tests only): {exc}")
    if built is None:
        return DoctorItem(
            "lean.fixtures",
            "ok",
            "fixture library LwFix not built for this toolchain (it is for tests only)",
            f"python -m lean_worker_child.lean.fixtures --lean {tc.lean}",
            {"state": "not_built"},
        )
    return DoctorItem("lean.fixtures", "ok", f"fixture library LwFix built: {built}", data={"state": "built", "root": str(built)})


def main(argv: list[str] | None = None) -> None:
    global _runtime
    _runtime = LeanRuntime.start(parse_settings(argv))
    app.serve(readable=_runtime.readable())
