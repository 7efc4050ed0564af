"""What the sandbox costs: worker cycles and warm checks of the Lean worker, with and without it.

    python bench/sandbox.py [--cycles 30] [--checks 300]

In one run, through the real Lean worker child (``lean_config(sandbox=...)``): an ``off``
and a ``required`` worker live side by side and take turns, one cycle or one check at a
time, the order swapped every turn, so a change in the machine's speed falls on both alike:

- ``cycle_ms`` (``off_cycle_ms``, ``sandbox_cycle_ms``): ``Worker.cycle()``, a graceful stop
  and a new child through its handshake; sandboxed, that includes the namespaces, the
  read-only view and the two extra processes;
- ``check_p50_ms`` (``off_check_p50_ms``, ``sandbox_check_p50_ms``): warm checks of small
  snippets on the bundled library's header, each a new theorem;
- ``sandbox_cycle_ratio`` and ``sandbox_check_ratio``: sandboxed over unsandboxed;
- ``tree_pss_mib`` (``off_tree_pss_mib``, ``sandbox_tree_pss_mib``): the PSS of each worker's
  process tree after its checks (the sandbox adds a waiting child and an init, both forks
  of the child's Python that share its pages).

Goals (issue 12): sandbox_cycle_ratio <= 1.3, sandbox_check_ratio <= 1.05.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lean_worker import Worker  # noqa: E402
from lean_worker.lean import CHECK, CheckRequest, lean_config  # noqa: E402
from lean_worker_child.lean.fixtures import build_library  # noqa: E402
from lean_worker_child.lean.toolchain import resolve_toolchain  # noqa: E402

MIB = 1024 * 1024
HEADER = "prelude\nimport LwFix.Logic\n"
MODES = ("off", "required")


def snippet(i: int) -> str:
    return f"{HEADER}\ntheorem bench_{i} (p : Prop) (h : p) : p := h\n"


def tree_pss_mib(pid: int) -> float:
    root = psutil.Process(pid)
    return sum(p.memory_full_info().pss for p in [root, *root.children(recursive=True)]) / MIB


async def timed(fn: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await fn()
    return (time.perf_counter() - started) * 1e3


async def run(args: argparse.Namespace) -> None:
    toolchain = resolve_toolchain()
    library = str(build_library(toolchain.lean).root)
    print(f"conditions=python {platform.python_version()}, {os.cpu_count()} cpus, {platform.machine()}, "
          f"kernel {platform.release()}, lean {toolchain.version} ({toolchain.source}), uid {os.getuid()}, "
          f"cycles={args.cycles} checks={args.checks} per mode, interleaved one by one, header {HEADER.split()[-1]}")
    cycles: dict[str, list[float]] = {m: [] for m in MODES}
    checks: dict[str, list[float]] = {m: [] for m in MODES}
    async with AsyncExitStack() as stack:
        workers = {}
        for mode in MODES:
            config = lean_config(lean=toolchain.lean, search_path=[library], sandbox=mode, request_timeout_s=60)
            workers[mode] = await stack.enter_async_context(Worker(config))
            assert workers[mode].sandbox.active == (mode != "off"), workers[mode].sandbox
        # Both workers live side by side and take turns, the order swapped every time, so a
        # change in the machine's speed during the run falls on both alike.
        for i in range(args.cycles):
            for mode in (MODES if i % 2 == 0 else MODES[::-1]):
                cycles[mode].append(await timed(workers[mode].cycle))
        for mode in MODES:  # open the header's session
            assert (await workers[mode].call(CHECK, CheckRequest(snippet(10**6)))).verdict == "ok"
        for i in range(args.checks):
            for mode in (MODES if i % 2 == 0 else MODES[::-1]):
                request = CheckRequest(snippet(i))
                result: list[object] = []

                async def check(worker: Worker = workers[mode]) -> None:
                    result.append(await worker.call(CHECK, request))

                checks[mode].append(await timed(check))
                assert getattr(result[0], "session", None) == "warm", result
        pss = {}
        for mode in MODES:
            pid = workers[mode].pid
            assert pid is not None
            pss[mode] = tree_pss_mib(pid)
    off_cycle, sb_cycle = (statistics.median(cycles[m]) for m in MODES)
    off_check, sb_check = (statistics.median(checks[m]) for m in MODES)
    print(f"off_cycle_ms={off_cycle:.1f}")
    print(f"sandbox_cycle_ms={sb_cycle:.1f}")
    print(f"sandbox_cycle_ratio={sb_cycle / off_cycle:.2f}")
    print(f"off_check_p50_ms={off_check:.2f}")
    print(f"sandbox_check_p50_ms={sb_check:.2f}")
    print(f"sandbox_check_ratio={sb_check / off_check:.3f}")
    print(f"off_tree_pss_mib={pss['off']:.1f}")
    print(f"sandbox_tree_pss_mib={pss['required']:.1f}")
    print("goals=sandbox_cycle_ratio<=1.3 sandbox_check_ratio<=1.05")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--checks", type=int, default=300)
    anyio.run(run, parser.parse_args())


if __name__ == "__main__":
    main()
