"""The parent side: the ``wordstat`` console script.

    wordstat [--check] [TEXT...]      # TEXT defaults to standard input

It finds its worker child with ``resolve_child``: ``$WORDSTAT_WORKER`` when set (and only
then), else the ``wordstat-worker`` script installed beside this interpreter, else
``python -m wordstat_app.worker``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from lean_worker import ChildNotFound, SyncWorker, WorkerConfig, check_sync, resolve_child

from .commands import STATS, TOP, Text, TopRequest

WORKER_ENV = "WORDSTAT_WORKER"
WORKER_SCRIPT = "wordstat-worker"


def worker_config() -> WorkerConfig:
    child = resolve_child(env=WORKER_ENV, sibling=WORKER_SCRIPT, module="wordstat_app.worker")
    return WorkerConfig(child=child, name="wordstat", expected_worker_name="wordstat", request_timeout_s=30)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wordstat", description="Word statistics from a supervised worker.")
    parser.add_argument("--check", action="store_true", help="check the worker child instead of counting")
    parser.add_argument("text", nargs="*", help="the text (default: standard input)")
    args = parser.parse_args(argv)
    try:
        config = worker_config()
    except ChildNotFound as exc:
        print(f"wordstat: {exc.code}: {exc}\n  hint: {exc.hint}", file=sys.stderr)
        return 1
    print(f"worker: {shlex.join(config.child.argv)}")
    if args.check:
        report = check_sync(config, expect=[STATS, TOP])
        for item in report.items:
            print(f"{item.severity:<7} {item.code}: {item.message}")
        return 0 if report.ok else 1
    text = " ".join(args.text) if args.text else sys.stdin.read()
    with SyncWorker(config) as worker:
        stats = worker.call(STATS, Text(text))
        print(f"words={stats.words} distinct={stats.distinct} longest={stats.longest}")
        with worker.stream(TOP, TopRequest(text)) as top:
            words = [f"{row.word}={row.count}" for row in top]
        print(f"top: {' '.join(words)} (of {top.summary.summary.distinct})")
    return 0
