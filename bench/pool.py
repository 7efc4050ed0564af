"""Throughput of batch checking through the pool, against a plain loop of cold ``lean`` runs.

    python bench/pool.py [--items 240] [--headers 3]

In one run, on generated snippets over the bundled prelude library (each proves a few
facts by kernel reduction on unary numbers, about as much Lean work as a short exercise):

- ``pool1_items_per_s`` / ``pool2_items_per_s``: the batch through ``Pool.map`` with one and
  with two workers (what ``lean-worker verify`` runs), sessions opened included;
- ``pool_scaling``: pool2 / pool1 (goal >= 1.8 on 2 cores);
- ``naive_items_per_s``: a plain loop running one ``lean --json --stdin`` per snippet;
- ``verify_speedup``: pool2 / naive.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lean_worker import Pool  # noqa: E402
from lean_worker.lean import CHECK, CheckRequest, lean_config  # noqa: E402
from lean_worker_child.lean.fixtures import build_library  # noqa: E402
from lean_worker_child.lean.toolchain import resolve_toolchain  # noqa: E402

HEADERS = [
    "prelude\nimport LwFix.Nat\n",
    "prelude\nimport LwFix.List\n",
    "prelude\nimport LwFix.Nat\nimport LwFix.Logic\n",
]


def snippet(i: int, headers: int, work: str = "light") -> str:
    header = HEADERS[i % headers]
    if work == "light":  # a definition and two theorems: a few ms of Lean work
        return header + (
            f"\nnoncomputable def double{i} (n : N) : N := N.add n n\n"
            f"theorem double{i}_two : Eq (double{i} N.two) N.four := Eq.refl\n"
            f"theorem add{i}_zero (n : N) : Eq (N.add n N.zero) n := Eq.refl\n"
        )
    return header + "".join(
        f"\ntheorem pow_{i}_{k} : Eq (N.pow N.two (N.add N.four N.{name})) (N.mul (N.pow N.two N.four) (N.pow N.two N.{name})) := Eq.refl\n"
        for k, name in enumerate(("zero", "one", "two") * 2)
    )


async def through_pool(config: object, requests: list[CheckRequest], size: int) -> float:
    async with Pool(config, size=size) as pool:  # type: ignore[arg-type]
        started = time.perf_counter()
        async with pool.map(CHECK, requests) as outcomes:
            async for outcome in outcomes:
                assert outcome.error is None and outcome.value.verdict == "ok", outcome
        return len(requests) / (time.perf_counter() - started)


def naive(lean: str, env: dict[str, str], codes: list[str]) -> float:
    started = time.perf_counter()
    for code in codes:
        done = subprocess.run([lean, "--json", "--stdin"], input=code.encode(), capture_output=True, env=env, check=False)
        assert done.returncode == 0, done.stdout
    return len(codes) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=240)
    parser.add_argument("--headers", type=int, default=3, choices=(1, 2, 3))
    parser.add_argument("--work", choices=("light", "heavy"), default="light",
                        help="light: a definition and two theorems per snippet; heavy: six proofs by "
                             "kernel reduction (~40 ms of Lean work, which Lean itself spreads over threads)")
    parser.add_argument("--lean-threads", type=int, default=1,
                        help="threads per Lean process (lean -j; 0: Lean's default); default 1")
    parser.add_argument("--sync-elab", action="store_true",
                        help="elaborate proofs synchronously in each Lean process (-DElab.async=false)")
    args = parser.parse_args()
    toolchain = resolve_toolchain()
    library = build_library(toolchain.lean)
    codes = [snippet(i, args.headers, args.work) for i in range(args.items)]
    requests = [CheckRequest(code, id=str(i)) for i, code in enumerate(codes)]
    lean_args = ["-j", str(args.lean_threads)] if args.lean_threads else []
    if args.sync_elab:
        lean_args.append("-DElab.async=false")
    config = lean_config(lean=toolchain.lean, search_path=[library.root], request_timeout_s=120, lean_args=lean_args)
    print(f"conditions=python {platform.python_version()}, {os.cpu_count()} cpus, {platform.machine()}, "
          f"lean {toolchain.version} ({toolchain.source}), items={args.items}, headers={args.headers}, work={args.work}, "
          f"lean_threads={args.lean_threads or 'default'}, sync_elab={args.sync_elab}")
    pool1 = anyio.run(through_pool, config, requests, 1)
    pool2 = anyio.run(through_pool, config, requests, 2)
    env = dict(os.environ, LEAN_PATH=str(library.root))
    slow = naive(toolchain.lean, env, codes[: max(20, args.items // 4)])
    print(f"pool1_items_per_s={pool1:.1f}")
    print(f"pool2_items_per_s={pool2:.1f}")
    print(f"pool_scaling={pool2 / pool1:.2f}")
    print(f"naive_items_per_s={slow:.1f}")
    print(f"verify_speedup={pool2 / slow:.1f}")


if __name__ == "__main__":
    main()
