"""The Lean worker child with a real Lean: checks, sessions keyed by header, import
accounting, Lean's limits, a hanging and a crashing snippet, batches, the declaration index.

Every test drives ``python -m lean_worker_child.lean`` through the supervisor with the
provisioned Lean 4.35 and our prelude library (``lean/library``, compiled once per content
hash); snippets are the files in ``lean/snippets``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import anyio
import psutil
import pytest

from lean_worker import RequestTimeout, RestartPolicy, Worker
from lean_worker.lean import (
    CHECK,
    CHECK_BATCH,
    INDEX,
    OPEN,
    TOOLCHAIN,
    CheckBatch,
    CheckRequest,
    IndexRequest,
    LeanCrashed,
    LeanHeaderError,
    LeanSettings,
    LeanTimeout,
    OpenRequest,
    ToolchainQuery,
    lean_config,
)
from lean_worker_protocol import BOOTSTRAP_ENV
from tests.lean_io_probes import getenv_snippet, shown_by_eval

SNIPPETS = Path(__file__).resolve().parents[1] / "lean" / "snippets"
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


def snippet(name: str) -> str:
    return (SNIPPETS / name).read_text()


def expected_error(code: str) -> tuple[int, int]:
    m = re.search(r"-- expect: error (\d+):(\d+)", code)
    assert m, "type_error.lean states its expected position"
    return int(m.group(1)), int(m.group(2))


async def test_toolchain_report_comes_from_the_child(config, lean_toolchain) -> None:  # type: ignore[no-untyped-def]
    async with Worker(config()) as worker:
        report = await worker.call(TOOLCHAIN, ToolchainQuery())
    assert report.lean == str(lean_toolchain.lean)
    assert report.source == "explicit"
    assert report.version.startswith("4.")
    assert report.stdlib_present is False


async def test_a_clean_snippet_checks_ok(config) -> None:  # type: ignore[no-untyped-def]
    async with Worker(config()) as worker:
        result = await worker.call(CHECK, CheckRequest(snippet("ok.lean"), id="ok"))
    assert result.verdict == "ok", result.messages
    assert result.messages == []
    assert result.id == "ok"
    assert result.session == "import"
    assert result.imports == ["LwFix.List"]


@pytest.mark.parametrize("engine", ["warm", "cold"])
async def test_a_type_error_is_reported_at_its_position(config, engine) -> None:  # type: ignore[no-untyped-def]
    code = snippet("type_error.lean")
    line, column = expected_error(code)
    async with Worker(config()) as worker:
        result = await worker.call(CHECK, CheckRequest(code, engine=engine))
    assert result.verdict == "errors"
    errors = [m for m in result.messages if m.severity == "error"]
    assert len(errors) == 1, result.messages
    assert (errors[0].pos.line, errors[0].pos.column) == (line, column)
    assert errors[0].end_pos is not None
    assert result.session == ("cold" if engine == "cold" else "import")


async def test_positions_map_back_through_a_different_header_layout(config) -> None:  # type: ignore[no-untyped-def]
    """Two snippets with the same imports share a session even when their headers differ in
    comments and spacing; positions stay relative to each caller's own text."""
    code = snippet("type_error.lean")
    line, column = expected_error(code)
    shifted = "-- a leading comment\n/- and a block\n   comment -/\n" + code
    async with Worker(config()) as worker:
        first = await worker.call(CHECK, CheckRequest(code))
        second = await worker.call(CHECK, CheckRequest(shifted))
        cold = await worker.call(CHECK, CheckRequest(shifted, engine="cold"))
    assert (first.session, second.session) == ("import", "warm")
    error = next(m for m in second.messages if m.severity == "error")
    assert (error.pos.line, error.pos.column) == (line + 3, column)
    assert [(m.pos, m.end_pos, m.text) for m in second.messages] == [(m.pos, m.end_pos, m.text) for m in cold.messages]


async def test_sorry_is_detected(config) -> None:  # type: ignore[no-untyped-def]
    async with Worker(config()) as worker:
        result = await worker.call(CHECK, CheckRequest(snippet("sorry.lean")))
    assert result.verdict == "sorry", result.messages
    assert len(result.sorries) == 1
    assert [m.severity for m in result.messages] == ["warning"]
    assert result.sorries[0] == result.messages[0].pos


async def test_heartbeat_limit_is_an_error_with_its_limit(config) -> None:  # type: ignore[no-untyped-def]
    async with Worker(config()) as worker:
        result = await worker.call(CHECK, CheckRequest(snippet("heartbeats.lean")))
        after = await worker.call(CHECK, CheckRequest(snippet("ok.lean")))
    assert result.verdict == "errors"
    assert result.limit == "heartbeats"
    assert after.verdict == "ok"


async def test_same_header_reuses_the_session_and_is_not_an_import(config) -> None:  # type: ignore[no-untyped-def]
    code = snippet("ok.lean")
    async with Worker(config()) as worker:
        first = await worker.call(CHECK, CheckRequest(code))
        assert worker.stats().imports == 1
        seconds = [await worker.call(CHECK, CheckRequest(code + f"\ntheorem again{i} : Eq N.two N.two := Eq.refl\n"))
                   for i in range(5)]
        stats = worker.stats()
    assert first.session == "import"
    assert {s.session for s in seconds} == {"warm"}
    assert all(s.verdict == "ok" for s in seconds)
    assert stats.imports == 1  # only the first check imported
    assert stats.requests == 6
    # The import is the expensive part: every warm check beats the importing one.
    assert max(s.elapsed_ms for s in seconds) < first.elapsed_ms


async def test_max_imports_recycles_the_worker(config) -> None:  # type: ignore[no-untyped-def]
    headers = ["prelude\nimport LwFix.Logic\n", "prelude\nimport LwFix.Nat\n", "prelude\nimport LwFix.List\n"]
    async with Worker(config(restart=RestartPolicy(max_imports=2))) as worker:
        for header in headers[:2]:
            assert (await worker.call(CHECK, CheckRequest(header))).session == "import"
        # Warm hits at the limit run on the same child.
        for header in headers[:2]:
            assert (await worker.call(CHECK, CheckRequest(header + "\n"))).session == "warm"
        assert worker.generation == 1
        # A third distinct header is a fresh import: the child is replaced first.
        result = await worker.call(CHECK, CheckRequest(headers[2]))
        assert result.session == "import"
        assert worker.generation == 2
        stats = worker.stats()
    assert stats.restarts == {"max_imports": 1}
    assert stats.imports == 3


async def test_a_hanging_snippet_hits_the_request_timeout_and_the_next_check_succeeds(config) -> None:  # type: ignore[no-untyped-def]
    async with Worker(config(request_timeout_s=3)) as worker:
        pid = worker.hello.pid  # type: ignore[union-attr]
        await worker.call(CHECK, CheckRequest(snippet("ok.lean")))
        lean_pids = [p.pid for p in psutil.Process(pid).children(recursive=True)]
        assert lean_pids, "the warm session is a Lean process under the child"
        with pytest.raises(RequestTimeout):
            await worker.call(CHECK, CheckRequest(snippet("hang.lean")))
        result = await worker.call(CHECK, CheckRequest(snippet("ok.lean")))
        assert result.verdict == "ok"
        assert worker.generation == 2
    for lean_pid in lean_pids:  # the old child's Lean processes died with its group
        assert not psutil.pid_exists(lean_pid) or psutil.Process(lean_pid).status() == psutil.STATUS_ZOMBIE


async def test_a_check_deadline_kills_only_that_session(config) -> None:  # type: ignore[no-untyped-def]
    async with Worker(config()) as worker:
        warm = await worker.call(CHECK, CheckRequest(snippet("ok.lean")))
        with pytest.raises(LeanTimeout) as info:
            await worker.call(CHECK, CheckRequest(snippet("hang.lean"), timeout_s=1.0))
        assert info.value.remote_code == "lean.timeout"
        assert info.value.limit_s == 1.0
        again = await worker.call(CHECK, CheckRequest(snippet("ok.lean")))
        assert worker.generation == 1  # the worker lived; only the hanging session died
    assert (warm.session, again.session) == ("import", "warm")


async def test_a_crashing_snippet_is_classified_and_the_worker_recovers(config) -> None:  # type: ignore[no-untyped-def]
    async with Worker(config()) as worker:
        with pytest.raises(LeanCrashed) as info:
            await worker.call(CHECK, CheckRequest(snippet("crash.lean")))
        message = info.value.remote_message
        assert "cause=worker.exit." in message
        assert info.value.cause == "worker.exit.sigabrt"
        assert info.value.returncode == -6
        assert info.value.detail == "Stack overflow detected. Aborting."
        assert info.value.limit is None
        assert worker.generation == 1
        after = await worker.call(CHECK, CheckRequest(snippet("ok.lean")))
        assert after.verdict == "ok"
        assert worker.generation == 1


@pytest.mark.parametrize("engine", ["warm", "cold"])
async def test_lean_memory_limit_is_a_classified_crash(config, engine) -> None:  # type: ignore[no-untyped-def]
    """Under ``lean -M 200`` the allocating snippet makes Lean abort on its own limit."""
    async with Worker(config(lean_args=["-M", "200"])) as worker:
        with pytest.raises(LeanCrashed) as info:
            await worker.call(CHECK, CheckRequest(snippet("memory.lean"), engine=engine))
        assert "limit=memory" in info.value.remote_message
        assert info.value.limit == "memory"
        assert "cause=worker.exit.sigabrt" in info.value.remote_message
        assert (await worker.call(CHECK, CheckRequest(snippet("ok.lean"), engine=engine))).verdict == "ok"
        assert worker.generation == 1


async def test_a_batch_with_a_crashing_and_a_hanging_snippet_returns_every_other_row(config) -> None:  # type: ignore[no-untyped-def]
    items = [
        CheckRequest(snippet("ok.lean"), id="ok-1"),
        CheckRequest(snippet("crash.lean"), id="crash"),
        CheckRequest(snippet("type_error.lean"), id="type-error"),
        CheckRequest(snippet("hang.lean"), id="hang", timeout_s=1.0),
        CheckRequest(snippet("sorry.lean"), id="sorry"),
        CheckRequest(snippet("ok.lean"), id="ok-2"),
    ]
    progress = []
    async with Worker(config()) as worker:
        async with worker.stream(CHECK_BATCH, CheckBatch(items), on_progress=progress.append) as rows:
            got = [row async for row in rows]
        summary = rows.summary.summary
        assert worker.generation == 1
    assert [r.id for r in got] == [i.id for i in items]
    assert [r.index for r in got] == list(range(len(items)))
    by_id = {r.id: r for r in got}
    assert by_id["ok-1"].result.verdict == "ok"
    assert by_id["ok-2"].result.verdict == "ok"
    assert by_id["type-error"].result.verdict == "errors"
    assert by_id["sorry"].result.verdict == "sorry"
    assert by_id["crash"].result is None and by_id["crash"].error.code == "lean.crashed"
    assert by_id["crash"].error.cause.startswith("worker.exit.")
    assert by_id["hang"].result is None and by_id["hang"].error.code == "lean.timeout"
    assert summary.items == 6
    assert summary.errors == {"lean.crashed": 1, "lean.timeout": 1}
    assert summary.verdicts == {"ok": 2, "errors": 1, "sorry": 1}
    assert progress and progress[-1].current == progress[-1].total == 6


async def test_rss_accounting_includes_the_lean_processes(config) -> None:  # type: ignore[no-untyped-def]
    async with Worker(config()) as worker:
        await worker.call(TOOLCHAIN, ToolchainQuery())
        alone = await worker.pss()
        await worker.call(CHECK, CheckRequest(snippet("ok.lean")))
        with_session = await worker.pss()
        rss = await worker.rss()
        child = psutil.Process(worker.hello.pid)  # type: ignore[union-attr]
        own_rss = child.memory_info().rss
    assert alone is not None and with_session is not None and rss is not None
    # A Lean file worker holds tens of MiB of its own: the tree total must show it.
    assert with_session - alone > 10 * 1024 * 1024
    assert rss > own_rss + 10 * 1024 * 1024


async def test_index_streams_declarations_of_compiled_modules(config) -> None:  # type: ignore[no-untyped-def]
    async with Worker(config()) as worker:
        async with worker.stream(INDEX, IndexRequest(["LwFix.Nat", "LwFix.Missing"])) as rows:
            decls = [d async for d in rows]
        summary = rows.summary.summary
    assert summary.missing == ["LwFix.Missing"]
    assert summary.modules == 1
    assert summary.declarations == len(decls) > 0
    names = {d.name for d in decls}
    assert {d.module for d in decls} == {"LwFix.Nat"}
    nat_source = (Path(__file__).resolve().parents[1] / "lean" / "library" / "LwFix" / "Nat.lean").read_text()
    lines = nat_source.splitlines()
    for d in decls:
        # The selection range is the declaration's name (its last component) in the source.
        text = lines[d.selection.line - 1]
        assert d.name.split(".")[-1] in text, (d, text)
    assert any(n.endswith("add") for n in names)


def test_a_missing_toolchain_is_a_typed_error(library) -> None:  # type: ignore[no-untyped-def]
    from lean_worker import SyncWorker
    from lean_worker.lean import ToolchainNotFound

    with SyncWorker(lean_config(lean="/nonexistent/lean", search_path=[library.root])) as worker:
        with pytest.raises(ToolchainNotFound) as info:
            worker.call(CHECK, CheckRequest("prelude\n"))
    assert "/nonexistent/lean" in str(info.value)


async def test_concurrent_checks_on_one_worker_are_serialised(config) -> None:  # type: ignore[no-untyped-def]
    code = snippet("ok.lean")
    results = []
    async with Worker(config()) as worker:
        async def one(i: int) -> None:
            results.append(await worker.call(CHECK, CheckRequest(code, id=str(i))))

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(one, i)
        assert worker.stats().imports == 1
    assert sorted(r.id for r in results) == ["0", "1", "2", "3"]
    assert all(r.verdict == "ok" for r in results)


async def test_a_batch_charges_one_import_per_new_header(config) -> None:  # type: ignore[no-untyped-def]
    ok, sorry = snippet("ok.lean"), snippet("sorry.lean")
    items = [CheckRequest(ok, id="a"), CheckRequest(sorry, id="b"), CheckRequest(ok, id="c")]
    async with Worker(config()) as worker:
        first = await worker.stream_into(CHECK_BATCH, CheckBatch(items), lambda row: None)
        assert first.summary.imports == 2  # two distinct headers; the third item reuses the first
        assert worker.stats().imports == 2
        again = await worker.stream_into(CHECK_BATCH, CheckBatch(items), lambda row: None)
        assert again.summary.imports == 0
        assert worker.stats().imports == 2


async def test_open_warms_a_header_ahead_of_its_checks(config) -> None:  # type: ignore[no-untyped-def]
    code = snippet("ok.lean")
    async with Worker(config()) as worker:
        opened = await worker.call(OPEN, OpenRequest(code))
        assert (opened.session, opened.key, opened.messages) == ("import", ["prelude", "import LwFix.List"], [])
        assert (await worker.call(OPEN, OpenRequest("prelude\nimport LwFix.List"))).session == "warm"
        assert (await worker.call(CHECK, CheckRequest(code))).session == "warm"
        assert worker.stats().imports == 1
        missing = await worker.call(OPEN, OpenRequest("prelude\nimport LwFix.Nowhere\n"))
        assert missing.session == "import"
        assert any(m.severity == "error" and "LwFix.Nowhere" in m.text for m in missing.messages), missing.messages
        with pytest.raises(LeanHeaderError):
            await worker.call(OPEN, OpenRequest("import\n"))


async def test_a_session_the_child_dropped_is_charged_and_the_parent_catches_up(config) -> None:  # type: ignore[no-untyped-def]
    """With one session slot, A then B evicts A. The parent still takes A for warm, so the
    next A runs on the same child and the child charges the re-import: one import over the
    limit at most. The parent then trusts only A, and B (a fresh key) cycles the worker."""
    a, b = "prelude\nimport LwFix.Logic\n", "prelude\nimport LwFix.Nat\n"
    async with Worker(config(max_sessions=1, restart=RestartPolicy(max_imports=2))) as worker:
        sessions = []
        generations = []
        for code in (a, b, a, b):
            sessions.append((await worker.call(CHECK, CheckRequest(code))).session)
            generations.append(worker.generation)
        stats = worker.stats()
    assert sessions == ["import"] * 4
    assert generations == [1, 1, 1, 2]
    assert stats.imports == 4
    assert stats.restarts == {"max_imports": 1}


async def test_columns_count_code_points_in_both_engines(config) -> None:  # type: ignore[no-untyped-def]
    """The LSP counts UTF-16 units; results count code points, like Lean's --json output.
    Characters outside the BMP (two UTF-16 units each) before an error must not shift it."""
    code = snippet("type_error.lean")
    line, column = expected_error(code)
    lines = code.splitlines(keepends=True)
    lines[line - 1] = "/- 𝔸𝔹ℂ -/ " + lines[line - 1]  # 𝔸 and 𝔹 are outside the BMP, ℂ is not
    code = "".join(lines)
    async with Worker(config()) as worker:
        warm = await worker.call(CHECK, CheckRequest(code))
        cold = await worker.call(CHECK, CheckRequest(code, engine="cold"))
    shift = len("/- 𝔸𝔹ℂ -/ ")
    for result in (warm, cold):
        error = next(m for m in result.messages if m.severity == "error")
        assert (error.pos.line, error.pos.column) == (line, column + shift), result.session
    assert [(m.pos, m.end_pos) for m in warm.messages] == [(m.pos, m.end_pos) for m in cold.messages]


async def test_lean_code_does_not_see_the_workers_bootstrap_variable(config) -> None:  # type: ignore[no-untyped-def]
    # Found by the Lean probes: the engines copied the environment before the child removed
    # LEAN_WORKER_BOOTSTRAP from it, so every Lean process (and its snippets) saw it.
    async with Worker(config()) as worker:
        shown = shown_by_eval(await worker.call(CHECK, CheckRequest(getenv_snippet(BOOTSTRAP_ENV))))
        home = shown_by_eval(await worker.call(CHECK, CheckRequest(getenv_snippet("HOME"))))
    assert shown == "<unset>"
    assert home == os.environ["HOME"]  # the probe does read the environment


def generated_batch(n: int) -> list[str]:
    """Snippets that are ok, wrong or unfinished, in turn, over two headers."""
    headers = ("prelude\nimport LwFix.Nat\n", "prelude\nimport LwFix.Nat\nimport LwFix.Logic\n")
    bodies = (
        "noncomputable def double{i} (n : N) : N := N.add n n\ntheorem double{i}_two : Eq (double{i} N.two) N.four := Eq.refl\n",
        "theorem wrong{i} : Eq N.two N.four := Eq.refl\n",
        "theorem later{i} (n : N) : Eq (N.add n N.zero) n := sorry\n",
    )
    return [headers[i % 2] + "\n" + bodies[i % 3].format(i=i) for i in range(n)]


async def test_a_report_delay_leaves_every_verdict_and_message_as_it_was(config) -> None:  # type: ignore[no-untyped-def]
    # The default report delay (LeanSettings.report_delay_ms) makes Lean report a check's
    # progress once instead of at every step; what it reports in the end must not change.
    codes = [snippet(p.name) for p in sorted(SNIPPETS.glob("*.lean")) if p.name != "hang.lean"] + generated_batch(24)
    seen = {}
    for delay in (0, LeanSettings().report_delay_ms):
        async with Worker(config(report_delay_ms=delay)) as worker:
            results = []
            for code in codes:
                try:
                    r = await worker.call(CHECK, CheckRequest(code))
                    results.append((r.verdict, [(m.severity, m.pos, m.end_pos, m.text) for m in r.messages], r.sorries))
                except LeanCrashed as exc:
                    results.append(("crashed", exc.remote_code, None))
            assert worker.pid is not None
            flags = {arg for p in psutil.Process(worker.pid).children(recursive=True) for arg in p.cmdline()}
            assert f"-Dserver.reportDelayMs={delay}" in flags
        seen[delay] = results
    assert LeanSettings().report_delay_ms > 0
    assert seen[LeanSettings().report_delay_ms] == seen[0]
    assert {r[0] for r in seen[0]} >= {"ok", "errors", "sorry", "crashed"}
