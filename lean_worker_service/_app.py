"""The ASGI app: Kimina's routes, the native ``/v1`` routes, health and metrics.

Starlette, because it is a small, typed, well-kept ASGI toolkit on anyio (the concurrency
library the pool is written in), it leaves request and reply bodies to us (msgspec decodes
them in one call, orjson writes them), and it brings no validation layer of its own to
disagree with the wire types. Uvicorn serves it (``_serve.py``).

Every route runs its snippets through one ``Backend``; what a request does not finish by
its deadline, or what its client no longer waits for, is cancelled, never left running.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import anyio
import msgspec
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lean_worker import __version__
from lean_worker._errors import RequestTimeout, WorkerError
from lean_worker._pool import Outcome
from lean_worker._verify import result_error
from lean_worker.lean import CheckRequest, CheckResult, LeanTimeout
from lean_worker.session import Session
from lean_worker_protocol.lean_session import ApplyRequest, GoalsRequest, RunRequest, StartRequest

from . import _kimina as kimina
from ._backend import REQUEST_TIMEOUT_MARGIN_S, Backend
from ._errors import HttpError
from ._metrics import CONTENT_TYPE, Metrics
from ._options import ServiceOptions
from .wire import BatchRequest, EndLine, ItemError, ItemLine

access_log = logging.getLogger("lean_worker.service.access")
log = logging.getLogger("lean_worker.service")

OPEN_PATHS = frozenset({"/", "/health"})
"""Answered without a key: load balancers and the old client's probe send none."""
ROUTES = frozenset({
    "/", "/health", "/metrics", "/api/check", "/api/check/", "/verify", "/one_pass_verify_batch",
    "/v1/check", "/v1/status", "/v1/session/start", "/v1/session/run", "/v1/session/goals", "/v1/session/apply",
})
T = TypeVar("T")


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json({"error": {"code": code, "message": message}, "detail": message}, status, headers)


class _Gate:
    """Outermost middleware: request id, the API key, the access log line, and the HTTP
    request counter, for every request (also the refused ones)."""

    def __init__(self, app: ASGIApp, options: ServiceOptions, metrics: Metrics) -> None:
        self.app = app
        self.key = options.api_key
        self.log = options.access_log
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = headers.get("x-request-id", "")[:64] or uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        try:
            if self.key is not None and scope["path"] not in OPEN_PATHS and not self._authorized(headers):
                refusal = _error(401, "service.unauthorized", "this server needs `Authorization: Bearer <key>`",
                                 {"WWW-Authenticate": "Bearer"})
                await refusal(scope, receive, send_with_id)
                return
            await self.app(scope, receive, send_with_id)
        finally:
            path = scope["path"]
            route = path if path in ROUTES else "other"
            self.metrics.requests.labels(route, str(status or 499)).inc()
            if self.log:
                state = scope["state"]
                line = {
                    "ts": round(time.time(), 3), "request_id": request_id,
                    "client": (scope.get("client") or ("?",))[0], "method": scope["method"], "path": path,
                    "status": status or 499, "ms": round((time.perf_counter() - started) * 1e3, 2),
                }
                for extra in ("snippets", "verdicts", "cancelled"):
                    if extra in state:
                        line[extra] = state[extra]
                access_log.info(json.dumps(line, separators=(",", ":")))

    def _authorized(self, headers: dict[str, str]) -> bool:
        assert self.key is not None
        given = headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.key}".encode())


class Service:
    """The routes over one open ``Backend``."""

    def __init__(self, options: ServiceOptions, backend: Backend) -> None:
        self.options = options
        self.backend = backend
        self.metrics = Metrics()

    # -- reading requests -----------------------------------------------------------------------
    async def _body(self, request: Request, kind: type[T]) -> T:
        limit = self.options.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise HttpError(413, "service.body_too_large", f"the body is over the limit; bytes={length} limit={limit}")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HttpError(413, "service.body_too_large", f"the body is over the limit; limit={limit}")
            chunks.append(chunk)
        body = b"".join(chunks)
        try:
            return msgspec.json.decode(body, type=kind)
        except msgspec.ValidationError as exc:
            raise HttpError(422, "service.bad_request", f"the body does not have this route's shape: {exc}") from None
        except msgspec.DecodeError as exc:
            raise HttpError(400, "service.bad_json", f"the body is not JSON: {exc}") from None

    def _count(self, count: int) -> None:
        if count > self.options.max_snippets:
            self.metrics.rejected.labels("service.too_many_snippets").inc(count)
            raise HttpError(413, "service.too_many_snippets",
                            f"too many snippets in one request; snippets={count} limit={self.options.max_snippets}")

    # -- checking -------------------------------------------------------------------------------
    async def _check_all(
        self, request: Request, checks: list[CheckRequest], timeout_s: float
    ) -> list[Outcome[CheckRequest, CheckResult] | None]:
        """Every check's outcome in input order; ``None`` for those cancelled because the
        client went away (nobody reads the reply then)."""
        outcomes: list[Outcome[CheckRequest, CheckResult] | None] = [None] * len(checks)
        started = time.perf_counter()
        try:
            with self._admit(len(checks)):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._cancel_on_disconnect, request, tg.cancel_scope)
                    async with self.backend.check(checks, timeout_s) as stream:
                        async for outcome in stream:
                            outcomes[outcome.index] = outcome
                            self.metrics.item(outcome, time.perf_counter() - started)
                    tg.cancel_scope.cancel()
        finally:
            verdicts = Counter(o.value.verdict if o.value is not None else "failed" for o in outcomes if o is not None)
            request.state.verdicts = dict(verdicts)
            missing = sum(o is None for o in outcomes)
            if missing:
                request.state.cancelled = missing
                self.metrics.cancelled.inc(missing)
        return outcomes

    @contextmanager
    def _admit(self, count: int) -> Iterator[None]:
        """``Backend.admit``, counting the snippets it refuses."""
        admission = self.backend.admit(count)
        try:
            admission.__enter__()
        except HttpError as exc:
            self.metrics.rejected.labels(exc.code).inc(count)
            raise
        try:
            yield
        finally:
            admission.__exit__(None, None, None)

    @staticmethod
    async def _cancel_on_disconnect(request: Request, scope: anyio.CancelScope) -> None:
        # The body has been read, so the next message the server gives is the disconnect.
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                scope.cancel()
                return

    # -- Kimina routes ----------------------------------------------------------------------------
    async def api_check(self, request: Request) -> Response:
        body = await self._body(request, kimina.CheckBody)
        self._count(len(body.snippets))
        request.state.snippets = len(body.snippets)
        timeout = self.backend.timeout_for(body.timeout)
        checks = [CheckRequest(s.code, id=s.id, timeout_s=timeout, sorry_goals=True) for s in body.snippets]
        outcomes = await self._check_all(request, checks, timeout)
        results = [kimina.check_result(s.id, o, body.debug) for s, o in zip(body.snippets, outcomes) if o is not None]
        return _json({"results": results}, headers=self._ignored(infotree=body.infotree))

    async def verify(self, request: Request) -> Response:
        body = await self._body(request, kimina.VerifyBody)
        self._count(len(body.codes))
        request.state.snippets = len(body.codes)
        timeout = self.backend.timeout_for(body.timeout)
        runnable = [(i, c) for i, c in enumerate(body.codes) if (c.proof if c.proof is not None else c.code) is not None]
        checks = [CheckRequest(c.proof if c.proof is not None else c.code or "", id=str(c.custom_id),
                               timeout_s=timeout, sorry_goals=True) for _, c in runnable]
        outcomes = await self._check_all(request, checks, timeout) if checks else []
        by_index = {i: o for (i, _), o in zip(runnable, outcomes)}
        results = []
        for index, code in enumerate(body.codes):
            if index not in by_index:
                results.append(kimina.bad_item(code.custom_id))
                continue
            outcome = by_index[index]
            if outcome is not None:
                results.append(kimina.verify_result(code.custom_id, outcome))
        return _json({"results": results}, headers=self._ignored(infotree=body.infotree_type))

    @staticmethod
    def _ignored(*, infotree: str | None) -> dict[str, str] | None:
        return {"X-Lean-Worker-Ignored": "infotree"} if infotree else None

    # -- native routes --------------------------------------------------------------------------
    async def v1_check(self, request: Request) -> Response:
        body = await self._body(request, BatchRequest)
        count = len(body.snippets)
        self._count(count)
        request.state.snippets = count
        timeout = self.backend.timeout_for(body.timeout_s)
        checks = [CheckRequest(s.code, id=s.id, timeout_s=timeout, engine=body.engine, sorry_goals=body.sorry_goals)
                  for s in body.snippets]
        admission = self._admit(count)
        admission.__enter__()  # held until the stream ends, however it ends (``_Streamed``)
        return _Streamed(self._lines(request, body, checks, timeout), lambda: admission.__exit__(None, None, None))

    async def _lines(
        self, request: Request, body: BatchRequest, checks: list[CheckRequest], timeout_s: float
    ) -> AsyncIterator[bytes]:
        started = time.perf_counter()
        verdicts: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        encoder = msgspec.json.Encoder()
        delivered = 0
        try:
            async with self.backend.check(checks, timeout_s) as stream:
                async for outcome in stream:
                    seconds = time.perf_counter() - started
                    self.metrics.item(outcome, seconds)
                    delivered += 1
                    error = None
                    if outcome.value is not None:
                        verdicts[outcome.value.verdict] += 1
                    else:
                        assert outcome.error is not None
                        verdicts["failed"] += 1
                        error = _item_error(outcome.error)
                        errors[error.code] += 1
                    line = ItemLine(
                        outcome.index, body.snippets[outcome.index].id, outcome.value, error,
                        round(seconds * 1e3, 3), outcome.worker, outcome.generation,
                        getattr(outcome, "node", None) or None,
                    )
                    yield encoder.encode(line) + b"\n"
            end = EndLine(len(checks), dict(verdicts), dict(errors), round((time.perf_counter() - started) * 1e3, 3))
            yield encoder.encode(end) + b"\n"
        finally:
            request.state.verdicts = dict(verdicts)
            if delivered < len(checks):
                request.state.cancelled = len(checks) - delivered
                self.metrics.cancelled.inc(len(checks) - delivered)

    async def _session_call(self, request: Request, kind: type[T], run: Callable[[Session, T], Awaitable[Any]]) -> Response:
        body = await self._body(request, kind)
        timeout = self.backend.timeout_for(getattr(body, "timeout_s", None))
        session = Session(self.backend.pool, lean_timeout_s=timeout, timeout=timeout + REQUEST_TIMEOUT_MARGIN_S)
        with self._admit(1):
            with anyio.move_on_after(self.options.request_deadline_s) as scope:
                try:
                    result = await run(session, body)
                except WorkerError as exc:
                    return _worker_error(exc)
            if scope.cancelled_caught:
                return _error(504, "service.deadline", f"timed out: the request's deadline passed; "
                                                       f"deadline_s={self.options.request_deadline_s:g}")
        return Response(msgspec.json.encode(result), media_type="application/json")

    async def session_start(self, request: Request) -> Response:
        return await self._session_call(request, StartRequest, lambda s, b: s.start_result(b.header))

    async def session_run(self, request: Request) -> Response:
        return await self._session_call(request, RunRequest, lambda s, b: s.run(b.env, b.command))

    async def session_goals(self, request: Request) -> Response:
        return await self._session_call(request, GoalsRequest, lambda s, b: s.goals_result(b.state))

    async def session_apply(self, request: Request) -> Response:
        return await self._session_call(request, ApplyRequest, lambda s, b: s.apply(b.state, b.tactic))

    # -- health and monitoring ------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        stats = await self.backend.stats()
        if stats.unavailable is not None:
            return _json({"status": "unavailable", "reason": stats.unavailable}, 503)
        return _json({"status": "ok"})

    async def status(self, request: Request) -> Response:
        stats = await self.backend.stats(measure=True)
        tc = self.backend.toolchain
        return _json({
            "status": "ok" if stats.unavailable is None else "unavailable",
            "reason": stats.unavailable,
            "version": __version__,
            "lean": None if tc is None else {"version": tc.version, "commit": tc.commit, "path": tc.lean,
                                             "search_path": tc.search_path},
            "workers": stats.workers, "busy": stats.busy, "queue_depth": stats.queue_depth,
            "admitted": stats.admitted, "admitted_limit": stats.admitted_limit, "nodes": stats.nodes,
            "rss_bytes": stats.rss_bytes,
            "limits": {"max_body_bytes": self.options.max_body_bytes, "max_snippets": self.options.max_snippets,
                       "max_timeout_s": self.options.max_timeout_s,
                       "request_deadline_s": self.options.request_deadline_s},
            "auth": self.options.api_key is not None,
            "sandbox": stats.sandbox,
        })

    async def metrics_route(self, request: Request) -> Response:
        return Response(self.metrics.render(await self.backend.stats(measure=True)), media_type=CONTENT_TYPE)


class _Streamed(StreamingResponse):
    """An NDJSON stream that stops (cancelling the snippets still running) when its client
    goes away, and gives its admission back however the response ends: finished, cut by
    the client, or never started."""

    def __init__(self, lines: AsyncIterator[bytes], release: Callable[[], None]) -> None:
        super().__init__(lines, media_type="application/x-ndjson")
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def until_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(until_disconnect)
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                async for chunk in self.body_iterator:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                tg.cancel_scope.cancel()
        except OSError:
            pass  # the client went away while a line was being written
        finally:
            self._release()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()


def _item_error(error: WorkerError) -> ItemError:
    found = result_error(error, limit=1000)
    return ItemError(found.code, found.message, found.facts)


_SESSION_STATUS = {
    "lean.state_invalid": 422, "lean.bad_header": 422, "worker.invalid_request": 422,
    "lean.timeout": 504, "worker.request_timeout": 504,
    "pool.queue_timeout": 503, "pool.unavailable": 503, "pool.closed": 503, "cluster.unavailable": 503,
}


def _worker_error(error: WorkerError) -> Response:
    """A session request's failure: its stable code, with the status closest to it
    (422 the request is wrong, 504 it took too long, 503 no worker, 502 the worker died)."""
    item = _item_error(error)
    status = _SESSION_STATUS.get(item.code, 502)
    if isinstance(error, LeanTimeout | RequestTimeout):
        status = 504
    return _json({"error": {"code": item.code, "message": item.message, **item.facts}, "detail": item.message}, status)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HttpError)
    return _error(exc.status, exc.code, exc.message, exc.headers)


async def _on_starlette_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "service.not_found", 405: "service.method_not_allowed"}.get(exc.status_code, "service.http_error")
    return _error(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error in %s %s", request.method, request.url.path)
    return _error(500, "service.internal", f"the server failed: {type(exc).__name__}: {exc}"[:500])


def create_app(options: ServiceOptions, backend: Backend) -> ASGIApp:
    """The app over an open ``backend`` (``lean-worker serve`` opens it before listening)."""
    service = Service(options, backend)
    routes = [
        Route("/", service.health, methods=["GET"]),
        Route("/health", service.health, methods=["GET"]),
        Route("/metrics", service.metrics_route, methods=["GET"]),
        Route("/api/check", service.api_check, methods=["POST"]),
        Route("/api/check/", service.api_check, methods=["POST"]),
        Route("/verify", service.verify, methods=["POST"]),
        Route("/one_pass_verify_batch", service.verify, methods=["POST"]),
        Route("/v1/check", service.v1_check, methods=["POST"]),
        Route("/v1/status", service.status, methods=["GET"]),
        Route("/v1/session/start", service.session_start, methods=["POST"]),
        Route("/v1/session/run", service.session_run, methods=["POST"]),
        Route("/v1/session/goals", service.session_goals, methods=["POST"]),
        Route("/v1/session/apply", service.session_apply, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HttpError: _on_http_error, HTTPException: _on_starlette_error, Exception: _on_unexpected},
    )
    app.router.redirect_slashes = False  # /api/check/ is its own route; no 307 for the others
    app.state.service = service
    return _Gate(app, options, service.metrics)
