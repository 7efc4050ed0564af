"""Throughput of batch checking through the pool, what each check costs in CPU, and how
close the pool comes to the machine's CPU limit; against a plain loop of cold ``lean`` runs.

    python bench/pool.py [--items 240] [--headers 3]

In one run, on generated snippets over the bundled prelude library (each proves a few
facts by kernel reduction on unary numbers, about as much Lean work as a short exercise):

- ``poolN_items_per_s``: the batch through ``Pool.map`` with N workers (``--sizes``; what
  ``lean-worker verify`` runs), sessions opened beforehand, with the CPU time (user +
  system) per check of each process class during that batch (the Lean processes, the
  worker children's Python, this parent process) and how busy that kept the cores;
- ``lean_cpu_ms_per_item``, ``child_cpu_ms_per_item``, ``parent_cpu_ms_per_item``: those
  of the pool of ``default_workers`` (verify's default size), and ``framework_cpu_share``:
  (child + parent) / Lean (goal <= 0.05). CPU per check depends on the load: on an idle
  core Lean's threads spin and report more, so one worker alone costs more per check;
- ``cpu_limit_items_per_s``: cores / total CPU seconds per check, the most any pool could
  do at that cost, and ``cpu_limit_efficiency``: the default pool over it (goal >= 0.95);
- ``best_workers``: the fastest pool size in this run;
- ``pool_scaling_2core``: pool2 / pool1, a figure that means something only on 2 cores;
- ``naive_items_per_s``: a plain loop running one ``lean --json --stdin`` per snippet;
- ``verify_speedup``: the best pool / naive;
- with ``--cold``: the same CPU accounting for the cold engine (``cold_*``: one ``lean``
  process per check, the import included) and for the first check of a header on a warm
  worker (``import_*``).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import anyio
import msgspec
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lean_worker import Pool  # noqa: E402
from lean_worker._verify import default_workers  # noqa: E402
from lean_worker.lean import CHECK, CheckRequest, LeanSettings, lean_config  # noqa: E402
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


def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def lean_processes(child_pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(child_pid).children(recursive=True) if not p.name().startswith("python")]


async def warm_up(pool: Pool, size: int, headers: int) -> None:
    """Open the sessions the batch will use, the way the batch itself spreads headers over
    workers (a first batch of the same shape), so the timed batch measures warm checks."""
    requests = [CheckRequest(snippet(10_000 + i, headers)) for i in range(8 * size * headers)]
    async with pool.map(CHECK, requests) as outcomes:
        async for outcome in outcomes:
            assert outcome.error is None, outcome


def tree_cpu_s(child_pids: list[int]) -> dict[int, tuple[str, float]]:
    """CPU seconds so far of each worker child (``child``) and each of its Lean processes
    (``lean``), by pid."""
    out: dict[int, tuple[str, float]] = {}
    for pid in child_pids:
        out[pid] = ("child", cpu_s(psutil.Process(pid)))
        for proc in lean_processes(pid):
            try:
                out[proc.pid] = ("lean", cpu_s(proc))
            except psutil.NoSuchProcess:
                continue
    return out


async def through_pool(config: object, requests: list[CheckRequest], size: int, headers: int) -> dict[str, float]:
    """Items/s of the batch through ``size`` workers, and the CPU time per item of each
    process class during it: the Lean processes, the worker children, this process."""
    async with Pool(config, size=size) as pool:  # type: ignore[arg-type]
        await warm_up(pool, size, headers)
        pids = [w.pid for w in pool.snapshot().workers if w.pid is not None]
        before, parent_before = tree_cpu_s(pids), own_cpu_s()
        started = time.perf_counter()
        async with pool.map(CHECK, requests) as outcomes:
            async for outcome in outcomes:
                assert outcome.error is None and outcome.value.verdict == "ok", outcome
        elapsed = time.perf_counter() - started
        after, parent_after = tree_cpu_s(pids), own_cpu_s()
    # A Lean process started during the batch counts from zero; one that ended would be
    # missed, so the warm-up opens every session first and the check below holds.
    assert all(pid in after for pid in before), "a Lean process ended during the batch"
    n = len(requests)
    spent = {"lean": 0.0, "child": 0.0}
    for pid, (kind, now) in after.items():
        spent[kind] += now - before.get(pid, (kind, 0.0))[1]
    out = {k: v / n * 1e3 for k, v in spent.items()}
    out["parent"] = (parent_after - parent_before) / n * 1e3
    out["items_per_s"] = n / elapsed
    out["busy"] = (sum(spent.values()) + parent_after - parent_before) / (elapsed * (os.cpu_count() or 1))
    return out


async def one_worker_cpu(
    config: object, warm_up: CheckRequest, requests: list[CheckRequest], session: str
) -> dict[str, float]:
    """CPU per check of ``requests`` run one by one on one worker, each answered from a
    ``session`` of that kind: the child's Python, this process, and the Lean processes
    (what the child reaped during the batch, read from /proc as ``RUSAGE_CHILDREN``, plus
    the change in those still running)."""
    async with Pool(config, size=1) as pool:  # type: ignore[arg-type]
        await pool.call(CHECK, warm_up)
        (pid,) = [w.pid for w in pool.snapshot().workers]
        assert pid is not None
        child = psutil.Process(pid)

        def lean_now() -> float:
            return _reaped_children_cpu_s(pid) + sum(cpu_s(p) for p in lean_processes(pid))

        before = (lean_now(), cpu_s(child), own_cpu_s())
        started = time.perf_counter()
        for request in requests:
            result = await pool.call(CHECK, request)
            assert result.verdict == "ok" and result.session == session, result
        elapsed = time.perf_counter() - started
        after = (lean_now(), cpu_s(child), own_cpu_s())
        assert [w.pid for w in pool.snapshot().workers] == [pid], "the worker restarted during the batch"
    n = len(requests)
    lean, child_ms, parent = ((a - b) / n * 1e3 for a, b in zip(after, before, strict=True))
    return {"items_per_s": n / elapsed, "lean": lean, "child": child_ms, "parent": parent}


def _reaped_children_cpu_s(pid: int) -> float:
    """cutime + cstime of a process: the CPU of the children it has waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[13]) + int(fields[14])) / ticks


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
    parser.add_argument("--lean-threads", type=int, default=0,
                        help="threads per Lean process (lean -j); 0 (default): what lean_config gives")
    parser.add_argument("--report-delay-ms", type=int, default=None,
                        help="LeanSettings.report_delay_ms (default: lean_config's)")
    parser.add_argument("--sync-elab", action="store_true",
                        help="elaborate proofs synchronously in each Lean process (-DElab.async=false)")
    parser.add_argument("--cold", action="store_true", help="also account the cold engine and first checks")
    parser.add_argument("--sizes", default="1,2,3,4", help="pool sizes to run, comma separated (1, 2 and the default size always run)")
    args = parser.parse_args()
    toolchain = resolve_toolchain()
    library = build_library(toolchain.lean)
    codes = [snippet(i, args.headers, args.work) for i in range(args.items)]
    requests = [CheckRequest(code, id=str(i)) for i, code in enumerate(codes)]
    lean_args = ["-j", str(args.lean_threads)] if args.lean_threads else []
    if args.sync_elab:
        lean_args.append("-DElab.async=false")
    settings = {"lean": toolchain.lean, "search_path": [library.root], "request_timeout_s": 120, "lean_args": lean_args,
                "report_delay_ms": args.report_delay_ms}
    config = lean_config(**settings)  # type: ignore[arg-type]
    cores = os.cpu_count() or 1
    print(f"conditions=python {platform.python_version()}, {cores} cpus, {platform.machine()}, "
          f"lean {toolchain.version} ({toolchain.source}), items={args.items}, headers={args.headers}, work={args.work}, "
          f"lean_threads={args.lean_threads or 'default'}, sync_elab={args.sync_elab}, "
          f"report_delay_ms={msgspec.json.decode(config.child.argv[-1], type=LeanSettings).report_delay_ms}")
    sizes = sorted({1, 2, default_workers(), *(int(x) for x in args.sizes.split(","))})
    runs = {size: anyio.run(through_pool, config, requests, size, args.headers) for size in sizes}
    env = dict(os.environ, LEAN_PATH=str(library.root))
    slow = naive(toolchain.lean, env, codes[: max(20, args.items // 4)])
    pools = {size: run["items_per_s"] for size, run in runs.items()}
    default = default_workers()
    chosen = runs.get(default, runs[max(sizes)])
    total_ms = chosen["lean"] + chosen["child"] + chosen["parent"]
    limit = cores / (total_ms / 1e3)
    best = max(pools, key=lambda k: pools[k])
    print(f"default_workers={default}")
    print(f"lean_cpu_ms_per_item={chosen['lean']:.2f}")
    print(f"child_cpu_ms_per_item={chosen['child']:.3f}")
    print(f"parent_cpu_ms_per_item={chosen['parent']:.3f}")
    print(f"framework_cpu_share={(chosen['child'] + chosen['parent']) / chosen['lean']:.3f}")
    print(f"cpu_limit_items_per_s={limit:.1f}")
    print(f"cpu_limit_efficiency={pools[default] / limit:.3f}")
    for size in sizes:
        r = runs[size]
        print(f"pool{size}_items_per_s={pools[size]:.1f} (cpu ms per item: lean {r['lean']:.2f} child {r['child']:.3f} "
              f"parent {r['parent']:.3f}; cores busy {r['busy']:.3f})")
    print(f"best_workers={best}")
    print(f"pool_scaling_2core={pools[2] / pools[1]:.2f}")
    print(f"naive_items_per_s={slow:.1f}")
    print(f"verify_speedup={pools[default] / slow:.1f}")
    if args.cold:
        n = max(20, args.items // 6)
        cold = anyio.run(one_worker_cpu, config, CheckRequest(HEADERS[0] + "\n", engine="cold"),
                         [msgspec.structs.replace(r, engine="cold") for r in requests[:n]], "cold")
        for key in ("lean", "child", "parent"):
            print(f"cold_{key}_cpu_ms_per_item={cold[key]:.2f}")
        print(f"cold_framework_cpu_share={(cold['child'] + cold['parent']) / cold['lean']:.3f}")
        print(f"cold_items_per_s={cold['items_per_s']:.1f}")
        # One session per worker and two headers in turn: every check starts a Lean file
        # worker and imports its header (the warm-up's header is the first one's).
        first = anyio.run(one_worker_cpu, lean_config(**settings, max_sessions=1),  # type: ignore[arg-type]
                          CheckRequest(snippet(0, 1)), [CheckRequest(snippet(i, 2)) for i in range(1, n + 1)], "import")
        for key in ("lean", "child", "parent"):
            print(f"import_{key}_cpu_ms_per_item={first[key]:.2f}")
        print(f"import_framework_cpu_share={(first['child'] + first['parent']) / first['lean']:.3f}")
        print(f"import_items_per_s={first['items_per_s']:.1f}")
    print("goals=framework_cpu_share<=0.05 cpu_limit_efficiency>=0.95")


if __name__ == "__main__":
    main()
