"""Memory cycling with real Lean: ``python -m examples.lean_memory.run``.

Every fresh import costs memory that only a process exit gives back. This reproducer runs
four workers over the heavy-header fixture and prints the memory of each worker's whole
process tree (RSS, and PSS, which counts shared pages once) after every check:

- ``fresh``: every check has a new header (a new session), nothing bounds it: memory grows
  by one imported environment per check;
- ``max_imports``: the same checks with ``RestartPolicy(max_imports=3)``: the worker is
  replaced before its fourth import, so memory saws back down;
- ``ceiling``: the same checks with ``rss_ceiling_bytes`` set between the PSS ``fresh``
  reached after two and after three imports: the worker is replaced before the first request after it passes
  it. (The ceiling is checked on RSS and confirmed on PSS: the sessions map the same
  .olean files, so summed RSS counts those pages once per session);
- ``warm``: every check has the same header: one import, then flat.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass

import anyio

from lean_worker import RestartPolicy, Worker
from lean_worker.lean import CHECK, TOOLCHAIN, CheckRequest, ToolchainQuery, lean_config
from lean_worker_child.lean.fixtures import FixtureBuild, build_heavy_header
from lean_worker_child.lean.toolchain import resolve_toolchain

MIB = 1024 * 1024


@dataclass(frozen=True)
class Checkpoint:
    step: int
    generation: int
    session: str
    rss_mib: float
    pss_mib: float


def distinct_headers(heavy: FixtureBuild, count: int) -> list[str]:
    """``count`` different headers, each importing the whole heavy header."""
    top, others = heavy.modules[-1], heavy.modules[:-1]
    orders = itertools.chain.from_iterable(itertools.permutations(others, n) for n in range(1, len(others) + 1))
    headers = []
    for extra in itertools.islice(orders, count):
        headers.append("prelude\n" + "".join(f"import {m}\n" for m in (*extra, top)))
    if len(headers) < count:
        raise ValueError(f"the heavy header has too few modules for {count} distinct headers")
    return headers


def body(i: int) -> str:
    return f"\ninductive Step{i} where\n  | here\n"


async def scenario(config_options: dict[str, object], headers: list[str], search_path: str, lean: str) -> list[Checkpoint]:
    config = lean_config(lean=lean, search_path=[search_path], max_sessions=64, request_timeout_s=120, **config_options)
    points = []
    async with Worker(config) as worker:
        await worker.call(TOOLCHAIN, ToolchainQuery())
        pss, rss = await worker.pss(), await worker.rss()
        points.append(Checkpoint(0, worker.generation, "-", (rss or 0) / MIB, (pss or 0) / MIB))
        for step, header in enumerate(headers, 1):
            result = await worker.call(CHECK, CheckRequest(header + body(step)))
            assert result.verdict == "ok", result.messages
            pss = await worker.pss()  # refreshes the list of the worker's processes too
            rss = await worker.rss()
            points.append(Checkpoint(step, worker.generation, result.session, (rss or 0) / MIB, (pss or 0) / MIB))
    return points


async def measure(heavy: FixtureBuild, lean: str, imports: int) -> dict[str, list[Checkpoint]]:
    headers = distinct_headers(heavy, imports)
    root = str(heavy.root)
    fresh = await scenario({}, headers, root, lean)
    ceiling_bytes = int((fresh[2].pss_mib + fresh[3].pss_mib) / 2 * MIB)  # passed by the third import
    return {
        "fresh": fresh,
        "max_imports": await scenario({"restart": RestartPolicy(max_imports=3)}, headers, root, lean),
        "ceiling": await scenario({"restart": RestartPolicy(rss_ceiling_bytes=ceiling_bytes)}, headers, root, lean),
        "warm": await scenario({}, [headers[0]] * imports, root, lean),
    }


def report(results: dict[str, list[Checkpoint]]) -> None:
    for name, points in results.items():
        print(f"{name}:")
        print("  step  gen  session  rss_mib  pss_mib")
        for p in points:
            print(f"  {p.step:>4}  {p.generation:>3}  {p.session:<7}  {p.rss_mib:>7.0f}  {p.pss_mib:>7.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.lean_memory.run")
    parser.add_argument("--imports", type=int, default=8, help="checks per scenario (default 8)")
    parser.add_argument("--modules", type=int, default=None, help="heavy header size (default: the fixture's)")
    parser.add_argument("--decls", type=int, default=None, help="declarations per heavy module")
    args = parser.parse_args()
    toolchain = resolve_toolchain()
    sizes = {k: v for k, v in (("modules", args.modules), ("decls_per_module", args.decls)) if v is not None}
    heavy = build_heavy_header(toolchain.lean, **sizes)  # type: ignore[arg-type]
    print(f"lean {toolchain.version} ({toolchain.source}); heavy header: {len(heavy.modules)} modules")
    report(anyio.run(measure, heavy, toolchain.lean, args.imports))


if __name__ == "__main__":
    main()
