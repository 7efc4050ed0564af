"""Stateful Lean sessions with a real Lean: environment chains, branching, the goals of a
``sorry``, tactic steps, states passed by value between workers, refusals, and a small
best-first search.

Every test drives ``python -m lean_worker_child.lean`` with the provisioned Lean 4.35 and
our prelude library (``lean/library``): ``LwFix.Sorry`` for ``sorry``, ``LwFix.Tactic`` for
real tactics.
"""

from __future__ import annotations

import heapq
import itertools

import anyio
import psutil
import pytest

from lean_worker import Pool, SyncPool, Worker
from lean_worker.lean import CHECK, CheckRequest, LeanHeaderError, LeanSettings, LeanStateInvalid, LeanTimeout
from lean_worker.session import ProofState, Session, SyncSession
from lean_worker_protocol.lean_session import GOALS, GoalsRequest, make_proof_state

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

SORRY = "prelude\nimport LwFix.Sorry\n"
TACTIC = "prelude\nimport LwFix.Tactic\n"


def errors(messages):  # type: ignore[no-untyped-def]
    return [m for m in messages if m.severity == "error"]


# -- environments ---------------------------------------------------------------------------


async def test_a_chain_of_100_commands_gives_100_environments_each_seeing_the_ones_before(config) -> None:  # type: ignore[no-untyped-def]
    async with Worker(config()) as worker:
        session = Session(worker)
        env = await session.start(SORRY)
        envs = [env]
        hows = []
        for i in range(100):
            body = "True" if i == 0 else f"d{i - 1}"
            result = await session.run(envs[-1], f"def d{i} : Prop := {body}")
            assert result.messages == [], (i, result.messages)
            envs.append(result.env)
            hows.append(result.materialized)
        last = await session.run(envs[-1], "theorem the_last_unfolds_to_the_first : d99 := True.intro")
        assert errors(last.messages) == [], last.messages
    assert len({e.id for e in envs}) == 101
    assert envs[-1].commands[0] == "def d0 : Prop := True"
    assert envs[57].chain() == envs[-1].chain()[:58]
    # One Lean process imported the header; every command after it was an edit of its document.
    assert hows.count("opened") <= 1 and hows.count("edited") >= 99


async def test_two_branches_from_the_10th_environment_do_not_see_each_others_declarations(config) -> None:  # type: ignore[no-untyped-def]
    async with Worker(config()) as worker:
        session = Session(worker)
        envs = [await session.start(SORRY)]
        for i in range(12):
            envs.append((await session.run(envs[-1], f"def c{i} : Prop := True")).env)
        tenth = envs[10]
        left = await session.run(tenth, "def left_only : Prop := c9")
        right = await session.run(tenth, "def right_only : Prop := c9")
        assert errors(left.messages) == [] and errors(right.messages) == []
        # In each branch: its own declaration, not the other's, and not the 11th command.
        seen = await session.run(left.env, "def l1 : Prop := left_only")
        unseen = await session.run(left.env, "def l2 : Prop := right_only")
        later = await session.run(right.env, "def r1 : Prop := c10")
        back = await session.run(right.env, "def r2 : Prop := right_only")
    assert errors(seen.messages) == [] and errors(back.messages) == []
    assert "right_only" in errors(unseen.messages)[0].text
    assert "c10" in errors(later.messages)[0].text
    assert left.env.commands[:10] == right.env.commands[:10] == tenth.commands


async def test_a_command_with_an_error_still_makes_an_environment_and_reports_at_its_own_position(config) -> None:  # type: ignore[no-untyped-def]
    async with Worker(config()) as worker:
        session = Session(worker)
        env = (await session.run(await session.start(SORRY), "def a : Prop := True")).env
        result = await session.run(env, "\n\ndef b : Prop := nope\ndef c : Prop := a")
        after = await session.run(result.env, "def d : Prop := c")
    [error] = errors(result.messages)
    assert (error.pos.line, error.pos.column) == (3, 16)
    assert "nope" in error.text
    assert errors(after.messages) == []


async def test_a_header_lean_cannot_import_is_lean_header_error(config) -> None:  # type: ignore[no-untyped-def]
    async with Worker(config()) as worker:
        session = Session(worker)
        with pytest.raises(LeanHeaderError, match="does not import"):
            await session.start("prelude\nimport LwFix.NoSuchModule\n")
        with pytest.raises(LeanHeaderError, match="header only"):
            await session.start("prelude\ndef x := 1\n")
        env = await session.start(SORRY)
        assert env.commands == ()
        with pytest.raises(LeanHeaderError, match="cannot start with 'import'"):
            await session.run(env, "import LwFix.Nat\ndef x : Prop := True")
        assert errors((await session.run(env, "def x : Prop := True")).messages) == []


# -- proof states ---------------------------------------------------------------------------------


async def test_the_goals_of_a_sorry_are_what_lean_reports_as_unsolved_goals(config) -> None:  # type: ignore[no-untyped-def]
    statement = "theorem t (p q : Prop) (hp : p) (hq : q) : And p q"
    async with Worker(config()) as worker:
        session = Session(worker)
        hole = await session.prove(await session.start(TACTIC), statement)
        checked = await worker.call(CHECK, CheckRequest(f"{TACTIC}{statement} := by\n  skip\n", engine="cold"))
    [unsolved] = errors(checked.messages)
    assert unsolved.text == "unsolved goals\n" + "\n\n".join(hole.goals)
    assert hole.goals == ["p q : Prop\nhp : p\nhq : q\n⊢ And p q"]
    assert hole.state.mode == "term" and hole.state.tactics == ()


async def test_a_sorry_alone_on_the_line_after_exact_is_a_term_hole_with_the_goal_exact_needs(config) -> None:  # type: ignore[no-untyped-def]
    # It starts a line inside a tactic block, yet it is `exact`'s argument: `plainGoal` there
    # answers the goals after `exact` (none), so the hole is read as a term instead.
    async with Worker(config()) as worker:
        session = Session(worker)
        env = await session.start(TACTIC)
        result = await session.run(env, "theorem t (p : Prop) (hp : p) : p := by\n  exact\n    sorry")
        [hole] = result.sorries
        assert (hole.state.mode, hole.goals) == ("term", ["p : Prop\nhp : p\n⊢ p"])
        done = await session.apply(hole.state, "exact hp")
    assert done.status == "complete", done.messages


async def test_every_sorry_of_a_command_is_a_proof_state_with_its_own_goal(config) -> None:  # type: ignore[no-untyped-def]
    async with Worker(config()) as worker:
        session = Session(worker)
        env = await session.start(SORRY)
        result = await session.run(env, "theorem u (p q : Prop) (hp : p) (hq : q) : And p q :=\n  And.intro sorry sorry")
        goals = [await session.goals(s.state) for s in result.sorries]
    assert [(s.pos.line, s.pos.column) for s in result.sorries] == [(2, 12), (2, 18)]
    context = "p q : Prop\nhp : p\nhq : q\n"
    assert [s.goals for s in result.sorries] == goals == [[context + "⊢ p"], [context + "⊢ q"]]


async def test_a_tactic_proof_completed_step_by_step_ends_complete_and_its_text_checks_ok_cold(config) -> None:  # type: ignore[no-untyped-def]
    async with Worker(config()) as worker:
        session = Session(worker)
        hole = await session.prove(await session.start(TACTIC), "theorem t (p q : Prop) (hp : p) (hq : q) : And p q")
        first = await session.apply(hole.state, "constructor")
        assert first.status == "incomplete", first.messages
        # One goal per field of LwFix's `And.intro`, each tagged with its case name.
        assert [g.startswith("case ") for g in first.goals] == [True, True]
        context = "p q : Prop\nhp : p\nhq : q\n"
        assert [g.split("\n", 1)[1] for g in first.goals] == [context + "⊢ p", context + "⊢ q"]
        second = await session.apply(first.state, "exact hp")
        assert (second.status, len(second.goals)) == ("incomplete", 1)
        assert second.goals[0].endswith("⊢ q")
        third = await session.apply(second.state, "exact hq")
        assert third.status == "complete" and third.goals == [] and third.messages == []
        assert third.state is not None and third.state.tactics == ("constructor", "exact hp", "exact hq")
        checked = await worker.call(CHECK, CheckRequest(third.state.text(), engine="cold"))
    assert checked.verdict == "ok", checked.messages


async def test_a_failing_tactic_is_an_error_result_and_its_parent_state_stays_usable(config) -> None:  # type: ignore[no-untyped-def]
    async with Worker(config()) as worker:
        session = Session(worker)
        hole = await session.prove(await session.start(TACTIC), "theorem t (p q : Prop) (hp : p) : q")
        bad = await session.apply(hole.state, "exact hp")
        assert bad.status == "error" and bad.state is None and bad.goals == []
        [error] = errors(bad.messages)
        assert (error.pos.line, error.pos.column) >= (1, 0) and "mismatch" in error.text.lower()
        unparsable = await session.apply(hole.state, "exact (hp")
        assert unparsable.status == "error" and errors(unparsable.messages)
        assert await session.goals(hole.state) == ["p q : Prop\nhp : p\n⊢ q"]


async def test_a_state_exported_from_one_worker_is_materialized_on_another_even_after_the_first_died(config) -> None:  # type: ignore[no-untyped-def]
    async with Worker(config()) as first, Worker(config()) as second:
        a = Session(first)
        hole = await a.prove(await a.start(TACTIC), "theorem t (p q : Prop) (hp : p) (hq : q) : And p q")
        step = await a.apply(hole.state, "constructor")
        assert step.state is not None
        exported = step.state.to_json()
        pid = first.pid
        assert pid is not None
        psutil.Process(pid).kill()  # the worker that made the state is gone
        imported = ProofState.from_json(exported)
        b = Session(second)
        rebuilt = await b.goals_result(imported)
        assert rebuilt.materialized == "opened" and rebuilt.goals == step.goals
        done = await b.apply(await_state(await b.apply(imported, "exact hp")), "exact hq")
        assert done.status == "complete"
        # The first worker restarts with a new child that never saw the state, and rebuilds it.
        again = await Session(first).goals(imported)
    assert again == step.goals


async def test_a_request_whose_child_was_just_killed_runs_on_a_new_child_with_the_same_answer(config) -> None:  # type: ignore[no-untyped-def]
    async with Worker(config()) as worker:
        session = Session(worker)
        hole = await session.prove(await session.start(TACTIC), "theorem t (p : Prop) (hp : p) : p")
        assert worker.pid is not None
        psutil.Process(worker.pid).kill()
        result = await session.apply(hole.state, "exact hp")  # sent again if the dead child took it
        assert result.status == "complete" and result.materialized == "opened"
        assert worker.generation == 2


def await_state(result):  # type: ignore[no-untyped-def]
    assert result.state is not None, result.messages
    return result.state


async def test_a_state_from_another_context_or_edited_by_hand_is_refused_and_nothing_runs(config) -> None:  # type: ignore[no-untyped-def]
    async with Worker(config()) as plain, Worker(config(lean_args=["-DmaxHeartbeats=100000"])) as other:
        hole = await Session(plain).prove(await Session(plain).start(TACTIC), "theorem t (p : Prop) (hp : p) : p")
        with pytest.raises(LeanStateInvalid) as foreign:
            await Session(other).goals(hole.state)
        assert foreign.value.reason == "context_mismatch"
        forged = ProofState(hole.state.env, hole.state.decl, hole.state.hole, hole.state.mode, ("exact hp",), hole.state.id)
        with pytest.raises(LeanStateInvalid) as edited:
            await worker_goals(plain, forged)
        assert edited.value.reason == "id_mismatch"
        moved = make_proof_state(hole.state.env, hole.state.decl, 3, "term")
        with pytest.raises(LeanStateInvalid) as bad_hole:
            await worker_goals(plain, moved)
        assert bad_hole.value.reason == "bad_hole"
        with pytest.raises(LeanStateInvalid) as empty:
            await Session(plain).apply(hole.state, "  \n")
        assert empty.value.reason == "empty_tactic"
        assert await Session(plain).goals(hole.state) == ["p : Prop\nhp : p\n⊢ p"]


async def worker_goals(worker: Worker, state: ProofState) -> list[str]:
    return (await worker.call(GOALS, GoalsRequest(state))).goals


async def test_a_step_past_its_lean_timeout_kills_one_document_and_the_worker_and_states_live_on(config) -> None:  # type: ignore[no-untyped-def]
    async with Worker(config()) as worker:
        session = Session(worker, lean_timeout_s=2)
        env = await session.start("prelude\nimport LwFix.Nat\nimport LwFix.Eval\n")
        hole = await session.prove(env, "theorem t (p : Prop) (hp : p) : p")
        generation = worker.generation
        with pytest.raises(LeanTimeout):
            # lean/snippets/hang.lean's loop: the interpreter never returns.
            await session.run(env, "partial def spin (n : N) : String := spin n\n#eval spin N.zero")
        assert worker.generation == generation
        assert await session.goals(hole.state) == ["p : Prop\nhp : p\n⊢ p"]


async def test_materialized_documents_are_bounded_by_max_documents(config) -> None:  # type: ignore[no-untyped-def]
    async with Worker(config(max_documents=2)) as worker:
        session = Session(worker)
        holes = []
        for header in (SORRY, TACTIC, "prelude\nimport LwFix.Logic\nimport LwFix.Sorry\n"):
            env = await session.start(header)
            holes.append(await session.prove(env, "theorem t (p : Prop) (hp : p) : p"))
        assert worker.pid is not None
        leans = [p for p in psutil.Process(worker.pid).children(recursive=True) if "lean" in p.name()]
        assert len(leans) == 2
        # The evicted one is rebuilt from its value.
        rebuilt = await session.goals_result(holes[0].state)
    assert rebuilt.materialized == "opened" and rebuilt.goals == holes[0].goals


# -- pools and the sync face ---------------------------------------------------------------------


async def test_a_pool_routes_each_step_to_the_worker_holding_the_longest_prefix(config) -> None:  # type: ignore[no-untyped-def]
    async with Pool(config(), size=2) as pool:
        session = Session(pool)
        env = await session.start(TACTIC)
        a = await session.prove(env, "theorem a (p q : Prop) (hp : p) (hq : q) : And p q")
        b = await session.prove(env, "theorem b (p q : Prop) (hp : p) (hq : q) : And q p")
        # Two searches at once keep both workers busy; each then continues where its state is.
        async with anyio.create_task_group() as tg:
            tg.start_soon(session.apply, a.state, "constructor")
            tg.start_soon(session.apply, b.state, "constructor")
        before = pool.snapshot()
        step = await session.apply(a.state, "constructor")
        assert step.materialized in ("warm", "edited")
        after = pool.snapshot()
    assert after.state_hits == before.state_hits + 1


def test_sync_session_on_a_sync_pool_proves_a_theorem(config) -> None:  # type: ignore[no-untyped-def]
    with SyncPool(config(), size=2) as pool:
        session = SyncSession(pool)
        hole = session.prove(session.start(TACTIC), "theorem t (p : Prop) (hp : p) : p")
        result = session.apply(hole.state, "exact hp")
    assert result.status == "complete"


# -- search -----------------------------------------------------------------------------------------

TACTICS = ["intro h", "constructor", "assumption", "exact h", "apply And.intro", "left", "right"]
THEOREMS = {
    "and_swap": "theorem and_swap (p q : Prop) (hp : p) (hq : q) : And q p",
    "imp_self": "theorem imp_self (p : Prop) : p → p",
    "or_left": "theorem or_left (p q : Prop) (hp : p) : Or p q",
    "and_of_imp": "theorem and_of_imp (p q : Prop) (hq : q) : p → And q p",
}
UNPROVABLE = "theorem nope (p q : Prop) (hp : p) : q"


async def best_first(session: Session, state: ProofState, goals: list[str], budget: int) -> tuple[str, ...] | None:
    """Expand the state with the fewest goals first (then the shortest); ``None`` when the
    budget of tactic applications runs out or the frontier is empty."""
    tie = itertools.count()
    frontier = [(len(goals), 0, next(tie), state)]
    seen = {state.id}
    spent = 0
    while frontier and spent < budget:
        _, depth, _, current = heapq.heappop(frontier)
        for tactic in TACTICS:
            spent += 1
            result = await session.apply(current, tactic)
            if result.status == "complete":
                assert result.state is not None
                return result.state.tactics
            if result.status == "incomplete" and result.state is not None and result.state.id not in seen:
                seen.add(result.state.id)
                heapq.heappush(frontier, (len(result.goals), depth + 1, next(tie), result.state))
    return None


async def test_a_best_first_search_proves_the_fixture_theorems_and_fails_cleanly_on_one_without_proof(config) -> None:  # type: ignore[no-untyped-def]
    async with Pool(config(), size=2) as pool:
        session = Session(pool)
        env = await session.start(TACTIC)
        proofs = {}
        for name, statement in THEOREMS.items():
            hole = await session.prove(env, statement)
            proofs[name] = await best_first(session, hole.state, hole.goals, budget=200)
        hole = await session.prove(env, UNPROVABLE)
        unproved = await best_first(session, hole.state, hole.goals, budget=60)
        for name, tactics in proofs.items():
            assert tactics is not None, name
            text = make_proof_state(hole.state.env, THEOREMS[name] + " := sorry", len(THEOREMS[name]) + 4, "term", tactics).text()
            checked = await pool.call(CHECK, CheckRequest(text, engine="cold"))
            assert checked.verdict == "ok", (name, tactics, checked.messages)
    assert unproved is None


async def test_steps_report_the_same_with_the_session_report_delay_as_when_lean_reports_at_once(config) -> None:  # type: ignore[no-untyped-def]
    # The session engine's documents wait LeanSettings.session_report_delay_ms before Lean
    # reports (15-25% less of Lean's CPU per step); what a step returns must not change.
    theorem = "theorem t (p q r : Prop) (hq : q) (hr : r) : p → Or p q → And (Or q p) (And q r)"
    tactics = ["intro hp", "intro h", "constructor", "exact hp", "cases h", "exact Or.inr hp", "exact (hp",
               "exact Or.inl hq", "constructor", "exact hq", "assumption", "exact hr"]
    seen = {}
    for delay in (0, LeanSettings().session_report_delay_ms):
        async with Worker(config(session_report_delay_ms=delay)) as worker:
            session = Session(worker)
            state = (await session.prove(await session.start(TACTIC), theorem)).state
            steps = []
            for tactic in tactics:
                result = await session.apply(state, tactic)
                steps.append((result.status, result.goals, [(m.severity, m.pos, m.text) for m in result.messages]))
                if result.state is not None:
                    state = result.state
            assert worker.pid is not None
            flags = {arg for p in psutil.Process(worker.pid).children(recursive=True) for arg in p.cmdline()}
            assert f"-Dserver.reportDelayMs={delay}" in flags
        seen[delay] = steps
    assert LeanSettings().session_report_delay_ms > 0
    assert seen[LeanSettings().session_report_delay_ms] == seen[0]
    assert {status for status, _, _ in seen[0]} == {"incomplete", "error", "complete"}


# -- the early end of an edit ---------------------------------------------------------------------


@pytest.mark.parametrize("delay", [0, LeanSettings().session_report_delay_ms])
def test_an_early_edit_returns_the_diagnostics_lean_later_confirms_at_its_barrier(lean_toolchain, library, tmp_path, delay) -> None:  # type: ignore[no-untyped-def]
    """Steps return when Lean reports an edit processed, before its barrier (which also waits
    for the file's reference index): across edits that add, move and remove errors, in
    commands before, at and after the change, no diagnostic is published after that point;
    with Lean reporting at once and with the session engine's report delay."""
    import os

    from lean_worker_child.lean.lsp import FileWorker

    env = {**os.environ, "LEAN_PATH": str(library.root)}
    worker = FileWorker(str(lean_toolchain.lean), uri=f"file://{tmp_path}/Early.lean", cwd=str(tmp_path), env=env,
                        report_delay_ms=delay)
    prefix = [f"theorem p{i} (p q : Prop) (hp : p) (hq : q) : And p q := by\n  constructor\n  exact hp\n  exact hq\n"
              for i in range(6)]
    tactics = ["constructor", "exact hp", "exact nope", "intro x", "exact (hp", "skip", "apply And.intro", "assumption"]
    try:
        worker.check(TACTIC + "".join(prefix), timeout_s=60)
        late_changes = 0
        for n in range(120):
            body = list(prefix)
            if n % 5 == 0:  # an error in an earlier command, away from the change
                body[n % 6] = body[n % 6].replace("exact hq", "exact hp")
            goal = "theorem t (p q : Prop) (hp : p) (hq : q) : And q p := by\n"
            steps = [tactics[(n + k) % len(tactics)] for k in range(1 + n % 4)]
            text = TACTIC + "".join(body) + goal + "".join(f"  {t}\n" for t in steps)
            early = worker.check(text, timeout_s=60, early=True)
            late = worker.settle(deadline=None)
            if late is not None and late != early:
                late_changes += 1
        assert late_changes == 0
    finally:
        worker.kill()
