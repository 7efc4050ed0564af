"""A parent process that starts a worker and then waits to be killed with SIGKILL.

``python -m tests.children.doomed_parent MODE READY_PATH`` (run from the repo root)

MODE is ``idle``, ``busy_native`` (the child sleeps in libc holding the GIL, so none of its
Python threads can react), ``grandchild`` (the child started ``sleep 1000`` with
``lean_worker_child.popen_kwargs()``), ``grandchild_busy_native`` or ``sandboxed`` (an idle
child in a sandbox: the spawned child, its init and the worker). The parent prints one JSON
line ``{"child": pid, "grandchild": pid or null, "tree": [pids below the child]}``; in a
``busy_native`` mode the child creates READY_PATH once it is inside the native sleep. Then
the parent waits.
"""

from __future__ import annotations

import json
import sys

import anyio
import psutil

from lean_worker import Worker
from tests.children.faulty import SLEEP, SPAWN, Sleep, Spawn
from tests.conftest import child_config


async def main(mode: str, ready_path: str) -> None:
    sandbox = "required" if mode == "sandboxed" else "off"
    async with Worker(child_config("tests.children.faulty", sandbox=sandbox)) as worker:
        grandchild = None
        if mode.startswith("grandchild"):
            grandchild = await worker.call(SPAWN, Spawn(die_with_child=True))
        tree = [p.pid for p in psutil.Process(worker.pid).children(recursive=True)]
        print(json.dumps({"child": worker.pid, "grandchild": grandchild, "tree": tree}), flush=True)
        if mode.endswith("busy_native"):
            await worker.call(SLEEP, Sleep(1000, native=True, hold_gil=True, ready_path=ready_path), timeout=None)
        await anyio.sleep(1000)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
