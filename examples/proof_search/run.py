"""Proof search with Lean sessions: ``python -m examples.proof_search.run``.

Builds our prelude library (whose ``LwFix.Tactic`` declares real tactics), starts a pool of
two Lean workers and shows an environment chain, the goals of a ``sorry``, tactic steps, a
failing tactic, a state exported and rebuilt after its worker died, and a best-first
search. Prints what it gets and exits 0; lines that end in ``ms`` are timings.
"""

from __future__ import annotations

import heapq
import itertools

import anyio
import psutil

from lean_worker import Pool
from lean_worker.lean import CHECK, CheckRequest, lean_config
from lean_worker.session import ProofState, Session
from lean_worker_child.lean.fixtures import build_library
from lean_worker_child.lean.toolchain import resolve_toolchain

HEADER = "prelude\nimport LwFix.Tactic\n"
TACTICS = ["intro h", "constructor", "assumption", "exact h", "left", "right"]


def show_goals(goals: list[str]) -> None:
    for goal in goals:
        print("    " + goal.replace("\n", "\n    "))


async def environments(session: Session) -> None:
    env = await session.start(HEADER)
    print(f"start: {len(env.chain())} state id, no commands")
    first = await session.run(env, "def Twice (p : Prop) : Prop := And p p")
    second = await session.run(first.env, "theorem twice_of (p : Prop) (hp : p) : Twice p := And.intro hp hp")
    print(f"two commands: messages={second.messages} chain={len(second.env.chain())} ids")
    # A branch from the first environment does not see the second command's theorem.
    branch = await session.run(first.env, "theorem uses (p : Prop) (hp : p) : Twice p := twice_of p hp")
    print(f"branch: {branch.messages[0].severity} {branch.messages[0].text}")


async def steps(session: Session, pool: Pool) -> ProofState:
    env = await session.start(HEADER)
    hole = await session.prove(env, "theorem and_swap (p q : Prop) (h : And p q) : And q p")
    print("and_swap, the goal of its sorry:")
    show_goals(hole.goals)
    bad = await session.apply(hole.state, "exact h")  # a failed tactic is a result
    print(f"exact h: {bad.status}: {bad.messages[0].text.splitlines()[0]}")
    state = hole.state
    for tactic in ["cases h with\n| intro hp hq => ?_", "constructor", "exact hq", "exact hp"]:
        result = await session.apply(state, tactic)
        print(f"{tactic.splitlines()[0]}: {result.status}, {len(result.goals)} goals")
        assert result.state is not None
        state = result.state
    print(f"  last step took {result.elapsed_ms:.0f} ms")
    checked = await pool.call(CHECK, CheckRequest(state.text(), engine="cold"))
    print(f"the proof, checked by a fresh lean: verdict={checked.verdict}")
    return hole.state


async def export(session: Session, pool: Pool, state: ProofState) -> None:
    step = await session.apply(state, "cases h with\n| intro hp hq => ?_")
    assert step.state is not None
    exported = step.state.to_json()
    for worker in pool.snapshot().workers:  # kill every child: all warm states are gone
        if worker.pid is not None:
            psutil.Process(worker.pid).kill()
    rebuilt = await session.goals_result(ProofState.from_json(exported))
    print(f"after every worker died: materialized={rebuilt.materialized} same goals={rebuilt.goals == step.goals}")


async def best_first(session: Session, statement: str, budget: int) -> tuple[str, ...] | None:
    hole = await session.prove(await session.start(HEADER), statement)
    tie = itertools.count()
    frontier = [(len(hole.goals), next(tie), hole.state)]  # fewest goals first
    spent = 0
    while frontier and spent < budget:
        _, _, state = heapq.heappop(frontier)
        for tactic in TACTICS:
            spent += 1
            result = await session.apply(state, tactic)
            if result.status == "complete":
                assert result.state is not None
                return result.state.tactics
            if result.status == "incomplete" and result.state is not None:
                heapq.heappush(frontier, (len(result.goals), next(tie), result.state))
    return None


async def search(session: Session) -> None:
    for statement in [
        "theorem imp_and (p q : Prop) (hq : q) : p → And p q",
        "theorem or_right (p q : Prop) (h : q) : Or p q",
        "theorem nope (p q : Prop) (h : p) : q",
    ]:
        found = await best_first(session, statement, budget=40)
        print(f"search {statement.split()[1]}: {' ; '.join(found) if found else 'no proof within 40 steps'}")


async def main() -> None:
    toolchain = resolve_toolchain()
    library = build_library(toolchain.lean)  # compiled once, then cached by content hash
    print(f"lean {toolchain.version} ({toolchain.source})")
    config = lean_config(lean=toolchain.lean, search_path=[library.root], request_timeout_s=60)
    async with Pool(config, size=2) as pool:
        session = Session(pool)
        await environments(session)
        state = await steps(session, pool)
        await export(session, pool, state)
        await search(session)
        snapshot = pool.snapshot()
        print(f"routing: state_hits={snapshot.state_hits > 0} restarts={snapshot.restarts}")


if __name__ == "__main__":
    anyio.run(main)
