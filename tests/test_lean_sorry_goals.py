"""The goal of every ``sorry`` hole of a checked snippet (``CheckRequest.sorry_goals``), with a
real Lean: where the ``sorry`` token is, where it ends, and the goal Lean shows there, as the
Lean REPL's ``sorries`` carry them; nothing asked of Lean when the flag is off or there is no
``sorry``; nothing from the cold engine.

Every test drives the provisioned Lean 4.35 and our prelude library (``lean/library``):
``LwFix.Sorry`` for term ``sorry``, ``LwFix.Tactic`` for ``by`` blocks. That toolchain has
no ``sorry`` tactic (a macro of ``Init``); the closest it has is the same syntax declared
without an elaborator, which Lean parses and reports as not implemented.
"""

from __future__ import annotations

import os

import pytest

from lean_worker import Worker
from lean_worker.lean import CHECK, CHECK_BATCH, CheckBatch, CheckRequest, CheckResult, Hole, Pos
from lean_worker_child.lean.engine import WarmEngine
from lean_worker_child.lean.lsp import FileWorker
from lean_worker_protocol.lean import parse_header

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

SORRY = "prelude\nimport LwFix.Sorry\n"
TACTIC = "prelude\nimport LwFix.Tactic\n"
"""Two lines each: a snippet's first declaration starts on line 3."""


def at(code: str, needle: str, nth: int = 0) -> Pos:
    """Where the ``nth`` occurrence of ``needle`` starts in ``code`` (1-based line, code points)."""
    offset = -1
    for _ in range(nth + 1):
        offset = code.index(needle, offset + 1)
    line = code.count("\n", 0, offset) + 1
    return Pos(line, offset - (code.rfind("\n", 0, offset) + 1))


def after(pos: Pos, length: int = len("sorry")) -> Pos:
    return Pos(pos.line, pos.column + length)


async def check(config, request: CheckRequest, **options: object) -> CheckResult:  # type: ignore[no-untyped-def]
    async with Worker(config(**options)) as worker:
        return await worker.call(CHECK, request)


# -- holes and their goals ----------------------------------------------------------------------


async def test_a_term_sorry_is_one_hole_at_its_token_with_the_expected_type_as_goal(config) -> None:  # type: ignore[no-untyped-def]
    code = SORRY + "theorem t (p q : Prop) (hp : p) : And p q := sorry\n"
    result = await check(config, CheckRequest(code, sorry_goals=True))
    assert result.verdict == "sorry" and result.session == "import"
    hole = at(code, "sorry\n")
    assert result.holes == [Hole(hole, after(hole), "p q : Prop\nhp : p\n⊢ And p q")]
    # The declaration's warning stays where it was: at the name, not at the hole.
    assert result.sorries == [at(code, "t (p")]


async def test_a_sorry_inside_a_tactic_proof_has_the_goal_of_its_tactic(config) -> None:  # type: ignore[no-untyped-def]
    same_line = TACTIC + "theorem t (p q : Prop) (hp : p) : And p q := by\n  exact sorry\n"
    # First on its line, as a tactic would be, but an argument of `exact`: still a term hole.
    next_line = TACTIC + "theorem t (p q : Prop) (hp : p) : And p q := by\n  exact\n    sorry\n"
    async with Worker(config()) as worker:
        first = await worker.call(CHECK, CheckRequest(same_line, sorry_goals=True))
        second = await worker.call(CHECK, CheckRequest(next_line, sorry_goals=True))
    for code, result in ((same_line, first), (next_line, second)):
        assert result.verdict == "sorry", result.messages
        hole = at(code, "sorry")
        assert result.holes == [Hole(hole, after(hole), "p q : Prop\nhp : p\n⊢ And p q")]


async def test_a_sorry_standing_as_a_tactic_shows_every_goal_before_it_separated_by_a_blank_line(config) -> None:  # type: ignore[no-untyped-def]
    code = (
        TACTIC
        + "namespace Lean.Parser.Tactic\nsyntax (name := tacticSorry) \"sorry\" : tactic\nend Lean.Parser.Tactic\n"
        + "theorem t (p q : Prop) (hp : p) (hq : q) : And p q := by\n  constructor\n  sorry\n  exact hq\n"
    )
    result = await check(config, CheckRequest(code, sorry_goals=True))
    # Parsed with Lean's own `sorry` tactic grammar, but without Init's macro behind it.
    [error] = [m for m in result.messages if m.severity == "error"]
    assert "has not been implemented" in error.text and error.pos == at(code, "sorry\n  exact")
    context = "p q : Prop\nhp : p\nhq : q\n"
    [hole] = result.holes
    assert (hole.pos, hole.end_pos) == (at(code, "sorry\n  exact"), after(at(code, "sorry\n  exact")))
    assert hole.goal == f"case a\n{context}⊢ p\n\ncase a\n{context}⊢ q"


async def test_two_holes_in_one_snippet_are_two_holes_in_source_order(config) -> None:  # type: ignore[no-untyped-def]
    code = SORRY + "theorem u (p q : Prop) (hp : p) (hq : q) : And p q :=\n  And.intro sorry sorry\n"
    result = await check(config, CheckRequest(code, sorry_goals=True))
    context = "p q : Prop\nhp : p\nhq : q\n"
    first, second = at(code, "sorry"), at(code, "sorry", 1)
    assert result.holes == [
        Hole(first, after(first), context + "⊢ p"),
        Hole(second, after(second), context + "⊢ q"),
    ]


async def test_holes_are_reported_beside_errors_and_a_sorry_lean_never_parsed_is_none(config) -> None:  # type: ignore[no-untyped-def]
    code = SORRY + (
        "def bad : Prop := nope\n"
        "theorem u (p q : Prop) : And p q := And.intro sorry nope\n"
        "theorem t (p : Prop) : p := sorry\n"
    )
    # Without LwFix.Tactic, `by exact sorry` is a parse error at `exact`: its `sorry` is no term.
    unparsed = SORRY + "theorem v (p : Prop) : p := by exact sorry\n"
    async with Worker(config()) as worker:
        result = await worker.call(CHECK, CheckRequest(code, sorry_goals=True))
        skipped = await worker.call(CHECK, CheckRequest(unparsed, sorry_goals=True))
    assert result.verdict == "errors"
    assert [m.text for m in result.messages if m.severity == "error"] == ["Unknown identifier `nope`"] * 2
    in_failed, in_clean = at(code, "sorry"), at(code, "sorry", 1)
    # Lean elaborated the `sorry` of the declaration that failed before it failed.
    assert result.holes == [
        Hole(in_failed, after(in_failed), "p q : Prop\n⊢ p"),
        Hole(in_clean, after(in_clean), "p : Prop\n⊢ p"),
    ]
    assert skipped.verdict == "errors" and skipped.holes == []


async def test_a_sorry_in_a_comment_or_a_string_is_no_hole(config) -> None:  # type: ignore[no-untyped-def]
    code = SORRY + '-- sorry\n/- a sorry -/\ndef s : String := "sorry"\ntheorem t (p : Prop) : p := sorry\n'
    result = await check(config, CheckRequest(code, sorry_goals=True))
    hole = at(code, "sorry", 3)  # after the comment, the block comment and the string
    assert result.verdict == "sorry"
    assert result.holes == [Hole(hole, after(hole), "p : Prop\n⊢ p")]


async def test_positions_count_code_points_after_non_ascii_text_and_follow_the_callers_header(config) -> None:  # type: ignore[no-untyped-def]
    """The session's document has a canonical header and the LSP counts UTF-16 units; holes
    are where the caller wrote them, in code points (𝔸 and 𝔹 are two UTF-16 units each)."""
    code = (
        "-- a snippet\n\n/- its header, spread out -/\nprelude   \n\n\nimport   LwFix.Sorry  -- the `sorry` axiom\n\n"
        "-- ∀ 𝔸 ∃ 𝔹\n"
        "/- 𝔸𝔹ℂ -/ theorem t (p q : Prop) (hp : p) : And p q := /- é -/ sorry\n"
    )
    async with Worker(config()) as worker:
        warm = await worker.call(CHECK, CheckRequest(code, sorry_goals=True))
        canonical = await worker.call(CHECK, CheckRequest(SORRY + code[code.index("-- ∀"):], sorry_goals=True))
    hole = at(code, "sorry\n")
    assert hole == Pos(10, 63)
    assert warm.holes == [Hole(hole, after(hole), "p q : Prop\nhp : p\n⊢ And p q")]
    # The same body under the canonical header, on the same session: six lines earlier.
    assert canonical.holes == [Hole(Pos(4, 63), Pos(4, 68), "p q : Prop\nhp : p\n⊢ And p q")]
    assert warm.session == "import" and canonical.session == "warm"


# -- opt-in, and only where Lean can be asked --------------------------------------------------------


async def test_without_the_flag_there_are_no_holes(config) -> None:  # type: ignore[no-untyped-def]
    code = SORRY + "theorem t (p : Prop) : p := sorry\n"
    result = await check(config, CheckRequest(code))
    assert result.verdict == "sorry" and result.sorries == [at(code, "t (p")]
    assert result.holes == []


async def test_the_cold_engine_reports_no_holes_and_still_the_sorry_verdict(config) -> None:  # type: ignore[no-untyped-def]
    code = SORRY + "theorem t (p : Prop) : p := sorry\n"
    async with Worker(config()) as worker:
        asked = await worker.call(CHECK, CheckRequest(code, engine="cold", sorry_goals=True))
    # `auto` follows the worker's engine.
    by_default = await check(config, CheckRequest(code, sorry_goals=True), engine="cold")
    for result in (asked, by_default):
        assert (result.session, result.verdict, result.holes) == ("cold", "sorry", [])
        assert result.sorries == [at(code, "t (p")]


async def test_a_batch_reports_holes_for_the_items_that_ask(config) -> None:  # type: ignore[no-untyped-def]
    code = SORRY + "theorem t (p : Prop) : p := sorry\n"
    items = [CheckRequest(code, id="asks", sorry_goals=True), CheckRequest(code, id="does-not")]
    async with Worker(config()) as worker:
        async with worker.stream(CHECK_BATCH, CheckBatch(items)) as stream:
            rows = [row async for row in stream]
    hole = at(code, "sorry\n")
    assert [(row.id, row.result.holes if row.result else None) for row in rows] == [
        ("asks", [Hole(hole, after(hole), "p : Prop\n⊢ p")]),
        ("does-not", []),
    ]


def test_no_lsp_request_is_sent_after_the_diagnostics_without_the_flag_or_a_sorry_token(
    lean_toolchain, library, monkeypatch  # type: ignore[no-untyped-def]
) -> None:
    """Every goal query goes through ``FileWorker.request``: counting its calls (and passing
    each on to Lean) counts what a check asks beyond its diagnostics."""
    sent: list[str] = []
    real = FileWorker.request

    def counted(self, method, params, **options):  # type: ignore[no-untyped-def]
        sent.append(method)
        return real(self, method, params, **options)

    monkeypatch.setattr(FileWorker, "request", counted)
    engine = WarmEngine(str(lean_toolchain.lean), env={**os.environ, "LEAN_PATH": str(library.root)})
    hole = SORRY + "theorem t (p : Prop) : p := sorry\n"
    cases = [
        ("a sorry, no flag", hole, False),
        ("the flag, no sorry", SORRY + "theorem t (p : Prop) (hp : p) : p := hp\n", True),
        ("the flag, sorry only in a comment", SORRY + "-- sorry\ntheorem t (p : Prop) (hp : p) : p := hp\n", True),
        ("the flag and a sorry", hole, True),
    ]
    asked = {}
    try:
        for name, code, flag in cases:
            sent.clear()
            result, _ = engine.check(code, header=parse_header(code), timeout_s=30, sorry_goals=flag)
            asked[name] = (list(sent), len(result.holes))
    finally:
        engine.close()
    assert asked == {
        "a sorry, no flag": ([], 0),
        "the flag, no sorry": ([], 0),
        "the flag, sorry only in a comment": ([], 0),
        "the flag and a sorry": (["$/lean/plainTermGoal"], 1),
    }
