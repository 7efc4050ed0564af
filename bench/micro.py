"""Micro-benchmarks behind the hot-path design choices (each pair measured in one run).

    python bench/micro.py

Prints ``key=value`` lines. CPU-bound figures use thread CPU time (best of 5), so other
load on the machine inflates them less; round trips use wall time (median).

- ``lock_with_ns`` / ``lock_bound_ns``: a ``threading.Lock`` taken with ``with`` against
  bound ``acquire``/``release``.
- ``anyio_lock_ns`` / ``fifo_lock_ns``: uncontended acquire + release of ``anyio.Lock``
  (fast_acquire) against the supervisor's ``FifoLock`` (lean_worker/_lock.py), on asyncio.
- ``row_encode_under_lock_us`` / ``row_append_us``: per row, encoding into a buffer under
  a lock (the first child design) against ``RequestContext.emit`` (append; the batch is
  encoded in one call at flush), both including the flushes.
- ``read_256k_us`` / ``read_64k_us``: ``os.read`` of a small message with a 256 KiB or a
  64 KiB buffer (first suspected of costing an mmap/munmap per read; measured equal).
- ``channel_wait_readable_rtt_us`` / ``channel_add_reader_rtt_us``: a pipe round trip to
  an echo process, awaiting each reply with ``anyio.wait_readable`` against a persistent
  ``loop.add_reader`` callback resolving a future.
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import subprocess
import sys
import threading
import time

import anyio
import msgspec

N = 200_000


def _best_per_op(fn, n: int, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.thread_time()
        fn(n)
        best = min(best, (time.thread_time() - t0) / n)
    return best


def locks() -> dict[str, float]:
    lock = threading.Lock()

    def with_lock(n: int) -> None:
        for _ in range(n):
            with lock:
                pass

    def bound(n: int) -> None:
        acquire, release = lock.acquire, lock.release
        for _ in range(n):
            acquire()
            release()

    return {"lock_with_ns": _best_per_op(with_lock, N) * 1e9, "lock_bound_ns": _best_per_op(bound, N) * 1e9}


def async_locks() -> dict[str, float]:
    from lean_worker._lock import FifoLock

    async def run() -> dict[str, float]:
        out = {}
        for key, lock in (("anyio_lock_ns", anyio.Lock(fast_acquire=True)), ("fifo_lock_ns", FifoLock())):
            best = float("inf")
            for _ in range(5):
                t0 = time.thread_time()
                for _ in range(50_000):
                    async with lock:
                        pass
                best = min(best, (time.thread_time() - t0) / 50_000)
            out[key] = best * 1e9
        return out

    return anyio.run(run)


def rows() -> dict[str, float]:
    from lean_worker_child._connection import Connection, RequestContext
    from lean_worker_protocol import Request
    from lean_worker_protocol.demo import COUNT, Counted

    read_fd, write_fd = os.pipe()
    reader = subprocess.Popen(["cat"], stdin=read_fd, stdout=subprocess.DEVNULL)
    os.close(read_fd)
    conn = Connection(os.open(os.devnull, os.O_RDONLY), write_fd, 16 * 1024 * 1024)
    ctx = RequestContext(conn, Request(1, 1, COUNT.name, msgspec.Raw(b"\x80")), COUNT)
    conn.active = ctx
    items = [Counted(i) for i in range(N)]
    encoder = msgspec.msgpack.Encoder()
    lock = threading.Lock()

    def encode_under_lock(n: int) -> None:
        data = bytearray()
        count = 0
        for row in items[:n]:
            with lock:
                encoder.encode_into(row, data, -1)
                count += 1
                if count >= 1024:
                    conn.write_locked(b"\xdd" + count.to_bytes(4, "big") + bytes(data))
                    data.clear()
                    count = 0

    def append(n: int) -> None:
        emit = ctx.emit
        for row in items[:n]:
            emit(row)

    out = {
        "row_encode_under_lock_us": _best_per_op(encode_under_lock, N) * 1e6,
        "row_append_us": _best_per_op(append, N) * 1e6,
    }
    with conn.lock:  # flush what is pending and detach, so the flusher thread has nothing left
        ctx._flush_all_locked()
        conn.active = None
    os.close(write_fd)
    reader.wait()
    return out


def reads() -> dict[str, float]:
    read_fd, write_fd = os.pipe()
    message = b"x" * 40

    def read_with(size: int):
        def run(n: int) -> None:
            for _ in range(n):
                os.write(write_fd, message)
                os.read(read_fd, size)

        return run

    out = {
        "read_256k_us": _best_per_op(read_with(256 * 1024), 50_000) * 1e6,
        "read_64k_us": _best_per_op(read_with(64 * 1024), 50_000) * 1e6,
    }
    os.close(read_fd)
    os.close(write_fd)
    return out


_ECHO = "import os,sys\nr,w=int(sys.argv[1]),int(sys.argv[2])\nwhile True:\n b=os.read(r,65536)\n if not b: break\n os.write(w,b)\n"


def channel_waits() -> dict[str, float]:
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-c", _ECHO, str(to_child_r), str(from_child_w)], pass_fds=(to_child_r, from_child_w)
    )
    os.close(to_child_r)
    os.close(from_child_w)
    os.set_blocking(from_child_r, False)
    message = b"ping"

    async def wait_readable(samples: int) -> float:
        times = []
        for _ in range(samples):
            t0 = time.perf_counter_ns()
            os.write(to_child_w, message)
            while True:
                try:
                    os.read(from_child_r, 65536)
                    break
                except BlockingIOError:
                    await anyio.wait_readable(from_child_r)
            times.append(time.perf_counter_ns() - t0)
        return statistics.median(times) / 1000

    async def add_reader(samples: int) -> float:
        loop = asyncio.get_running_loop()
        waiter: list[asyncio.Future[None] | None] = [None]
        got: list[bytes] = []

        def on_readable() -> None:
            try:
                got.append(os.read(from_child_r, 65536))
            except BlockingIOError:
                return
            if waiter[0] is not None and not waiter[0].done():
                waiter[0].set_result(None)

        loop.add_reader(from_child_r, on_readable)
        times = []
        try:
            for _ in range(samples):
                t0 = time.perf_counter_ns()
                os.write(to_child_w, message)
                while not got:
                    waiter[0] = loop.create_future()
                    await waiter[0]
                got.clear()
                times.append(time.perf_counter_ns() - t0)
        finally:
            loop.remove_reader(from_child_r)
        return statistics.median(times) / 1000

    async def run() -> dict[str, float]:
        await wait_readable(2000)
        await add_reader(2000)
        return {
            "channel_wait_readable_rtt_us": await wait_readable(20_000),
            "channel_add_reader_rtt_us": await add_reader(20_000),
        }

    try:
        return anyio.run(run)
    finally:
        os.close(to_child_w)
        child.wait()
        os.close(from_child_r)


def main() -> None:
    results: dict[str, float] = {}
    for part in (locks, async_locks, rows, reads, channel_waits):
        results.update(part())
    print(f"python={platform.python_version()} cpus={os.cpu_count()} machine={platform.machine()}")
    for key, value in results.items():
        print(f"{key}={value:.3f}" if value < 10 else f"{key}={value:.1f}")


if __name__ == "__main__":
    main()
