"""The errors of the cluster path. Importing this module does not import Ray.

    WorkerError
    └── ClusterError                 cluster.error
        ├── ClusterUnreachable       cluster.unreachable: no Ray cluster at the address
        ├── ClusterUnavailable       cluster.unavailable: no node can take work
        └── NodeLost                 cluster.node_lost: an item lost its node too often
"""

from __future__ import annotations

from lean_worker._errors import WorkerError


class ClusterError(WorkerError):
    """Base of the errors of ``lean_worker_ray``."""

    code = "cluster.error"


class ClusterUnreachable(ClusterError):
    """``ray.init`` could not connect (``address``; ``cause``: Ray's own message)."""

    code = "cluster.unreachable"

    def __init__(self, address: str | None, cause: str) -> None:
        self.address = address
        self.cause = cause
        where = address or "auto"
        super().__init__(
            f"cannot connect to a Ray cluster; address={where}: start one (`ray start --head`) or pass its "
            f"address (--ray HOST:PORT); cause={cause.splitlines()[0][:300] if cause else '?'}"
        )


class ClusterUnavailable(ClusterError):
    """No node can take work: none has a CPU, every node failed to start its workers, or
    every node was lost (``nodes``: per node id, why it is out)."""

    code = "cluster.unavailable"

    def __init__(self, message: str, *, nodes: dict[str, str] | None = None) -> None:
        self.nodes = dict(nodes or {})
        if self.nodes:
            message += "; " + " ".join(f"node={n[:12]}:{why}" for n, why in sorted(self.nodes.items()))
        super().__init__(message)


class NodeLost(ClusterError):
    """An item's node died under it ``attempts`` times (each time it was sent again)."""

    code = "cluster.node_lost"

    def __init__(self, message: str, *, attempts: int) -> None:
        self.attempts = attempts
        super().__init__(message)
