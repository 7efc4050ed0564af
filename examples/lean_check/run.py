"""Check Lean snippets at scale: ``python -m examples.lean_check.run``.

Builds our prelude library, starts a Lean worker on it, and shows a single check, a warm
session, a batch with a crashing and a hanging snippet, the declaration index, a typed
error and the ``max_imports`` policy. Prints what it gets and exits 0; lines that end in
``ms`` are timings and differ from run to run.
"""

from __future__ import annotations

from pathlib import Path

import anyio

from lean_worker import Progress, RestartPolicy, Worker
from lean_worker.lean import (
    CHECK,
    CHECK_BATCH,
    INDEX,
    CheckBatch,
    CheckRequest,
    CheckResult,
    IndexRequest,
    LeanTimeout,
    lean_config,
)
from lean_worker_child.lean.fixtures import build_library
from lean_worker_child.lean.toolchain import resolve_toolchain

SNIPPETS = Path(__file__).resolve().parents[2] / "lean" / "snippets"


def snippet(name: str) -> str:
    return (SNIPPETS / name).read_text()


def show(result: CheckResult) -> None:
    print(f"  verdict={result.verdict} session={result.session} imports={result.imports}")
    for m in result.messages:
        first_line = m.text.splitlines()[0] if m.text else ""
        print(f"  {m.pos.line}:{m.pos.column} {m.severity} {first_line}")


async def single_checks(worker: Worker) -> None:
    print("type_error.lean:")
    show(await worker.call(CHECK, CheckRequest(snippet("type_error.lean"), id="type_error")))

    print("ok.lean twice:")
    for _ in range(2):  # the same header: the second check reuses the imported session
        result = await worker.call(CHECK, CheckRequest(snippet("ok.lean")))
        print(f"  verdict={result.verdict} session={result.session}")
        print(f"  elapsed {result.elapsed_ms:.0f} ms")
    print(f"imports charged so far: {worker.stats().imports}")


async def batch(worker: Worker) -> None:
    items = [
        CheckRequest(snippet("ok.lean"), id="ok"),
        CheckRequest(snippet("type_error.lean"), id="type_error"),
        CheckRequest(snippet("sorry.lean"), id="sorry"),
        CheckRequest(snippet("crash.lean"), id="crash"),
        CheckRequest(snippet("hang.lean"), id="hang", timeout_s=1.0),  # this item's own deadline
    ]
    progress: list[Progress] = []
    print("batch:")
    async with worker.stream(CHECK_BATCH, CheckBatch(items), on_progress=progress.append) as rows:
        async for row in rows:  # one row per item, in order, as each finishes
            if row.result is not None:
                sorries = " ".join(f"{p.line}:{p.column}" for p in row.result.sorries)
                print(f"  {row.index} {row.id}: {row.result.verdict}" + (f" (sorry at {sorries})" if sorries else ""))
            elif row.error is not None:
                print(f"  {row.index} {row.id}: error {row.error.code}")
                if row.error.cause:  # a crash: how the Lean process died and what it said
                    print(f"    cause={row.error.cause} detail={row.error.detail!r}")
    summary = rows.summary.summary
    print(f"  summary: items={summary.items} verdicts={summary.verdicts} errors={summary.errors}")
    print(f"  last progress: {progress[-1].phase} {progress[-1].current}/{progress[-1].total}")
    print(f"  batch took {summary.elapsed_ms:.0f} ms")


async def declarations(worker: Worker) -> None:
    print("index of LwFix.Nat:")
    async with worker.stream(INDEX, IndexRequest(["LwFix.Nat"])) as rows:
        decls = [d async for d in rows]
    for d in decls[:5]:
        print(f"  {d.selection.line}:{d.selection.column} {d.name}")
    print(f"  ... {rows.summary.summary.declarations} declarations")


async def deadline(worker: Worker) -> None:
    try:
        await worker.call(CHECK, CheckRequest(snippet("hang.lean"), timeout_s=1.0))
    except LeanTimeout as exc:  # only that snippet's Lean process was killed
        print(f"hang.lean: {exc.code}: {exc.remote_message}")
    print(f"still generation {worker.generation}")


async def recycle_by_imports(lean: str, library: Path) -> None:
    config = lean_config(lean=lean, search_path=[library], restart=RestartPolicy(max_imports=1))
    print("max_imports=1:")
    async with Worker(config) as worker:
        for name in ("ok.lean", "ok.lean", "sorry.lean"):
            result = await worker.call(CHECK, CheckRequest(snippet(name)))
            print(f"  {name}: session={result.session} generation={worker.generation}")
        print(f"  restarts: {worker.stats().restarts}")


async def main() -> None:
    toolchain = resolve_toolchain()
    library = build_library(toolchain.lean)  # compiled once, then cached by content hash
    print(f"lean {toolchain.version} ({toolchain.source})")
    config = lean_config(lean=toolchain.lean, search_path=[library.root], request_timeout_s=60)
    async with Worker(config) as worker:
        await single_checks(worker)
        await batch(worker)
        await declarations(worker)
        await deadline(worker)
    await recycle_by_imports(toolchain.lean, library.root)


if __name__ == "__main__":
    anyio.run(main)
