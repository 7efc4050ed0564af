"""The first-party Lean worker child: ``python -m lean_worker_child.lean``.

    python -m lean_worker_child.lean [--lean PATH] [--project DIR] [--search-path DIR]...
                                     [--engine warm|cold] [--max-sessions N] [--lean-arg ARG]...

Serves ``lean_worker_protocol.lean``: ``lean.check``, ``lean.check_batch``, ``lean.index``
and ``lean.toolchain``. The toolchain is resolved once at start-up
(``toolchain.resolve_toolchain``); if none is found the worker still starts and every
command fails with ``lean.toolchain_not_found``, so probes can report it.
"""

from __future__ import annotations

import argparse
import atexit
import os
import time
from collections import Counter
from pathlib import Path

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
    OpenRequest,
    Pos,
    SessionInfo,
    ToolchainQuery,
    ToolchainReport,
    parse_header,
)

from .. import RequestContext, WorkerApp
from .engine import ColdEngine, WarmEngine
from .errors import LeanCrashed, LeanError
from .toolchain import Toolchain, ToolchainError, resolve_toolchain

app = WorkerApp("lean-worker-lean", version="0.1.0")


class _State:
    toolchain: Toolchain | None = None
    toolchain_error: ToolchainError | None = None
    search_path: list[str] = []
    engine = "warm"
    warm: WarmEngine | None = None
    cold: ColdEngine | None = None


state = _State()


def configure(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lean_worker_child.lean")
    parser.add_argument("--lean", help="the lean executable (default: resolution order of toolchain.py)")
    parser.add_argument("--project", help="a Lake project directory (default: the working directory)")
    parser.add_argument("--search-path", action="append", default=[], help="a directory of .olean files (repeatable)")
    parser.add_argument("--engine", choices=("warm", "cold"), default="warm")
    parser.add_argument("--max-sessions", type=int, default=8, help="warm sessions kept alive (default 8)")
    parser.add_argument("--lean-arg", action="append", default=[], help="extra argument for every lean process")
    args = parser.parse_args(argv)
    state.engine = args.engine
    try:
        state.toolchain = resolve_toolchain(args.lean, project=args.project)
    except ToolchainError as exc:
        state.toolchain_error = exc
        return
    inherited = [p for p in os.environ.get("LEAN_PATH", "").split(os.pathsep) if p]
    state.search_path = [str(Path(p).resolve()) for p in args.search_path] + state.toolchain.search_path + inherited
    env = dict(os.environ)
    env["LEAN_PATH"] = os.pathsep.join(state.search_path)
    state.warm = WarmEngine(state.toolchain.lean, env=env, max_sessions=args.max_sessions, extra_args=args.lean_arg)
    state.cold = ColdEngine(state.toolchain.lean, env=env, extra_args=args.lean_arg)
    atexit.register(state.warm.close)


def _engines() -> tuple[WarmEngine, ColdEngine]:
    if state.warm is None or state.cold is None:
        raise state.toolchain_error or ToolchainError("the Lean worker is not configured")
    return state.warm, state.cold


def check_one(request: CheckRequest, timeout_s: float | None) -> tuple[CheckResult, int]:
    """Check one snippet; return the result and the number of imports it performed."""
    warm, cold = _engines()
    engine = state.engine if request.engine == "auto" else request.engine
    if engine == "cold":
        return cold.check(request.code, id=request.id, timeout_s=timeout_s), 0
    try:
        header = parse_header(request.code)
    except HeaderError:
        # Lean reports the malformed header itself, with its position.
        return cold.check(request.code, id=request.id, timeout_s=timeout_s), 0
    result, fresh = warm.check(request.code, id=request.id, header=header, timeout_s=timeout_s)
    return result, int(fresh)


@app.handler(CHECK)
def check(request: CheckRequest, ctx: RequestContext) -> CheckResult:
    warm, _ = _engines()
    before = warm.imports
    try:
        result, _ = check_one(request, request.timeout_s)
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
                result, _ = check_one(item, timeout_s)
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


def _ilean_files(modules: list[str]) -> tuple[list[tuple[str, Path]], list[str]]:
    found: list[tuple[str, Path]] = []
    missing: list[str] = []
    if modules:
        for module in modules:
            rel = Path(*module.split(".")).with_suffix(".ilean")
            for root in state.search_path:
                if (Path(root) / rel).is_file():
                    found.append((module, Path(root) / rel))
                    break
            else:
                missing.append(module)
        return found, missing
    seen: set[str] = set()
    for root in state.search_path:
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
    found, missing = _ilean_files(request.modules)
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
    tc = state.toolchain
    assert tc is not None
    return ToolchainReport(tc.lean, tc.source, tc.version, tc.commit or None, tc.prefix or None, tc.stdlib_present, state.search_path)


def main(argv: list[str] | None = None) -> None:
    configure(argv)
    app.serve()
