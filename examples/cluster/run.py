"""Check a batch on a Ray cluster: one supervisor per node owns that node's Lean workers.

    python -m examples.cluster.run            # starts a small cluster on this machine
    python -m examples.cluster.run HOST:PORT  # or uses yours (`ray start --head` prints it)
"""

from __future__ import annotations

import os
import sys
from collections import Counter

# A cluster on this machine listens on 127.0.0.1 only (set before Ray is imported).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import anyio  # noqa: E402

from lean_worker.lean import CHECK, CheckRequest, lean_config  # noqa: E402
from lean_worker.verify import build_fixtures  # noqa: E402
from lean_worker_ray import ClusterPool  # noqa: E402


def snippets(count: int) -> list[CheckRequest]:
    """Small theorems over two headers; every tenth one is false."""
    headers = ["prelude\nimport LwFix.Nat\n", "prelude\nimport LwFix.Nat\nimport LwFix.Logic\n"]
    return [
        CheckRequest(headers[i % 2] + f"theorem t{i} : Eq N.two {'N.one' if i % 10 == 0 else 'N.two'} := Eq.refl\n",
                     id=f"t{i}")
        for i in range(count)
    ]


async def check_on_cluster(address: str) -> None:
    library = (await build_fixtures()).library_root  # the bundled LwFix library, for this toolchain
    requests = snippets(40)
    async with ClusterPool(lean_config(search_path=[library]), address=address) as cluster:
        verdicts: Counter[str] = Counter()
        nodes: set[str] = set()
        async with cluster.map(CHECK, requests) as outcomes:
            async for outcome in outcomes:  # one per request, as they finish, on whichever node
                verdicts[outcome.value.verdict if outcome.value else outcome.error.code] += 1
                nodes.add(outcome.node)
        snapshot = await cluster.snapshot()
    print(f"verdicts: {dict(sorted(verdicts.items()))}")
    print(f"outcomes: {sum(verdicts.values())} for {len(requests)} items, on {len(nodes)} nodes, "
          f"resent after a node died: {snapshot.retried}")
    for node in snapshot.nodes:
        own = node.pool
        print(f"node {node.node_id[:8]}: {node.workers} worker(s), {node.items} items, "
              f"{sum(w.imports for w in own.workers) if own else 0} imports")


def main() -> None:
    if len(sys.argv) > 1:
        anyio.run(check_on_cluster, sys.argv[1])
        return
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the head runs no Lean
    for _ in range(2):
        cluster.add_node(num_cpus=1)  # two nodes of one CPU: one worker each
    cluster.wait_for_nodes()
    try:
        anyio.run(check_on_cluster, cluster.address)
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
