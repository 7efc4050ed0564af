"""An async parent for the example: ``python -m examples.typed_streaming.run_async``.

Streams tokens with diagnostics and progress, calls a request/response command, handles
errors by their type and code, stops a stream early, and lets a restart policy cycle the
child. Prints what it gets and exits 0.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import anyio

from lean_worker import (
    ChildCommand,
    Diagnostic,
    Progress,
    RemoteError,
    RequestTimeout,
    RestartPolicy,
    Worker,
    WorkerConfig,
)

from .commands import SAMPLE, TOKENIZE, TOP_WORDS, Text, TopWordsRequest

REPO_ROOT = Path(__file__).resolve().parents[2]

CONFIG = WorkerConfig(
    child=ChildCommand.module("examples.typed_streaming.worker"),
    cwd=str(REPO_ROOT),  # `python -m examples...` resolves the package from here
    name="wordfreq",
    expected_worker_name="wordfreq",  # refuse a child that announces another name
    request_timeout_s=30.0,
)


def on_diagnostic(diag: Diagnostic) -> None:
    where = f" line={diag.position.line}" if diag.position else ""
    print(f"  diagnostic [{diag.severity}] {diag.code}{where}: {diag.message}")


def on_progress(progress: Progress) -> None:
    print(f"  progress {progress.phase} {progress.current}/{progress.total}")


async def stream_tokens(worker: Worker) -> None:
    print("tokenize:")
    async with worker.stream(TOKENIZE, Text(SAMPLE), on_diagnostic=on_diagnostic, on_progress=on_progress) as tokens:
        async for token in tokens:  # rows arrive live; they are tentative until the summary
            print(f"  token {token.line}:{token.column} {token.word}")
    result = tokens.summary
    print(f"summary: {result.summary} rows={result.rows} generation={result.generation}")


async def count_words(worker: Worker) -> None:
    top = await worker.call(TOP_WORDS, TopWordsRequest(SAMPLE, top=3))
    print("top words: " + " ".join(f"{w.word}={w.count}" for w in top))


async def handle_errors(worker: Worker) -> None:
    try:
        await worker.call(TOP_WORDS, TopWordsRequest(SAMPLE, top=0))
    except RemoteError as exc:  # the handler raised; the same child keeps serving
        print(f"error {exc.code}: remote_code={exc.remote_code} message={exc.remote_message!r}")
    print(f"still generation {worker.generation}")

    slow = Text(SAMPLE * 100, delay_per_line_s=0.05)  # about 15 s of work
    try:
        async with worker.stream(TOKENIZE, slow, timeout=0.5) as tokens:
            async for _token in tokens:
                pass
    except RequestTimeout as exc:  # the child's process group was killed and reaped
        print(f"error {exc.code}: limit_s={exc.limit_s} exit={exc.exit.code if exc.exit else None}")
    await worker.call(TOP_WORDS, TopWordsRequest(SAMPLE))
    print(f"next request ran on generation {worker.generation}")


async def stop_early(worker: Worker) -> None:
    seen = 0
    async with worker.stream(TOKENIZE, Text(SAMPLE * 1000)) as tokens:
        async for _token in tokens:
            seen += 1
            if seen == 5:
                break  # leaving the block cancels the request in the child
    print(f"stopped after {seen} tokens; child kept: generation {worker.generation}")


async def recycle_by_policy() -> None:
    config = dataclasses.replace(CONFIG, restart=RestartPolicy(max_requests=2))
    async with Worker(config) as worker:
        for _ in range(3):
            await worker.call(TOP_WORDS, TopWordsRequest(SAMPLE))
            print(f"  served by generation {worker.generation}")
        report = await worker.cycle()  # an explicit, planned restart
        print(f"cycle: step={report.step} now generation {worker.generation}")
        print(f"restarts: {restart_counts(worker)}")


def restart_counts(worker: Worker) -> str:
    return " ".join(f"{reason}={count}" for reason, count in worker.stats().restarts.items()) or "none"


async def main() -> None:
    async with Worker(CONFIG) as worker:
        await stream_tokens(worker)
        await count_words(worker)
        await handle_errors(worker)
        await stop_early(worker)
        print(f"restarts: {restart_counts(worker)}")
    print("restart policy max_requests=2:")
    await recycle_by_policy()


if __name__ == "__main__":
    anyio.run(main)
