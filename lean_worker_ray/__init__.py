"""lean-worker on a Ray cluster: one supervisor actor per node owning that node's ``Pool``,
and ``ClusterPool``, the driver-side pool that routes items to them.

Install with ``pip install 'lean-worker[ray]'``. The core (``lean_worker``) never imports
this package; ``lean-worker verify --ray`` does, when asked. Design and numbers:
architecture/100-cluster.md.

    async with ClusterPool(lean_config(), address="auto") as cluster:
        async with cluster.map(CHECK, requests) as outcomes:
            async for outcome in outcomes:     # a ClusterOutcome per request
                ...
        snapshot = await cluster.snapshot()
"""

from __future__ import annotations

try:
    import ray  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "lean_worker_ray needs Ray, which is not installed: pip install 'lean-worker[ray]'"
    ) from exc

from ._cluster import ClusterOutcome, ClusterPool, ClusterSnapshot, NodeSnapshot
from ._errors import ClusterError, ClusterUnavailable, ClusterUnreachable, NodeLost
from ._node import NodeInfo, NodeSetup

__all__ = [
    "ClusterError",
    "ClusterOutcome",
    "ClusterPool",
    "ClusterSnapshot",
    "ClusterUnavailable",
    "ClusterUnreachable",
    "NodeInfo",
    "NodeLost",
    "NodeSetup",
    "NodeSnapshot",
]
