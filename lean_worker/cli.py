"""``lean-worker`` command line."""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import anyio

from lean_worker_protocol import Call, Command, Stream

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


# -- arguments shared by several commands, each declared once --------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr, exit status 2 (argparse's own rule)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0; got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0; got {text!r}")
    return value


def _directory(text: str) -> str:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a directory" if Path(text).exists() else f"{text} does not exist")
    return text


def _existing(text: str) -> str:
    if not Path(text).exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    return text


def _writable(text: str) -> str:
    """A file this process can create or overwrite (``-`` is stdout). Checked before any work;
    the file itself is opened only once the batch starts."""
    if text == "-":
        return text
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text}: it is a directory")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise argparse.ArgumentTypeError(f"cannot write {text}: permission denied")
        return text
    parent = path.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot create {text}: its directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot create {text}: permission denied in {parent}")
    return text


def _lean_arguments(container: Any, *, search_path: bool = True) -> None:
    """Where the Lean worker finds Lean: ``--lean``, ``--project`` and ``--search-path``."""
    container.add_argument("--lean", help="an explicit lean executable (else $LEAN_WORKER_LEAN, lake env, PATH, test toolchain)")
    container.add_argument("--project", type=_directory, help="a Lake project directory (default: the working directory)")
    if search_path:
        container.add_argument("--search-path", action="append", default=[], type=_directory,
                               help="a directory of .olean files (repeatable)")


def _timeout_argument(container: Any, help: str) -> None:
    container.add_argument("--timeout", type=_seconds, default=60.0, help=f"{help} (default 60)")


def _json_argument(container: Any, help: str = "print the report as JSON") -> None:
    container.add_argument("--json", action="store_true", help=help)


def _target_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group(
        "which worker child",
        "default: the first-party Lean worker. Otherwise the child is resolved in this order: "
        "$VAR (when set, nothing else is tried), --executable, --sibling, --module",
    )
    where.add_argument("--env-var", metavar="VAR", help="an environment variable that overrides the child's command")
    where.add_argument("--executable", metavar="PATH", help="the child's executable")
    where.add_argument("--sibling", metavar="NAME", help="a console script beside this Python interpreter")
    where.add_argument("--module", metavar="M", help="python -m M with this interpreter")
    where.add_argument("--child-arg", action="append", default=[], metavar="ARG", help="an argument for the child (repeatable)")
    _lean_arguments(parser.add_argument_group("the Lean worker (default target only)"))
    parser.add_argument("--sandbox", choices=("off", "auto", "required"), default=None,
                        help="start the child sandboxed and report what the sandbox enforces here "
                             "(default: auto for the Lean worker, off for another child)")
    _timeout_argument(parser, "seconds for start-up and for each request")
    _json_argument(parser)


def _target_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[WorkerConfig, bool]:
    """The config of the child to probe, and whether it is the first-party Lean worker."""
    timeouts = {"startup_timeout_s": args.timeout, "request_timeout_s": args.timeout}
    custom = any(v is not None for v in (args.env_var, args.executable, args.sibling, args.module))
    if not custom:
        from .lean import lean_config

        if args.child_arg:
            parser.error("--child-arg needs --env-var, --executable, --sibling or --module")
        config = lean_config(lean=args.lean, project=args.project, search_path=args.search_path,
                             sandbox=args.sandbox or "auto", **timeouts)
        return config, True
    if args.lean or args.project or args.search_path:
        parser.error("--lean, --project and --search-path apply only to the first-party Lean worker (the default target)")
    from ._resolve import resolve_child

    child = resolve_child(
        env=args.env_var, path=args.executable, sibling=args.sibling, module=args.module, args=args.child_arg
    )
    name = args.sibling or args.module or Path(child.argv[0]).name
    return WorkerConfig(child=child, name=name, sandbox=args.sandbox or "off", **timeouts), False  # type: ignore[arg-type]


def _expected(specs: Sequence[str], parser: argparse.ArgumentParser) -> list[Command]:
    """``MODULE`` (every Call and Stream declared in it) or ``MODULE:NAME``."""
    import importlib

    commands: list[Command] = []
    for spec in specs:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            parser.error(f"--expect {spec}: cannot import {module_name}: {exc}")
        if attr:
            value = getattr(module, attr, None)
            if not isinstance(value, Call | Stream):
                parser.error(f"--expect {spec}: {attr} is not a Call or Stream declaration")
            found = [value]
        else:
            found = [v for v in vars(module).values() if isinstance(v, Call | Stream)]
            if not found:
                parser.error(f"--expect {spec}: {module_name} declares no Call or Stream")
        commands += [c for c in found if all(c is not known for known in commands)]
    return commands


def _check(args: argparse.Namespace) -> int:
    import msgspec

    from ._probe import check, not_found_report, render_check
    from ._errors import ChildNotFound

    parser: argparse.ArgumentParser = args.parser
    expect = _expected(args.expect, parser)
    imports = [m for value in args.lean_imports for m in value.replace(",", " ").split()]
    try:
        config, lean = _target_config(args, parser)
    except ChildNotFound as exc:
        report = not_found_report(exc)
    else:
        steps = None  # check's default: the worker.doctor round trip
        if lean or imports:
            from .lean import LEAN_COMMANDS, lean_steps

            steps = lean_steps(imports)
            if lean and not args.expect:
                expect = list(LEAN_COMMANDS)
        report = anyio.run(functools.partial(check, config, expect=expect, steps=steps))
    if args.json:
        print(msgspec.json.encode({"ok": report.ok, **msgspec.structs.asdict(report)}).decode())
    else:
        print(render_check(report))
    return 0 if report.ok else 1


def _doctor(args: argparse.Namespace) -> int:
    import msgspec

    from ._probe import doctor, render_doctor

    config, _ = _target_config(args, args.parser)
    report = anyio.run(doctor, config)
    if args.json:
        print(msgspec.json.encode({"ok": report.ok, **msgspec.structs.asdict(report)}).decode())
    else:
        print(render_doctor(report))
    return 0 if report.ok else 1


def _verify(args: argparse.Namespace) -> int:
    from ._verify import run_command

    return run_command(args)


def _pool_arguments(parser: argparse.ArgumentParser, timeout_help: str, *, sandbox: str) -> None:
    """The Lean pool's options, shared by ``verify`` and ``serve`` (``options_from_args``)."""
    parser.add_argument("-j", "--workers", type=_at_least_one, default=None,
                        help="pool size (default: 2 per CPU); with --ray, workers per node "
                             "(default: each node's CPUs, as Ray counts them)")
    parser.add_argument("--ray", metavar="auto|ADDRESS", default=None,
                        help="run on a Ray cluster: one supervisor per node owns that node's workers "
                             "(needs pip install 'lean-worker[ray]'; 'auto' finds the local cluster)")
    _timeout_argument(parser, timeout_help)
    _lean_arguments(parser)
    parser.add_argument("--max-imports", type=_at_least_one, help="replace a worker before its next fresh import after this many")
    parser.add_argument("--max-requests", type=_at_least_one, help="replace a worker after this many checks")
    parser.add_argument("--rss-ceiling-mb", type=_at_least_one, help="replace a worker whose process tree is over this (MiB)")
    parser.add_argument("--lean-memory-mb", type=_at_least_one, help="Lean's own memory limit per Lean process (lean -M)")
    parser.add_argument("--lean-threads", type=_at_least_one,
                        help="threads per Lean process (lean -j; default Lean's, one per core); 1 lets the pool "
                             "spread the work: less CPU per light check, slower for a heavy snippet alone")
    parser.add_argument("--max-sessions", type=_at_least_one, default=8, help="warm headers kept per worker (default 8)")
    parser.add_argument("--engine", choices=("warm", "cold"), default="warm")
    parser.add_argument("--sandbox", choices=("off", "auto", "required"), default=sandbox,
                        help="check in new user, PID, network and mount namespaces with a read-only filesystem "
                             f"(default {sandbox}; auto: unsandboxed, and said so, where the machine cannot; "
                             "see architecture/120-sandbox.md)")


def _add_verify(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    verify = sub.add_parser(
        "verify",
        help="check a batch of Lean snippets through a pool of Lean workers",
        description="Exit status: 0 when the run completed, whatever the verdicts; 1 with --strict when a snippet "
                    "is not ok; 2 for bad arguments, unreadable input, an output that cannot be opened, no "
                    "toolchain or fixtures that cannot be built (all checked before the batch); 130 when "
                    "interrupted (Ctrl-C), after a summary of what finished; 141 when the reader of stdout "
                    "went away.",
    )
    verify.add_argument("snippets", nargs="?", type=_existing,
                        help="a directory of .lean files, or a JSONL file of {id, code}")
    verify.add_argument("--fixtures", action="store_true",
                        help="check against the bundled library, which a Lean worker builds for its toolchain "
                             "(and, with no SNIPPETS, check the bundled snippets)")
    verify.add_argument("-o", "--output", default="-", type=_writable, help="where JSONL results go (default: stdout)")
    _pool_arguments(verify, "seconds per snippet; past it that snippet's Lean process is killed", sandbox="auto")
    verify.add_argument("--strict", action="store_true", help="exit 1 if any snippet is not ok")
    verify.add_argument("--no-progress", action="store_true", help="no progress line, even on a terminal")
    verify.set_defaults(func=_verify)


def _serve(args: argparse.Namespace) -> int:
    try:
        from lean_worker_service._serve import run_command
    except ImportError as exc:
        print(f"lean-worker serve: service.not_installed: the service needs its extra: "
              f"pip install 'lean-worker[service]' (missing {exc.name or exc})", file=sys.stderr)
        return 2
    return run_command(args)


def _add_serve(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = sub.add_parser(
        "serve",
        help="serve Lean checks over HTTP: Kimina Lean Server's routes, a native /v1 API, /health, /metrics",
        description="Needs pip install 'lean-worker[service]'. Prints 'listening on http://HOST:PORT' on stdout "
                    "once it serves; an access log line per request goes to stderr. SIGINT or SIGTERM stops it: "
                    "running requests get up to 30 s, then the pool closes. Exit status: 0 after a stop; 2 for "
                    "bad arguments, a port that cannot be bound, no toolchain or fixtures that cannot be built.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=12332, help="port (default 12332, Kimina's; 0: a free one)")
    serve.add_argument("--api-key", default=None,
                       help="require 'Authorization: Bearer KEY' (default: $LEAN_WORKER_API_KEY; unset: no auth)")
    serve.add_argument("--fixtures", action="store_true",
                       help="put the bundled library on the search path (a Lean worker builds it for its toolchain)")
    _pool_arguments(serve, "seconds per snippet when a request gives none", sandbox="required")
    serve.add_argument("--max-timeout", type=_seconds, default=300.0,
                       help="the largest per-snippet timeout a request may ask for (default 300)")
    serve.add_argument("--request-deadline", type=_seconds, default=500.0,
                       help="a request answers within this; unfinished snippets get a 'timed out' error (default 500)")
    serve.add_argument("--max-body-mb", type=_at_least_one, default=16, help="request body limit, 413 past it (default 16)")
    serve.add_argument("--max-snippets", type=_at_least_one, default=1024,
                       help="snippets per request, 413 past it (default 1024)")
    serve.add_argument("--queue-limit", type=_at_least_one, default=None,
                       help="snippets admitted at once over all requests, 429 past it (default 32 per worker, >= 64)")
    serve.add_argument("--no-access-log", action="store_true", help="no access log lines on stderr")
    serve.set_defaults(func=_serve)


def _fixtures(args: argparse.Namespace) -> int:
    """Ask a Lean worker to build (once, cached) the bundled library and say where it is."""
    import msgspec

    from ._verify import FixturesUnavailable, build_fixtures

    try:
        report = anyio.run(functools.partial(build_fixtures, lean=args.lean, project=args.project, heavy=args.heavy))
    except FixturesUnavailable as exc:
        print(f"lean-worker fixtures: {exc.code}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lean-worker fixtures: interrupted", file=sys.stderr)
        return 130
    if args.print_library_root:
        print(report.library_root)
    elif args.json:
        print(msgspec.json.encode(report).decode())
    else:
        print(f"library root: {report.library_root}")
        print(f"modules:      {', '.join(report.library_modules)}")
        print(f"snippets:     {report.snippets_dir}")
        if report.heavy_root:
            print(f"heavy root:   {report.heavy_root} ({', '.join(report.heavy_modules)})")
        print(f"built in:     {report.build_s:.2f} s" + (" (already built)" if report.build_s == 0 else ""))
    return 0


def _add_fixtures(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    fixtures = sub.add_parser(
        "fixtures",
        help="build the bundled Lean library with the resolved toolchain and print where it is",
        description="A Lean worker builds the bundled prelude library (LwFix.*) for the toolchain it resolves, "
                    "once, then finds it in the cache. Put the library root on --search-path to import it. "
                    "Exit status: 0, 1 when it cannot be built, 2 for bad arguments.",
    )
    _lean_arguments(fixtures, search_path=False)
    fixtures.add_argument("--heavy", action="store_true", help="also build the heavy header (about 30 s once)")
    show = fixtures.add_mutually_exclusive_group()
    show.add_argument("--print-library-root", action="store_true",
                      help="print only the library root, e.g. for --search-path \"$(lean-worker fixtures --print-library-root)\"")
    _json_argument(show)
    fixtures.set_defaults(func=_fixtures)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="lean-worker", description="Supervised worker processes for Lean 4 work.")
    parser.add_argument("--version", action="version", version=f"lean-worker {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a typed streaming command through a supervised worker")
    demo.add_argument("--below", type=int, default=200, help="stream the primes below this bound (default 200)")
    demo.add_argument("--show", type=int, default=10, help="print this many rows (default 10)")
    demo.set_defaults(func=_demo)
    tc = sub.add_parser("toolchain", help="report the Lean toolchain the Lean worker resolves")
    _lean_arguments(tc)
    _json_argument(tc)
    tc.set_defaults(func=_toolchain)
    check = sub.add_parser(
        "check",
        help="check that a worker child starts, speaks this protocol, serves the expected commands and works",
        description="Exit status: 0 when no check is an error, 1 otherwise, 2 for bad arguments.",
    )
    _target_arguments(check)
    check.add_argument("--expect", action="append", default=[], metavar="MODULE[:NAME]",
                       help="commands the child must serve as declared: every Call and Stream of MODULE, or one "
                            "(repeatable; default for the Lean worker: its commands)")
    check.add_argument("--lean-imports", action="append", default=[], metavar="MODULES",
                       help="modules a Lean session must import, comma or space separated (repeatable)")
    check.set_defaults(func=_check, parser=check)
    doctor = sub.add_parser(
        "doctor",
        help="print what the worker child's capabilities diagnose about themselves",
        description="Exit status: 0 when no item is an error, 1 otherwise, 2 for bad arguments.",
    )
    _target_arguments(doctor)
    doctor.set_defaults(func=_doctor, parser=doctor)
    _add_verify(sub)
    _add_serve(sub)
    _add_fixtures(sub)
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
