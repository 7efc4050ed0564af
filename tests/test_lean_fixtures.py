"""The Lean fixtures: the LwFix library and the heavy header compile with the real lean, and
every snippet in lean/snippets behaves as its comment says under `lean --json --stdin`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lean_worker_child.lean.fixtures import (
    FixtureBuild,
    FixtureBuildError,
    FixtureError,
    build_heavy_header,
    build_library,
    default_library_source,
    generate_heavy_header,
)
from lean_worker_child.lean.provision import ProvisionedToolchain

ROOT = Path(__file__).resolve().parent.parent
SNIPPETS = ROOT / "lean" / "snippets"
EXPECT_RE = re.compile(r"^-- expect: error (?P<line>\d+):(?P<column>\d+)$")


@pytest.fixture(scope="module")
def library(lean_toolchain: ProvisionedToolchain, tmp_path_factory: pytest.TempPathFactory) -> FixtureBuild:
    return build_library(lean_toolchain.lean, cache=tmp_path_factory.mktemp("cache"))


def run_snippet(lean: Path, root: Path, name: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LEAN_PATH": str(root)}
    with open(SNIPPETS / name) as source:
        return subprocess.run(
            [str(lean), *args, "--json", "--stdin"], stdin=source, env=env, capture_output=True, text=True, timeout=timeout
        )


def messages(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def published(cache: Path) -> list[str]:
    return sorted(entry.name for entry in (cache / "fixtures").iterdir() if entry.is_dir())


# --- building the library ------------------------------------------------------------------


def test_library_builds_every_module_with_olean_and_ilean_and_a_second_build_is_cached(
    lean_toolchain: ProvisionedToolchain, tmp_path: Path
) -> None:
    first = build_library(lean_toolchain.lean, cache=tmp_path)
    sources = sorted(default_library_source().rglob("*.lean"))
    assert sorted(first.modules) == sorted(
        p.relative_to(default_library_source()).with_suffix("").as_posix().replace("/", ".") for p in sources
    )
    assert first.build_s > 0 and len(first.key) == 16
    for module in first.modules:
        stem = first.root / module.replace(".", "/")
        assert stem.with_suffix(".olean").stat().st_size > 0
        assert stem.with_suffix(".ilean").stat().st_size > 0
    # dependencies first: LwFix.List imports LwFix.Nat imports LwFix.Logic
    order = list(first.modules)
    assert order.index("LwFix.Logic") < order.index("LwFix.Nat") < order.index("LwFix.List")
    assert order.index("LwFix.Sorry") < order.index("LwFix.Eval")

    again = build_library(lean_toolchain.lean, cache=tmp_path)
    assert again == FixtureBuild(root=first.root, modules=first.modules, build_s=0.0, key=first.key)
    assert published(tmp_path) == [first.root.name]


def test_concurrent_builders_compile_once_and_all_get_the_same_root(
    lean_toolchain: ProvisionedToolchain, tmp_path: Path
) -> None:
    code = (
        "import json, sys; from pathlib import Path\n"
        "from lean_worker_child.lean.fixtures import build_library\n"
        "b = build_library(sys.argv[1], cache=Path(sys.argv[2]))\n"
        "print(json.dumps({'root': str(b.root), 'build_s': b.build_s}))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(lean_toolchain.lean), str(tmp_path)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(3)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _out, err in results]
    builds = [json.loads(out) for out, _err in results]
    assert len({b["root"] for b in builds}) == 1
    assert sorted(b["build_s"] > 0 for b in builds) == [False, False, True]  # one compiled, two waited
    assert published(tmp_path) == [Path(builds[0]["root"]).name]  # no private build directory left


def test_a_module_that_fails_to_compile_raises_the_typed_error_and_publishes_nothing(
    lean_toolchain: ProvisionedToolchain, tmp_path: Path
) -> None:
    source = tmp_path / "src"
    (source / "Bad").mkdir(parents=True)
    (source / "Bad" / "Base.lean").write_text(
        "prelude\nuniverse u\ninductive Eq {α : Sort u} (a : α) : α → Prop where\n  | refl : Eq a a\n"
        "inductive B where\n  | t\n  | f\n"
    )
    (source / "Bad" / "Use.lean").write_text("prelude\nimport Bad.Base\ntheorem wrong : Eq B.t B.f := Eq.refl\n")
    cache = tmp_path / "cache"
    with pytest.raises(FixtureBuildError) as caught:
        build_library(lean_toolchain.lean, source=source, cache=cache)
    error = caught.value
    assert error.code == "lean.fixture_build_failed" and isinstance(error, FixtureError)
    assert error.module == "Bad.Use" and error.returncode == 1
    assert "Type mismatch" in error.output and "module=Bad.Use returncode=1" in str(error)
    assert published(cache) == []


def test_an_import_cycle_is_a_typed_error_before_anything_compiles(lean_toolchain: ProvisionedToolchain, tmp_path: Path) -> None:
    (tmp_path / "A.lean").write_text("prelude\nimport B\n")
    (tmp_path / "B.lean").write_text("prelude\n-- a comment in the header\nimport A\n")
    with pytest.raises(FixtureError, match="cycle; modules=A,B") as caught:
        build_library(lean_toolchain.lean, source=tmp_path, cache=tmp_path / "cache")
    assert caught.value.code == "lean.fixture_failed"


# --- the snippets ----------------------------------------------------------------------------


def test_ok_snippet_checks_with_no_messages(lean_toolchain: ProvisionedToolchain, library: FixtureBuild) -> None:
    result = run_snippet(lean_toolchain.lean, library.root, "ok.lean")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "" and result.stderr == ""


def test_type_error_snippet_reports_one_error_at_the_position_in_its_expect_comment(
    lean_toolchain: ProvisionedToolchain, library: FixtureBuild
) -> None:
    expect = EXPECT_RE.match((SNIPPETS / "type_error.lean").read_text().splitlines()[0])
    assert expect, "type_error.lean must start with `-- expect: error LINE:COLUMN`"
    result = run_snippet(lean_toolchain.lean, library.root, "type_error.lean")
    assert result.returncode == 1
    [error] = messages(result.stdout)
    assert error["severity"] == "error" and str(error["data"]).startswith("Type mismatch")
    assert error["pos"] == {"line": int(expect["line"]), "column": int(expect["column"])}


def test_sorry_snippet_reports_the_declaration_uses_sorry_warning(
    lean_toolchain: ProvisionedToolchain, library: FixtureBuild
) -> None:
    result = run_snippet(lean_toolchain.lean, library.root, "sorry.lean")
    assert result.returncode == 0
    [warning] = messages(result.stdout)
    assert warning["severity"] == "warning" and warning["kind"] == "hasSorry"
    assert warning["data"] == "declaration uses `sorry`"
    assert warning["pos"] == {"line": 7, "column": 8}  # the theorem's name


def test_heartbeats_snippet_reports_the_deterministic_timeout(lean_toolchain: ProvisionedToolchain, library: FixtureBuild) -> None:
    started = time.monotonic()
    result = run_snippet(lean_toolchain.lean, library.root, "heartbeats.lean")
    assert time.monotonic() - started < 5
    assert result.returncode == 1
    [error] = messages(result.stdout)
    assert error["severity"] == "error" and error["kind"] == "runtime.maxHeartbeats"
    assert str(error["data"]).startswith("(deterministic) timeout at `isDefEq`, maximum number of heartbeats (20)")


@pytest.mark.parametrize("how", ["stdin", "file"])
def test_crash_snippet_kills_lean_with_sigabrt_and_a_stack_overflow_message(
    lean_toolchain: ProvisionedToolchain, library: FixtureBuild, how: str
) -> None:
    if how == "stdin":
        result = run_snippet(lean_toolchain.lean, library.root, "crash.lean")
    else:
        result = subprocess.run(
            [str(lean_toolchain.lean), "--json", str(SNIPPETS / "crash.lean")],
            env={**os.environ, "LEAN_PATH": str(library.root)}, capture_output=True, text=True, timeout=30,
        )
    assert result.returncode == -signal.SIGABRT, (result.returncode, result.stderr[-500:])
    assert result.stderr == "\nStack overflow detected. Aborting.\n"
    assert result.stdout == ""


def test_hang_snippet_keeps_running_silently_until_killed(lean_toolchain: ProvisionedToolchain, library: FixtureBuild) -> None:
    with open(SNIPPETS / "hang.lean") as source:
        proc = subprocess.Popen(
            [str(lean_toolchain.lean), "--json", "--stdin"], stdin=source,
            env={**os.environ, "LEAN_PATH": str(library.root)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
    try:
        time.sleep(3)
        assert proc.poll() is None
    finally:
        proc.kill()
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert out == b"" and err == b""


def test_memory_snippet_finishes_without_a_limit_and_aborts_under_lean_memory_limit(
    lean_toolchain: ProvisionedToolchain, library: FixtureBuild
) -> None:
    free = run_snippet(lean_toolchain.lean, library.root, "memory.lean")
    assert free.returncode == 0, free.stderr[-500:]
    assert [m["data"] for m in messages(free.stdout)] == ["built"]

    limited = run_snippet(lean_toolchain.lean, library.root, "memory.lean", "-M", "200")
    assert limited.returncode == -signal.SIGABRT
    assert "lean::memory_exception: excessive memory consumption detected at 'interpreter'" in limited.stderr
    assert limited.stdout == ""


# --- the heavy header ------------------------------------------------------------------------


def test_heavy_header_generation_is_deterministic(tmp_path: Path) -> None:
    first = generate_heavy_header(tmp_path / "a", modules=3, decls_per_module=4)
    second = generate_heavy_header(tmp_path / "b", modules=3, decls_per_module=4)
    assert first == second == ["LwHeavy.Base", "LwHeavy.M0", "LwHeavy.M1", "LwHeavy.M2", "LwHeavy"]
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.lean"))
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.lean"))
    for relative in files:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes()


def test_small_heavy_header_compiles_and_importing_it_checks(lean_toolchain: ProvisionedToolchain, tmp_path: Path) -> None:
    build = build_heavy_header(lean_toolchain.lean, modules=3, decls_per_module=20, cache=tmp_path)
    assert build.modules[-1] == "LwHeavy" and build.build_s > 0
    assert (build.root / "LwHeavy.olean").is_file() and (build.root / "LwHeavy" / "M2.ilean").is_file()
    snippet = (
        "prelude\nimport LwHeavy\n"
        "theorem uses : LwHeavy.Eq (LwHeavy.M2.T19.weight (LwHeavy.M2.T19.c1 LwHeavy.Nat.zero))"
        " (LwHeavy.Nat.succ LwHeavy.Nat.zero) := LwHeavy.Eq.refl\n"
    )
    result = subprocess.run(
        [str(lean_toolchain.lean), "--json", "--stdin"], input=snippet, capture_output=True, text=True, timeout=60,
        env={**os.environ, "LEAN_PATH": str(build.root)},
    )
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr
    # other sizes are other builds; the same size is the cached one
    assert build_heavy_header(lean_toolchain.lean, modules=3, decls_per_module=20, cache=tmp_path).build_s == 0
