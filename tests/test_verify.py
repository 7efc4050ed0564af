"""``lean-worker verify`` end to end with real Lean: the bundled fixtures, a JSONL input with
a bad line, results streamed as JSON lines, the summary, exit codes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(180)


def verify(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lean_worker.cli", "verify", *args],
        cwd=cwd, capture_output=True, text=True, timeout=150,
    )


def test_verify_the_bundled_fixtures(lean_toolchain, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "results.jsonl"
    result = verify("--fixtures", "--timeout", "5", "--workers", "2", "-o", str(out), "--lean", str(lean_toolchain.lean))
    assert result.returncode == 0, result.stderr
    records = {r["id"]: r for r in map(orjson.loads, out.read_text().splitlines())}
    snippets = sorted(p.name for p in (ROOT / "lean" / "snippets").glob("*.lean"))
    assert sorted(records) == snippets
    assert records["ok.lean"]["verdict"] == "ok"
    assert records["type_error.lean"]["verdict"] == "errors"
    assert records["sorry.lean"]["verdict"] == "sorry"
    assert records["heartbeats.lean"]["limit"] == "heartbeats"
    crash = records["crash.lean"]
    assert crash["verdict"] == "failed"
    assert crash["error"]["code"] == "lean.crashed"
    assert crash["error"]["cause"] == "worker.exit.sigabrt"
    assert records["hang.lean"]["error"]["code"] == "lean.timeout"
    for r in records.values():
        assert {"id", "verdict", "messages", "time_ms", "worker", "generation"} <= set(r)
        assert r["worker"] in (0, 1) and r["generation"] >= 1
    # The summary goes to stdout when results go to a file.
    assert re.search(r"^  failed: lean.crashed\s+1$", result.stdout, re.M), result.stdout
    assert re.search(r"^  failed: lean.timeout\s+1$", result.stdout, re.M), result.stdout
    assert "throughput" in result.stdout


def test_verify_a_jsonl_file_streams_results_to_stdout(lean_toolchain, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from lean_worker_child.lean.fixtures import build_library

    library = build_library(lean_toolchain.lean)
    ok = (ROOT / "lean" / "snippets" / "ok.lean").read_text()
    lines = [
        orjson.dumps({"id": "a", "code": ok}).decode(),
        "this is not json",
        orjson.dumps({"id": "b", "code": ok + "\ntheorem extra : Eq N.two N.two := Eq.refl\n"}).decode(),
        orjson.dumps({"id": "c", "code": 42}).decode(),
    ]
    source = tmp_path / "snippets.jsonl"
    source.write_text("\n".join(lines) + "\n")
    result = verify(str(source), "--search-path", str(library.root), "--workers", "1", "--lean", str(lean_toolchain.lean))
    assert result.returncode == 0, result.stderr
    records = {r["id"]: r for r in map(orjson.loads, result.stdout.splitlines())}
    assert set(records) == {"a", "b", "line-2", "line-4"}
    assert records["a"]["verdict"] == records["b"]["verdict"] == "ok"
    assert {records["a"]["session"], records["b"]["session"]} == {"import", "warm"}  # one worker, one header
    assert records["line-2"]["error"]["code"] == "verify.bad_item"
    assert records["line-4"]["error"]["code"] == "verify.bad_item"
    # The summary goes to stderr when results go to stdout.
    assert re.search(r"^snippets\s+4$", result.stderr, re.M), result.stderr
    assert re.search(r"^imports\s+1$", result.stderr, re.M), result.stderr

    strict = verify(str(source), "--search-path", str(library.root), "--strict", "--lean", str(lean_toolchain.lean))
    assert strict.returncode == 1


def test_verify_refuses_bad_arguments(tmp_path) -> None:  # type: ignore[no-untyped-def]
    missing = verify(str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr
    nothing = verify()
    assert nothing.returncode == 2
    no_lean = verify(str(ROOT / "lean" / "snippets"), "--lean", "/nonexistent/lean")
    assert no_lean.returncode == 2
    assert "lean.toolchain_not_found" in no_lean.stderr
    assert no_lean.stdout == ""  # no per-snippet failures: it stopped before the batch


def test_verify_draws_a_progress_line_on_a_terminal(lean_toolchain, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """On a terminal (a real pty as stderr), verify rewrites one line with done/total, rate and ETA."""
    import os
    import pty

    from lean_worker_child.lean.fixtures import build_library

    library = build_library(lean_toolchain.lean)
    source = tmp_path / "snippets"
    source.mkdir()
    ok = (ROOT / "lean" / "snippets" / "ok.lean").read_text()
    for i in range(3):
        (source / f"s{i}.lean").write_text(ok + f"\ntheorem t{i} : Eq N.two N.two := Eq.refl\n")
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lean_worker.cli", "verify", str(source), "--search-path", str(library.root),
             "--workers", "1", "--lean", str(lean_toolchain.lean), "-o", str(tmp_path / "out.jsonl")],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=follower, text=True,
        )
        os.close(follower)
        stdout, _ = proc.communicate(timeout=120)
        chunks = []
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO once the child side is closed
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(leader)
    assert proc.returncode == 0, stdout
    terminal = b"".join(chunks).decode()
    assert "\r[" in terminal
    assert re.search(r"\] 3/3 [\d.]+/s ETA 0s failed=0", terminal), terminal
    assert re.search(r"^snippets\s+3$", stdout, re.M)
