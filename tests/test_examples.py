"""The examples run, and the recipes and README that show them show their real code and output.

Every fenced ``python`` block in a recipe and the README starts with ``# file: <path>`` and
must be a contiguous run of lines of that file. A recipe's blocks together must show every
non-blank line of each file of its example. Every fenced ``text`` block preceded by ``<!-- output of: <command> -->``
must appear, line by line and in order, in the output of a real run of that command.
"""

from __future__ import annotations

import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "01-typed-streaming-command.md"
LEAN_RECIPE = ROOT / "recipes" / "02-checking-lean.md"
README = ROOT / "README.md"
EXAMPLE_DIR = ROOT / "examples" / "typed_streaming"
LEAN_EXAMPLE_DIR = ROOT / "examples" / "lean_check"
LEAN_EXAMPLE = "examples.lean_check.run"
SEARCH_RECIPE = ROOT / "recipes" / "04-proof-search.md"
SEARCH_EXAMPLE_DIR = ROOT / "examples" / "proof_search"
SEARCH_EXAMPLE = "examples.proof_search.run"
CLUSTER_RECIPE = ROOT / "recipes" / "05-ray-cluster.md"
CLUSTER_EXAMPLE_DIR = ROOT / "examples" / "cluster"
CLUSTER_EXAMPLE = "examples.cluster.run"
SERVICE_RECIPE = ROOT / "recipes" / "06-http-service.md"
SERVICE_EXAMPLE_DIR = ROOT / "examples" / "service"
SERVICE_EXAMPLE = "examples.service.run"
SANDBOX_RECIPE = ROOT / "recipes" / "07-sandbox.md"
SANDBOX_EXAMPLE_DIR = ROOT / "examples" / "sandbox"
SANDBOX_EXAMPLE = "examples.sandbox.run"

FENCE = re.compile(r"^```(?P<lang>[\w-]*)\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
FILE_MARKER = re.compile(r"^# file: (?P<path>\S+)$")
OUTPUT_MARKER = re.compile(r"^<!-- output of: (?P<command>.+?) -->[ \t]*$", re.MULTILINE)


@cache
def run_module(module: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m module`` from the repo root, as a newcomer would (cached per module)."""
    return subprocess.run(
        [sys.executable, "-m", module],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def output_of(module: str) -> list[str]:
    result = run_module(module)
    assert result.returncode == 0, f"{module} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout.splitlines()


def fenced_blocks(doc: Path, lang: str) -> list[str]:
    """The body of every fenced block in ``lang`` in ``doc``."""
    return [m.group("body") for m in FENCE.finditer(doc.read_text()) if m.group("lang") == lang]


def locate(block: list[str], lines: list[str]) -> list[int]:
    """Start indexes at which ``block`` occurs in ``lines`` as a contiguous run."""
    n = len(block)
    return [i for i in range(len(lines) - n + 1) if lines[i : i + n] == block]


def shown_excerpts(doc: Path = RECIPE) -> dict[str, list[list[str]]]:
    """Excerpts of each file ``doc`` shows, keyed by the path its marker names."""
    excerpts: dict[str, list[list[str]]] = {}
    for body in fenced_blocks(doc, "python"):
        first, *rest = body.rstrip("\n").split("\n")
        marker = FILE_MARKER.match(first)
        assert marker, f"a python block in {doc.name} does not start with '# file: <path>': {first!r}"
        excerpts.setdefault(marker.group("path"), []).append(rest)
    return excerpts


# -- the examples run -------------------------------------------------------------------------


def test_async_example_streams_tokens_survives_errors_and_cycles_by_policy() -> None:
    out = output_of("examples.typed_streaming.run_async")
    assert "  token 1:1 the" in out
    assert "  diagnostic [warning] wordfreq.empty_line line=2: empty line" in out
    assert "  progress tokenize 3/3" in out
    assert "summary: TokenizeSummary(lines=3, tokens=18, empty_lines=1) rows={'rows': 18} generation=1" in out
    assert "top words: the=6 cat=2 dog=2" in out
    # A handler error is typed, carries the exception's own code, and leaves the child alive.
    assert "error worker.handler_error: remote_code=wordfreq.bad_top message='top must be at least 1; got 0'" in out
    assert "still generation 1" in out
    # A timeout kills the child; the next request runs on a fresh one.
    assert "error worker.request_timeout: limit_s=0.5 exit=worker.exit.supervisor_kill" in out
    assert "next request ran on generation 2" in out
    # Leaving a stream early cancels it in the child, which answers and is kept.
    assert "stopped after 5 tokens; child kept: generation 2" in out
    assert "restarts: request_timeout=1" in out
    served = [line for line in out if line.startswith("  served by generation")]
    assert served == ["  served by generation 1", "  served by generation 1", "  served by generation 2"]
    assert "cycle: step=shutdown_frame now generation 3" in out
    assert out[-1] == "restarts: max_requests=1 explicit=1"


def test_sync_example_gives_the_same_results_without_an_event_loop() -> None:
    out = output_of("examples.typed_streaming.run_sync")
    assert out == [
        "tokens: the cat sat on the mat the dog sat on the log and the cat watched the dog",
        "diagnostic [warning] wordfreq.empty_line: empty line",
        "summary: TokenizeSummary(lines=3, tokens=18, empty_lines=1)",
        "top words: the=6 cat=2",
        "error worker.handler_error: remote_code=wordfreq.bad_top",
        "stats: requests=3 rows_delivered=18 generation=1",
    ]


def test_example_worker_run_by_hand_exits_2_and_says_it_needs_a_parent() -> None:
    result = run_module("examples.typed_streaming.worker")
    assert result.returncode == 2
    assert "LEAN_WORKER_BOOTSTRAP" in result.stderr


@pytest.fixture
def lean_ready(lean_toolchain):  # type: ignore[no-untyped-def]
    """Provision the toolchain and build the library in-process (with pytest's timeout), so the
    example's own run only finds them in the cache."""
    from lean_worker_child.lean.fixtures import build_library

    build_library(lean_toolchain.lean)


def test_lean_example_checks_batches_indexes_and_survives_a_crash_and_a_hang(lean_ready) -> None:  # type: ignore[no-untyped-def]
    out = output_of(LEAN_EXAMPLE)
    assert "  verdict=errors session=import imports=['LwFix.Nat', 'LwFix.Sorry']" in out
    assert "  10:65 error Type mismatch" in out  # where type_error.lean says its error is
    # The same header twice: one import, then a warm session.
    twice = out.index("ok.lean twice:")
    assert [line for line in out[twice:] if "session=" in line][:2] == [
        "  verdict=ok session=import",
        "  verdict=ok session=warm",
    ]
    assert "imports charged so far: 2" in out
    # A batch with a crashing and a hanging snippet still returns every row, in order.
    batch = out.index("batch:")
    assert out[batch + 1 : batch + 5] == ["  0 ok: ok", "  1 type_error: errors", "  2 sorry: sorry (sorry at 7:8)", "  3 crash: error lean.crashed"]
    assert out[batch + 5].startswith("    cause=worker.exit.")
    assert out[batch + 6] == "  4 hang: error lean.timeout"
    assert "  summary: items=5 verdicts={'ok': 1, 'errors': 1, 'sorry': 1} errors={'lean.crashed': 1, 'lean.timeout': 1}" in out
    assert "  last progress: check 5/5" in out
    assert "  15:10 N" in out and "  ... 15 declarations" in out
    # A check's own deadline kills only its Lean process: the worker is the same child.
    assert "hang.lean: lean.timeout: the snippet did not finish in time; its Lean process was killed; limit_s=1" in out
    assert "still generation 1" in out
    assert out[-4:] == [
        "  ok.lean: session=import generation=1",
        "  ok.lean: session=warm generation=1",
        "  sorry.lean: session=import generation=2",
        "  restarts: {'max_imports': 1}",
    ]
    # Nothing but the timing lines differs from run to run.
    timings = [line for line in out if re.search(r"\d ms$", line)]
    assert len(timings) == 3, timings


def test_proof_search_example_steps_branches_rebuilds_after_a_crash_and_searches(lean_ready) -> None:  # type: ignore[no-untyped-def]
    out = output_of(SEARCH_EXAMPLE)
    assert "branch: error Unknown identifier `twice_of`" in out
    assert "exact h: error: Type mismatch" in out
    steps = out.index("cases h with: incomplete, 1 goals")
    assert out[steps : steps + 4] == [
        "cases h with: incomplete, 1 goals",
        "constructor: incomplete, 2 goals",
        "exact hq: incomplete, 1 goals",
        "exact hp: complete, 0 goals",
    ]
    assert "the proof, checked by a fresh lean: verdict=ok" in out
    assert "after every worker died: materialized=opened same goals=True" in out
    assert "search nope: no proof within 40 steps" in out
    assert [line for line in out if line.startswith("search ")][:2] == [
        "search imp_and: intro h ; constructor ; assumption ; assumption",
        "search or_right: right ; assumption",
    ]
    assert out[-1] == "routing: state_hits=True restarts={'crash': 2}"
    assert len([line for line in out if re.search(r"\d ms$", line)]) == 1


def test_service_example_answers_kimina_and_native_checks_and_stops_on_sigterm(lean_ready) -> None:  # type: ignore[no-untyped-def]
    out = output_of(SERVICE_EXAMPLE)
    assert out[0].startswith("lean-worker serve: listening on http://127.0.0.1:")
    assert "GET /health: {'status': 'ok'}" in out
    # Kimina's route answers in input order, each item as kimina-client's analyze() sees it.
    kimina = out.index("POST /api/check:")
    assert out[kimina + 1 : kimina + 5] == [
        "  ok: valid",
        "  sorry: sorry",
        "  type_error: lean_error",
        "  the sorry at 7:68 has the goal 'm n : N\\n⊢ Eq (m.add n) (n.add m)'",
    ]
    # The native stream: one line per snippet in completion order, then the end line.
    native = out.index("POST /v1/check:")
    assert sorted(out[native + 1 : native + 4]) == ["  line 0 ok: ok", "  line 1 sorry: sorry", "  line 2 type_error: errors"]
    assert out[native + 4] == "  end: items=3 verdicts={'errors': 1, 'ok': 1, 'sorry': 1}"
    assert "GET /metrics: lean_worker_checks_total ok=2 sorry=2 errors=2 failed=0" in out
    assert "  lean_worker_workers 2, lean_worker_up 1" in out
    assert out[-1] == "server stopped: exit status 0"


def test_sandbox_example_checks_in_a_sandbox_where_a_hostile_write_fails(lean_ready) -> None:  # type: ignore[no-untyped-def]
    out = output_of(SANDBOX_EXAMPLE)
    assert out[:2] == ["sandbox required: active", "ok.lean: ok"]
    assert out[2].startswith("escape.lean: ok, its #eval showed: ") and "wrote" not in out[2]
    assert out[3] == "lean-worker-sandbox-example.txt exists: False"
    assert "  capabilities: none" in out and not (Path.home() / "lean-worker-sandbox-example.txt").exists()


# -- the recipe shows the examples as they are ----------------------------------------------------


@pytest.mark.parametrize(
    "doc", [RECIPE, LEAN_RECIPE, SEARCH_RECIPE, CLUSTER_RECIPE, SERVICE_RECIPE, SANDBOX_RECIPE, README],
    ids=["recipe", "lean-recipe", "search-recipe", "cluster-recipe", "service-recipe", "sandbox-recipe", "readme"],
)
def test_python_blocks_are_excerpts_of_the_files_they_name(doc: Path) -> None:
    excerpts = shown_excerpts(doc)
    assert excerpts, f"{doc.name} shows no python code"
    for path, blocks in excerpts.items():
        file = ROOT / path
        assert file.is_file(), f"{doc.name} names {path}, which does not exist"
        lines = file.read_text().splitlines()
        for block in blocks:
            starts = locate(block, lines)
            assert starts, f"a block in {doc.name} naming {path} differs from the file; first line: {block[0]!r}"
            assert len(starts) == 1, f"a block in {doc.name} naming {path} matches {len(starts)} places; show more lines"


@pytest.mark.parametrize(
    ("doc", "example_dir"),
    [(RECIPE, EXAMPLE_DIR), (LEAN_RECIPE, LEAN_EXAMPLE_DIR), (SEARCH_RECIPE, SEARCH_EXAMPLE_DIR),
     (CLUSTER_RECIPE, CLUSTER_EXAMPLE_DIR), (SERVICE_RECIPE, SERVICE_EXAMPLE_DIR), (SANDBOX_RECIPE, SANDBOX_EXAMPLE_DIR)],
    ids=["recipe", "lean-recipe", "search-recipe", "cluster-recipe", "service-recipe", "sandbox-recipe"],
)
def test_recipe_shows_every_line_of_every_example_file(doc: Path, example_dir: Path) -> None:
    excerpts = shown_excerpts(doc)
    example_files = sorted(p.relative_to(ROOT).as_posix() for p in example_dir.glob("*.py") if p.name != "__init__.py")
    assert sorted(excerpts) == example_files
    for path, blocks in excerpts.items():
        lines = (ROOT / path).read_text().splitlines()
        shown = set()
        for block in blocks:
            for start in locate(block, lines):
                shown.update(range(start, start + len(block)))
        missing = [f"{i + 1}: {line}" for i, line in enumerate(lines) if line.strip() and i not in shown]
        assert not missing, f"{doc.name} does not show these lines of {path}:\n" + "\n".join(missing)


def shown_outputs(doc: Path = RECIPE) -> dict[str, list[list[str]]]:
    """Output blocks of ``doc``, keyed by the command their marker names."""
    text = doc.read_text()
    outputs: dict[str, list[list[str]]] = {}
    for marker in OUTPUT_MARKER.finditer(text):
        block = FENCE.search(text, marker.end())
        assert block and block.group("lang") == "text" and not text[marker.end() : block.start()].strip(), (
            f"'{marker.group(0)}' must be followed directly by a ```text block"
        )
        outputs.setdefault(marker.group("command"), []).append(block.group("body").rstrip("\n").split("\n"))
    return outputs


@pytest.mark.parametrize(
    ("doc", "module"),
    [
        (RECIPE, "examples.typed_streaming.run_async"),
        (RECIPE, "examples.typed_streaming.run_sync"),
        (LEAN_RECIPE, LEAN_EXAMPLE),
        (SEARCH_RECIPE, SEARCH_EXAMPLE),
        (CLUSTER_RECIPE, CLUSTER_EXAMPLE),
        (SERVICE_RECIPE, SERVICE_EXAMPLE),
        (SANDBOX_RECIPE, SANDBOX_EXAMPLE),
    ],
    ids=["run_async", "run_sync", "lean_check", "proof_search", "cluster", "service", "sandbox"],
)
def test_recipe_output_blocks_match_a_real_run(doc: Path, module: str, request: pytest.FixtureRequest) -> None:
    if module in (LEAN_EXAMPLE, SEARCH_EXAMPLE, CLUSTER_EXAMPLE, SERVICE_EXAMPLE, SANDBOX_EXAMPLE):
        request.getfixturevalue("lean_ready")
    command = f"python -m {module}"
    shown = shown_outputs(doc).get(command)
    assert shown, f"{doc.name} shows no output of {command}"
    actual = output_of(module)
    for block in shown:
        rest = iter(actual)  # every shown line must appear, in order (a run may add coalescible progress lines)
        for line in block:
            assert any(line == got for got in rest), (
                f"{doc.name} shows {line!r} in the output of {command}, but a real run does not print it "
                f"there; the run printed:\n" + "\n".join(actual)
            )
