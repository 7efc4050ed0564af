"""Proof search on Lean workers: environments and tactic proof states, passed by value.

    from lean_worker import Pool
    from lean_worker.lean import lean_config
    from lean_worker.session import Session

    async with Pool(lean_config(search_path=[oleans]), size=2) as pool:
        session = Session(pool)
        env = await session.start("import Mathlib")
        hole = await session.prove(env, "theorem t (p : Prop) (h : p) : p")
        step = await session.apply(hole.state, "exact h")      # step.status == "complete"

A state (``Env``, ``ProofState``) is a value: its id is a content hash, any worker with the
same toolchain and search path rebuilds it on demand, so states outlive the worker that
made them (a crash, a memory cycle, a move to another worker or machine) and export as
JSON (``state.to_json()``, ``ProofState.from_json(data)``). Workers keep a bounded number of
states materialized (``LeanSettings.max_documents``); on a ``Pool``, each request goes to
the idle worker that holds the longest prefix of its state (``Pool.lease(prefer=...)``).

A failed tactic is a result (``status == "error"``, the messages say why), not an
exception; exceptions are the worker's typed errors (``LeanTimeout``, ``LeanCrashed``,
``LeanStateInvalid``, ``RequestTimeout``...), after which every state is still usable.
Every request is a pure function of the values it carries, so one whose worker's child
died under it (``WorkerCrashed``, ``LeaseInvalidated``) is sent again, up to ``retries``
times (default 1), to a new child or another worker: a state outlives the child that held
it. A request that kills its child every time fails after ``retries + 1`` attempts.
(Whether the child had read it cannot be told: a pipe takes a request for a child that is
already dying.)

``SyncSession`` is the same on a ``SyncWorker`` or ``SyncPool``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

from lean_worker_protocol import Call
from lean_worker_protocol.lean_session import (
    APPLY,
    GOALS,
    RUN,
    START,
    ApplyRequest,
    ApplyResult,
    Env,
    GoalsRequest,
    GoalsResult,
    ProofState,
    RunRequest,
    RunResult,
    Sorry,
    StartRequest,
    StartResult,
)

from . import lean as _lean  # noqa: F401  (registers the Lean errors for their codes)
from ._errors import LeaseInvalidated, WorkerCrashed
from ._pool import Pool
from ._sync import SyncWorker, this_thread
from ._sync_pool import SyncPool
from ._worker import DEFAULT, Worker, run_as, session_keys_of

__all__ = [
    "ApplyResult",
    "Env",
    "GoalsResult",
    "ProofState",
    "RunResult",
    "Session",
    "Sorry",
    "StartResult",
    "SyncSession",
]

ReqT = TypeVar("ReqT")
RespT = TypeVar("RespT")


def _learned_run(result: RunResult) -> list[str]:
    ids = result.env.chain()
    ids.extend(s.state.id for s in result.sorries)
    return ids


def _learned_apply(request: ApplyRequest, result: ApplyResult) -> list[str]:
    return (result.state or request.state).chain()


def _learned_start(result: StartResult) -> list[str]:
    return result.env.chain()


def _learned_goals(request: GoalsRequest, result: GoalsResult) -> list[str]:
    return request.state.chain()


def _check_retries(retries: int) -> None:
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an int >= 0; got {retries!r}")


class Session:
    """Environments and proof states on a ``Worker`` or a ``Pool``.

    ``timeout``: the parent's limit per request (default: the worker config's
    ``request_timeout_s``); ``lean_timeout_s``: the child's own limit per request, past
    which it kills that Lean process only (``LeanTimeout``; the worker lives on);
    ``retries``: how often a request whose child died under it is sent again."""

    def __init__(
        self,
        target: Worker | Pool,
        *,
        timeout: float | None = DEFAULT,
        lean_timeout_s: float | None = None,
        retries: int = 1,
    ) -> None:
        if not isinstance(target, Worker | Pool) and not callable(getattr(target, "call_stateful", None)):
            raise TypeError(f"Session runs on a Worker, a Pool or a lean_worker_ray.ClusterPool; got "
                            f"{type(target).__name__} (SyncSession for the sync ones)")
        _check_retries(retries)
        self.target = target
        self.timeout = timeout
        self.lean_timeout_s = lean_timeout_s
        self.retries = retries

    async def _call(
        self,
        command: Call[ReqT, RespT],
        request: ReqT,
        prefer: Sequence[str],
        learned: Callable[[RespT], list[str]],
    ) -> RespT:
        for attempt in itertools.count():
            try:
                return await self._call_once(command, request, prefer, learned)
            except (WorkerCrashed, LeaseInvalidated):
                if attempt >= self.retries:
                    raise
        raise AssertionError("unreachable")

    async def _call_once(
        self,
        command: Call[ReqT, RespT],
        request: ReqT,
        prefer: Sequence[str],
        learned: Callable[[RespT], list[str]],
    ) -> RespT:
        target = self.target
        if isinstance(target, Worker):
            return await target.call(command, request, timeout=self.timeout)
        if not isinstance(target, Pool):  # a cluster: it routes, remembers and resends itself
            return await target.call_stateful(  # type: ignore[no-any-return]
                command, request, prefer=prefer[::-1], learned=learned, timeout=self.timeout,
            )
        keys = session_keys_of(command, request)
        async with target.lease(keys[0] if keys else None, prefer=prefer[::-1]) as lease:
            result = await lease._call_keyed(command, request, keys, self.timeout)
            lease.remember(learned(result))
            return result

    async def start(self, header: str) -> Env:
        """The environment of ``header`` (``prelude``/``import`` lines). A header Lean
        cannot import raises ``LeanHeaderError``."""
        result = await self.start_result(header)
        return result.env

    async def start_result(self, header: str) -> StartResult:
        """``start`` with Lean's warnings about the header and where it was materialized."""
        request = StartRequest(header, self.lean_timeout_s)
        return await self._call(START, request, [], _learned_start)

    async def run(self, env: Env, command: str) -> RunResult:
        """Run ``command`` (one or more Lean commands) in ``env``: the new environment, the
        command's messages and a proof state for each ``sorry`` Lean elaborated."""
        request = RunRequest(env, command, self.lean_timeout_s)
        return await self._call(RUN, request, env.chain(), _learned_run)

    async def prove(self, env: Env, statement: str) -> Sorry:
        """The proof state of ``statement`` (``theorem name args : type``, without ``:=``):
        runs ``statement := sorry`` and returns its one hole. ``ValueError`` if Lean
        reported an error or no hole (the messages are in the error)."""
        result = await self.run(env, f"{statement} := sorry")
        errors = [m for m in result.messages if m.severity == "error"]
        if errors or len(result.sorries) != 1:
            detail = "; ".join(f"{m.pos.line}:{m.pos.column}: {m.text}" for m in errors)[:2000]
            raise ValueError(f"prove: the statement did not elaborate to one goal; holes={len(result.sorries)} errors: {detail}")
        return result.sorries[0]

    async def goals(self, state: ProofState) -> list[str]:
        """The goals of ``state`` (materialized on a worker if none holds it)."""
        result = await self.goals_result(state)
        return result.goals

    async def goals_result(self, state: ProofState) -> GoalsResult:
        request = GoalsRequest(state, self.lean_timeout_s)
        return await self._call(GOALS, request, state.chain(), partial(_learned_goals, request))

    async def apply(self, state: ProofState, tactic: str) -> ApplyResult:
        """Apply ``tactic`` to the main goal of ``state``: ``complete``, ``incomplete`` (the
        new state and its goals) or ``error`` (messages; no new state)."""
        request = ApplyRequest(state, tactic, self.lean_timeout_s)
        return await self._call(APPLY, request, state.chain(), partial(_learned_apply, request))


class SyncSession:
    """``Session`` on a ``SyncWorker`` or ``SyncPool``: the same methods, blocking."""

    def __init__(
        self,
        target: SyncWorker | SyncPool,
        *,
        timeout: float | None = DEFAULT,
        lean_timeout_s: float | None = None,
        retries: int = 1,
    ) -> None:
        if not isinstance(target, SyncWorker | SyncPool):
            raise TypeError(f"SyncSession runs on a SyncWorker or a SyncPool; got {type(target).__name__}")
        _check_retries(retries)
        self.target = target
        self.timeout = timeout
        self.lean_timeout_s = lean_timeout_s
        self.retries = retries

    def _session(self, target: Worker | Pool) -> Session:
        return Session(target, timeout=self.timeout, lean_timeout_s=self.lean_timeout_s, retries=self.retries)

    def _run(self, method: str, *args: Any) -> Any:
        target = self.target
        if isinstance(target, SyncWorker):
            portal, worker = target._parts()
            return portal.call(run_as, this_thread(), getattr(self._session(worker), method), *args)
        portal = target._portal_or_raise()
        return target._run(portal, partial(run_as, this_thread(), getattr(self._session(target._pool), method), *args))

    def start(self, header: str) -> Env:
        return self._run("start", header)  # type: ignore[no-any-return]

    def start_result(self, header: str) -> StartResult:
        return self._run("start_result", header)  # type: ignore[no-any-return]

    def run(self, env: Env, command: str) -> RunResult:
        return self._run("run", env, command)  # type: ignore[no-any-return]

    def prove(self, env: Env, statement: str) -> Sorry:
        return self._run("prove", env, statement)  # type: ignore[no-any-return]

    def goals(self, state: ProofState) -> list[str]:
        return self._run("goals", state)  # type: ignore[no-any-return]

    def goals_result(self, state: ProofState) -> GoalsResult:
        return self._run("goals_result", state)  # type: ignore[no-any-return]

    def apply(self, state: ProofState, tactic: str) -> ApplyResult:
        return self._run("apply", state, tactic)  # type: ignore[no-any-return]
