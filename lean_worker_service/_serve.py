"""``lean-worker serve``: open the pool, then listen; on SIGINT or SIGTERM, stop listening,
let running requests finish (at most ``SHUTDOWN_GRACE_S``), then close the pool."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Iterator

import anyio
import uvicorn

from lean_worker._verify import VerifyError, VerifyOptionError, options_from_args
from lean_worker import SandboxUnavailable
from lean_worker.lean import ToolchainNotFound

from ._app import create_app
from ._backend import Backend
from ._errors import ServiceOptionError
from ._options import ServiceOptions

SHUTDOWN_GRACE_S = 30.0


def _say(text: str) -> None:
    print(f"lean-worker serve: {text}", file=sys.stderr, flush=True)


class _Server(uvicorn.Server):
    """Uvicorn's server, minus re-raising the stop signal after its shutdown: the pool
    still has to close, and the exit status is ours."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def options_from(args: argparse.Namespace) -> ServiceOptions:
    return ServiceOptions(
        pool=options_from_args(args),
        host=args.host,
        port=args.port,
        api_key=args.api_key or ServiceOptions.key_from_env(),
        max_timeout_s=args.max_timeout,
        request_deadline_s=args.request_deadline,
        max_body_bytes=args.max_body_mb * 1024 * 1024,
        max_snippets=args.max_snippets,
        queue_limit=args.queue_limit,
        access_log=not args.no_access_log,
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only for a
    # socket that says it is TCP. Without it, a reply's body waited for the client's delayed
    # ACK after its headers: about 45 ms on every request (bench/service.py).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


async def serve(options: ServiceOptions) -> int:
    """Run the service until SIGINT or SIGTERM. Returns the exit status."""
    try:
        sock = _bind(options.host, options.port)
    except OSError as exc:
        _say(f"service.bind_failed: cannot listen on {options.host}:{options.port}: {exc.strerror or exc}")
        return 2
    with sock:
        try:
            backend_cm = Backend(options)
            backend = await backend_cm.__aenter__()
        except ToolchainNotFound as exc:
            _say(f"{exc.remote_code}: {exc.remote_message.splitlines()[0] if exc.remote_message else exc}")
            return 2
        except VerifyError as exc:
            _say(f"{exc.code}: {exc}")
            return 2
        except SandboxUnavailable as exc:
            fix = exc.fix.replace("sandbox='auto'", "--sandbox auto")  # in the CLI's words
            _say(f"{exc.code}: {exc.reason}; fix: {fix}")
            return 2
        try:
            app = create_app(options, backend)
            config = uvicorn.Config(
                app, lifespan="off", access_log=False, log_level="warning",
                timeout_graceful_shutdown=int(SHUTDOWN_GRACE_S), server_header=False,
            )
            server = _Server(config)
            host, port = sock.getsockname()[:2]
            tc = backend.toolchain
            print(f"lean-worker serve: listening on http://{host}:{port} workers={backend.workers} "
                  f"lean={tc.version if tc else '?'} auth={'on' if options.api_key else 'off'} "
                  f"admitted_limit={backend.limit} sandbox={(await backend.stats()).sandbox or 'off'}", flush=True)
            await server.serve(sockets=[sock])
        finally:
            # In this task and scope, where it was entered (its workers' task groups); the
            # pool shields its own close.
            await backend_cm.__aexit__(None, None, None)
    _say("stopped")
    return 0


def run_command(args: argparse.Namespace) -> int:
    """``lean-worker serve`` after its arguments were parsed (see ``lean_worker/cli.py``)."""
    try:
        options = options_from(args)
    except (ServiceOptionError, VerifyOptionError) as exc:
        _say(f"{exc.code}: {exc}")
        return 2
    if not args.no_access_log:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access = logging.getLogger("lean_worker.service.access")
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False
    logging.getLogger("lean_worker.service").addHandler(logging.StreamHandler(sys.stderr))
    return anyio.run(serve, options)
