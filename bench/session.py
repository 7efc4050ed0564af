"""Tactic steps on session states against re-checking the whole text, replay of an exported
state on a fresh worker, and the worker's memory over 10,000 search steps.

    python bench/session.py [--steps 10000] [--samples 100] [--prefix 40] [--soak-prefix 10]
                            [--max-document-edits N]

Through the real Lean worker child (``lean_worker.lean.lean_config``) and the session API
(``lean_worker.session.Session``), header ``prelude / import LwFix.Nat / import LwFix.Tactic``
(the fixture library), in an environment of ``--prefix`` commands run one by one, like a real
file: small inductive types, definitions and theorems with tactic proofs (``cases``,
``induction``, ``constructor``...). All times are wall time in the parent (``perf_counter``
around the ``await``) unless the key says ``child``.

- ``step_p50_ms`` / ``step_p95_ms``: ``session.apply(S, tactic)`` on one warm proof state S
  (a theorem after two ``intro`` steps), cycling through several different tactics that all
  succeed on S: the siblings a search expands. Each is an edit of the document that holds
  the previous sibling (``materialized == "edited"``), never a cached answer.
- ``step_child_p50_ms``: the child's own ``elapsed_ms`` of those steps (the rest is IPC).
- ``step_lean_cpu_ms`` / ``step_child_cpu_ms``: CPU time (user + system) per sibling step
  of the worker's Lean processes and of the worker child's Python, over all the samples.
  ``--session-report-delay-ms`` sets ``LeanSettings.session_report_delay_ms`` (default:
  ``lean_config``'s), how long Lean waits after an edit before it reports.
- ``chain_step_p50_ms`` / ``chain_step_p95_ms``: steps along a chain, each applied to the
  state the previous one made (``intro`` steps of a 20-step proof, fresh names each round).
- ``recheck_p50_ms`` / ``recheck_p95_ms``: the same sibling step done by checking the whole
  text of its resulting state (``state.text()``) with the warm engine (``CHECK``; the
  header's session is already open, ``session == "warm"``, no import counted). Before each
  timed check the warm document is set to the bare header (untimed), so Lean elaborates the
  whole text: prefix, theorem and tactics.
- ``recheck_incremental_p50_ms``: the same checks back to back without that reset. The warm
  engine is a ``lean --worker`` too, so Lean reuses every command before the first changed
  character: what a client re-sending whole texts to ``CHECK`` really pays.
- ``recheck_cold_p50_ms``: the same texts checked by the cold engine (one ``lean --json``
  process each, import included), the first 20 of them.
- ``step_speedup``: ``recheck_p50_ms`` / ``step_p50_ms``.
- ``replay_ms`` / ``replay_child_ms``: a 20-step proof state (20 successful ``intro`` steps),
  exported (``to_json``) and imported (``ProofState.from_json``), materialized by
  ``goals_result`` on a NEW worker (a fresh child that never saw it: ``materialized ==
  "opened"``, import + prefix + 20 tactics), median over ``--replays`` fresh workers.
- ``soak_*``, ``pss_*``: ``--steps`` ``apply`` calls on one fresh worker in a search-like
  pattern (a seeded random walk with backtracking over several theorems, one unprovable;
  successful and failing tactics; bounded depth and frontier), in an environment of
  ``--soak-prefix`` commands (fewer than ``--prefix`` by default: a step's cost grows with
  the document, about 0.35 ms per prefix command, and 10,000 steps on the 40-command prefix
  take about 4 minutes here). ``pss_mib_after_100_steps``
  and ``pss_mib_after_<steps>_steps``: ``worker.pss()`` (the worker's whole process tree:
  child and its ``lean`` processes); ``pss_ratio`` is their quotient;
  ``pss_checkpoints_mib``: every 1000 steps; ``pss_peak_mib``: the largest sample, taken
  every 100 steps and just before each document retirement (the worst moment);
  ``pss_growth_mib_per_1000_steps``: the least-squares slope of the 1000-step checkpoints;
  ``rss_*``: the same with summed RSS (``worker.rss()``), which, unlike PSS, does not move
  when other processes (another worker, a test run) map the same ``lean`` binary and
  ``.olean`` files;
  ``documents_opened``: soak steps answered ``materialized == "opened"`` (each one follows a
  retirement after ``max_document_edits`` edits, or a crash); ``soak_step_*``: latency of
  the soak's steps, ``soak_opened_p50_ms`` that of a step that reopened a document.

Goals: ``step_speedup`` >= 3; ``pss_ratio`` <= 1.10 with the default ``max_document_edits``
(2000). Run with ``--max-document-edits 100000`` to see the growth without retirement.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import anyio
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lean_worker import Worker, WorkerConfig  # noqa: E402
from lean_worker.lean import CHECK, TOOLCHAIN, CheckRequest, ToolchainQuery, lean_config  # noqa: E402
from lean_worker.session import Env, ProofState, Session  # noqa: E402
from lean_worker_child.lean.fixtures import build_library  # noqa: E402
from lean_worker_child.lean.toolchain import resolve_toolchain  # noqa: E402

MIB = 1024 * 1024
COLD_RECHECKS = 20
HEADER = "prelude\nimport LwFix.Nat\nimport LwFix.Tactic\n"


def prefix_commands(n: int) -> list[str]:
    """``n`` commands like a small real file, in groups of five: an inductive type, a
    definition over it, then theorems proved with tactics."""
    out = []
    for i in range(n):
        g, k = divmod(i, 5)
        if k == 0:
            out.append(f"inductive Tree{g} where\n  | leaf : Tree{g}\n  | node : Tree{g} → Tree{g} → Tree{g}")
        elif k == 1:
            out.append(f"def Both{g} (p q : Prop) : Prop := And p q")
        elif k == 2:
            out.append(f"theorem both{g}_intro (p q : Prop) (hp : p) (hq : q) : Both{g} p q := by\n"
                       "  show And p q\n  constructor\n  · exact hp\n  · exact hq")
        elif k == 3:
            out.append(f"theorem or{g}_comm (p q : Prop) (h : Or p q) : Or q p := by\n"
                       "  cases h with\n  | inl hp => exact Or.inr hp\n  | inr hq => exact Or.inl hq")
        else:
            out.append(f"theorem tree{g}_ne (t : Tree{g}) (h : Eq (Tree{g}.node t t) Tree{g}.leaf) : False := by\n"
                       "  cases h\n\n"
                       f"theorem zero_add{g} (n : N) : Eq (N.add N.zero n) n := by\n"
                       "  induction n with\n  | zero => rfl\n  | succ k ih => exact congrArg N.succ ih")
    return out


# The sibling scenario: S is TARGET after TO_S; every tactic of SIBLINGS succeeds on S.
TARGET = "theorem target (p q r : Prop) (hq : q) (hr : r) : p → Or p q → And (Or q p) (And q r)"
TO_S = ["intro hp", "intro h"]
SIBLINGS = [
    "constructor",
    "apply And.intro",
    "refine And.intro ?_ ?_",
    "refine' And.intro _ _",
    "cases h",
    "show And (Or q p) (And q r)",
    "refine And.intro ?_ (And.intro hq hr)",
    "clear hp",
]

CHAIN_LENGTH = 20
CHAIN = "theorem chain (p : Prop) : " + "p → " * CHAIN_LENGTH + "p"

# The soak: a random walk with backtracking over these, tactics drawn from SEARCH_TACTICS.
SEARCH_THEOREMS = [
    "theorem s_and_swap (p q : Prop) (hp : p) (hq : q) : And q p",
    "theorem s_imp_self (p : Prop) : p → p",
    "theorem s_or_left (p q : Prop) (hp : p) : Or p q",
    "theorem s_and_of_imp (p q : Prop) (hq : q) : p → And q p",
    "theorem s_or_comm (p q : Prop) (h : Or p q) : Or q p",
    "theorem s_zero_add (n : N) : Eq (N.add N.zero n) n",
    "theorem s_nope (p q : Prop) (hp : p) : q",
]
SEARCH_TACTICS = [
    "intro h", "intros", "constructor", "assumption", "exact h", "exact hp", "exact hq",
    "apply And.intro", "left", "right", "cases h", "rfl", "induction n", "contradiction",
    "skip", "exact congrArg N.succ ih", "exact Or.inr h", "exact (hp",
]
LIKELY_TACTICS = ["intro h", "intros", "constructor", "assumption", "left", "right", "cases h", "skip"]
MAX_DEPTH = 10
MAX_FRONTIER = 64


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def slope(xs: list[float], ys: list[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


async def make_env(session: Session, n: int) -> Env:
    env = await session.start(HEADER)
    for command in prefix_commands(n):
        result = await session.run(env, command)
        assert not [m for m in result.messages if m.severity == "error"], (command, result.messages)
        env = result.env
    return env


async def walk(session: Session, state: ProofState, tactics: list[str]) -> ProofState:
    for tactic in tactics:
        result = await session.apply(state, tactic)
        assert result.state is not None, (tactic, result.messages)
        state = result.state
    return state


async def latencies(args: argparse.Namespace, config: WorkerConfig) -> ProofState:
    """Sibling and chain steps, rechecks; returns the 20-step state for the replay."""
    async with Worker(config) as worker:
        session = Session(worker)
        env = await make_env(session, args.prefix)
        hole = await session.prove(env, TARGET)
        s = await walk(session, hole.state, TO_S)

        # Siblings of S: consecutive tactics differ, so each step edits the document.
        for tactic in SIBLINGS:  # warm-up, untimed
            await session.apply(s, tactic)
        steps, child, texts = [], [], []
        assert worker.pid is not None
        processes = [psutil.Process(worker.pid), *psutil.Process(worker.pid).children(recursive=True)]
        cpu_before = [sum(p.cpu_times()[:2]) for p in processes]
        for i in range(args.samples):
            tactic = SIBLINGS[i % len(SIBLINGS)]
            t = time.perf_counter()
            result = await session.apply(s, tactic)
            steps.append((time.perf_counter() - t) * 1e3)
            assert result.status == "incomplete" and result.state is not None, (tactic, result.messages)
            assert result.materialized == "edited", result.materialized
            child.append(result.elapsed_ms)
            texts.append(result.state.text())
        cpu_spent = [sum(p.cpu_times()[:2]) - b for p, b in zip(processes, cpu_before, strict=True)]
        assert {p.pid for p in processes} == {worker.pid, *(p.pid for p in psutil.Process(worker.pid).children(recursive=True))}

        # Steps along a chain: 20 intro steps, fresh names each round.
        chain_hole = await session.prove(env, CHAIN)
        chain: list[float] = []
        replay_state = None
        rounds = max(1, args.samples // CHAIN_LENGTH)
        for r in range(rounds):
            state = chain_hole.state
            for k in range(CHAIN_LENGTH):
                t = time.perf_counter()
                result = await session.apply(state, f"intro h{r}_{k}")
                chain.append((time.perf_counter() - t) * 1e3)
                assert result.status == "incomplete" and result.state is not None, result.messages
                state = result.state
            replay_state = replay_state or state

        # The same sibling steps by re-checking whole texts with the warm engine.
        opened = await worker.call(CHECK, CheckRequest(HEADER))
        assert opened.verdict == "ok", opened.messages
        recheck, incremental = [], []
        for text in texts:
            reset = await worker.call(CHECK, CheckRequest(HEADER))
            assert reset.session == "warm", reset.session
            t = time.perf_counter()
            result = await worker.call(CHECK, CheckRequest(text))
            recheck.append((time.perf_counter() - t) * 1e3)
            assert result.session == "warm" and result.verdict == "errors", (result.session, result.verdict)
            # `errors`: the proof is incomplete (unsolved goals), nothing else.
            assert all("unsolved goals" in m.text for m in result.messages if m.severity == "error"), result.messages
        for text in texts:
            t = time.perf_counter()
            result = await worker.call(CHECK, CheckRequest(text))
            incremental.append((time.perf_counter() - t) * 1e3)
            assert result.session == "warm", result.session
        cold = []
        for text in texts[:COLD_RECHECKS]:
            t = time.perf_counter()
            result = await worker.call(CHECK, CheckRequest(text, engine="cold"))
            cold.append((time.perf_counter() - t) * 1e3)
            assert result.session == "cold" and result.verdict == "errors", (result.session, result.verdict)

    step_p50 = statistics.median(steps)
    recheck_p50 = statistics.median(recheck)
    print(f"step_p50_ms={step_p50:.2f}")
    print(f"step_p95_ms={percentile(steps, 0.95):.2f}")
    print(f"step_max_ms={max(steps):.2f}")
    print(f"step_child_p50_ms={statistics.median(child):.2f}")
    print(f"step_lean_cpu_ms={sum(cpu_spent[1:]) / args.samples * 1e3:.2f}")
    print(f"step_child_cpu_ms={cpu_spent[0] / args.samples * 1e3:.3f}")
    print(f"chain_step_p50_ms={statistics.median(chain):.2f}")
    print(f"chain_step_p95_ms={percentile(chain, 0.95):.2f}")
    print(f"recheck_p50_ms={recheck_p50:.2f}")
    print(f"recheck_p95_ms={percentile(recheck, 0.95):.2f}")
    print(f"recheck_incremental_p50_ms={statistics.median(incremental):.2f}")
    print(f"recheck_cold_p50_ms={statistics.median(cold):.2f}")
    print(f"step_speedup={recheck_p50 / step_p50:.1f}")
    assert replay_state is not None
    return replay_state


async def replay(args: argparse.Namespace, config: WorkerConfig, state: ProofState) -> None:
    exported = state.to_json()
    wall, child = [], []
    expected = None
    for _ in range(args.replays):
        imported = ProofState.from_json(exported)
        async with Worker(config) as worker:
            await worker.call(TOOLCHAIN, ToolchainQuery())  # the child is up; nothing opened
            t = time.perf_counter()
            result = await Session(worker).goals_result(imported)
            wall.append((time.perf_counter() - t) * 1e3)
        assert result.materialized == "opened", result.materialized
        assert len(imported.tactics) == CHAIN_LENGTH and result.goals and result.goals[0].endswith("⊢ p"), result.goals
        assert expected in (None, result.goals)
        expected = result.goals
        child.append(result.elapsed_ms)
    print(f"replay_ms={statistics.median(wall):.1f}")
    print(f"replay_child_ms={statistics.median(child):.1f}")
    print(f"replay_runs_ms={','.join(f'{x:.0f}' for x in wall)}")


async def soak(args: argparse.Namespace, config: WorkerConfig) -> None:
    rng = random.Random(args.seed)
    async with Worker(config) as worker:
        session = Session(worker)
        env = await make_env(session, args.soak_prefix)
        holes = [(await session.prove(env, statement)).state for statement in SEARCH_THEOREMS]
        statuses = {"complete": 0, "incomplete": 0, "error": 0}
        hows = {"warm": 0, "edited": 0, "opened": 0}
        step_ms: list[float] = []
        opened_ms: list[float] = []
        samples: list[tuple[int, int]] = []  # (step, pss)
        checkpoints: dict[int, int] = {}
        rss: dict[int, int] = {}
        # Edits of the current document, counted in the parent as the child does (every
        # request that is not `warm`), to sample memory just before the document retires.
        # The setup above made 1 + prefix + theorems edits.
        edits = 1 + args.soak_prefix + len(SEARCH_THEOREMS)
        frontier: list[ProofState] = []
        current = None
        for step in range(1, args.steps + 1):
            if current is None or not frontier or rng.random() < 0.05:
                hole = rng.choice(holes)  # a new episode: another theorem
                frontier, current = [hole], hole
            elif rng.random() < 0.3:
                current = rng.choice(frontier)  # backtrack
            tactic = rng.choice(LIKELY_TACTICS if rng.random() < 0.5 else SEARCH_TACTICS)
            t = time.perf_counter()
            result = await session.apply(current, tactic)
            ms = (time.perf_counter() - t) * 1e3
            step_ms.append(ms)
            statuses[result.status] += 1
            hows[result.materialized] += 1
            if result.materialized == "opened":
                opened_ms.append(ms)
                edits = 1
            elif result.materialized == "edited":
                edits += 1
            if result.status == "incomplete" and result.state is not None and len(result.state.tactics) < MAX_DEPTH:
                if len(frontier) >= MAX_FRONTIER:
                    frontier.pop(rng.randrange(len(frontier)))
                frontier.append(result.state)
                current = result.state
            elif result.status == "complete":
                current = None
            pss = None
            if step % 100 == 0 or edits == args.max_document_edits:
                pss = await worker.pss() or 0
                samples.append((step, pss))
            if step % 1000 == 0 or step in (100, args.steps):
                checkpoints[step] = pss if pss is not None else (await worker.pss() or 0)
                rss[step] = await worker.rss() or 0

    base = checkpoints[100]
    last = checkpoints[args.steps]
    thousands = sorted(s for s in checkpoints if s % 1000 == 0)
    peak_step, peak = max(samples, key=lambda x: x[1])
    print(f"pss_mib_after_100_steps={base / MIB:.1f}")
    print(f"pss_mib_after_{args.steps}_steps={last / MIB:.1f}")
    print(f"pss_ratio={last / base:.3f}")
    print(f"pss_checkpoints_mib={','.join(f'{checkpoints[s] / MIB:.0f}' for s in thousands)}")
    print(f"pss_peak_mib={peak / MIB:.1f} (step {peak_step})")
    print(f"rss_mib_after_100_steps={rss[100] / MIB:.1f}")
    print(f"rss_mib_after_{args.steps}_steps={rss[args.steps] / MIB:.1f}")
    print(f"rss_ratio={rss[args.steps] / rss[100]:.3f}")
    print(f"rss_checkpoints_mib={','.join(f'{rss[s] / MIB:.0f}' for s in thousands)}")
    if len(thousands) >= 2:
        growth = slope([float(s) for s in thousands], [checkpoints[s] / MIB for s in thousands]) * 1000
        print(f"pss_growth_mib_per_1000_steps={growth:.2f}")
    print(f"documents_opened={hows['opened']}")
    print(f"soak_statuses=complete:{statuses['complete']},incomplete:{statuses['incomplete']},error:{statuses['error']}")
    print(f"soak_materialized=warm:{hows['warm']},edited:{hows['edited']},opened:{hows['opened']}")
    print(f"soak_step_p50_ms={statistics.median(step_ms):.2f}")
    print(f"soak_step_p95_ms={percentile(step_ms, 0.95):.2f}")
    print(f"soak_step_max_ms={max(step_ms):.1f}")
    if opened_ms:
        print(f"soak_opened_p50_ms={statistics.median(opened_ms):.1f}")


async def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    toolchain = resolve_toolchain()
    library = build_library(toolchain.lean)
    print(f"conditions=python {platform.python_version()}, {os.cpu_count()} cpus, {platform.machine()}, "
          f"lean {toolchain.version} ({toolchain.source}), header LwFix.Nat+LwFix.Tactic, "
          f"prefix={args.prefix} commands (soak {args.soak_prefix}), samples={args.samples}, steps={args.steps}, "
          f"max_document_edits={args.max_document_edits}, max_documents=4, replays={args.replays} fresh workers, "
          f"session_report_delay_ms={'default' if args.session_report_delay_ms is None else args.session_report_delay_ms}")
    config = lean_config(lean=toolchain.lean, search_path=[library.root], request_timeout_s=120,
                         max_document_edits=args.max_document_edits, session_report_delay_ms=args.session_report_delay_ms)
    state = await latencies(args, config)
    await replay(args, config, state)
    await soak(args, config)
    print(f"bench_s={time.perf_counter() - started:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--prefix", type=int, default=40)
    parser.add_argument("--soak-prefix", type=int, default=10)
    parser.add_argument("--replays", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-document-edits", type=int, default=2000)
    parser.add_argument("--session-report-delay-ms", type=int, default=None,
                        help="LeanSettings.session_report_delay_ms (default: lean_config's)")
    args = parser.parse_args()
    if args.steps < 100 or args.samples < 2:
        parser.error("--steps must be >= 100 and --samples >= 2")
    anyio.run(run, args)


if __name__ == "__main__":
    main()
