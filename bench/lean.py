"""Warm against cold Lean checks on the heavy-header fixture, and the memory of a fresh import.

    python bench/lean.py [--checks 40] [--imports 6]

In one run, through the real Lean worker child (``lean_worker.lean.lean_config``):

- ``import_ms``: opening a session on the heavy header (first check minus a warm check);
- ``warm_check_p50_ms`` / ``warm_check_p95_ms``: checks that reuse that session;
- ``cold_check_p50_ms``: the same snippets, one ``lean --json`` process each;
- ``warm_speedup``: cold p50 / warm p50;
- ``rss_per_import_mib`` / ``pss_per_import_mib``: memory the worker's process tree grows
  by per fresh import (distinct headers, all sessions kept), slope over ``--imports``.

Goals (issue 3): warm p50 <= 50 ms, p95 <= 200 ms, speedup >= 10.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lean_worker import Worker  # noqa: E402
from lean_worker.lean import CHECK, TOOLCHAIN, CheckRequest, ToolchainQuery, lean_config  # noqa: E402
from lean_worker_child.lean.fixtures import build_heavy_header  # noqa: E402
from lean_worker_child.lean.toolchain import resolve_toolchain  # noqa: E402

MIB = 1024 * 1024


def body(i: int) -> str:
    # Each check elaborates a new definition and theorem over the prelude's own Eq.
    return (
        f"\ninductive Bench{i} where\n  | a\n  | b (x : Bench{i})\n"
        f"theorem bench{i} : LwHeavy.Eq (Bench{i}.a) (Bench{i}.a) := LwHeavy.Eq.refl\n"
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(args: argparse.Namespace) -> None:
    toolchain = resolve_toolchain()
    heavy = build_heavy_header(toolchain.lean)
    top = heavy.modules[-1]
    header = f"prelude\nimport {top}\n"
    print(f"conditions=python {platform.python_version()}, {os.cpu_count()} cpus, {platform.machine()}, "
          f"lean {toolchain.version} ({toolchain.source}), heavy header {len(heavy.modules)} modules "
          f"(import {top}), checks={args.checks}")

    config = lean_config(search_path=[heavy.root], max_sessions=args.imports + 2, request_timeout_s=120)
    async with Worker(config) as worker:
        await worker.call(TOOLCHAIN, ToolchainQuery())
        first = await worker.call(CHECK, CheckRequest(header + body(0)))
        assert first.session == "import" and first.verdict == "ok", first
        warm: list[float] = []
        for i in range(1, args.checks + 1):
            t = time.perf_counter()
            result = await worker.call(CHECK, CheckRequest(header + body(i)))
            warm.append((time.perf_counter() - t) * 1e3)
            assert result.session == "warm" and result.verdict == "ok", result
        cold: list[float] = []
        for i in range(1, args.checks + 1):
            t = time.perf_counter()
            result = await worker.call(CHECK, CheckRequest(header + body(i), engine="cold"))
            cold.append((time.perf_counter() - t) * 1e3)
            assert result.verdict == "ok", result
        warm_p50 = statistics.median(warm)
        cold_p50 = statistics.median(cold)
        print(f"import_ms={first.elapsed_ms - warm_p50:.1f}")
        print(f"warm_check_p50_ms={warm_p50:.2f}")
        print(f"warm_check_p95_ms={percentile(warm, 0.95):.2f}")
        print(f"cold_check_p50_ms={cold_p50:.1f}")
        print(f"warm_speedup={cold_p50 / warm_p50:.1f}")

    # Memory per fresh import: distinct headers (the heavy header plus one more module each),
    # every session kept alive, process-tree RSS and PSS after each.
    async with Worker(config) as worker:
        await worker.call(TOOLCHAIN, ToolchainQuery())
        base_rss, base_pss = await worker.rss(), await worker.pss()
        rss, pss = [], []
        for i in range(args.imports):
            extra = heavy.modules[i % (len(heavy.modules) - 1)]
            result = await worker.call(CHECK, CheckRequest(f"prelude\nimport {extra}\nimport {top}\n" + body(i)))
            assert result.session == "import", result
            pss.append(await worker.pss() or 0)  # refreshes the process list first
            rss.append(await worker.rss() or 0)
        steps = len(rss) - 1
        print(f"rss_per_import_mib={(rss[-1] - rss[0]) / steps / MIB:.1f}")
        print(f"pss_per_import_mib={(pss[-1] - pss[0]) / steps / MIB:.1f}")
        print(f"rss_checkpoints_mib={','.join(f'{x / MIB:.0f}' for x in [base_rss or 0, *rss])}")
        print(f"pss_checkpoints_mib={','.join(f'{x / MIB:.0f}' for x in [base_pss or 0, *pss])}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checks", type=int, default=40)
    parser.add_argument("--imports", type=int, default=6)
    anyio.run(run, parser.parse_args())


if __name__ == "__main__":
    main()
