"""Throughput of one batch through a local ``Pool`` and through ``ClusterPool`` on a one-node
Ray cluster that owns the same two workers, and the driver's cost per item.

    python bench/cluster.py [--items 240] [--headers 3] [--rounds 5] [--in-flight-per-worker 4]
                            [--items-per-call 4]

One run, using the generated snippets of ``bench/pool.py`` (the same ``snippet``, headers
and ``lean_config``, ``-j 1`` per Lean process). The script starts the cluster on this
machine with ``ray.cluster_utils.Cluster``: a driver-only head (``num_cpus=0``, so it gets
no supervisor) and one node with 2 CPUs. That node's ``NodeSupervisor`` actor owns a local
``Pool`` of 2 workers (``ClusterPool(workers_per_node=2)``). Every Ray server listens on
127.0.0.1. Both pools stay open for the whole run. Each pool first runs the whole batch
once, untimed, so that every worker has every header's session open. Imports are therefore
left out of both sides in the same way, and the timed batches measure warm checks only.
Then the same batch runs ``--rounds`` times on each side, alternating (local, cluster,
local, cluster...), so that load from anything else on the machine falls on both sides
alike. Every item must come back with verdict ``ok`` (asserted). Each figure is the median
over the rounds; the ``*_runs`` lines give every round, to show the spread.

- ``local_items_per_s``: the batch through ``Pool.map`` on a ``Pool(size=2)`` in this
  process (wall time from the first send to the last outcome).
- ``cluster_items_per_s``: the batch through ``ClusterPool.map``, timed the same way.
- ``cluster_overhead_ratio``: cluster / local (goal >= 0.9). ``cluster_overhead_ratio_runs``:
  the ratio for each round, a cluster batch against the local batch just before it.
- ``hit_rate``: key hits / (hits + misses) of the node's pool over the timed cluster batches
  (``ClusterSnapshot.hit_rate``, taken as the difference of two snapshots so that the
  warm-up pass is not counted). ``local_hit_rate``: the same for the local pool.
- ``driver_cpu_ms_per_item``: CPU time of this (driver) process during a cluster batch,
  divided by the items. It is read with ``time.process_time()``, which counts every thread
  of the process: the routing in ``ClusterPool._dispatch`` and Ray's C++ core-worker threads
  that submit the actor calls and receive the replies. This is the routing cost. Here the
  driver shares the 2 cores with the node; on a real cluster it runs on its own machine.
- ``driver_wall_ms_per_item``: wall time of a cluster batch divided by the items. It is the
  inverse of ``cluster_items_per_s``: how often the driver must route an item.
- ``implied_nodes_per_driver``: (1000 / ``driver_cpu_ms_per_item``) / ``local_items_per_s``,
  the number of nodes like this one (2 workers, this work per item, this throughput per
  node) that one driver core could keep fed before its own CPU became the bottleneck.
  ``implied_workers_per_driver`` is the same figure counted in workers:
  (1000 / ``driver_cpu_ms_per_item``) / (``local_items_per_s`` / 2). Both grow with the work
  per item: heavier checks mean fewer items per second per node, so more nodes per driver.
  Both assume that the driver's cost per item does not grow as nodes are added; in fact
  the routing looks at every node for every item, so it grows slowly with their number.
- ``local_parent_cpu_ms_per_item``: CPU time of this process during a local batch, per item.
  This is the pool's parent side: leases, framing, outcomes.
- ``node_cpu_ms_per_item``: CPU time of the node's supervisor actor process during a cluster
  batch, per item. This is the same pool parent, plus Ray's work on each actor call
  (receiving it, unpickling its arguments, pickling its reply). Compared with
  ``local_parent_cpu_ms_per_item``, it shows what the node side adds.
- ``cluster_start_s``: the time from starting the Ray head to an open ``ClusterPool``. It
  covers adding and registering the node, ``ray.init``, placing the supervisor actor,
  starting its 2 workers and finishing their handshakes.
- ``ray_version``: ``ray.__version__``.
"""

from __future__ import annotations

import os

# Set before Ray is imported: it keeps every Ray server on 127.0.0.1. This is a
# single-machine cluster, and on this machine servers may only listen on loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import psutil  # noqa: E402
import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pool import snippet  # noqa: E402
from lean_worker import Pool, WorkerConfig  # noqa: E402
from lean_worker.lean import CHECK, CheckRequest, lean_config  # noqa: E402
from lean_worker_child.lean.fixtures import build_library  # noqa: E402
from lean_worker_child.lean.toolchain import resolve_toolchain  # noqa: E402
from lean_worker_ray import ClusterPool  # noqa: E402

NODE_CPUS = 2


def cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def supervisor_process() -> psutil.Process:
    """The node's supervisor actor. This script started the cluster, so the actor is a
    descendant of this process (driver -> raylet -> Ray worker), titled ``ray::NodeSupervisor``."""
    found = [p for p in psutil.Process().children(recursive=True) if "NodeSupervisor" in " ".join(p.cmdline())]
    assert len(found) == 1, found
    return found[0]


def check_ok(outcome: object) -> None:
    assert outcome.error is None and outcome.value.verdict == "ok", outcome  # type: ignore[attr-defined]


async def local_batch(pool: Pool, requests: list[CheckRequest]) -> tuple[float, float]:
    """Wall seconds, and CPU seconds of this process, for the batch through the local pool."""
    cpu, started = time.process_time(), time.perf_counter()
    done = 0
    async with pool.map(CHECK, requests) as outcomes:
        async for outcome in outcomes:
            check_ok(outcome)
            done += 1
    assert done == len(requests), done
    return time.perf_counter() - started, time.process_time() - cpu


async def cluster_batch(
    cp: ClusterPool, requests: list[CheckRequest], node: psutil.Process
) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds of this process, and CPU seconds of the node's supervisor
    process, for the batch through the cluster."""
    node_cpu, cpu, started = cpu_s(node), time.process_time(), time.perf_counter()
    done = 0
    async with cp.map(CHECK, requests) as outcomes:
        async for outcome in outcomes:
            check_ok(outcome)
            assert outcome.node and outcome.retried == 0, outcome
            done += 1
    assert done == len(requests), done
    return time.perf_counter() - started, time.process_time() - cpu, cpu_s(node) - node_cpu


async def measure(args: argparse.Namespace, config: WorkerConfig, requests: list[CheckRequest],
                  started: float) -> None:
    async with ClusterPool(config, workers_per_node=NODE_CPUS,
                           in_flight_per_worker=args.in_flight_per_worker,
                           items_per_call=args.items_per_call) as cp:
        cluster_start = time.perf_counter() - started
        node = supervisor_process()
        async with Pool(config, size=NODE_CPUS) as pool:
            await local_batch(pool, requests)  # warm-up: every worker opens every header
            await cluster_batch(cp, requests, node)
            local_before, cluster_before = pool.snapshot(), await cp.snapshot()
            local: list[tuple[float, float]] = []
            cluster: list[tuple[float, float, float]] = []
            for _ in range(args.rounds):
                local.append(await local_batch(pool, requests))
                cluster.append(await cluster_batch(cp, requests, node))
            local_after, cluster_after = pool.snapshot(), await cp.snapshot()

    n = len(requests)
    local_rates = [n / wall for wall, _ in local]
    cluster_rates = [n / wall for wall, _, _ in cluster]
    local_rate = statistics.median(local_rates)
    cluster_rate = statistics.median(cluster_rates)
    driver_ms = [cpu * 1e3 / n for _, cpu, _ in cluster]
    driver_cpu_ms = statistics.median(driver_ms)
    hits = cluster_after.key_hits - cluster_before.key_hits
    misses = cluster_after.key_misses - cluster_before.key_misses
    local_hits = local_after.key_hits - local_before.key_hits
    local_misses = local_after.key_misses - local_before.key_misses
    print(f"local_items_per_s={local_rate:.1f}")
    print(f"cluster_items_per_s={cluster_rate:.1f}")
    print(f"cluster_overhead_ratio={cluster_rate / local_rate:.2f}")
    print(f"local_runs_items_per_s={','.join(f'{r:.1f}' for r in local_rates)}")
    print(f"cluster_runs_items_per_s={','.join(f'{r:.1f}' for r in cluster_rates)}")
    print(f"cluster_overhead_ratio_runs={','.join(f'{c / l:.2f}' for c, l in zip(cluster_rates, local_rates))}")
    print(f"hit_rate={hits / max(1, hits + misses):.3f}")
    print(f"local_hit_rate={local_hits / max(1, local_hits + local_misses):.3f}")
    print(f"driver_cpu_ms_per_item={driver_cpu_ms:.3f}")
    print(f"driver_cpu_runs_ms_per_item={','.join(f'{ms:.3f}' for ms in driver_ms)}")
    print(f"driver_wall_ms_per_item={1e3 / cluster_rate:.3f}")
    print(f"implied_nodes_per_driver={(1e3 / driver_cpu_ms) / local_rate:.1f}")
    print(f"implied_workers_per_driver={(1e3 / driver_cpu_ms) / (local_rate / NODE_CPUS):.1f}")
    print(f"local_parent_cpu_ms_per_item={statistics.median(cpu for _, cpu in local) * 1e3 / n:.3f}")
    print(f"node_cpu_ms_per_item={statistics.median(node_cpu for _, _, node_cpu in cluster) * 1e3 / n:.3f}")
    print(f"cluster_start_s={cluster_start:.1f}")
    print(f"ray_version={ray.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=240)
    parser.add_argument("--headers", type=int, default=3, choices=(1, 2, 3))
    parser.add_argument("--work", choices=("light", "heavy"), default="light",
                        help="as in bench/pool.py: light, a definition and two theorems per snippet; heavy, six "
                             "proofs by kernel reduction")
    parser.add_argument("--rounds", type=int, default=5,
                        help="timed batches per side, alternating; default 5")
    parser.add_argument("--lean-threads", type=int, default=1,
                        help="threads per Lean process (lean -j; 0: Lean's default); default 1")
    parser.add_argument("--in-flight-per-worker", type=int, default=4,
                        help="ClusterPool's limit on items in flight per worker; default 4 (ClusterPool's default)")
    parser.add_argument("--items-per-call", type=int, default=4,
                        help="ClusterPool's items per actor call; default 4 (ClusterPool's default); 1: one call per item")
    args = parser.parse_args()
    if args.rounds < 2 or args.items < 1:
        parser.error("--rounds must be >= 2 and --items >= 1")
    toolchain = resolve_toolchain()
    library = build_library(toolchain.lean)
    requests = [CheckRequest(snippet(i, args.headers, args.work), id=str(i)) for i in range(args.items)]
    lean_args = ["-j", str(args.lean_threads)] if args.lean_threads else []
    config = lean_config(lean=toolchain.lean, search_path=[library.root], request_timeout_s=120, lean_args=lean_args)
    print(f"conditions=python {platform.python_version()}, {os.cpu_count()} cpus, {platform.machine()}, "
          f"lean {toolchain.version} ({toolchain.source}), ray {ray.__version__}, items={args.items}, "
          f"headers={args.headers}, work={args.work}, lean_threads={args.lean_threads or 'default'}, "
          f"rounds={args.rounds}, in_flight_per_worker={args.in_flight_per_worker}, "
          f"items_per_call={args.items_per_call}, "
          f"cluster=driver-only head + 1 node of {NODE_CPUS} cpus on this machine")
    started = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        cluster.add_node(num_cpus=NODE_CPUS)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
        try:
            asyncio.run(measure(args, config, requests, started))
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
