"""A parent without an event loop: ``python -m examples.typed_streaming.run_sync``.

``SyncWorker`` runs the same supervisor on a background thread; the calls block.
"""

from __future__ import annotations

from pathlib import Path

from lean_worker import ChildCommand, RemoteError, SyncWorker, WorkerConfig

from .commands import SAMPLE, TOKENIZE, TOP_WORDS, Text, TopWordsRequest

REPO_ROOT = Path(__file__).resolve().parents[2]

CONFIG = WorkerConfig(
    child=ChildCommand.module("examples.typed_streaming.worker"),
    cwd=str(REPO_ROOT),
    name="wordfreq",
    request_timeout_s=30.0,
)


def main() -> None:
    with SyncWorker(CONFIG) as worker:
        with worker.stream(TOKENIZE, Text(SAMPLE)) as tokens:
            words = [token.word for token in tokens]
        print(f"tokens: {' '.join(words)}")
        for diag in tokens.diagnostics:  # kept on the call when no on_diagnostic is given
            print(f"diagnostic [{diag.severity}] {diag.code}: {diag.message}")
        print(f"summary: {tokens.summary.summary}")

        top = worker.call(TOP_WORDS, TopWordsRequest(SAMPLE, top=2))
        print("top words: " + " ".join(f"{w.word}={w.count}" for w in top))
        try:
            worker.call(TOP_WORDS, TopWordsRequest(SAMPLE, top=-1))
        except RemoteError as exc:
            print(f"error {exc.code}: remote_code={exc.remote_code}")
        stats = worker.stats()
        print(f"stats: requests={stats.requests} rows_delivered={stats.rows_delivered} generation={stats.generation}")


if __name__ == "__main__":
    main()
