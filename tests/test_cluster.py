"""The pool on a real Ray cluster (``lean_worker_ray``): a local multi-node cluster
(``ray.cluster_utils.Cluster``) started once for the module, real Lean on every node.

Every Ray server of the test cluster listens on 127.0.0.1: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
makes Ray take the loopback address as the node address (set before Ray is imported, and
inherited by the processes Ray starts). The two base nodes advertise the resource
``lw_base``; the tests that add, remove or lose nodes use nodes of their own resource, so
they never take the base nodes away from the others.
"""

from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import anyio  # noqa: E402
import msgspec  # noqa: E402
import orjson  # noqa: E402
import psutil  # noqa: E402
import pytest  # noqa: E402
import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from lean_worker import Pool, WorkerConfig  # noqa: E402
from lean_worker.lean import CHECK, CheckRequest, lean_config  # noqa: E402
from lean_worker.session import Session  # noqa: E402
from lean_worker_ray import ClusterError, ClusterOutcome, ClusterPool, ClusterUnavailable  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SNIPPETS = ROOT / "lean" / "snippets"
HEADERS = [
    "prelude\nimport LwFix.Nat\n",
    "prelude\nimport LwFix.List\n",
    "prelude\nimport LwFix.Nat\nimport LwFix.Logic\n",
]
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]


SEEN: set[int] = set()
"""Every supervisor and worker child pid the tests saw (checked gone after the module)."""


def note(snapshot: Any) -> Any:
    for node in snapshot.nodes:
        if node.pid:
            SEEN.add(node.pid)
        for worker in node.pool.workers if node.pool else ():
            if worker.pid:
                SEEN.add(worker.pid)
    return snapshot


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def generated(count: int, *, bad_every: int = 0) -> list[CheckRequest]:
    """Light snippets over the three headers; every ``bad_every``-th one has a type error."""
    requests = []
    for i in range(count):
        claim = "N.four" if not bad_every or i % bad_every else "N.two"
        code = HEADERS[i % 3] + (
            f"\nnoncomputable def double{i} (n : N) : N := N.add n n\n"
            f"theorem double{i}_two : Eq (double{i} N.two) {claim} := Eq.refl\n"
        )
        requests.append(CheckRequest(code, id=f"g{i}", timeout_s=20))
    return requests


def fixture_snippets() -> list[CheckRequest]:
    names = ["ok.lean", "type_error.lean", "sorry.lean", "tactics_ok.lean", "heartbeats.lean", "crash.lean", "hang.lean"]
    # The crash (a stack overflow) takes a few seconds to happen; the hang is cut at 3 s.
    return [CheckRequest((SNIPPETS / n).read_text(), id=n, timeout_s=3 if n == "hang.lean" else 20) for n in names]


def verdict(outcome: Any) -> tuple[Any, ...]:
    """What must be the same wherever an item ran."""
    if outcome.error is not None:
        return ("failed", getattr(outcome.error, "remote_code", outcome.error.code))
    value = outcome.value
    return (value.verdict, [(m.severity, m.pos, m.text) for m in value.messages], value.sorries)


@pytest.fixture(scope="module")
def cluster():  # type: ignore[no-untyped-def]
    made = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # a driver-only head: no supervisor
    for _ in range(2):
        made.add_node(num_cpus=1, resources={"lw_base": 1})
    made.wait_for_nodes()
    ray.init(address=made.address, log_to_driver=False)
    yield made
    ray.shutdown()
    made.shutdown()
    # Nothing outlives the cluster: no supervisor and no worker child the tests saw.
    deadline = time.monotonic() + 30
    alive = SEEN
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if _running(pid)}
        time.sleep(0.2)
    assert alive == set(), f"processes of the cluster outlived it: {sorted(alive)}"


@pytest.fixture(scope="module")
def config(lean_toolchain) -> WorkerConfig:  # type: ignore[no-untyped-def]
    from lean_worker_child.lean.fixtures import build_library

    library = build_library(lean_toolchain.lean)
    return lean_config(lean=str(lean_toolchain.lean), search_path=[str(library.root)], request_timeout_s=60)


async def collect(pool: Any, requests: list[CheckRequest]) -> list[Any]:
    async with pool.map(CHECK, requests) as outcomes:
        return [o async for o in outcomes]


def by_index(outcomes: list[Any]) -> dict[int, Any]:
    counts = Counter(o.index for o in outcomes)
    assert [i for i, n in counts.items() if n != 1] == [], "an item got more or less than one outcome"
    return {o.index: o for o in outcomes}


async def test_the_cluster_gives_the_local_pools_verdicts_and_a_crash_or_hang_fails_alone(cluster, config) -> None:  # type: ignore[no-untyped-def]
    requests = fixture_snippets() + generated(24, bad_every=5)
    async with Pool(config, size=2) as pool:
        local = by_index(await collect(pool, requests))
    async with ClusterPool(config, node_resource="lw_base") as cp:
        remote = by_index(await collect(cp, requests))
        snapshot = note(await cp.snapshot())
    assert sorted(remote) == list(range(len(requests)))
    assert {i: verdict(o) for i, o in remote.items()} == {i: verdict(o) for i, o in local.items()}
    assert verdict(remote[5]) == ("failed", "lean.crashed") and verdict(remote[6]) == ("failed", "lean.timeout")
    assert Counter(v[0] for v in map(verdict, remote.values()))["ok"] >= 20
    # Nothing was resent and no node was lost: the crash and the hang stayed inside their node's pool.
    assert all(isinstance(o, ClusterOutcome) and o.retried == 0 and o.node for o in remote.values())
    assert [(n.alive, n.out, n.lost_items) for n in snapshot.nodes] == [(True, None, 0)] * 2
    assert len({o.node for o in remote.values()}) == 2, "both nodes took work"


async def test_a_batch_over_three_headers_is_served_warm_after_the_first_import_per_node(cluster, config) -> None:  # type: ignore[no-untyped-def]
    requests = generated(180)
    async with ClusterPool(config, node_resource="lw_base") as cp:
        outcomes = by_index(await collect(cp, requests))
        snapshot = note(await cp.snapshot())
    assert all(o.error is None and o.value.verdict == "ok" for o in outcomes.values())
    imports = [sum(w.imports for w in n.pool.workers) for n in snapshot.nodes]
    assert all(n <= 3 for n in imports), imports  # one per header and node at most
    assert snapshot.hit_rate >= 0.95, (snapshot.key_hits, snapshot.key_misses)


async def test_two_batches_at_once_share_the_nodes_and_the_waiting_one_does_not_spin(cluster, config) -> None:  # type: ignore[no-untyped-def]
    async with ClusterPool(config, node_resource="lw_base", in_flight_per_worker=1, items_per_call=1) as cp:
        results: dict[str, list[Any]] = {}

        async def batch(name: str, requests: list[CheckRequest]) -> None:
            results[name] = await collect(cp, requests)

        wall, cpu = time.perf_counter(), time.process_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(batch, "a", generated(40))
            tg.start_soon(batch, "b", generated(40, bad_every=4))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    for name, bad_every in (("a", 0), ("b", 4)):
        outcomes = by_index(results[name])
        assert sorted(outcomes) == list(range(40))
        assert [i for i, o in outcomes.items() if o.value.verdict != "ok"] == [i for i in range(40) if bad_every and i % bad_every == 0]
    # While one batch holds every node's room, the other waits for room to free up; a busy
    # loop would keep this process on a core for the whole run.
    assert cpu < 0.5 * wall, (cpu, wall)


async def test_a_node_removed_mid_batch_loses_no_item_and_duplicates_none_then_no_node_left_fails_typed(cluster, config) -> None:  # type: ignore[no-untyped-def]
    nodes = [cluster.add_node(num_cpus=1, resources={"lw_fault": 1}) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        async with ClusterPool(config, node_resource="lw_fault", refresh_s=0.5) as cp:
            requests = generated(60, bad_every=7)
            received: list[ClusterOutcome[Any, Any]] = []
            used: Counter[str] = Counter()
            removed = None
            async with cp.map(CHECK, requests) as outcomes:
                async for outcome in outcomes:
                    received.append(outcome)
                    used[outcome.node] += 1
                    if removed is None and len(used) == 2 and len(received) >= 10:
                        # The node that has just answered goes, with items in flight: as a
                        # machine that dies, all of its processes at once (Ray's own workers
                        # would otherwise outlive their raylet for a while).
                        victim = next(n for n in nodes if n.node_id == outcome.node)
                        pid = next(n.pid for n in note(await cp.snapshot()).nodes if n.node_id == victim.node_id)
                        cluster.remove_node(victim, allow_graceful=False)
                        os.kill(pid, signal.SIGKILL)
                        removed = victim
            assert removed is not None
            results = by_index(received)
            assert sorted(results) == list(range(60))
            assert all(o.error is None for o in results.values()), [o.error for o in results.values() if o.error]
            wrong = [(i, o.value.verdict, o.node[:8], o.retried, o.worker, o.generation, o.value.session)
                     for i, o in sorted(results.items()) if (o.value.verdict == "ok") != bool(i % 7)]
            assert wrong == []
            assert sum(o.retried for o in results.values()) >= 1
            assert all(o.node != removed.node_id for o in results.values() if o.retried)
            snapshot = note(await cp.snapshot())
            lost = [n for n in snapshot.nodes if n.node_id == removed.node_id]
            assert [(n.alive, n.lost_items >= 1) for n in lost] == [(False, True)]
            assert snapshot.retried == sum(o.retried for o in results.values())

            # The last node goes too: what is in flight and what waits fails with a typed
            # error, one outcome each, and the pool does not hang.
            survivor = next(n for n in nodes if n is not removed)
            pid = next(n.pid for n in note(await cp.snapshot()).nodes if n.node_id == survivor.node_id)
            cluster.remove_node(survivor, allow_graceful=False)
            os.kill(pid, signal.SIGKILL)
            nodes = []
            await wait_until_dead(survivor.node_id)
            after = by_index(await collect(cp, generated(6)))
            assert sorted(after) == list(range(6))
            assert {type(o.error) for o in after.values()} == {ClusterUnavailable}
            assert {o.error.code for o in after.values()} == {"cluster.unavailable"}
    finally:
        for node in nodes:
            if node in cluster.worker_nodes:
                cluster.remove_node(node, allow_graceful=False)


async def test_a_node_that_joins_mid_batch_takes_work(cluster, config) -> None:  # type: ignore[no-untyped-def]
    first = cluster.add_node(num_cpus=1, resources={"lw_join": 1})
    cluster.wait_for_nodes()
    joined = None
    try:
        async with ClusterPool(config, node_resource="lw_join", refresh_s=0.3) as cp:
            received = []
            candidates = generated(1500)

            def requests():  # type: ignore[no-untyped-def]
                # The batch is read as it goes: it lasts until the new node has answered
                # (starting it takes seconds, more on a loaded machine), 1500 items at most.
                for index, request in enumerate(candidates):
                    if index >= 20 and joined is not None and any(o.node == joined.node_id for o in received):
                        return
                    yield request

            async with cp.map(CHECK, requests()) as outcomes:
                async for outcome in outcomes:
                    received.append(outcome)
                    if joined is None:
                        joined = cluster.add_node(num_cpus=1, resources={"lw_join": 1})
            results = by_index(received)
            note(await cp.snapshot())
            assert all(o.error is None and o.value.verdict == "ok" for o in results.values())
            assert joined is not None
            assert Counter(o.node for o in results.values())[joined.node_id] >= 1, "the new node took no work"
    finally:
        for node in (first, joined):
            if node is not None and node in cluster.worker_nodes:
                cluster.remove_node(node, allow_graceful=False)


async def wait_until_dead(node_id: str) -> None:
    """Until Ray's control store says the node is dead (its health checks take seconds)."""
    with anyio.fail_after(60):
        while any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes()):
            await anyio.sleep(0.2)


async def test_a_session_on_the_cluster_follows_its_states_and_outlives_their_node(cluster, config) -> None:  # type: ignore[no-untyped-def]
    nodes = [cluster.add_node(num_cpus=1, resources={"lw_sess": 1}) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        async with ClusterPool(config, node_resource="lw_sess", refresh_s=0.5) as cp:
            session = Session(cp)
            env = await session.start("prelude\nimport LwFix.Tactic\n")
            hole = await session.prove(env, "theorem t (p q : Prop) (hp : p) (hq : q) : And p q")
            first = await session.apply(hole.state, "constructor")
            second = await session.apply(first.state, "exact hp")
            assert (first.status, second.status, second.materialized) == ("incomplete", "incomplete", "edited")
            snapshot = note(await cp.snapshot())
            # Every request after the first went where its state was warm: one node did it all.
            assert (snapshot.state_hits, snapshot.state_misses) == (3, 0)
            holder = next(n for n in snapshot.nodes if n.items)
            assert [n.items for n in snapshot.nodes if n is not holder] == [0]

            # The node that holds the proof goes; the state is a value, and the other node
            # rebuilds it and finishes the proof.
            victim = next(n for n in nodes if n.node_id == holder.node_id)
            cluster.remove_node(victim, allow_graceful=False)
            os.kill(holder.pid, signal.SIGKILL)
            await wait_until_dead(victim.node_id)
            third = await session.apply(second.state, "exact hq")
            assert (third.status, third.materialized, third.goals) == ("complete", "opened", [])
            after = note(await cp.snapshot())
            assert [n.items for n in after.nodes if n.node_id != holder.node_id] == [1]
    finally:
        for node in nodes:
            if node in cluster.worker_nodes:
                cluster.remove_node(node, allow_graceful=False)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lean_worker.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=180,
        env={**os.environ, **(env or {})},
    )


async def test_verify_on_the_cluster_writes_the_local_runs_jsonl_plus_a_line_per_node(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    local = run_cli("verify", "--fixtures", "--timeout", "10", "-o", str(tmp_path / "local.jsonl"))
    remote = run_cli("verify", "--fixtures", "--timeout", "10", "--ray", cluster.address, "-o", str(tmp_path / "ray.jsonl"))
    assert (local.returncode, remote.returncode) == (0, 0), remote.stderr

    def rows(name: str) -> dict[str, dict[str, Any]]:
        lines = [orjson.loads(line) for line in (tmp_path / name).read_text().splitlines()]
        return {r["id"]: r for r in lines}

    here, there = rows("local.jsonl"), rows("ray.jsonl")
    assert sorted(here) == sorted(there) and len(here) >= 7
    for key in here:
        a, b = here[key], there[key]
        assert (a["verdict"], a["messages"], a["sorries"], a.get("error", {}).get("code")) == (
            b["verdict"], b["messages"], b["sorries"], b.get("error", {}).get("code")), key
        assert "node" not in a and isinstance(b["node"], str)
    assert "  node 0" in remote.stdout and "hit_rate=" in remote.stdout and "retried" in remote.stdout
    assert "node" not in local.stdout


def test_verify_says_in_one_line_what_to_install_or_start() -> None:
    no_ray = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['ray'] = None\nfrom lean_worker.cli import main\n"
                               "raise SystemExit(main(['verify', '--fixtures', '--ray', 'auto']))"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert no_ray.returncode == 2
    assert no_ray.stderr.strip().count("\n") == 0, no_ray.stderr
    assert "verify.cluster" in no_ray.stderr and "pip install 'lean-worker[ray]'" in no_ray.stderr

    nobody = run_cli("verify", "--fixtures", "--ray", "127.0.0.1:9")
    assert nobody.returncode == 2
    assert nobody.stderr.strip().count("\n") == 0, nobody.stderr
    assert "cluster.unreachable" in nobody.stderr and "ray start --head" in nobody.stderr


def test_the_http_service_serves_kimina_and_native_requests_from_the_cluster(cluster) -> None:  # type: ignore[no-untyped-def]
    import httpx

    from lean_worker_service.wire import EndLine, ItemLine, Line
    from tests.service_server import Server

    snippets = {p.stem: p.read_text() for p in (ROOT / "lean" / "snippets").glob("*.lean")}
    with Server("--fixtures", "--ray", cluster.address, "-j", "1", "--timeout", "10") as server:
        body = {"snippets": [{"id": n, "code": snippets[n]} for n in ("ok", "sorry", "type_error", "crash")]}
        results = httpx.post(server.url + "/api/check", json=body, timeout=120).json()["results"]
        assert [r["id"] for r in results] == ["ok", "sorry", "type_error", "crash"]
        assert results[0]["response"]["messages"] == [] and results[1]["response"]["sorries"][0]["goal"]
        assert results[2]["response"]["messages"][0]["severity"] == "error"
        assert results[3]["error"].startswith("lean.crashed:")
        with httpx.stream("POST", server.url + "/v1/check", json={"snippets": body["snippets"][:2]}, timeout=120) as r:
            lines = [msgspec.json.decode(raw, type=Line) for raw in r.iter_lines()]
        assert isinstance(lines[-1], EndLine) and lines[-1].verdicts == {"ok": 1, "sorry": 1}
        assert all(isinstance(i, ItemLine) and i.node for i in lines[:-1])  # each says which node ran it
        status = httpx.get(server.url + "/v1/status", timeout=30).json()
        assert status["nodes"] >= 2 and status["workers"] >= 2
        assert httpx.get(server.url + "/health", timeout=30).json() == {"status": "ok"}


def test_the_core_never_imports_ray() -> None:
    script = ("import sys, lean_worker, lean_worker.lean, lean_worker.verify, lean_worker.session, lean_worker.cli\n"
              "print('ray' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "False"


def test_the_cluster_pool_refuses_trio_before_it_connects() -> None:
    async def main() -> None:
        async with ClusterPool(WorkerConfig.for_module("lean_worker_child.demo"), address="127.0.0.1:9"):
            pass

    with pytest.raises(ClusterError, match="asyncio"):
        anyio.run(main, backend="trio")
