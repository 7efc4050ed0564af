"""Throughput and per-request overhead of ``lean-worker serve`` against the ``Pool`` it runs on.

    python bench/service.py [--items 400] [--workers 2] [--headers 3] [--latency-requests 200]
                            [--rounds 2]

In one run, with a ``Pool`` in this process and the server (``lean-worker serve -j W
--search-path ROOT --no-access-log``, a subprocess on an ephemeral port) both open, both
warmed the same way (untimed: a first pass over snippets of every header, so every worker
holds every header's session), on the light snippets of ``bench/pool.py`` over the bundled
prelude library (a definition and two theorems per snippet; every fourth one also states a
false theorem, so a quarter of the verdicts are ``errors``):

- ``pool_items_per_s``: the batch through ``Pool.map(CHECK, ...)`` with W workers, each
  request as the service builds it (``timeout_s``, ``sorry_goals=True``);
- ``service_items_per_s``: the same snippets sent as ``kimina-client`` 0.2.1 sends them
  from ``AsyncKiminaClient.check``: ``POST /api/check`` in batches of 8, 5 in flight, over
  one shared connection pool (keep-alive; here 5 threads sharing one ``httpx.Client``),
  JSON ``{"snippets", "timeout": 60, "debug": false, "reuse": true, "infotree": null}``;
- ``service_sync_client_items_per_s``: the same as the sync ``KiminaClient.check`` sends
  them: a ``ThreadPoolExecutor(max_workers=5)`` and a NEW ``httpx.Client`` (a new TCP
  connection and SSL context, about 30 ms of client CPU) per request. On this machine that
  client CPU (``cpu_client_s_per_item``) is taken from the same cores as Lean's, which a
  client on another machine would not do; so it is printed, not the goal;
- ``service_ratio``: service / pool (goal >= 0.85), ``service_sync_client_ratio`` likewise.
  Each throughput is all items over all timed passes (``--rounds`` passes of each kind,
  alternating pool / service / keepalive, the order reversed every other round, so a
  noisy neighbour hurts both sides alike); ``*_rounds`` lists each pass;
- ``pool_call_p50_ms`` / ``service_call_p50_ms`` (and p95): one warm snippet (four snippets
  of one header, in turn, so each check is a real edit) through ``pool.call(CHECK, ...)``
  and through a one-snippet ``POST /api/check`` on a keep-alive ``httpx.Client``,
  sequentially, ``--latency-requests`` of each, interleaved in chunks of 20;
  ``request_overhead_p50_ms`` / ``_p95_ms``: their difference (service - pool) at that
  percentile (the p95 one can be negative: two noisy tails); ``service_call_new_client_p50_ms``: the same POST with a new ``httpx.Client``
  each time (the kimina-client way; the first 50 requests); ``health_p50_ms``: ``GET
  /health`` on a keep-alive client, 50 times (no Lean at all: the HTTP round trip);
- ``cpu_server_s_per_item``: CPU seconds of the server process itself (HTTP, app, pool
  parent; not its workers) per item over the sync-client passes;
  ``cpu_pool_parent_s_per_item``: this process's CPU over the pool passes (the same pool
  parent, without HTTP); ``cpu_client_s_per_item``: this process's CPU over the sync-client
  passes (the client, which shares the machine's cores with the server).

Every reply must carry one result per snippet, in order, and the verdict counts of each
service pass must equal the pool's. Every HTTP call has a timeout; the server is stopped
with SIGTERM (then killed) whatever happens, and its process tree is checked to be gone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.pool import snippet  # noqa: E402  (the light workload of the pool bench)
from lean_worker import Pool  # noqa: E402
from lean_worker.lean import CHECK, CheckRequest, lean_config  # noqa: E402
from lean_worker.verify import build_fixtures  # noqa: E402
from lean_worker_child.lean.toolchain import resolve_toolchain  # noqa: E402

SNIPPET_TIMEOUT_S = 60
"""What ``KiminaClient.check`` sends as ``timeout`` by default."""
MARGIN_S = 30.0
"""The service's margin over a snippet's timeout for the parent's limit (``REQUEST_TIMEOUT_MARGIN_S``)."""
LATENCY_CHUNK = 20
NEW_CLIENT_LATENCIES = 50
HEALTH_REQUESTS = 50
_LISTENING = re.compile(r"listening on (http://[0-9.]+:\d+)")


def bench_snippet(i: int, headers: int) -> str:
    """``bench/pool.py``'s light snippet; every fourth also states a false theorem (``errors``)."""
    code = snippet(i, headers, "light")
    if i % 4 == 3:
        code += f"theorem wrong{i} : Eq (double{i} N.two) N.two := Eq.refl\n"
    return code


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- the server ------------------------------------------------------------------------------------


@dataclass
class Served:
    process: subprocess.Popen[str]
    url: str = ""
    stderr: list[str] = field(default_factory=list)
    exit_code: int | None = None
    left_behind: list[int] = field(default_factory=list)


@contextlib.contextmanager
def serve(*args: str, start_timeout_s: float = 120.0, stop_timeout_s: float = 60.0) -> Iterator[Served]:
    """``lean-worker serve --port 0 ARGS`` as a subprocess until the block ends; then SIGTERM
    (a kill after ``stop_timeout_s``), and any process of its tree still alive is killed and
    listed in ``left_behind``."""
    process = subprocess.Popen(
        [sys.executable, "-m", "lean_worker.cli", "serve", "--port", "0", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    served = Served(process)
    tree: list[psutil.Process] = []
    try:
        assert process.stdout is not None and process.stderr is not None
        threading.Thread(target=lambda: served.stderr.extend(process.stderr), daemon=True).start()  # type: ignore[arg-type]

        def read_url() -> None:
            for line in process.stdout:  # type: ignore[union-attr]
                if match := _LISTENING.search(line):
                    served.url = match.group(1)
                    return

        reader = threading.Thread(target=read_url, daemon=True)
        reader.start()
        reader.join(start_timeout_s)
        if not served.url:
            raise RuntimeError(f"the server did not start within {start_timeout_s:g} s; exit={process.poll()} "
                               f"stderr={''.join(served.stderr)[-2000:]}")
        yield served
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            tree = psutil.Process(process.pid).children(recursive=True)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            served.exit_code = process.wait(stop_timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            served.exit_code = process.wait(10)
        _, alive = psutil.wait_procs(tree, timeout=5)
        for p in alive:  # the server's own descendants, by pid
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        served.left_behind = [p.pid for p in alive]


# -- the client ------------------------------------------------------------------------------------


def payload(batch: list[tuple[str, str]]) -> dict[str, Any]:
    return {"snippets": [{"id": i, "code": c} for i, c in batch], "timeout": SNIPPET_TIMEOUT_S,
            "debug": False, "reuse": True, "infotree": None}


def classify(item: dict[str, Any]) -> str:
    """A reply item as a ``CheckResult.verdict`` (``failed`` for an item error)."""
    if "error" in item:
        return "failed"
    response = item["response"]
    if any(m["severity"] == "error" for m in response["messages"]):
        return "errors"
    return "sorry" if response.get("sorries") else "ok"


def post(client: httpx.Client, url: str, batch: list[tuple[str, str]]) -> list[str]:
    reply = client.post(url + "/api/check", json=payload(batch))
    reply.raise_for_status()
    results = reply.json()["results"]
    assert [r["id"] for r in results] == [i for i, _ in batch], (len(results), len(batch))
    return [classify(r) for r in results]


def post_new_client(url: str, batch: list[tuple[str, str]], timeout_s: float) -> list[str]:
    """As ``KiminaClient._query``: a new ``httpx.Client`` for each request."""
    with httpx.Client(timeout=httpx.Timeout(timeout_s)) as client:
        return post(client, url, batch)


def through_service(url: str, items: list[tuple[str, str]], args: argparse.Namespace, keepalive: bool) -> tuple[float, Counter[str]]:
    """Seconds for every item, sent as ``KiminaClient.check`` sends them, and the verdicts."""
    batches = [items[i : i + args.batch_size] for i in range(0, len(items), args.batch_size)]
    verdicts: Counter[str] = Counter()
    shared = httpx.Client(timeout=httpx.Timeout(args.http_timeout),
                          limits=httpx.Limits(max_keepalive_connections=args.in_flight)) if keepalive else None
    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.in_flight) as executor:
            if shared is not None:
                futures = [executor.submit(post, shared, url, b) for b in batches]
            else:
                futures = [executor.submit(post_new_client, url, b, args.http_timeout) for b in batches]
            for future in futures:
                verdicts.update(future.result(timeout=args.http_timeout))
        return time.perf_counter() - started, verdicts
    finally:
        if shared is not None:
            shared.close()


# -- the run ---------------------------------------------------------------------------------------


async def through_pool(pool: Pool, requests: list[CheckRequest]) -> tuple[float, Counter[str]]:
    verdicts: Counter[str] = Counter()
    started = time.perf_counter()
    async with pool.map(CHECK, requests, timeout=SNIPPET_TIMEOUT_S + MARGIN_S) as outcomes:
        async for outcome in outcomes:
            verdicts["failed" if outcome.value is None else outcome.value.verdict] += 1
    return time.perf_counter() - started, verdicts


def check_request(snippet_id: str, code: str) -> CheckRequest:
    """As the service builds it for ``/api/check``."""
    return CheckRequest(code, id=snippet_id, timeout_s=SNIPPET_TIMEOUT_S, sorry_goals=True)


async def run(args: argparse.Namespace) -> None:
    began = time.perf_counter()
    toolchain = resolve_toolchain()
    root = (await build_fixtures(lean=toolchain.lean)).library_root
    items = [(f"s{i}", bench_snippet(i, args.headers)) for i in range(args.items)]
    requests = [check_request(i, c) for i, c in items]
    # Warm-up: snippets not in the batch, several of every header per worker.
    warm_items = [(f"w{i}", bench_snippet(args.items + i, args.headers))
                  for i in range(args.headers * args.workers * 4)]
    warm_requests = [check_request(i, c) for i, c in warm_items]
    # The latency snippets: four of header 0 (ok ones), in turn.
    base = args.items + len(warm_items)
    picks = [j for j in range(base, base + 64) if j % args.headers == 0 and j % 4 != 3][:4]
    one = [(f"l{j}", bench_snippet(j, args.headers)) for j in picks]
    print(f"conditions=date {time.strftime('%Y-%m-%d %H:%M')}, python {platform.python_version()}, "
          f"{os.cpu_count()} cpus, {platform.machine()}, load_avg_1m {os.getloadavg()[0]:.2f}, "
          f"lean {toolchain.version} ({toolchain.source}), workers={args.workers}, items={args.items}, "
          f"headers={args.headers}, batch_size={args.batch_size}, in_flight={args.in_flight}, "
          f"rounds={args.rounds}, latency_requests={args.latency_requests}, httpx {httpx.__version__}, "
          f"clients: AsyncKiminaClient-style (shared connections) and KiminaClient-style (a new httpx.Client per request)", flush=True)

    config = lean_config(lean=toolchain.lean, search_path=[root], max_sessions=8,
                         request_timeout_s=SNIPPET_TIMEOUT_S + MARGIN_S)  # as `serve` builds it
    me = psutil.Process()
    pool_s: list[float] = []
    kimina_s: list[float] = []
    keepalive_s: list[float] = []
    cpu_pool = cpu_client = cpu_server = 0.0
    pool_lat: list[float] = []
    service_lat: list[float] = []
    new_client_lat: list[float] = []

    with serve("-j", str(args.workers), "--search-path", root, "--no-access-log") as server:
        url = server.url
        server_proc = psutil.Process(server.process.pid)
        async with Pool(config, size=args.workers, queue_timeout_s=500) as pool:
            # Warm-up, untimed, the same snippets on both sides.
            _, warm_verdicts = await through_pool(pool, warm_requests)
            _, served_warm = await anyio.to_thread.run_sync(
                lambda: through_service(url, warm_items, args, keepalive=True))
            assert warm_verdicts == served_warm, (warm_verdicts, served_warm)

            expected: Counter[str] | None = None

            async def pool_pass() -> None:
                nonlocal cpu_pool, expected
                cpu = me.cpu_times()
                seconds, verdicts = await through_pool(pool, requests)
                after = me.cpu_times()
                cpu_pool += (after.user + after.system) - (cpu.user + cpu.system)
                pool_s.append(seconds)
                assert expected in (None, verdicts), (expected, verdicts)
                expected = verdicts

            async def service_pass(keepalive: bool) -> None:
                nonlocal cpu_client, cpu_server
                cpu, server_cpu = me.cpu_times(), server_proc.cpu_times()
                seconds, verdicts = await anyio.to_thread.run_sync(
                    lambda: through_service(url, items, args, keepalive=keepalive))
                after, server_after = me.cpu_times(), server_proc.cpu_times()
                if not keepalive:
                    cpu_client += (after.user + after.system) - (cpu.user + cpu.system)
                    cpu_server += (server_after.user + server_after.system) - (server_cpu.user + server_cpu.system)
                (keepalive_s if keepalive else kimina_s).append(seconds)
                assert expected is None or verdicts == expected, (expected, verdicts)

            passes = [pool_pass, lambda: service_pass(False), lambda: service_pass(True)]
            for r in range(args.rounds):
                for one_pass in passes if r % 2 == 0 else passes[::-1]:
                    await one_pass()
            assert expected is not None

            # Latency: one snippet at a time, pool and service interleaved in chunks.
            for i, c in one:  # each latency snippet warm on both sides
                await pool.call(CHECK, check_request(i, c))
            with httpx.Client(timeout=httpx.Timeout(args.http_timeout)) as client:
                for i, c in one:
                    post(client, url, [(i, c)])

                def service_chunk(start: int, count: int) -> list[float]:
                    out = []
                    for n in range(start, start + count):
                        i, c = one[n % len(one)]
                        t = time.perf_counter()
                        assert post(client, url, [(i, c)]) == ["ok"]
                        out.append((time.perf_counter() - t) * 1e3)
                    return out

                for start in range(0, args.latency_requests, LATENCY_CHUNK):
                    count = min(LATENCY_CHUNK, args.latency_requests - start)
                    for n in range(start, start + count):
                        i, c = one[n % len(one)]
                        t = time.perf_counter()
                        result = await pool.call(CHECK, check_request(i, c), timeout=SNIPPET_TIMEOUT_S + MARGIN_S)
                        pool_lat.append((time.perf_counter() - t) * 1e3)
                        assert result.verdict == "ok", result.messages
                    service_lat.extend(await anyio.to_thread.run_sync(service_chunk, start, count))

            def new_client_chunk() -> list[float]:
                out = []
                for n in range(min(NEW_CLIENT_LATENCIES, args.latency_requests)):
                    i, c = one[n % len(one)]
                    t = time.perf_counter()
                    assert post_new_client(url, [(i, c)], args.http_timeout) == ["ok"]
                    out.append((time.perf_counter() - t) * 1e3)
                return out

            new_client_lat = await anyio.to_thread.run_sync(new_client_chunk)

            def health_chunk() -> list[float]:
                out = []
                with httpx.Client(timeout=httpx.Timeout(args.http_timeout)) as client:
                    for _ in range(HEALTH_REQUESTS):
                        t = time.perf_counter()
                        client.get(url + "/health").raise_for_status()
                        out.append((time.perf_counter() - t) * 1e3)
                return out

            health_lat = await anyio.to_thread.run_sync(health_chunk)

    total = args.items * args.rounds
    pool_rate = total / sum(pool_s)
    kimina_rate = total / sum(kimina_s)
    keepalive_rate = total / sum(keepalive_s)
    rates = lambda seconds: ",".join(f"{args.items / s:.1f}" for s in seconds)  # noqa: E731
    print(f"verdicts={','.join(f'{k}:{v}' for k, v in sorted(expected.items()))}")
    print(f"pool_items_per_s={pool_rate:.1f}")
    print(f"service_items_per_s={keepalive_rate:.1f}")
    print(f"service_sync_client_items_per_s={kimina_rate:.1f}")
    print(f"service_ratio={keepalive_rate / pool_rate:.3f}")
    print("service_ratio_goal=0.85")
    print(f"service_sync_client_ratio={kimina_rate / pool_rate:.3f}")
    print(f"pool_rounds_items_per_s={rates(pool_s)}")
    print(f"service_rounds_items_per_s={rates(keepalive_s)}")
    print(f"service_sync_client_rounds_items_per_s={rates(kimina_s)}")
    pool_p50, service_p50 = statistics.median(pool_lat), statistics.median(service_lat)
    print(f"pool_call_p50_ms={pool_p50:.2f}")
    print(f"pool_call_p95_ms={percentile(pool_lat, 0.95):.2f}")
    print(f"service_call_p50_ms={service_p50:.2f}")
    print(f"service_call_p95_ms={percentile(service_lat, 0.95):.2f}")
    print(f"request_overhead_p50_ms={service_p50 - pool_p50:.2f}")
    print(f"request_overhead_p95_ms={percentile(service_lat, 0.95) - percentile(pool_lat, 0.95):.2f}")
    print(f"service_call_new_client_p50_ms={statistics.median(new_client_lat):.2f}")
    print(f"health_p50_ms={statistics.median(health_lat):.2f}")
    print(f"cpu_server_s_per_item={cpu_server / total:.5f}")
    print(f"cpu_pool_parent_s_per_item={cpu_pool / total:.5f}")
    print(f"cpu_client_s_per_item={cpu_client / total:.5f}")
    print(f"server_exit={server.exit_code}")
    print(f"server_left_behind={len(server.left_behind)}")
    print(f"bench_s={time.perf_counter() - began:.0f}")
    assert server.exit_code == 0, "".join(server.stderr)[-2000:]
    assert not server.left_behind, server.left_behind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=400, help="snippets in the batch (default 400)")
    parser.add_argument("--workers", "-j", type=int, default=2, help="workers on each side (default 2)")
    parser.add_argument("--headers", type=int, default=3, choices=(1, 2, 3), help="distinct headers (default 3)")
    parser.add_argument("--batch-size", type=int, default=8, help="snippets per POST (kimina-client's default 8)")
    parser.add_argument("--in-flight", type=int, default=5,
                        help="POSTs in flight (kimina-client's max_workers, default 5)")
    parser.add_argument("--rounds", type=int, default=2, help="timed passes of each kind (default 2)")
    parser.add_argument("--latency-requests", type=int, default=200,
                        help="sequential one-snippet calls on each side (default 200)")
    parser.add_argument("--http-timeout", type=float, default=120.0, help="seconds per HTTP call (default 120)")
    args = parser.parse_args()
    if min(args.items, args.workers, args.batch_size, args.in_flight, args.rounds, args.latency_requests) < 1:
        parser.error("every count must be >= 1")
    anyio.run(run, args)


if __name__ == "__main__":
    main()
