"""Why the warm engine is a direct ``lean --worker`` with ``-Dserver.reportDelayMs=0``.

    python bench/lean_engines.py [--checks 30]

Edit-to-diagnostics time of one small prelude snippet (a definition with a type error,
so diagnostics are non-empty), in one run, for:

- ``server_default``: ``lean --server`` (watchdog + file worker), the LSP way editors use;
- ``server_nodelay``: the same with ``-Dserver.reportDelayMs=0``;
- ``worker_nodelay``: ``lean --worker -Dserver.reportDelayMs=0`` driven directly (ours);
- ``cold``: one ``lean --json --stdin`` process per check.

Prints ``key=value`` lines: p50 per engine in ms and ratios against ``worker_nodelay``.
"""

from __future__ import annotations

import argparse
import os
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lean_worker_child.lean.lsp import REPORT_DELAY_OPTION, FileWorker  # noqa: E402
from lean_worker_child.lean.toolchain import resolve_toolchain  # noqa: E402

BASE = (
    "prelude\nuniverse u\ninductive Eq {a : Sort u} (x : a) : a -> Prop | refl : Eq x x\n"
    "inductive N | z | s (n : N)\n"
)


def snippet(i: int) -> str:
    return BASE + f"theorem t{i} : Eq N.z N.z := Eq.refl\ndef bad{i} : N := N.z N.z\n"


class Server:
    """A minimal LSP client of ``lean --server`` (the watchdog)."""

    def __init__(self, lean: str, args: list[str], cwd: str) -> None:
        self.proc = subprocess.Popen([lean, "--server", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, cwd=cwd)
        self.q: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True).start()
        self.request("initialize", {"processId": os.getpid(), "rootUri": None, "capabilities": {}})
        self.send({"jsonrpc": "2.0", "method": "initialized", "params": {}})

    def _read(self) -> None:
        out = self.proc.stdout
        assert out is not None
        while True:
            length = -1
            while True:
                line = out.readline()
                if not line:
                    self.q.put(None)
                    return
                if not line.strip():
                    break
                key, _, value = line.partition(b":")
                if key.lower() == b"content-length":
                    length = int(value)
            self.q.put(orjson.loads(out.read(length)))

    def send(self, message: dict[str, Any]) -> None:
        body = orjson.dumps(message)
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.proc.stdin.flush()

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.next_id += 1
        rid = self.next_id
        self.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        while True:
            message = self.q.get(timeout=60)
            if message is None:
                raise RuntimeError("lean --server exited")
            if "method" in message and "id" in message:
                self.send({"jsonrpc": "2.0", "id": message["id"], "result": None})
            elif message.get("id") == rid:
                return message

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def bench_server(lean: str, args: list[str], checks: int, workdir: str) -> list[float]:
    server = Server(lean, args, workdir)
    uri = f"file://{workdir}/Server{len(args)}.lean"
    try:
        server.send({"jsonrpc": "2.0", "method": "textDocument/didOpen",
                     "params": {"textDocument": {"uri": uri, "languageId": "lean4", "version": 1, "text": snippet(0)}}})
        server.request("textDocument/waitForDiagnostics", {"uri": uri, "version": 1})
        times = []
        for v in range(2, checks + 2):
            t = time.perf_counter()
            server.send({"jsonrpc": "2.0", "method": "textDocument/didChange",
                         "params": {"textDocument": {"uri": uri, "version": v}, "contentChanges": [{"text": snippet(v)}]}})
            server.request("textDocument/waitForDiagnostics", {"uri": uri, "version": v})
            times.append((time.perf_counter() - t) * 1e3)
        return times
    finally:
        server.close()


def bench_worker(lean: str, checks: int, workdir: str) -> list[float]:
    worker = FileWorker(lean, uri=f"file://{workdir}/Worker.lean", cwd=workdir, env=os.environ)
    try:
        worker.check(snippet(0), timeout_s=60)
        times = []
        for v in range(checks):
            t = time.perf_counter()
            diags = worker.check(snippet(v + 1), timeout_s=60)
            times.append((time.perf_counter() - t) * 1e3)
            assert diags, "expected the type error's diagnostic"
        return times
    finally:
        worker.close()


def bench_cold(lean: str, checks: int) -> list[float]:
    times = []
    for v in range(checks):
        t = time.perf_counter()
        subprocess.run([lean, "--json", "--stdin"], input=snippet(v).encode(), capture_output=True, check=False)
        times.append((time.perf_counter() - t) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checks", type=int, default=30)
    args = parser.parse_args()
    toolchain = resolve_toolchain()
    print(f"conditions=python {platform.python_version()}, {os.cpu_count()} cpus, {platform.machine()}, "
          f"lean {toolchain.version} ({toolchain.source}), checks={args.checks}, prelude snippet with one type error")
    with tempfile.TemporaryDirectory() as workdir:
        results = {
            "server_default": bench_server(toolchain.lean, [], args.checks, workdir),
            "server_nodelay": bench_server(toolchain.lean, [f"-D{REPORT_DELAY_OPTION}=0"], args.checks, workdir),
            "worker_nodelay": bench_worker(toolchain.lean, args.checks, workdir),
            "cold": bench_cold(toolchain.lean, args.checks),
        }
    p50 = {name: statistics.median(times) for name, times in results.items()}
    for name, value in p50.items():
        print(f"{name}_edit_p50_ms={value:.2f}")
    ours = p50["worker_nodelay"]
    for name, value in p50.items():
        if name != "worker_nodelay":
            print(f"{name}_over_worker_nodelay={value / ours:.1f}")


if __name__ == "__main__":
    main()
