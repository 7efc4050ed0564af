"""The pure header parser that session keys come from (no Lean needed).

Positions and keys must agree with Lean's own header parser for everything a snippet can
put before its body; the real-Lean tests in ``test_lean_worker.py`` cross-check positions.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lean_worker_protocol.lean import CHECK, CHECK_BATCH, CheckBatch, CheckRequest, HeaderError, parse_header, session_key


def test_prelude_and_imports() -> None:
    code = "prelude\nimport A.B\nimport C\n\ntheorem t : True := trivial\n"
    h = parse_header(code)
    assert (h.module, h.prelude, h.imports) == (False, True, ("import A.B", "import C"))
    assert h.modules == ("A.B", "C")
    assert code[h.end:].startswith("\n\ntheorem")
    assert h.offsets == (0, 8, 19)
    assert h.canonical() == "prelude\nimport A.B\nimport C\n"


def test_comments_and_spacing_do_not_change_the_key() -> None:
    a = "prelude\nimport A\n"
    b = "-- a comment\n/- a /- nested -/ block -/ prelude   import A  -- trailing\n"
    assert session_key(a) == session_key(b) == ("prelude", "import A")


def test_doc_comment_ends_the_header() -> None:
    code = "import A\n/-! module doc -/\nimport B\n"
    h = parse_header(code)
    assert h.imports == ("import A",)
    assert code[h.end:].lstrip().startswith("/-!")


def test_module_system_modifiers_are_part_of_the_key() -> None:
    code = "module\npublic import all Foo.Bar\nmeta import Baz\nimport Qux\npublic def x := 1\n"
    h = parse_header(code)
    assert h.module
    assert h.imports == ("public import all Foo.Bar", "meta import Baz", "import Qux")
    assert h.modules == ("Foo.Bar", "Baz", "Qux")
    assert code[h.end:].startswith("\npublic def")
    assert session_key(code) != session_key(code.replace("public import all", "import"))


def test_import_order_matters() -> None:
    assert session_key("import A\nimport B\n") != session_key("import B\nimport A\n")


def test_no_header() -> None:
    h = parse_header("def x := 1\n")
    assert (h.module, h.prelude, h.imports, h.end) == (False, False, (), 0)
    assert h.canonical() == ""


@pytest.mark.parametrize("bad", ["import\n", "prelude\nimport -- nothing\n", "/- unterminated"])
def test_malformed_headers_raise_a_typed_error(bad: str) -> None:
    with pytest.raises(HeaderError) as info:
        parse_header(bad)
    assert info.value.code == "lean.bad_header"
    assert session_key(bad) is None


def test_session_keys_of_the_lean_commands() -> None:
    assert list(CHECK.session_keys(CheckRequest("prelude\nimport A\n"))) == [("prelude", "import A")]  # type: ignore[misc]
    assert list(CHECK.session_keys(CheckRequest("prelude\nimport A\n", engine="cold"))) == []  # type: ignore[misc]
    batch = CheckBatch([CheckRequest("import A\n"), CheckRequest("import\n"), CheckRequest("import B\n")])
    assert list(CHECK_BATCH.session_keys(batch)) == [("import A",), ("import B",)]  # type: ignore[misc]
    assert CHECK.import_like and CHECK_BATCH.import_like


names = st.from_regex(r"[A-Z][a-z]{0,5}(\.[A-Z][a-z]{0,5}){0,2}", fullmatch=True)
gaps = st.sampled_from([" ", "\n", "\n\n", "  -- note\n", " /- c -/ ", "\t"])


@given(
    prelude=st.booleans(),
    imports=st.lists(names, max_size=5),
    gap=st.lists(gaps, min_size=8, max_size=8),
    body=st.sampled_from(["", "def x := 1\n", "theorem t : True := trivial", "/-! doc -/\n"]),
)
def test_generated_headers_round_trip(prelude: bool, imports: list[str], gap: list[str], body: str) -> None:
    parts = [gap[0]]
    if prelude:
        parts += ["prelude", gap[1]]
    for i, name in enumerate(imports):
        parts += ["import", gap[(i + 2) % 8], name, gap[(i + 3) % 8]]
    code = "".join(parts) + body
    h = parse_header(code)
    assert h.prelude == prelude
    assert h.modules == tuple(imports)
    assert h.end <= len(code) - len(body)  # the body is never part of the header
    # The canonical header parses to the same key, and each offset points at its item.
    assert parse_header(h.canonical()).key() == h.key()
    for offset in h.offsets[int(prelude):]:
        assert code.startswith("import", offset)
