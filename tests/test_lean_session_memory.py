"""10,000 tactic steps keep a Lean worker's memory bounded.

The Lean REPL keeps every environment and proof state until its process dies, so memory
grows with every step. Here states are values and a worker holds a bounded number of
documents, each retired after ``max_document_edits`` edits, so the worker's PSS (its whole
tree: the Python child and its ``lean --worker`` processes) after 10,000 steps stays within
10 % of what it was after 100 (``architecture/95-sessions.md`` has the curve).
"""

from __future__ import annotations

import random

import pytest

from lean_worker import Worker
from lean_worker.lean import lean_config
from lean_worker.session import ProofState, Session

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(900)]

HEADER = "prelude\nimport LwFix.Tactic\n"
STATEMENTS = [
    "theorem walk_and (p q : Prop) (hp : p) (hq : q) : And p q",
    "theorem walk_imp (p q : Prop) (hq : q) : p → And q p",
    "theorem walk_or (p q : Prop) (hq : q) : Or p q",
]
# Successful and failing steps alike: a search tries far more tactics than it keeps.
TACTICS = ["constructor", "intro h", "assumption", "exact hq", "left", "right", "exact h", "exact hp"]
STEPS = 10_000
BAND = 0.10
MIB = 1024 * 1024


async def test_ten_thousand_steps_keep_the_workers_pss_within_ten_percent_of_its_value_after_100(lean_toolchain) -> None:  # type: ignore[no-untyped-def]
    from lean_worker_child.lean.fixtures import build_library

    config = lean_config(lean=lean_toolchain.lean, search_path=[build_library(lean_toolchain.lean).root], request_timeout_s=60)
    async with Worker(config) as worker:
        session = Session(worker)
        env = await session.start(HEADER)
        roots: list[ProofState] = [(await session.prove(env, s)).state for s in STATEMENTS]
        state = roots[0]
        pick = random.Random(0)
        statuses = {"complete": 0, "incomplete": 0, "error": 0}
        pss: dict[int, int] = {}
        for step in range(1, STEPS + 1):
            # A search-like walk: try a tactic; descend on success, try a sibling on a
            # failure, start over on another theorem when a proof completes or runs deep.
            result = await session.apply(state, pick.choice(TACTICS))
            statuses[result.status] += 1
            if result.status == "incomplete" and result.state is not None and len(result.state.tactics) < 6:
                state = result.state
            elif result.status != "error" or pick.random() < 0.2:
                state = roots[step % len(roots)]
            if step in (100, STEPS):
                measured = await worker.pss()
                assert measured is not None
                pss[step] = measured
        generation = worker.generation
    assert generation == 1  # one child all along: the documents were bounded, not the worker recycled
    assert min(statuses.values()) > STEPS // 100, statuses  # every outcome, many times
    ratio = pss[STEPS] / pss[100]
    assert ratio <= 1 + BAND, f"pss_mib after 100 steps={pss[100] / MIB:.1f} after {STEPS}={pss[STEPS] / MIB:.1f}"
