"""Run the real ``lean-worker serve`` as a subprocess on 127.0.0.1 and an ephemeral port.

    with Server("--fixtures", "-j", "2") as server:
        httpx.get(server.url + "/health")

Leaving the block sends SIGTERM and checks that the server exits 0 and leaves no process
of its tree behind (its workers, their Lean processes).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"listening on (http://[0-9.]+:\d+)")


class Server:
    def __init__(self, *args: str, env: dict[str, str] | None = None, start_timeout_s: float = 120.0) -> None:
        self.args = ["--port", "0", *args]
        self.env = {**os.environ, **(env or {})}
        self.start_timeout_s = start_timeout_s
        self.url = ""
        self.process: subprocess.Popen[str] | None = None
        self.stderr_lines: list[str] = []
        self.exit_code: int | None = None
        self._descendants: set[int] = set()

    def __enter__(self) -> Server:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lean_worker.cli", "serve", *self.args],
            cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        found: list[str] = []
        reader = threading.Thread(target=self._read_url, args=(found,), daemon=True)
        reader.start()
        reader.join(self.start_timeout_s)
        if not found:
            self.process.kill()
            self.process.wait(10)
            raise RuntimeError(f"the server did not start; exit={self.process.returncode} "
                               f"stderr={''.join(self.stderr_lines)[-3000:]}")
        self.url = found[0]
        return self

    def _read_url(self, found: list[str]) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            match = _LISTENING.search(line)
            if match:
                found.append(match.group(1))
                return

    def _drain_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr_lines.append(line)

    def tree(self) -> set[int]:
        """Pids of the server's live descendants (workers, Lean processes)."""
        assert self.process is not None
        try:
            return {p.pid for p in psutil.Process(self.process.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            return set()

    def access_log(self) -> list[str]:
        return [line for line in self.stderr_lines if line.startswith("{")]

    def stop(self, timeout_s: float = 60.0) -> int:
        assert self.process is not None
        if self.exit_code is not None:
            return self.exit_code
        self._descendants = self.tree()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.exit_code = self.process.wait(10)
            raise
        return self.exit_code

    def leftovers(self, wait_s: float = 5.0) -> list[int]:
        """Descendants seen before the stop that are still alive (after up to ``wait_s``)."""
        deadline = time.monotonic() + wait_s
        alive = [pid for pid in self._descendants if psutil.pid_exists(pid)]
        while alive and time.monotonic() < deadline:
            time.sleep(0.05)
            alive = [pid for pid in alive if _alive(pid)]
        return alive

    def __exit__(self, *exc_info: object) -> None:
        code = self.stop()
        left = self.leftovers()
        if exc_info[0] is None:
            assert code == 0, f"the server exited {code}; stderr={''.join(self.stderr_lines)[-3000:]}"
            assert not left, f"processes left behind by the server: {left}"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
