"""LwFix.Tactic: real tactic proofs in `prelude` files, checked by the real lean of the test
toolchain (`lean --json --stdin`). Each working tactic proves something with no messages at all;
wrong proofs fail with the error Lean reports for them, at the tactic."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from lean_worker_child.lean.fixtures import FixtureBuild, build_library
from lean_worker_child.lean.provision import ProvisionedToolchain

ROOT = Path(__file__).resolve().parent.parent
SNIPPETS = ROOT / "lean" / "snippets"
HEADER = "prelude\nimport LwFix.Nat\nimport LwFix.Tactic\n"
"""Three lines: a snippet's first declaration starts on line 4."""


@pytest.fixture(scope="module")
def library(lean_toolchain: ProvisionedToolchain, tmp_path_factory: pytest.TempPathFactory) -> FixtureBuild:
    return build_library(lean_toolchain.lean, cache=tmp_path_factory.mktemp("cache"))


def check(lean: ProvisionedToolchain, library: FixtureBuild, text: str) -> tuple[int, list[dict[str, object]]]:
    result = subprocess.run(
        [str(lean.lean), "--json", "--stdin"], input=text, capture_output=True, text=True, timeout=30,
        env={**os.environ, "LEAN_PATH": str(library.root)},
    )
    assert result.stderr == "", result.stderr[-500:]
    return result.returncode, [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def proves(lean: ProvisionedToolchain, library: FixtureBuild, body: str) -> None:
    returncode, found = check(lean, library, HEADER + body)
    assert (returncode, found) == (0, []), found


def the_error(lean: ProvisionedToolchain, library: FixtureBuild, body: str) -> dict[str, object]:
    returncode, found = check(lean, library, HEADER + body)
    assert returncode == 1
    [error] = found
    assert error["severity"] == "error"
    return error


def at(message: dict[str, object]) -> tuple[int, int]:
    pos = message["pos"]
    assert isinstance(pos, dict)
    return pos["line"], pos["column"]


# --- the module ---------------------------------------------------------------------------------


def test_tactic_modules_build_after_logic_and_meta(library: FixtureBuild) -> None:
    order = list(library.modules)
    assert order.index("LwFix.Logic") < order.index("LwFix.Meta") < order.index("LwFix.Tactic")
    assert (library.root / "LwFix" / "Tactic.olean").stat().st_size > 0


def test_tactics_ok_snippet_checks_with_no_messages(lean_toolchain: ProvisionedToolchain, library: FixtureBuild) -> None:
    returncode, found = check(lean_toolchain, library, (SNIPPETS / "tactics_ok.lean").read_text())
    assert (returncode, found) == (0, []), found


def test_lwfix_tactic_and_lwfix_sorry_cannot_be_imported_together(
    lean_toolchain: ProvisionedToolchain, library: FixtureBuild
) -> None:
    returncode, [error] = check(lean_toolchain, library, "prelude\nimport LwFix.Sorry\nimport LwFix.Tactic\n")
    assert returncode == 1
    assert str(error["data"]).startswith("import LwFix.Meta failed, environment already contains")


# --- exact, intro, apply, constructor -----------------------------------------------------------


def test_exact_closes_a_goal_and_the_proof_checks_ok(lean_toolchain: ProvisionedToolchain, library: FixtureBuild) -> None:
    proves(lean_toolchain, library, "theorem t (p : Prop) (h : p) : p := by\n  exact h\n")


def test_a_wrong_exact_is_a_type_mismatch_error_at_the_tactic(
    lean_toolchain: ProvisionedToolchain, library: FixtureBuild
) -> None:
    error = the_error(lean_toolchain, library, "theorem t (p q : Prop) (h : p) : q := by\n  exact h\n")
    assert error["data"] == "Type mismatch\n  h\nhas type\n  p\nbut is expected to have type\n  q"
    assert at(error) == (5, 2) and error["endPos"] == {"line": 5, "column": 9}


def test_unsolved_goals_after_intro_are_reported_with_the_hypothesis(
    lean_toolchain: ProvisionedToolchain, library: FixtureBuild
) -> None:
    error = the_error(lean_toolchain, library, "theorem t (p q : Prop) : p → q := by\n  intro hp\n")
    assert error["kind"] == "Tactic.unsolvedGoals"
    assert error["data"] == "unsolved goals\np q : Prop\nhp : p\n⊢ q"
    assert at(error) == (4, 34)  # at `by`


def test_intro_on_a_goal_without_binders_is_an_error(lean_toolchain: ProvisionedToolchain, library: FixtureBuild) -> None:
    error = the_error(lean_toolchain, library, "theorem t (p : Prop) : p := by\n  intro h\n")
    assert str(error["data"]).startswith("Tactic `introN` failed: There are no additional binders")
    assert at(error) == (5, 8)  # at the name `h`


def test_apply_leaves_the_premises_as_goals_and_exact_closes_them(
    lean_toolchain: ProvisionedToolchain, library: FixtureBuild
) -> None:
    proves(lean_toolchain, library, "theorem t (p q : Prop) (hp : p) (hq : q) : And p q := by\n"
           "  apply And.intro\n  exact hp\n  exact hq\n")


def test_apply_of_a_lemma_with_another_conclusion_is_an_error(
    lean_toolchain: ProvisionedToolchain, library: FixtureBuild
) -> None:
    error = the_error(lean_toolchain, library, "theorem t (p q : Prop) (hp : p) : And p q := by\n  apply Or.inl\n")
    assert str(error["data"]).startswith("Tactic `apply` failed: could not unify the conclusion of `@Or.inl`")
    assert at(error) == (5, 2)


def test_constructor_leaves_the_second_conjunct_as_an_unsolved_goal(
    lean_toolchain: ProvisionedToolchain, library: FixtureBuild
) -> None:
    error = the_error(lean_toolchain, library, "theorem t (p q : Prop) (hp : p) : And p q := by\n"
                      "  constructor\n  exact hp\n")
    assert error["data"] == "unsolved goals\ncase a\np q : Prop\nhp : p\n⊢ q"


def test_a_cdot_block_that_leaves_its_goal_open_is_an_error_at_the_cdot(
    lean_toolchain: ProvisionedToolchain, library: FixtureBuild
) -> None:
    error = the_error(lean_toolchain, library, "theorem t (p q : Prop) (hp : p) : And p q := by\n"
                      "  constructor\n  · exact hp\n  · skip\n")
    assert error["data"] == "unsolved goals\ncase a\np q : Prop\nhp : p\n⊢ q"
    assert at(error) == (7, 2)


# --- left, right, assumption, contradiction --------------------------------------------------


def test_left_and_right_pick_a_disjunct_and_assumption_closes_it(
    lean_toolchain: ProvisionedToolchain, library: FixtureBuild
) -> None:
    proves(lean_toolchain, library, "theorem l (p q : Prop) (hp : p) : Or p q := by\n  left\n  assumption\n"
           "theorem r (p q : Prop) (hq : q) : Or p q := by\n  right\n  assumption\n")


def test_assumption_without_a_matching_hypothesis_fails(lean_toolchain: ProvisionedToolchain, library: FixtureBuild) -> None:
    error = the_error(lean_toolchain, library, "theorem t (p q : Prop) (hq : q) : p := by\n  assumption\n")
    assert error["data"] == "Tactic `assumption` failed\n\np q : Prop\nhq : q\n⊢ p"


def test_contradiction_closes_goals_from_false_and_from_p_and_not_p(
    lean_toolchain: ProvisionedToolchain, library: FixtureBuild
) -> None:
    proves(lean_toolchain, library, "theorem f (p : Prop) (h : False) : p := by\n  contradiction\n"
           "theorem n (p q : Prop) (hp : p) (hn : Not p) : q := by\n  contradiction\n")


# --- cases and induction -------------------------------------------------------------------------


def test_cases_on_or_splits_into_two_goals(lean_toolchain: ProvisionedToolchain, library: FixtureBuild) -> None:
    error = the_error(lean_toolchain, library, "theorem t (p q : Prop) (h : Or p q) : Or q p := by\n  cases h\n")
    assert error["data"] == (
        "unsolved goals\ncase inl\np q : Prop\na✝ : p\n⊢ Or q p\n\ncase inr\np q : Prop\na✝ : q\n⊢ Or q p"
    )


def test_cases_with_alternatives_and_with_case_proves_or_symm(
    lean_toolchain: ProvisionedToolchain, library: FixtureBuild
) -> None:
    proves(lean_toolchain, library, "theorem a (p q : Prop) (h : Or p q) : Or q p := by\n  cases h with\n"
           "  | inl hp => exact Or.inr hp\n  | inr hq => exact Or.inl hq\n"
           "theorem b (p q : Prop) (h : Or p q) : Or q p := by\n  cases h\n"
           "  case inl hp => exact Or.inr hp\n  case inr hq => exact Or.inl hq\n")


def test_induction_on_N_proves_zero_add(lean_toolchain: ProvisionedToolchain, library: FixtureBuild) -> None:
    # `add n zero = n` holds by computation (`rfl`); `add zero n = n` needs the induction
    proves(lean_toolchain, library, "theorem t (n : N) : Eq (N.add N.zero n) n := by\n  induction n with\n"
           "  | zero => rfl\n  | succ k ih => exact congrArg N.succ ih\n")


def test_induction_with_a_wrong_step_is_a_type_mismatch_naming_the_hypothesis(
    lean_toolchain: ProvisionedToolchain, library: FixtureBuild
) -> None:
    error = the_error(lean_toolchain, library, "theorem t (n : N) : Eq (N.add N.zero n) n := by\n  induction n with\n"
                      "  | zero => rfl\n  | succ k ih => exact ih\n")
    assert error["data"] == (
        "Type mismatch\n  ih\nhas type\n  Eq (N.zero.add k) k\nbut is expected to have type\n  Eq (N.zero.add k.succ) k.succ"
    )
    assert at(error) == (7, 17)


def test_cases_on_an_equation_between_different_constructors_closes_the_goal(
    lean_toolchain: ProvisionedToolchain, library: FixtureBuild
) -> None:
    # `T` is declared after LwFix.Tactic, so it gets `ctorIdx` and `noConfusion`
    proves(lean_toolchain, library, "inductive T where\n  | z : T\n  | s : T → T\n"
           "theorem clash (a : T) (h : Eq (T.s a) T.z) : False := by\n  cases h\n"
           "theorem inj (a b : T) (h : Eq (T.s a) (T.s b)) : Eq a b := by\n  cases h\n  rfl\n")


def test_cases_on_an_N_constructor_equation_fails_because_N_has_no_noConfusion(
    lean_toolchain: ProvisionedToolchain, library: FixtureBuild
) -> None:
    error = the_error(lean_toolchain, library, "theorem t (a : N) (h : Eq (N.succ a) N.zero) : False := by\n  cases h\n")
    assert error["data"] == "mkNoConfusion: Missing N.ctorIdx or noConfusion_of_Nat"


def test_subst_and_cases_rewrite_with_an_equation_hypothesis(
    lean_toolchain: ProvisionedToolchain, library: FixtureBuild
) -> None:
    proves(lean_toolchain, library, "theorem s (a b : N) (h : Eq a b) : Eq b a := by\n  subst h\n  rfl\n"
           "theorem c (a b : N) (h : Eq a b) : Eq b a := by\n  cases h\n  rfl\n")


# --- rfl ------------------------------------------------------------------------------------------


def test_rfl_closes_an_equation_that_holds_by_computation(lean_toolchain: ProvisionedToolchain, library: FixtureBuild) -> None:
    proves(lean_toolchain, library, "theorem t : Eq (N.mul N.two N.two) N.four := by\n  rfl\n"
           "theorem u (n : N) : Eq (N.add n N.zero) n := by\n  eq_refl\n")


def test_rfl_on_unequal_sides_is_an_error_naming_both_sides(lean_toolchain: ProvisionedToolchain, library: FixtureBuild) -> None:
    error = the_error(lean_toolchain, library, "theorem t : Eq (N.add N.two N.two) N.three := by\n  rfl\n")
    assert str(error["data"]).startswith(
        "Tactic `rfl` failed: The left-hand side\n  N.two.add N.two\nis not definitionally equal to the right-hand side\n  N.three"
    )
    assert at(error) == (5, 2)


# --- goal management ---------------------------------------------------------------------------


def test_refine_show_first_all_goals_and_focus_combine(lean_toolchain: ProvisionedToolchain, library: FixtureBuild) -> None:
    proves(lean_toolchain, library, "theorem a (p q : Prop) (hp : p) (hq : q) : And p q := by\n"
           "  refine And.intro ?_ hq\n  show p\n  exact hp\n"
           "theorem b (p q : Prop) (hp : p) (hq : q) : And p q := by\n"
           "  constructor\n  all_goals first | exact hq | assumption\n"
           "theorem c (p : Prop) (hp : p) : p := by\n  skip\n  focus\n    exact hp\n")


def test_done_with_goals_left_reports_them(lean_toolchain: ProvisionedToolchain, library: FixtureBuild) -> None:
    error = the_error(lean_toolchain, library, "theorem t (p q : Prop) (hp : p) : And p q := by\n  constructor\n  done\n")
    assert error["kind"] == "Tactic.unsolvedGoals" and at(error) == (6, 2)
    assert str(error["data"]).count("case a") == 2


def test_fail_reports_its_message_and_the_goal(lean_toolchain: ProvisionedToolchain, library: FixtureBuild) -> None:
    error = the_error(lean_toolchain, library, 'theorem t (p : Prop) (hp : p) : p := by\n  fail "boom"\n')
    assert error["data"] == "boom\np : Prop\nhp : p\n⊢ p"


# --- sorry, macros, the native grammar ---------------------------------------------------------


def test_exact_sorry_is_only_the_declaration_uses_sorry_warning(
    lean_toolchain: ProvisionedToolchain, library: FixtureBuild
) -> None:
    returncode, [warning] = check(lean_toolchain, library, HEADER + "theorem t (p : Prop) : p := by\n  exact sorry\n")
    assert returncode == 0
    assert warning["kind"] == "hasSorry" and warning["data"] == "declaration uses `sorry`"


@pytest.mark.parametrize("tactic", ["exfalso", "trivial"])
def test_tactics_that_are_macros_in_init_are_unknown(
    lean_toolchain: ProvisionedToolchain, library: FixtureBuild, tactic: str
) -> None:
    returncode, found = check(lean_toolchain, library, HEADER + f"theorem t (p : Prop) (h : False) : p := by\n  {tactic}\n")
    assert returncode == 1
    assert [m["data"] for m in found] == ["unknown tactic", "unsolved goals\np : Prop\nh : False\n⊢ p"]


def test_a_syntax_named_like_a_parser_of_the_binary_gets_the_binary_grammar(
    lean_toolchain: ProvisionedToolchain, library: FixtureBuild
) -> None:
    # The interpreter loads the native `Lean.Parser.Tactic.traceState` (from Init) instead of
    # the ParserDescr declared here: the token is `trace_state`, not the one written.
    text = (HEADER + "namespace Lean.Parser.Tactic\n"
            'syntax (name := traceState) "show_me_the_state" : tactic\n'
            "end Lean.Parser.Tactic\n"
            "theorem t (p : Prop) (h : p) : p := by\n  trace_state\n  exact h\n")
    returncode, [info] = check(lean_toolchain, library, text)
    assert returncode == 0
    assert info["severity"] == "information" and info["data"] == "p : Prop\nh : p\n⊢ p"
