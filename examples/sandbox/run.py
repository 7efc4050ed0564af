"""Check an untrusted snippet in a sandbox: ``python -m examples.sandbox.run``.

Starts a Lean worker that must run sandboxed (``mode="required"``), checks a normal
snippet and a hostile one that tries to write into your home directory while Lean
elaborates it, and prints what the sandbox enforces here. Exits 0; on a machine that
cannot build the sandbox it exits 1 with ``SandboxUnavailable``'s reason and fix.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from lean_worker import Sandbox, SandboxUnavailable, Worker
from lean_worker.lean import CHECK, CheckRequest, lean_config
from lean_worker_child.lean.fixtures import build_library
from lean_worker_child.lean.toolchain import resolve_toolchain
from lean_worker_protocol.probe import DOCTOR, DoctorRequest

HERE = Path(__file__).resolve().parent
SNIPPETS = HERE.parents[1] / "lean" / "snippets"


async def main() -> None:
    toolchain = resolve_toolchain()
    library = build_library(toolchain.lean)
    sandbox = Sandbox(
        mode="required",  # never run unsandboxed: SandboxUnavailable where it cannot hold
        read_paths=(),  # more read-only paths, e.g. ("/data/lemma-index",)
        scratch_bytes=128 * 1024 * 1024,  # /scratch, and the largest file a process may write
        processes=512,  # tasks (processes and threads) in the PID namespace
    )
    config = lean_config(lean=toolchain.lean, search_path=[library.root], sandbox=sandbox)
    async with Worker(config) as worker:
        print(worker.sandbox.describe())
        ok = await worker.call(CHECK, CheckRequest((SNIPPETS / "ok.lean").read_text()))
        print(f"ok.lean: {ok.verdict}")

        target = Path.home() / "lean-worker-sandbox-example.txt"
        escape = (HERE / "escape.lean").read_text().replace("TARGET", str(target))
        result = await worker.call(CHECK, CheckRequest(escape))
        shown = result.messages[0].text.replace(str(Path.home()), "~")
        print(f"escape.lean: {result.verdict}, its #eval showed: {shown}")
        print(f"{target.name} exists: {target.exists()}")

        report = await worker.call(DOCTOR, DoctorRequest())
        item = next(i for i in report.items if i.name == "worker.sandbox")
        print("what the sandbox enforces here:")
        for part in item.message.removeprefix("sandboxed: ").split("; "):
            print(f"  {part}")


if __name__ == "__main__":
    try:
        anyio.run(main)
    except SandboxUnavailable as exc:
        print(f"{exc.code}: {exc.reason}; fix: {exc.fix}", file=sys.stderr)
        sys.exit(1)
