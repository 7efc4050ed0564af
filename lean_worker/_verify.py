"""``lean-worker verify``: check a batch of Lean snippets through a pool of Lean workers.

    lean-worker verify SNIPPETS [--workers N] [--timeout S] [--output FILE] ...
    lean-worker verify --fixtures

``SNIPPETS`` is a directory (every ``*.lean`` below it; the id is the relative path) or a
JSONL file of ``{"id": ..., "code": ...}`` lines. Results stream as JSON lines, one per
snippet as it finishes, to ``--output`` (default: stdout): ``id``, ``verdict`` (``ok``,
``errors``, ``sorry``, or ``failed`` when the snippet got no result), ``messages``,
``sorries``, ``time_ms``, ``session``, ``worker``, ``generation`` and, for a failed one,
``error`` (``code``, ``message`` and the facts). A progress line with rate and ETA goes to
stderr on a terminal; a summary table ends the run (stderr when results go to stdout).

Exit status: 0 when the run completed (whatever the verdicts); with ``--strict``, 1 when
any snippet is not ``ok``; 2 for bad arguments, input that cannot be read, or no Lean
toolchain (checked once before the batch).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import anyio
import msgspec
import orjson

from ._config import RestartPolicy
from ._errors import RemoteError, WorkerError
from ._pool import Outcome, Pool
from ._worker import Worker
from .lean import (
    CHECK,
    FIXTURES,
    TOOLCHAIN,
    CheckRequest,
    CheckResult,
    FixturesReport,
    FixturesRequest,
    ToolchainNotFound,
    ToolchainQuery,
    lean_config,
)

MIB = 1024 * 1024


@dataclass(frozen=True)
class Item:
    id: str
    code: str | None
    problem: str | None = None
    """Why this item cannot be checked (a bad JSONL line); it becomes a failed result."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("snippets", nargs="?", help="a directory of .lean files, or a JSONL file of {id, code}")
    parser.add_argument("--fixtures", action="store_true",
                        help="check the bundled prelude snippets (lean/snippets) against the bundled library")
    parser.add_argument("-o", "--output", default="-", help="where JSONL results go (default: stdout)")
    parser.add_argument("-j", "--workers", type=int, default=os.cpu_count() or 1, help="pool size (default: CPU count)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds per snippet; past it that snippet's Lean process is killed (default 60)")
    parser.add_argument("--lean", help="the lean executable (default: $LEAN_WORKER_LEAN, lake env, PATH, test toolchain)")
    parser.add_argument("--project", help="a Lake project directory (default: the working directory)")
    parser.add_argument("--search-path", action="append", default=[], help="a directory of .olean files (repeatable)")
    parser.add_argument("--max-imports", type=int, help="replace a worker before its next fresh import after this many")
    parser.add_argument("--max-requests", type=int, help="replace a worker after this many checks")
    parser.add_argument("--rss-ceiling-mb", type=int, help="replace a worker whose process tree is over this (MiB)")
    parser.add_argument("--lean-memory-mb", type=int, help="Lean's own memory limit per Lean process (lean -M)")
    parser.add_argument("--max-sessions", type=int, default=8, help="warm headers kept per worker (default 8)")
    parser.add_argument("--engine", choices=("warm", "cold"), default="warm")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any snippet is not ok")
    parser.add_argument("--no-progress", action="store_true", help="no progress line, even on a terminal")


def read_items(source: Path) -> list[Item]:
    if source.is_dir():
        files = sorted(p for p in source.rglob("*.lean") if p.is_file())
        return [Item(p.relative_to(source).as_posix(), p.read_text(encoding="utf-8", errors="replace")) for p in files]
    items = []
    with source.open(encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                data = orjson.loads(line)
                code = data["code"]
                if not isinstance(code, str):
                    raise TypeError("code is not a string")
                items.append(Item(str(data.get("id", f"line-{number}")), code))
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                items.append(Item(f"line-{number}", None, f"line {number} is not a JSON object with a string `code`: {exc}"))
    return items


def _result_record(outcome: Outcome[Any, Any], item: Item) -> dict[str, Any]:
    record: dict[str, Any] = {"id": item.id, "worker": outcome.worker, "generation": outcome.generation}
    value: CheckResult | None = outcome.value
    if value is not None:
        record.update(
            verdict=value.verdict,
            messages=msgspec.to_builtins(value.messages),
            sorries=msgspec.to_builtins(value.sorries),
            time_ms=round(value.elapsed_ms, 2),
            session=value.session,
        )
        if value.limit:
            record["limit"] = value.limit
        return record
    error = outcome.error
    assert error is not None
    text = error.remote_message if isinstance(error, RemoteError) else str(error)
    info: dict[str, Any] = {"code": _error_code(error), "message": text.splitlines()[0][:500] if text else ""}
    if isinstance(error, RemoteError):
        info.update({k: v for k, v in error.facts.items() if v is not None})
    record.update(verdict="failed", messages=[], sorries=[], time_ms=round(outcome.elapsed_s * 1e3, 2), error=info)
    return record


def _error_code(error: WorkerError) -> str:
    return error.remote_code if isinstance(error, RemoteError) else error.code


class Progress:
    """One self-rewriting status line on a terminal: done/total, rate and ETA."""

    def __init__(self, total: int, stream: IO[str], enabled: bool) -> None:
        self.total = total
        self.stream = stream
        self.enabled = enabled
        self.started = time.monotonic()
        self.last = 0.0

    def update(self, done: int, failed: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < 0.1:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        width = 30
        filled = int(width * done / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        eta_text = f"{eta:.0f}s" if eta != float("inf") else "?"
        self.stream.write(f"\r[{bar}] {done}/{self.total} {rate:.1f}/s ETA {eta_text} failed={failed}")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _summary(verdicts: Counter[str], errors: Counter[str], restarts: dict[str, int], total: int,
             elapsed: float, workers: int, imports: int) -> str:
    rows = [("snippets", str(total))]
    rows += [(f"  {v}", str(verdicts[v])) for v in ("ok", "errors", "sorry", "failed") if verdicts[v]]
    rows += [(f"  failed: {code}", str(n)) for code, n in sorted(errors.items())]
    rows.append(("imports", str(imports)))
    rows.append(("restarts", ", ".join(f"{k}={v}" for k, v in sorted(restarts.items())) or "0"))
    rows.append(("workers", str(workers)))
    rows.append(("elapsed", f"{elapsed:.2f} s"))
    rows.append(("throughput", f"{total / elapsed:.1f} snippets/s" if elapsed > 0 else "-"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _open_output(target: str) -> tuple[IO[str], bool]:
    if target == "-":
        return sys.stdout, False
    return open(target, "w", encoding="utf-8"), True


def run(args: argparse.Namespace) -> int:
    search_path = list(args.search_path)
    if args.fixtures:
        # The bundled library is built by a Lean worker for its own toolchain: only the
        # child runs Lean.
        try:
            built = anyio.run(_build_fixtures, args)
        except WorkerError as exc:
            print(f"lean-worker verify: cannot build the fixtures: {exc.code}: {exc}", file=sys.stderr)
            return 2
        search_path.append(built.library_root)
        source = Path(args.snippets) if args.snippets else Path(built.snippets_dir)
    elif args.snippets:
        source = Path(args.snippets)
    else:
        print("lean-worker verify: give a directory or a JSONL file of snippets, or --fixtures", file=sys.stderr)
        return 2
    if not source.exists():
        print(f"lean-worker verify: {source} does not exist", file=sys.stderr)
        return 2
    try:
        items = read_items(source)
    except OSError as exc:
        print(f"lean-worker verify: cannot read {source}: {exc}", file=sys.stderr)
        return 2
    if args.workers < 1 or args.timeout <= 0:
        print("lean-worker verify: --workers must be >= 1 and --timeout > 0", file=sys.stderr)
        return 2
    restart = RestartPolicy(
        max_imports=args.max_imports,
        max_requests=args.max_requests,
        rss_ceiling_bytes=args.rss_ceiling_mb * MIB if args.rss_ceiling_mb else None,
    )
    config = lean_config(
        lean=args.lean,
        project=args.project,
        search_path=search_path,
        engine=args.engine,
        max_sessions=args.max_sessions,
        lean_args=["-M", str(args.lean_memory_mb)] if args.lean_memory_mb else [],
        restart=restart,
        request_timeout_s=args.timeout + 30.0,  # the child's own deadline fires first
    )
    out, close_out = _open_output(args.output)
    report = sys.stderr if out is sys.stdout else sys.stdout
    try:
        return anyio.run(_run, args, config, items, out, report)
    finally:
        if close_out:
            out.close()


async def _build_fixtures(args: argparse.Namespace) -> FixturesReport:
    config = lean_config(lean=args.lean, project=args.project, startup_timeout_s=60, request_timeout_s=600)
    async with Worker(config) as worker:
        return await worker.call(FIXTURES, FixturesRequest())


async def _run(args: argparse.Namespace, config: Any, items: list[Item], out: IO[str], report: IO[str]) -> int:
    started = time.monotonic()
    verdicts: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    progress = Progress(len(items), sys.stderr, sys.stderr.isatty() and not args.no_progress)
    checkable = [i for i in items if i.code is not None]
    for item in items:
        if item.problem is not None:
            bad: dict[str, Any] = {"id": item.id, "verdict": "failed", "messages": [], "sorries": [], "time_ms": 0.0,
                      "worker": -1, "generation": 0, "error": {"code": "verify.bad_item", "message": item.problem}}
            out.write(orjson.dumps(bad).decode() + "\n")
            verdicts["failed"] += 1
            errors["verify.bad_item"] += 1
    requests = [CheckRequest(i.code or "", id=i.id, timeout_s=args.timeout) for i in checkable]
    by_id = {i.id: i for i in checkable}
    done = sum(verdicts.values())
    async with Pool(config, size=min(args.workers, max(1, len(requests)))) as pool:
        try:  # fail fast, once, rather than once per snippet
            await pool.call(TOOLCHAIN, ToolchainQuery())
        except ToolchainNotFound as exc:
            print(f"lean-worker verify: {exc.remote_code}: {exc.remote_message}", file=sys.stderr)
            return 2
        async with pool.map(CHECK, requests) as outcomes:
            async for outcome in outcomes:
                record = _result_record(outcome, by_id[outcome.request.id])
                verdicts[record["verdict"]] += 1
                if "error" in record:
                    errors[record["error"]["code"]] += 1
                out.write(orjson.dumps(record).decode() + "\n")
                out.flush()
                done += 1
                progress.update(done, verdicts["failed"])
        snap = pool.snapshot()
    progress.update(done, verdicts["failed"], force=True)
    progress.finish()
    report.write(_summary(verdicts, errors, snap.restarts, len(items), time.monotonic() - started,
                          pool.size, sum(w.imports for w in snap.workers)) + "\n")
    report.flush()
    if args.strict and verdicts["ok"] != len(items):
        return 1
    return 0


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Read back a results file (for tests and tools)."""
    with path.open() as fh:
        for line in fh:
            if line.strip():
                yield orjson.loads(line)
