"""Session states as values (``lean_worker_protocol.lean_session``), without Lean: ids are
content hashes, exports round-trip and refuse tampering, and the document of a state puts
the tactics where Lean parses them as one block after what came before."""

from __future__ import annotations

import msgspec
import pytest

from lean_worker_protocol.lean_session import (
    Env,
    ProofState,
    context_id,
    env_text,
    find_sorries,
    make_env,
    make_proof_state,
    proof_layout,
)

HEADER = "prelude\nimport LwFix.Sorry"


def test_a_state_id_is_a_hash_of_context_header_and_every_command() -> None:
    a = make_env("ctx", HEADER, ["def a := 1", "def b := 2"])
    assert a == make_env("ctx", "prelude  -- same header\nimport   LwFix.Sorry\n", ["def a := 1", "def b := 2"])
    assert a.id != make_env("other", HEADER, ["def a := 1", "def b := 2"]).id
    assert a.id != make_env("ctx", HEADER, ["def a := 1", "def b := 3"]).id
    assert a.id != make_env("ctx", HEADER, ["def a := 1def b := 2"]).id  # no collision by concatenation
    assert a.chain()[:2] == make_env("ctx", HEADER, ["def a := 1"]).chain()
    assert len(a.chain()) == 3


def test_context_id_changes_with_toolchain_search_path_and_lean_args() -> None:
    base = context_id("4.35.0", "abc", ["/a", "/b"], [])
    assert base == context_id("4.35.0", "abc", ["/a", "/b"], [])
    assert len({base, context_id("4.36.0", "abc", ["/a", "/b"], []), context_id("4.35.0", "abc", ["/b", "/a"], []),
                context_id("4.35.0", "abc", ["/a", "/b"], ["-DmaxHeartbeats=1"])}) == 4


def test_an_exported_proof_state_round_trips_and_a_tampered_one_is_refused() -> None:
    env = make_env("ctx", HEADER)
    state = make_proof_state(env, "theorem t (p : Prop) (h : p) : p := sorry", 36, "term", ["exact h"])
    assert ProofState.from_json(state.to_json()) == state
    raw = msgspec.json.decode(state.to_json())
    raw["tactics"] = ["exact h", "rfl"]
    with pytest.raises(ValueError, match="id does not match"):
        ProofState.from_json(msgspec.json.encode(raw))
    with pytest.raises(ValueError, match="not an exported Env"):
        Env.from_json(b'{"context": 1}')


def test_env_text_puts_each_command_on_lines_of_its_own_and_is_a_prefix_of_the_next() -> None:
    env = make_env("ctx", HEADER, ["def a := 1", "def b := 2\n"])
    text, starts = env_text(env)
    assert text == "prelude\nimport LwFix.Sorry\ndef a := 1\ndef b := 2\n"
    assert [text[s:s + 5] for s in starts] == ["def a", "def b"]
    longer, _ = env_text(make_env("ctx", HEADER, [*env.commands, "def c := 3"]))
    assert longer.startswith(text)


def test_a_whole_body_sorry_becomes_a_top_level_by_block_one_tactic_per_line() -> None:
    env = make_env("ctx", HEADER)
    decl = "theorem t (p q : Prop) (hp : p) : p := sorry"
    state = make_proof_state(env, decl, decl.index("sorry"), "term", ["intro x", "cases x with\n| inl h => exact h"])
    layout = proof_layout(state)
    assert layout.text.endswith(
        "theorem t (p q : Prop) (hp : p) : p := by\n  intro x\n  cases x with\n  | inl h => exact h\n"
    )
    assert [layout.text[a:b] for a, b in layout.tactics] == ["intro x", "cases x with\n  | inl h => exact h"]
    assert layout.goal_offset == layout.tactics[-1][1]
    assert layout.text.startswith(env_text(env)[0])


def test_a_nested_sorry_is_wrapped_in_parentheses_closed_left_of_the_tactics() -> None:
    env = make_env("ctx", HEADER)
    decl = "theorem t (p q : Prop) (hp : p) (hq : q) : And p q :=\n    And.intro sorry hq"
    state = make_proof_state(env, decl, decl.index("sorry"), "term", ["exact hp"])
    text = proof_layout(state).text
    assert text.endswith("    And.intro (by\n      exact hp\n     ) hq\n")


def test_a_sorry_tactic_is_replaced_in_place_at_its_column() -> None:
    env = make_env("ctx", HEADER)
    decl = "theorem t (p : Prop) (h : p) : p := by\n  skip\n  sorry\n"
    state = make_proof_state(env, decl, decl.index("sorry"), "tactic", ["skip", "exact h"])
    assert proof_layout(state).text.endswith(":= by\n  skip\n  skip\n  exact h\n")


def test_a_state_without_tactics_is_its_command_as_written() -> None:
    env = make_env("ctx", HEADER, ["def a := 1"])
    decl = "theorem t : a = a := sorry"
    layout = proof_layout(make_proof_state(env, decl, decl.index("sorry"), "term"))
    assert layout.text == env_text(env)[0] + decl + "\n"
    assert layout.goal_offset == layout.hole_start == layout.text.index("sorry")


def test_find_sorries_skips_comments_strings_and_longer_identifiers() -> None:
    text = 'def x := sorry -- sorry\n/- sorry /- nested sorry -/ -/ def y := "sorry" ++ sorry_lemma ++ a.sorry\n' \
           "theorem z : p := ⟨sorry, «sorry»⟩"
    found = find_sorries(text)
    assert [text[i:i + 6] for i in found] == ["sorry ", "sorry,"]
