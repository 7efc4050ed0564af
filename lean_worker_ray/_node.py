"""The supervisor of one Ray node: an actor that owns that node's ``Pool``.

Supervision, the restart policy, warm sessions and memory cycling are the local pool's,
unchanged; the actor only carries items in and outcomes out. It runs on Ray's asyncio
loop in the actor process; the pool lives in one task of its own (``_own``), entered and
exited there, as anyio's task groups require, and every ``call`` is a task of Ray's that
leases a worker from it. The workers' children die with the actor (they are started with
``PR_SET_PDEATHSIG``), so a node that goes away leaves no Lean process behind.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from lean_worker import DEFAULT, Pool, PoolSnapshot, WorkerConfig, WorkerError

NodeSetup = WorkerConfig | Callable[[], Awaitable[WorkerConfig]]
"""What a node's workers run: a config, or an async function run on the node that returns
one (to build what the node needs first, such as the bundled fixtures for its toolchain)."""


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    hostname: str
    pid: int
    workers: int


Reply = tuple[Any, WorkerError | None, int, int, float]
"""What a node answers for one item: value, error, worker index, generation, elapsed_s."""


class NodeSupervisor:
    """One per node (made an actor with ``ray.remote`` by the driver, see ``_cluster``)."""

    def __init__(self, setup: NodeSetup, workers: int, pool_options: dict[str, Any]) -> None:
        self._setup = setup
        self._workers = workers
        self._pool_options = pool_options
        self._pool: Pool | None = None
        self._ready = asyncio.Event()
        self._closing = asyncio.Event()
        self._owner: asyncio.Task[None] | None = None
        self._commands: dict[str, Any] = {}

    async def start(self) -> NodeInfo:
        """Start the node's pool (its children and their handshakes); raise what it raised."""
        import ray

        self._owner = asyncio.get_running_loop().create_task(self._own())
        ready = asyncio.ensure_future(self._ready.wait())
        await asyncio.wait([ready, self._owner], return_when=asyncio.FIRST_COMPLETED)
        if not self._ready.is_set():
            ready.cancel()
            self._owner.result()  # raises what stopped the pool from starting
            raise RuntimeError("the node's pool ended before it started")
        node_id = ray.get_runtime_context().get_node_id()
        return NodeInfo(node_id, socket.gethostname(), os.getpid(), self._workers)

    async def _own(self) -> None:
        setup = self._setup
        config = setup if isinstance(setup, WorkerConfig) else await setup()
        async with Pool(config, self._workers, **self._pool_options) as pool:
            self._pool = pool
            self._ready.set()
            await self._closing.wait()

    async def call(
        self, command: Any, items: list[tuple[Any, tuple[Hashable, ...] | None]], timeout: float | str | None
    ) -> list[Reply]:
        """Run a chunk of items (``(request, keys)``) on the node's pool, concurrently; one
        reply each, in order. Never raises a ``WorkerError``: returns it in the reply.
        ``timeout``: seconds, ``None``, or ``"default"`` (``DEFAULT`` does not pickle as itself)."""
        pool = self._pool
        assert pool is not None, "start() first"
        # One declaration object per command on this node, so that its decoders are built
        # once, not once per unpickled copy.
        command = self._commands.setdefault(command.fingerprint, command)
        limit = DEFAULT if timeout == "default" else timeout

        async def one(request: Any, keys: tuple[Hashable, ...] | None) -> Reply:
            # The pool's own per-item runner, as Pool.map uses it: the lease, the keyed call,
            # and every WorkerError caught into the outcome. ``None``: the command declares
            # no keys (the runner asks it again, and gets ``None`` again).
            outcome = await pool._run_one(command, 0, request, limit, None if keys is None else [keys])
            return outcome.value, outcome.error, outcome.worker, outcome.generation, outcome.elapsed_s

        return list(await asyncio.gather(*(one(request, keys) for request, keys in items)))

    async def call_stateful(
        self,
        command: Any,
        request: Any,
        keys: tuple[Hashable, ...] | None,
        prefer: tuple[Hashable, ...],
        learned: Callable[[Any], Iterable[Hashable]],
        timeout: float | str | None,
    ) -> Reply:
        """One stateful request (a Lean session's): leased from the worker of this node that
        holds one of the ``prefer`` states warm, which then remembers what ``learned`` says
        it holds (``Pool.lease(prefer=)``, ``Lease.remember``). Errors are returned."""
        pool = self._pool
        assert pool is not None, "start() first"
        command = self._commands.setdefault(command.fingerprint, command)
        limit = DEFAULT if timeout == "default" else timeout
        started = time.perf_counter()
        worker, generation = -1, 0
        try:
            async with pool.lease(keys[0] if keys else None, prefer=prefer) as lease:
                worker, generation = lease.index, lease.generation
                value = await lease._call_keyed(command, request, keys, limit)
                lease.remember(learned(value))
        except WorkerError as exc:
            return None, exc, worker, generation, time.perf_counter() - started
        return value, None, worker, generation, time.perf_counter() - started

    async def snapshot(self) -> PoolSnapshot | None:
        return None if self._pool is None else self._pool.snapshot()

    async def close(self) -> None:
        """Stop the pool: every child is stopped and reaped before this returns."""
        self._closing.set()
        if self._owner is not None:
            await asyncio.shield(self._owner)
