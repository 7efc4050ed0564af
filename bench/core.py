"""Worker-core benchmarks against a raw baseline measured in the same run.

    python bench/core.py [--quick]

Prints ``key=value`` lines:

- ``rtt_p50_us``, ``rtt_p99_us``: typed no-op request (``echo``) through ``Worker.call``
  (default config: adaptive busy-polling for fast replies, ``spin_wait_us=100``);
  ``rtt_nospin_p50_us``: the same with ``spin_wait_us=0`` (every reply awaited in the loop);
  ``raw_rtt_p50_us``: the same message as length-prefixed msgspec frames over a pipe with
  blocking reads and writes on both sides, no framework; ``rtt_ratio`` (goal <= 2.0).
- ``stream_rows_per_s``: 1,000,000 small rows child -> parent through ``Worker.stream``;
  ``raw_rows_per_s``: the same rows as one frame per row, read with a buffered reader;
  ``stream_ratio`` (goal >= 1.0 and stream_rows_per_s >= 1,000,000).
- ``cycle_ms``: explicit ``Worker.cycle()`` (graceful stop + spawn + handshake);
  ``cold_start_ms``: spawn + handshake of a fresh worker; ``cycle_ratio`` (goal <= 1.5).

The raw baseline child is this file run with ``--raw-child``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import replace

import anyio
import msgspec

HEADER = struct.Struct(">I")


class Ping(msgspec.Struct, frozen=True):
    text: str = ""


class RawRow(msgspec.Struct, frozen=True, array_like=True):
    i: int


# -- raw baseline ------------------------------------------------------------------------------
def raw_child(read_fd: int, write_fd: int) -> None:
    reader = os.fdopen(read_fd, "rb", buffering=65536)
    writer = os.fdopen(write_fd, "wb", buffering=65536)
    dec = msgspec.msgpack.Decoder(list)
    enc = msgspec.msgpack.Encoder()
    ping_dec = msgspec.msgpack.Decoder(Ping)
    while True:
        head = reader.read(4)
        if len(head) < 4:
            return
        (size,) = HEADER.unpack(head)
        body = reader.read(size)
        command = dec.decode(body)
        if command[0] == "ping":
            reply = enc.encode(ping_dec.decode(command[1]))
            writer.write(HEADER.pack(len(reply)) + reply)
            writer.flush()
        elif command[0] == "rows":
            for i in range(command[1]):
                row = enc.encode(RawRow(i))
                writer.write(HEADER.pack(len(row)) + row)
            end = enc.encode(None)
            writer.write(HEADER.pack(len(end)) + end)
            writer.flush()


class RawPeer:
    def __init__(self) -> None:
        to_child_r, self.to_child = os.pipe()
        self.from_child, from_child_w = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--raw-child", str(to_child_r), str(from_child_w)],
            pass_fds=(to_child_r, from_child_w),
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self.reader = os.fdopen(self.from_child, "rb", buffering=65536)
        self.enc = msgspec.msgpack.Encoder()

    def send(self, obj: object) -> None:
        body = self.enc.encode(obj)
        os.write(self.to_child, HEADER.pack(len(body)) + body)

    def recv(self) -> bytes:
        (size,) = HEADER.unpack(self.reader.read(4))
        return self.reader.read(size)

    def close(self) -> None:
        os.close(self.to_child)
        self.proc.wait()
        self.reader.close()


def raw_rtt(samples: int) -> list[float]:
    peer = RawPeer()
    ping = msgspec.msgpack.encode(Ping())
    pong_dec = msgspec.msgpack.Decoder(Ping)
    times = []
    try:
        for _ in range(samples // 5):
            peer.send(["ping", ping])
            pong_dec.decode(peer.recv())
        for _ in range(samples):
            t0 = time.perf_counter_ns()
            peer.send(["ping", ping])
            pong_dec.decode(peer.recv())
            times.append((time.perf_counter_ns() - t0) / 1000)
    finally:
        peer.close()
    return times


def raw_rows(n: int) -> float:
    peer = RawPeer()
    row_dec = msgspec.msgpack.Decoder(RawRow | None)
    try:
        t0 = time.perf_counter()
        peer.send(["rows", n])
        count = 0
        while row_dec.decode(peer.recv()) is not None:
            count += 1
        elapsed = time.perf_counter() - t0
        assert count == n
    finally:
        peer.close()
    return n / elapsed


# -- lean-worker -------------------------------------------------------------------------------
def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def framework(samples: int, rows: int, cycles: int) -> dict[str, float]:
    from lean_worker import Worker, WorkerConfig
    from lean_worker_protocol.demo import COUNT, ECHO, CountRequest, Echo

    config = WorkerConfig.for_module("lean_worker_child.demo")
    out: dict[str, float] = {}
    async def round_trips(worker: Worker) -> list[float]:
        for _ in range(samples // 5):
            await worker.call(ECHO, Echo())
        times = []
        for _ in range(samples):
            t0 = time.perf_counter_ns()
            await worker.call(ECHO, Echo())
            times.append((time.perf_counter_ns() - t0) / 1000)
        return times

    async with Worker(config) as worker:
        times = await round_trips(worker)
        out["rtt_p50_us"] = _percentile(times, 0.50)
        out["rtt_p99_us"] = _percentile(times, 0.99)

        t0 = time.perf_counter()
        count = 0
        async with worker.stream(COUNT, CountRequest(rows)) as stream:
            async for _row in stream:
                count += 1
        elapsed = time.perf_counter() - t0
        assert count == rows == stream.summary.total_rows
        out["stream_rows_per_s"] = rows / elapsed

        cycle_times = []
        for _ in range(cycles):
            t0 = time.perf_counter()
            await worker.cycle()
            cycle_times.append((time.perf_counter() - t0) * 1000)
        out["cycle_ms"] = statistics.median(cycle_times)

    # The same round trip with busy-polling off: every reply is awaited in the event loop.
    async with Worker(replace(config, spin_wait_us=0)) as worker:
        out["rtt_nospin_p50_us"] = _percentile(await round_trips(worker), 0.50)

    cold = []
    for _ in range(cycles):
        t0 = time.perf_counter()
        async with Worker(config) as worker:
            cold.append((time.perf_counter() - t0) * 1000)
    out["cold_start_ms"] = statistics.median(cold)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer samples (smoke run)")
    parser.add_argument("--raw-child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_child:
        raw_child(*args.raw_child)
        return
    samples, rows, cycles = (2000, 200_000, 5) if args.quick else (20_000, 1_000_000, 15)

    raw_times = raw_rtt(samples)
    raw_rps = raw_rows(rows)
    result = anyio.run(framework, samples, rows, cycles)
    raw_p50 = _percentile(raw_times, 0.50)

    print(f"python={platform.python_version()} cpus={os.cpu_count()} machine={platform.machine()} "
          f"samples={samples} rows={rows} cycles={cycles}")
    print(f"rtt_p50_us={result['rtt_p50_us']:.1f}")
    print(f"rtt_p99_us={result['rtt_p99_us']:.1f}")
    print(f"raw_rtt_p50_us={raw_p50:.1f}")
    print(f"rtt_ratio={result['rtt_p50_us'] / raw_p50:.2f}")
    print(f"rtt_nospin_p50_us={result['rtt_nospin_p50_us']:.1f}")
    print(f"rtt_nospin_ratio={result['rtt_nospin_p50_us'] / raw_p50:.2f}")
    print(f"stream_rows_per_s={result['stream_rows_per_s']:.0f}")
    print(f"raw_rows_per_s={raw_rps:.0f}")
    print(f"stream_ratio={result['stream_rows_per_s'] / raw_rps:.2f}")
    print(f"cycle_ms={result['cycle_ms']:.1f}")
    print(f"cold_start_ms={result['cold_start_ms']:.1f}")
    print(f"cycle_ratio={result['cycle_ms'] / result['cold_start_ms']:.2f}")


if __name__ == "__main__":
    main()
