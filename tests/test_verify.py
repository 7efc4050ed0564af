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
    assert set(records) == {"a", "b", "line-2", "c"}  # a bad line keeps a readable id
    assert records["a"]["verdict"] == records["b"]["verdict"] == "ok"
    assert {records["a"]["session"], records["b"]["session"]} == {"import", "warm"}  # one worker, one header
    assert records["line-2"]["error"]["code"] == "verify.bad_item"
    assert records["c"]["error"]["code"] == "verify.bad_item"
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
    # What the terminal shows: the last state of the line, without characters left by a longer one.
    (line,) = [shown for shown in render_terminal(terminal) if shown.startswith("[")]
    assert re.fullmatch(r"\[#{30}\] 3/3 [\d.]+/s ETA 0s failed=0 *", line), repr(line)
    assert re.search(r"^snippets\s+3$", stdout, re.M)


# -- regression tests (issue 8: contracts that hold on every path) -------------------------------

OK = (ROOT / "lean" / "snippets" / "ok.lean").read_text()
TYPE_ERROR = (ROOT / "lean" / "snippets" / "type_error.lean").read_text()
HANG = (ROOT / "lean" / "snippets" / "hang.lean").read_text()


def lean_args(lean_toolchain, library) -> list[str]:  # type: ignore[no-untyped-def]
    return ["--lean", str(lean_toolchain.lean), "--search-path", str(library.root)]


def jsonl(path: Path, *lines: object, bom: bool = False) -> Path:
    text = "\n".join(line if isinstance(line, str) else orjson.dumps(line).decode() for line in lines) + "\n"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def records_of(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [orjson.loads(line) for line in path.read_text().splitlines()]


def render_terminal(text: str) -> list[str]:
    """What a terminal shows for ``text``: ``\\r`` returns to column 0 and overwrites in place,
    ``\\x1b[K`` erases to the end of the line, ``\\n`` starts a new line."""
    screen: list[str] = []
    line, col = "", 0
    for token in re.split(r"(\r|\n|\x1b\[K)", text):
        if token == "\r":
            col = 0
        elif token == "\n":
            screen.append(line)
            line, col = "", 0
        elif token == "\x1b[K":
            line = line[:col]
        elif token:
            line = line[:col] + token + line[col + len(token):]
            col += len(token)
    screen.append(line)
    return screen


def test_duplicate_ids_get_their_own_position_and_point_at_the_first(lean_toolchain, library, tmp_path) -> None:  # type: ignore[no-untyped-def]
    source = jsonl(tmp_path / "dup.jsonl",
                   {"id": "a", "code": OK}, "", {"id": "a", "code": TYPE_ERROR}, {"id": "b", "code": OK}, {"id": "a", "code": OK})
    out = tmp_path / "out.jsonl"
    result = verify(str(source), *lean_args(lean_toolchain, library), "--workers", "2", "-o", str(out))
    assert result.returncode == 0, result.stderr
    records = sorted(records_of(out), key=lambda r: r["index"])
    assert [(r["id"], r["index"], r["line"]) for r in records] == [("a", 0, 1), ("a", 1, 3), ("b", 2, 4), ("a", 3, 5)]
    assert [r.get("duplicate_of") for r in records] == [None, 0, None, 0]
    # Each result belongs to its own item, not to the last item with its id.
    assert [r["verdict"] for r in records] == ["ok", "errors", "ok", "ok"]


def test_an_unwritable_output_is_a_one_line_error_before_any_work(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # --lean names no toolchain: had a worker started first, the error would be lean.toolchain_not_found.
    for target in (tmp_path / "no-such-dir" / "out.jsonl", tmp_path):
        result = verify(str(ROOT / "lean" / "snippets"), "--lean", "/nonexistent/lean", "-o", str(target))
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert str(target) in result.stderr and "toolchain" not in result.stderr


def test_ctrl_c_prints_a_summary_keeps_the_results_and_leaves_no_process(lean_toolchain, library, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os
    import signal
    import time

    import psutil

    source = jsonl(tmp_path / "slow.jsonl", {"id": "ok", "code": OK}, *({"id": f"hang{i}", "code": HANG} for i in range(6)))
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lean_worker.cli", "verify", str(source), *lean_args(lean_toolchain, library),
         "--workers", "2", "--timeout", "120", "-o", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (out.exists() and out.read_text().count("\n") >= 1):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no result line within 60 s"
            time.sleep(0.05)
        # Both workers are now on a hanging snippet: wait until their Lean processes run.
        parent = psutil.Process(proc.pid)
        while len([p for p in parent.children(recursive=True) if "lean" in p.name()]) < 2:
            assert time.monotonic() < deadline, "the hanging snippets' Lean processes did not start"
            time.sleep(0.05)
        children = parent.children(recursive=True)
        started = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
        stopped_in = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 130, (proc.returncode, stdout, stderr)
    assert "Traceback" not in stderr, stderr
    assert stopped_in < 15, stopped_in
    assert re.search(r"^interrupted\s+after 1 of 7 snippets$", stdout, re.M), stdout
    assert re.search(r"^snippets\s+7$", stdout, re.M), stdout
    assert [r["id"] for r in records_of(out)] == ["ok"]
    gone, alive = psutil.wait_procs(children, timeout=5)
    assert alive == [], [(p.pid, p.name()) for p in alive]


def test_a_bad_line_keeps_its_readable_id(lean_toolchain, library, tmp_path) -> None:  # type: ignore[no-untyped-def]
    source = jsonl(tmp_path / "bad.jsonl", {"id": "x", "code": 42}, {"id": 7, "code": OK}, "not json", {"code": OK})
    out = tmp_path / "out.jsonl"
    result = verify(str(source), *lean_args(lean_toolchain, library), "--workers", "1", "-o", str(out))
    assert result.returncode == 0, result.stderr
    records = {r["id"]: r for r in records_of(out)}
    assert set(records) == {"x", "7", "line-3", "line-4"}
    assert records["x"]["error"]["code"] == "verify.bad_item"
    assert records["x"]["line"] == 1
    assert records["7"]["verdict"] == records["line-4"]["verdict"] == "ok"


def test_a_utf8_bom_starts_a_jsonl_file_or_a_lean_file(lean_toolchain, library, tmp_path) -> None:  # type: ignore[no-untyped-def]
    source = jsonl(tmp_path / "bom.jsonl", {"id": "first", "code": OK}, {"id": "second", "code": OK}, bom=True)
    out = tmp_path / "out.jsonl"
    result = verify(str(source), *lean_args(lean_toolchain, library), "--workers", "1", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert {r["id"]: r["verdict"] for r in records_of(out)} == {"first": "ok", "second": "ok"}
    snippets = tmp_path / "dir"
    snippets.mkdir()
    (snippets / "bom.lean").write_bytes(b"\xef\xbb\xbf" + OK.encode())
    result = verify(str(snippets), *lean_args(lean_toolchain, library), "--workers", "1", "-o", str(out))
    assert result.returncode == 0, result.stderr
    (record,) = records_of(out)
    assert (record["id"], record["verdict"], record["messages"]) == ("bom.lean", "ok", [])


def test_a_shorter_progress_line_leaves_no_stale_characters() -> None:
    import io
    import time

    from lean_worker._verify import Progress

    stream = io.StringIO()
    progress = Progress(1000, stream, enabled=True)
    progress.started = time.monotonic() - 10_000  # slow: a long ETA
    progress.update(10, 10, force=True)
    progress.started = time.monotonic() - 1  # fast: a short ETA, no failures
    progress.update(999, 0, force=True)
    progress.finish()
    shown = render_terminal(stream.getvalue())
    assert shown[0].rstrip(" ").endswith("ETA 0s failed=0"), shown  # blanks past the end are blank


def test_the_parent_parses_each_snippets_header_at_most_once(lean_toolchain, library, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import lean_worker_protocol.lean as protocol
    from lean_worker.cli import main

    calls: list[int] = []
    real = protocol.parse_header

    def counting(code: str):  # type: ignore[no-untyped-def]
        calls.append(len(code))
        return real(code)

    monkeypatch.setattr(protocol, "parse_header", counting)
    source = jsonl(tmp_path / "four.jsonl", *({"id": f"s{i}", "code": OK + f"\ntheorem t{i} : Eq N.two N.two := Eq.refl\n"}
                                              for i in range(4)))
    out = tmp_path / "out.jsonl"
    assert main(["verify", str(source), *lean_args(lean_toolchain, library), "--workers", "2", "-o", str(out),
                 "--no-progress"]) == 0
    assert [r["verdict"] for r in records_of(out)] == ["ok"] * 4
    assert len(calls) <= 4, calls


def test_fixtures_print_library_root_names_the_library_a_worker_built(lean_toolchain, library) -> None:  # type: ignore[no-untyped-def]
    result = subprocess.run(
        [sys.executable, "-m", "lean_worker.cli", "fixtures", "--print-library-root", "--lean", str(lean_toolchain.lean)],
        cwd=ROOT, capture_output=True, text=True, timeout=150,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{library.root}\n"
    assert list(Path(library.root).rglob("*.olean"))


@pytest.mark.parametrize(
    "bad",
    [
        ["--workers", "0"],
        ["--timeout", "0"],
        ["--timeout", "-1"],
        ["--timeout", "nan"],
        ["--max-imports", "0"],
        ["--max-requests", "0"],
        ["--rss-ceiling-mb", "0"],
        ["--lean-memory-mb", "0"],
        ["--lean-threads", "0"],
        ["--max-sessions", "0"],
        ["--search-path", "/nonexistent/oleans"],
        ["-o", "/nonexistent/dir/out.jsonl"],
    ],
    ids=lambda bad: " ".join(bad),
)
def test_a_bad_argument_exits_2_before_the_fixtures_are_built_or_a_child_starts(bad: list[str]) -> None:
    import time

    started = time.monotonic()
    # --lean names no toolchain: a fixtures build or a started child would say so instead.
    result = verify("--fixtures", "--lean", "/nonexistent/lean", *bad)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "toolchain" not in result.stderr and "fixtures" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("lean-worker verify: error: argument "), line
    assert bad[0] in line
    assert time.monotonic() - started < 10
