"""The driver side of the cluster: ``ClusterPool`` feeds one ``NodeSupervisor`` per Ray node.

- **Nodes.** Every alive node with at least one CPU gets one supervisor actor, pinned to it
  (``NodeAffinitySchedulingStrategy``, not soft), owning a local ``Pool`` of
  ``workers_per_node`` workers (default: the node's CPUs). The actor declares
  ``num_cpus=workers`` (and ``memory=`` when given), so Ray schedules nothing else on the
  cores its Lean processes use. A node whose CPU count is 0 (a driver-only head) is skipped.
  The node list is read again every ``refresh_s`` while work is running: a node that joins
  gets a supervisor and takes work; an actor that died on a node that is still alive is
  started again, at most ``max_node_restarts`` times per node.
- **Routing.** An item goes to a node that has its session key warm (the driver remembers,
  per node, the keys it sent there, at most ``workers * keys_per_worker``, least recently
  used out) and has room; when every warm node is full, to a node with an idle worker (it
  learns the key: warmth never waits while a core is idle); else to the least-loaded node.
  The node's own pool then picks the warm worker, as on one machine.
- **Chunks.** Items go to a node in actor calls of up to ``items_per_call`` (default 4, and
  at most half the node's in-flight bound), which the node runs concurrently on its pool.
  One call per item cost the driver about 2.5 ms and the node about 2.6 ms of CPU per item
  in Ray's task handling (bench/cluster.py, architecture/100-cluster.md); a chunk's
  outcomes arrive together, when its slowest item is done.
- **Backpressure.** At most ``in_flight_per_worker * workers`` items (default 4 per worker)
  are in flight per node: the driver awaits the replies of the chunks it sent (the asyncio
  face of ``ray.wait``) before it sends more, so no queue of object refs grows with the
  batch, and the outcomes go to a bounded stream the caller reads.
- **Sessions.** ``call_stateful`` serves ``lean_worker.session.Session``: a request goes to
  the node that remembers the longest prefix of its state warm, whose pool picks the worker
  the same way (``Pool.lease(prefer=)``); both remember what the request left warm.
- **Faults.** An item whose node (or actor) dies under it is sent again to another node, at
  the head of the line; its outcome says how often (``retried``). A check is a pure
  function of its text, so this is safe; each item still gets exactly one outcome. After
  ``max_attempts`` deaths under the same item it fails with ``NodeLost``. When no node is
  left, the items still waiting fail with ``ClusterUnavailable``.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic

import anyio
import ray
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from lean_worker import DEFAULT, Call, Outcome, PoolSnapshot, WorkerError
from lean_worker._pool import DEFAULT_KEYS_PER_WORKER, DEFAULT_STATES_PER_WORKER, ReqT, RespT, request_keys
from lean_worker._worker import check_timeout, session_keys_of

from ._errors import ClusterError, ClusterUnavailable, ClusterUnreachable, NodeLost
from ._node import NodeInfo, NodeSetup, NodeSupervisor, Reply

_Supervisor = ray.remote(NodeSupervisor)


@dataclass(frozen=True)
class ClusterOutcome(Outcome[ReqT, RespT], Generic[ReqT, RespT]):
    """An ``Outcome`` of ``ClusterPool.map``, with the node that ran it and how often it
    was sent again after its node died under it."""

    node: str = ""
    """Ray node id (hex) of the node that gave this outcome; "" if none did."""
    retried: int = 0


@dataclass(frozen=True)
class NodeSnapshot:
    node_id: str
    hostname: str
    pid: int | None
    """The supervisor actor's process on that node (its workers are its children)."""
    workers: int
    alive: bool
    in_flight: int
    items: int
    """Outcomes this node gave."""
    lost_items: int
    """Items that were in flight here when the node (or its actor) died."""
    starts: int
    """Supervisor actors started on this node (more than 1: its actor died and was replaced)."""
    out: str | None
    """Why the node takes no work (``actor_died``, ``start_failed: ...``, ``node_gone``)."""
    pool: PoolSnapshot | None
    """The node pool's own snapshot (the last one read, for a node that is out)."""


@dataclass(frozen=True)
class ClusterSnapshot:
    nodes: list[NodeSnapshot]
    items: int
    retried: int
    """Resubmissions after a node died under an item."""
    in_flight: int
    key_hits: int
    key_misses: int
    restarts: dict[str, int]
    """Worker restarts by reason, over every node's pool."""
    total_rss_bytes: int | None
    queue_depth: int
    """Items waiting for a worker inside the node pools."""
    warm_keys: int = 0
    """Warm session keys over every node's workers."""
    state_hits: int = 0
    """Stateful requests (``call_stateful``) sent to a node that held one of their states."""
    state_misses: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.key_hits + self.key_misses
        return self.key_hits / total if total else 0.0

    @property
    def workers(self) -> int:
        return sum(n.workers for n in self.nodes if n.alive)


@dataclass
class _Node:
    node_id: str
    workers: int
    actor: Any = None
    info: NodeInfo | None = None
    ready: bool = False
    out: str | None = None
    in_flight: int = 0
    items: int = 0
    lost_items: int = 0
    starts: int = 0
    keys: OrderedDict[Hashable, None] = field(default_factory=OrderedDict)
    states: OrderedDict[Hashable, None] = field(default_factory=OrderedDict)
    """Warm session state ids (``call_stateful``), least recently used first."""
    pool: PoolSnapshot | None = None

    @property
    def load(self) -> float:
        return self.in_flight / self.workers


@dataclass
class _Item:
    index: int
    request: Any
    keys: tuple[Hashable, ...] | None
    """``None``: the command declares no session keys."""
    retried: int = 0
    started: float = field(default_factory=time.perf_counter)


class ClusterPool:
    """A ``Pool`` over a Ray cluster: ``call``, ``map`` with per-item outcomes, ``snapshot``
    (see the module docstring). Runs on asyncio (Ray's object refs are asyncio futures).

    ``address``: the Ray cluster (``"auto"``, ``"HOST:PORT"``, ``"ray://..."``); when Ray is
    already initialized in this process, that cluster is used and ``address`` is ignored.
    ``node_resource``: use only the nodes that advertise this custom resource (Lean nodes
    in a mixed cluster: ``ray start --resources '{"lean": 1}'``)."""

    def __init__(
        self,
        setup: NodeSetup,
        *,
        address: str | None = "auto",
        workers_per_node: int | None = None,
        in_flight_per_worker: int = 4,
        items_per_call: int = 4,
        keys_per_worker: int | None = None,
        memory_per_node_bytes: int | None = None,
        max_attempts: int = 3,
        max_node_restarts: int = 3,
        refresh_s: float = 2.0,
        start_timeout_s: float = 120.0,
        connect_timeout_s: float = 5.0,
        node_resource: str | None = None,
        pool_options: dict[str, Any] | None = None,
    ) -> None:
        for name, value in (("in_flight_per_worker", in_flight_per_worker), ("items_per_call", items_per_call),
                            ("max_attempts", max_attempts)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1; got {value!r}")
        if workers_per_node is not None and (isinstance(workers_per_node, bool) or not isinstance(workers_per_node, int)
                                             or workers_per_node < 1):
            raise ValueError(f"workers_per_node must be an int >= 1 or None; got {workers_per_node!r}")
        if not refresh_s > 0 or not start_timeout_s > 0:
            raise ValueError("refresh_s and start_timeout_s must be positive")
        self.setup = setup
        self.address = address
        self.workers_per_node = workers_per_node
        self.in_flight_per_worker = in_flight_per_worker
        self.items_per_call = items_per_call
        session_limit = setup.session_limit if not callable(setup) else None
        self.keys_per_worker = keys_per_worker or session_limit or DEFAULT_KEYS_PER_WORKER
        self.memory_per_node_bytes = memory_per_node_bytes
        self.max_attempts = max_attempts
        self.max_node_restarts = max_node_restarts
        self.refresh_s = refresh_s
        self.start_timeout_s = start_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.node_resource = node_resource
        self.pool_options = dict(pool_options or {})
        self._nodes: dict[str, _Node] = {}
        self._freed = asyncio.Event()
        """Set whenever items leave a node's in-flight count (room for a waiting batch)."""
        self._starting: dict[str, asyncio.Future[None]] = {}
        """Supervisors being started, by node id."""
        self._connected_here = False
        self._open = False
        self._last_refresh = 0.0
        self._counts: Counter[str] = Counter()

    # -- life cycle ----------------------------------------------------------------------------
    async def __aenter__(self) -> ClusterPool:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise ClusterError("ClusterPool runs on asyncio (Ray's object refs are asyncio futures), not trio") from None
        if not ray.is_initialized():
            self._connect()
            self._connected_here = True
        self._open = True
        try:
            await self._refresh()
            if not self._ready_nodes():
                why = {n.node_id: n.out or "?" for n in self._nodes.values()}
                raise ClusterUnavailable("no Ray node could start a worker pool", nodes=why)
        except BaseException:
            await self.close()
            raise
        return self

    def _connect(self) -> None:
        # In this thread (Ray installs signal handlers only from the main one), before any
        # work starts: about a second.
        address = self.address
        if address and address != "auto" and "://" not in address:
            # Ray retries an address where nothing listens for minutes; a TCP connect says so at once.
            host, _, port = address.rpartition(":")
            try:
                socket.create_connection((host or "127.0.0.1", int(port)), timeout=self.connect_timeout_s).close()
            except (OSError, ValueError) as exc:
                raise ClusterUnreachable(address, f"{type(exc).__name__}: {exc}") from None
        try:
            ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError...
            raise ClusterUnreachable(address, f"{type(exc).__name__}: {exc}") from None

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop every node's pool (their children are reaped), then the actors."""
        self._open = False
        for start in list(self._starting.values()):
            start.cancel()
        await asyncio.gather(*self._starting.values(), return_exceptions=True)
        nodes = [n for n in self._nodes.values() if n.actor is not None]
        with anyio.CancelScope(shield=True):
            # The last snapshots, read from every node at once (10 s each at most).
            await asyncio.gather(*(self._read_snapshot(n) for n in nodes if n.ready))
            with anyio.move_on_after(30):
                await asyncio.gather(*(self._close_node(n) for n in nodes), return_exceptions=True)
            for node in nodes:
                self._kill(node)
            if self._connected_here:
                self._connected_here = False
                ray.shutdown()

    async def _close_node(self, node: _Node) -> None:
        if node.ready:
            await node.actor.close.remote()

    def _kill(self, node: _Node) -> None:
        if node.actor is not None:
            try:
                ray.kill(node.actor, no_restart=True)
            except Exception:  # already gone
                pass
            node.actor = None
        node.ready = False

    # -- nodes ---------------------------------------------------------------------------------
    def _ready_nodes(self) -> list[_Node]:
        return [n for n in self._nodes.values() if n.ready]

    async def _refresh(self, *, wait: bool = True) -> None:
        """Read the node list; start a supervisor on every node that needs one. ``wait``:
        until those starts end; else they run in the background (a node that joins during
        a batch, whose start, with its fixtures, may take seconds, while the others work)."""
        self._last_refresh = time.monotonic()
        listing = await anyio.to_thread.run_sync(ray.nodes)
        alive: dict[str, int] = {}
        for entry in listing:
            resources = entry.get("Resources", {})
            cpus = int(resources.get("CPU", 0))
            if entry.get("Alive") and cpus >= 1 and (self.node_resource is None or self.node_resource in resources):
                alive[entry["NodeID"]] = cpus
        for node in self._nodes.values():
            if node.node_id not in alive and node.out is None:
                self._lose(node, "node_gone")
        for node_id, cpus in alive.items():
            node = self._nodes.get(node_id)
            if node is None:
                node = self._nodes[node_id] = _Node(node_id, self.workers_per_node or cpus)
            if node.ready or node_id in self._starting or node.starts > self.max_node_restarts:
                continue
            if node.out is not None and not node.out.startswith(("actor_died", "node_gone")):
                continue  # a start that failed is not tried again
            self._starting[node_id] = asyncio.ensure_future(self._start(node))
        if wait and self._starting:
            await asyncio.gather(*self._starting.values())

    async def _start(self, node: _Node) -> None:
        options: dict[str, Any] = dict(
            num_cpus=node.workers,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
            max_restarts=0,
            max_task_retries=0,
        )
        if self.memory_per_node_bytes:
            options["memory"] = self.memory_per_node_bytes
        node.starts += 1
        try:
            await self._start_actor(node, options)
        finally:
            self._starting.pop(node.node_id, None)

    async def _start_actor(self, node: _Node, options: dict[str, Any]) -> None:
        node.actor = _Supervisor.options(**options).remote(self.setup, node.workers, self.pool_options)
        try:
            with anyio.fail_after(self.start_timeout_s):
                node.info = await node.actor.start.remote()
        except TimeoutError:
            self._kill(node)
            node.out = f"start_failed: no start within {self.start_timeout_s:g} s (are {node.workers} CPUs free?)"
            return
        except Exception as exc:
            self._kill(node)
            cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None else exc
            code = getattr(cause, "remote_code", None) or getattr(cause, "code", type(cause).__name__)
            node.out = f"start_failed: {code}: {str(cause).splitlines()[0][:200] if str(cause) else ''}"
            return
        node.ready = True
        node.out = None
        node.keys.clear()
        node.states.clear()

    def _lose(self, node: _Node, why: str) -> None:
        if node.ready or node.out is None:
            self._counts["nodes_lost"] += 1
        self._kill(node)
        node.out = why
        node.keys.clear()
        node.states.clear()

    # -- routing -------------------------------------------------------------------------------
    def _capacity(self, node: _Node) -> int:
        return node.workers * self.in_flight_per_worker

    def _route(self, keys: tuple[Hashable, ...] | None) -> _Node | None:
        ready = self._ready_nodes()
        room = [n for n in ready if n.in_flight < self._capacity(n)]
        if not room:
            return None
        key = keys[0] if keys else None
        chosen = None
        if key is not None:
            warm = [n for n in room if key in n.keys]
            if warm:
                chosen = min(warm, key=lambda n: n.load)
            elif any(key in n.keys for n in ready):
                idle = [n for n in room if n.in_flight < n.workers]
                if not idle:
                    return None  # the warm nodes are full and no core is idle: wait for one
                chosen = min(idle, key=lambda n: (n.load, len(n.keys)))
        if chosen is None:
            chosen = min(room, key=lambda n: (n.load, len(n.keys)))
        if key is not None:
            chosen.keys[key] = None
            chosen.keys.move_to_end(key)
            while len(chosen.keys) > chosen.workers * self.keys_per_worker:
                chosen.keys.popitem(last=False)
        return chosen

    # -- work ----------------------------------------------------------------------------------
    async def call(self, command: Call[ReqT, RespT], request: ReqT, *, timeout: float | None = DEFAULT) -> RespT:
        """Run one request on the cluster; raise its error (as ``Pool.call`` does)."""
        async with self.map(command, [request], timeout=timeout) as outcomes:
            async for outcome in outcomes:
                if outcome.error is not None:
                    raise outcome.error
                return outcome.value  # type: ignore[return-value]
        raise ClusterError(f"{command.name}: the cluster gave no outcome")  # not reached

    async def call_stateful(
        self,
        command: Call[ReqT, RespT],
        request: ReqT,
        *,
        prefer: Sequence[Hashable] = (),
        learned: Callable[[RespT], Iterable[Hashable]],
        timeout: float | None = DEFAULT,
    ) -> RespT:
        """One stateful request (``lean_worker.session.Session`` on a cluster): to the node
        that holds the first of ``prefer`` (state ids, best first) warm, else as ``map``
        routes; that node's pool picks its worker the same way, and both remember what
        ``learned(result)`` says the worker now holds. Sent again to another node when its
        node dies (at most ``max_attempts`` times, then ``NodeLost``); a ``WorkerError`` is
        raised. One request is not held back by ``in_flight_per_worker``.

        ``learned`` runs on the node too: it must pickle (a module-level function or a
        ``functools.partial`` of one)."""
        check_timeout(timeout)
        if not self._open:
            raise ClusterError("the cluster pool is not open: use `async with ClusterPool(...)`")
        keys = session_keys_of(command, request)
        wire_timeout = "default" if timeout is DEFAULT else timeout
        preferred = tuple(prefer)
        for attempt in range(1, self.max_attempts + 1):
            node = self._route_state(keys, preferred)
            if node is None:
                await self._refresh()
                node = self._route_state(keys, preferred)
                if node is None:
                    why = {n.node_id: n.out or "?" for n in self._nodes.values()}
                    raise ClusterUnavailable("no Ray node is left to run this request", nodes=why)
            node.in_flight += 1
            ref = node.actor.call_stateful.remote(command, request, keys, preferred, learned, wire_timeout)
            try:
                value, error, _, _, _ = await ref
            except asyncio.CancelledError:
                ray.cancel(ref)
                raise
            except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError, ray.exceptions.RaySystemError):
                node.lost_items += 1
                if node.ready:
                    self._lose(node, "actor_died")
                self._counts["retried"] += 1
                continue
            finally:
                node.in_flight -= 1
                self._freed.set()
            node.items += 1
            self._counts["items"] += 1
            if error is not None:
                raise error
            self._remember(node, learned(value))
            return value  # type: ignore[no-any-return]
        raise NodeLost(f"{command.name}: the request's node died under it {self.max_attempts} times",
                       attempts=self.max_attempts)

    def _route_state(self, keys: tuple[Hashable, ...] | None, prefer: tuple[Hashable, ...]) -> _Node | None:
        ready = self._ready_nodes()
        if not ready:
            return None
        for state in prefer:
            holders = [n for n in ready if state in n.states]
            if holders:
                self._counts["state_hits"] += 1
                return min(holders, key=lambda n: n.load)
        if prefer:
            self._counts["state_misses"] += 1
        return self._route(keys) or min(ready, key=lambda n: n.load)

    def _remember(self, node: _Node, ids: Iterable[Hashable]) -> None:
        if not node.ready:
            return
        for state in ids:
            node.states[state] = None
            node.states.move_to_end(state)
        while len(node.states) > node.workers * DEFAULT_STATES_PER_WORKER:
            node.states.popitem(last=False)

    @asynccontextmanager
    async def map(
        self,
        command: Call[ReqT, RespT],
        requests: Iterable[ReqT],
        *,
        timeout: float | None = DEFAULT,
        keys: Sequence[tuple[Hashable, ...]] | None = None,
    ) -> AsyncIterator[MemoryObjectReceiveStream[ClusterOutcome[ReqT, RespT]]]:
        """Run ``command`` for every request on the cluster; yield outcomes as they finish.

        As ``Pool.map``: exactly one outcome per request, in completion order; leaving the
        block early cancels what is still running (``ray.cancel``). ``keys``: each request's
        session keys, when the caller has them already."""
        if not isinstance(command, Call):
            raise TypeError(f"map() takes a Call declaration; got {command!r}")
        check_timeout(timeout)
        if not self._open:
            raise ClusterError("the cluster pool is not open: use `async with ClusterPool(...)`")
        wire_timeout = "default" if timeout is DEFAULT else timeout
        items = self._items(command, requests, keys)
        send, receive = anyio.create_memory_object_stream[ClusterOutcome[ReqT, RespT]](
            max(1, sum(self._capacity(n) for n in self._ready_nodes()))
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._dispatch, command, items, wire_timeout, send)
            async with receive:
                yield receive
                tg.cancel_scope.cancel()

    def _items(
        self, command: Call[Any, Any], requests: Iterable[Any], given: Sequence[tuple[Hashable, ...]] | None
    ) -> Iterator[_Item | ClusterOutcome[Any, Any]]:
        for index, request in enumerate(requests):
            try:
                item_keys = request_keys(command, index, request, given)
            except WorkerError as exc:
                yield ClusterOutcome(index, request, None, exc, -1, 0, 0.0)
                continue
            yield _Item(index, request, item_keys)

    def _chunk_size(self, node: _Node) -> int:
        # Two chunks in flight per node at least, so that the node's workers never wait for
        # the driver between chunks.
        return max(1, min(self.items_per_call, self._capacity(node) // 2))

    async def _dispatch(
        self,
        command: Call[Any, Any],
        items: Iterator[_Item | ClusterOutcome[Any, Any]],
        timeout: float | str | None,
        send: MemoryObjectSendStream[ClusterOutcome[Any, Any]],
    ) -> None:
        waiting: deque[_Item] = deque()  # sent again after a node death: served first
        flights: dict[asyncio.Future[list[Reply]], tuple[list[_Item], _Node, Any]] = {}
        exhausted = False
        if time.monotonic() - self._last_refresh >= self.refresh_s:
            await self._refresh()  # a batch starts on the nodes that are there now
        try:
            async with send:
                while True:
                    # Route what the nodes have room for, in order; send each node's items
                    # in chunks of up to items_per_call, one actor call per chunk.
                    chunks: dict[str, list[_Item]] = {}

                    def flush(node: _Node) -> None:
                        chunk = chunks.pop(node.node_id, None)
                        if chunk:
                            ref = node.actor.call.remote(command, [(i.request, i.keys) for i in chunk], timeout)
                            flights[asyncio.wrap_future(ref.future())] = (chunk, node, ref)

                    while True:
                        if not waiting:
                            if exhausted:
                                break
                            nxt = next(items, None)
                            if nxt is None:
                                exhausted = True
                                break
                            if isinstance(nxt, ClusterOutcome):
                                await send.send(nxt)
                                continue
                            waiting.append(nxt)
                        node = self._route(waiting[0].keys)
                        if node is None:
                            break
                        node.in_flight += 1
                        chunk = chunks.setdefault(node.node_id, [])
                        chunk.append(waiting.popleft())
                        if len(chunk) >= self._chunk_size(node):
                            flush(node)
                    for node_id in list(chunks):
                        flush(self._nodes[node_id])
                    if not flights:
                        if exhausted and not waiting:
                            return
                        if not self._ready_nodes():
                            await self._refresh()
                            if not self._ready_nodes():
                                await self._fail_all(waiting, items, send)
                                return
                        else:
                            # Every node is full of other batches' items: wait until one
                            # of theirs ends (or the next refresh), not in a busy loop.
                            self._freed.clear()
                            with anyio.move_on_after(self.refresh_s):
                                await self._freed.wait()
                        continue
                    due = self.refresh_s - (time.monotonic() - self._last_refresh)
                    done, _ = await asyncio.wait(flights, timeout=max(0.0, due), return_when=asyncio.FIRST_COMPLETED)
                    for future in done:
                        chunk, node, _ = flights.pop(future)
                        node.in_flight -= len(chunk)
                        self._freed.set()
                        for outcome in self._settle(future, chunk, node, waiting):
                            await send.send(outcome)
                    if time.monotonic() - self._last_refresh >= self.refresh_s:
                        await self._refresh(wait=False)
        finally:
            for future, (chunk, node, ref) in flights.items():
                node.in_flight -= len(chunk)
                self._freed.set()
                future.cancel()
                try:
                    ray.cancel(ref)
                except Exception:  # the actor is gone already
                    pass

    def _settle(
        self, future: asyncio.Future[list[Reply]], chunk: list[_Item], node: _Node, waiting: deque[_Item]
    ) -> list[ClusterOutcome[Any, Any]]:
        try:
            replies = future.result()
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError, ray.exceptions.RaySystemError) as exc:
            # The node or its actor died with these items in flight: send them again elsewhere.
            node.lost_items += len(chunk)
            if node.ready:
                self._lose(node, "actor_died")
                self._last_refresh = 0.0  # read the node list at once
            failed = []
            for item in reversed(chunk):  # back at the head of the line, in their order
                item.retried += 1
                self._counts["retried"] += 1
                if item.retried >= self.max_attempts:
                    error = NodeLost(
                        f"the item's node died under it {item.retried} times; last: {type(exc).__name__}",
                        attempts=item.retried,
                    )
                    failed.append(ClusterOutcome(item.index, item.request, None, error, -1, 0,
                                                 time.perf_counter() - item.started, "", item.retried))
                else:
                    waiting.appendleft(item)
            return failed
        node.items += len(chunk)
        self._counts["items"] += len(chunk)
        now = time.perf_counter()
        return [
            ClusterOutcome(item.index, item.request, value, error, worker, generation, now - item.started,
                           node.node_id, item.retried)
            for item, (value, error, worker, generation, _) in zip(chunk, replies, strict=True)
        ]

    async def _fail_all(
        self, waiting: deque[_Item], items: Iterator[_Item | ClusterOutcome[Any, Any]],
        send: MemoryObjectSendStream[ClusterOutcome[Any, Any]],
    ) -> None:
        why = {n.node_id: n.out or "?" for n in self._nodes.values()}
        for item in [*waiting, *items]:
            if isinstance(item, ClusterOutcome):
                await send.send(item)
                continue
            error = ClusterUnavailable("no Ray node is left to run this item", nodes=why)
            await send.send(ClusterOutcome(item.index, item.request, None, error, -1, 0,
                                           time.perf_counter() - item.started, "", item.retried))

    # -- monitoring ----------------------------------------------------------------------------
    async def _read_snapshot(self, node: _Node) -> None:
        try:
            with anyio.fail_after(10):
                node.pool = await node.actor.snapshot.remote()
        except Exception:  # a node that does not answer keeps its last snapshot
            pass

    async def snapshot(self) -> ClusterSnapshot:
        """Per-node state and the node pools' own snapshots (read from each live node)."""
        await asyncio.gather(*(self._read_snapshot(n) for n in self._ready_nodes()))
        nodes = []
        restarts: Counter[str] = Counter()
        hits = misses = queued = warm = 0
        rss: list[int] = []
        for node in self._nodes.values():
            pool = node.pool
            if pool is not None:
                restarts.update(pool.restarts)
                hits += pool.key_hits
                misses += pool.key_misses
                queued += pool.queue_depth if node.ready else 0
                warm += pool.warm_keys if node.ready else 0
                if pool.total_rss_bytes is not None and node.ready:
                    rss.append(pool.total_rss_bytes)
            nodes.append(NodeSnapshot(
                node.node_id, node.info.hostname if node.info else "", node.info.pid if node.info else None,
                node.workers, node.ready, node.in_flight,
                node.items, node.lost_items, node.starts, node.out, pool,
            ))
        return ClusterSnapshot(
            nodes=nodes, items=self._counts["items"], retried=self._counts["retried"],
            in_flight=sum(n.in_flight for n in self._nodes.values()), key_hits=hits, key_misses=misses,
            restarts=dict(restarts), total_rss_bytes=sum(rss) if rss else None, queue_depth=queued,
            warm_keys=warm, state_hits=self._counts["state_hits"], state_misses=self._counts["state_misses"],
        )
