"""``lean-worker`` command line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import anyio

from . import __version__
from ._config import WorkerConfig
from ._errors import WorkerError
from ._worker import Worker


def _demo(args: argparse.Namespace) -> int:
    from lean_worker_protocol.demo import ECHO, PRIMES, Echo, PrimesRequest

    async def run() -> int:
        config = WorkerConfig.for_module("lean_worker_child.demo", name="demo")
        async with Worker(config) as worker:
            hello = worker.hello
            assert hello is not None
            print(f"worker {hello.worker_name} {hello.worker_version} pid={hello.pid} generation={worker.generation} "
                  f"commands={[c.name for c in hello.commands]}")
            reply = await worker.call(ECHO, Echo("hello from the parent"))
            print(f"echo -> {reply.text!r}")

            def on_progress(p: object) -> None:
                print(f"  progress {p.phase} {p.current}/{p.total}")  # type: ignore[attr-defined]

            def on_diagnostic(d: object) -> None:
                print(f"  diagnostic [{d.severity}] {d.code}: {d.message}")  # type: ignore[attr-defined]

            print(f"stream primes below {args.below} (rows are tentative until the summary):")
            async with worker.stream(
                PRIMES,
                PrimesRequest(args.below, progress_every=max(1, args.below // 4)),
                on_progress=on_progress,
                on_diagnostic=on_diagnostic,
            ) as rows:
                async for prime in rows:
                    if prime.index < args.show:
                        print(f"  row {prime.index}: {prime.value}")
                    elif prime.index == args.show:
                        print("  ...")
            s = rows.summary
            print(f"summary: {s.summary.count} primes, largest={s.summary.largest}, rows={s.rows} "
                  f"elapsed_ms={s.elapsed_s * 1000:.1f} generation={s.generation}")
            stats = worker.stats()
            print(f"stats: requests={stats.requests} rows_delivered={stats.rows_delivered} "
                  f"spawn_handshake_ms={(stats.spawn_handshake_s or 0) * 1000:.1f} restarts={stats.restarts}")
            report = await worker.close()
            print(f"shutdown: step={report.step} elapsed_ms={report.elapsed_s * 1000:.1f}")
        return 0

    return anyio.run(run)


def _toolchain(args: argparse.Namespace) -> int:
    """Ask the Lean worker child which toolchain it resolved (the parent never runs Lean)."""
    import msgspec

    from .lean import TOOLCHAIN, ToolchainQuery, lean_config

    async def run() -> int:
        config = lean_config(lean=args.lean, project=args.project, search_path=args.search_path)
        async with Worker(config) as worker:
            report = await worker.call(TOOLCHAIN, ToolchainQuery())
        if args.json:
            print(msgspec.json.encode(report).decode())
            return 0
        print(f"lean:            {report.lean}")
        print(f"found by:        {report.source}")
        print(f"version:         {report.version}")
        print(f"commit:          {report.commit or '-'}")
        print(f"prefix:          {report.prefix or '-'}")
        stdlib = "present" if report.stdlib_present else "absent (Init.olean missing: prelude files only)"
        print(f"standard library: {stdlib}")
        print(f"search path:     {', '.join(report.search_path) or '-'}")
        return 0

    return anyio.run(run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lean-worker", description="Supervised worker processes for Lean 4 work.")
    parser.add_argument("--version", action="version", version=f"lean-worker {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a typed streaming command through a supervised worker")
    demo.add_argument("--below", type=int, default=200, help="stream the primes below this bound (default 200)")
    demo.add_argument("--show", type=int, default=10, help="print this many rows (default 10)")
    demo.set_defaults(func=_demo)
    tc = sub.add_parser("toolchain", help="report the Lean toolchain the Lean worker resolves")
    tc.add_argument("--lean", help="an explicit lean executable (else $LEAN_WORKER_LEAN, lake env, PATH, test toolchain)")
    tc.add_argument("--project", help="a Lake project directory (default: the working directory)")
    tc.add_argument("--search-path", action="append", default=[], help="a directory of .olean files (repeatable)")
    tc.add_argument("--json", action="store_true", help="print the report as JSON")
    tc.set_defaults(func=_toolchain)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        code: int = args.func(args)
    except WorkerError as exc:
        print(f"lean-worker {args.command}: {exc.code}: {exc}", file=sys.stderr)
        return 1
    if args.command == "demo":
        print(f"done in {time.perf_counter() - started:.2f}s")
    return code


if __name__ == "__main__":
    sys.exit(main())
