"""A parent whose cancel scope around ``async with Worker`` fires.

``python -m tests.children.cancelled_owner MODE`` (run from the repo root), MODE ``idle`` or
``mid_request``. The scope is cancelled 0.5 s in; the script then prints one JSON line: the
child's pid, whether the child was reaped, the seconds the scope took to unwind and the file
descriptors it left open. Run as its own process so that a hang fails the test by a timeout
instead of hanging the test session.
"""

from __future__ import annotations

import json
import os
import sys
import time

import anyio
import psutil

from lean_worker import Worker
from tests.children.faulty import SLEEP, Sleep
from tests.conftest import child_config

CANCEL_AFTER_S = 0.5


async def main(mode: str) -> None:
    config = child_config("tests.children.faulty", cancel_grace_s=0.2, kill_grace_s=0.2)
    fds_before = len(os.listdir("/proc/self/fd"))
    started = time.monotonic()
    pid = None
    with anyio.move_on_after(CANCEL_AFTER_S) as scope:
        async with Worker(config) as worker:
            pid = worker.pid
            if mode == "mid_request":
                await worker.call(SLEEP, Sleep(30), timeout=None)
            else:
                await anyio.sleep(30)
    elapsed = time.monotonic() - started
    try:
        psutil.Process(pid).status()
        reaped = False
    except psutil.NoSuchProcess:
        reaped = True
    print(json.dumps({
        "child": pid,
        "cancelled": scope.cancelled_caught,
        "reaped": reaped,
        "unwind_s": elapsed - CANCEL_AFTER_S,
        "fds_left": len(os.listdir("/proc/self/fd")) - fds_before,
    }), flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
