"""``lean_worker.verify``: the Python API behind ``lean-worker verify``, async and sync, with
real Lean workers; its typed results and errors."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import orjson
import psutil
import pytest

from lean_worker.lean import ToolchainNotFound
from lean_worker.verify import (
    FixturesUnavailable,
    Snippet,
    VerifyInputError,
    VerifyOptionError,
    VerifyOptions,
    VerifyResult,
    build_fixtures,
    verify_snippets,
    verify_snippets_sync,
)

ROOT = Path(__file__).resolve().parents[1]
SNIPPETS = ROOT / "lean" / "snippets"
OK = (SNIPPETS / "ok.lean").read_text()
TYPE_ERROR = (SNIPPETS / "type_error.lean").read_text()
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def options(lean_toolchain, library) -> VerifyOptions:  # type: ignore[no-untyped-def]
    return VerifyOptions(workers=2, timeout_s=10, lean=str(lean_toolchain.lean), search_path=[str(library.root)])


def variant(i: int) -> str:
    return OK + f"\ntheorem t{i} : Eq N.two N.two := Eq.refl\n"


@pytest.mark.anyio
async def test_async_results_are_typed_positioned_and_matched_by_index(options: VerifyOptions, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    rows = [{"id": "a", "code": OK}, {"id": "a", "code": TYPE_ERROR}, {"id": "b", "code": 5}]
    source.write_text("\n".join(orjson.dumps(r).decode() for r in rows) + "\n")
    async with verify_snippets(source, options) as run:
        assert run.total == 3
        results = sorted([r async for r in run], key=lambda r: r.index)
    assert [(r.id, r.index, r.line, r.duplicate_of, r.verdict) for r in results] == [
        ("a", 0, 1, None, "ok"),
        ("a", 1, 2, 0, "errors"),
        ("b", 2, 3, None, "failed"),
    ]
    assert results[1].messages[0].severity == "error"
    assert results[2].error is not None and results[2].error.code == "verify.bad_item"
    summary = run.summary
    assert summary.complete and (summary.snippets, summary.done) == (3, 3)
    assert summary.verdicts == {"ok": 1, "errors": 1, "failed": 1}
    assert summary.errors == {"verify.bad_item": 1}
    # The JSON line is the result's serialisation, and reads back to the same result.
    for r in results:
        assert VerifyResult.from_json(r.to_json()) == r


@pytest.mark.anyio
async def test_the_parent_parses_each_header_once_and_off_the_event_loop(options: VerifyOptions, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import threading

    import lean_worker_protocol.lean as protocol

    loop_thread = threading.get_ident()
    calls: list[bool] = []
    real = protocol.parse_header

    def counting(code: str):  # type: ignore[no-untyped-def]
        calls.append(threading.get_ident() == loop_thread)
        return real(code)

    monkeypatch.setattr(protocol, "parse_header", counting)
    snippets = [Snippet(f"s{i}", variant(i)) for i in range(6)]
    async with verify_snippets(snippets, options) as run:
        verdicts = [r.verdict async for r in run]
    assert verdicts == ["ok"] * 6
    assert len(calls) <= len(snippets), calls
    assert not any(calls), "a header was parsed on the event loop's thread"
    assert run.summary.imports <= 2  # the keys still route the same header to a warm worker


def test_sync_results_and_summary_without_an_event_loop(options: VerifyOptions) -> None:
    with verify_snippets_sync([("x", OK), Snippet("y", TYPE_ERROR)], options) as run:
        results = {r.id: r for r in run}
    assert {k: r.verdict for k, r in results.items()} == {"x": "ok", "y": "errors"}
    assert {r.index for r in results.values()} == {0, 1}
    assert results["x"].line is None  # no line numbers for Snippets
    text = run.summary.render()
    assert "snippets    2" in text and "interrupted" not in text


def test_lean_threads_starts_every_lean_process_with_that_many_threads_and_the_verdicts_stay(options: VerifyOptions) -> None:
    import dataclasses

    options = dataclasses.replace(options, workers=1, lean_threads=1)
    seen: list[list[str]] = []
    with verify_snippets_sync([("x", OK), ("y", TYPE_ERROR), ("z", variant(1))], options) as run:
        for _ in run:  # the worker's Lean process is alive while the batch runs
            seen += [p.cmdline() for p in psutil.Process().children(recursive=True) if p.name() == "lean"]
        assert run.summary.verdicts == {"ok": 2, "errors": 1}
    assert seen and all(argv[argv.index("-j") + 1] == "1" for argv in seen), seen


def test_leaving_early_stops_the_batch_and_leaves_no_process(options: VerifyOptions) -> None:
    hang = (SNIPPETS / "hang.lean").read_text()
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    started = time.monotonic()
    with verify_snippets_sync([Snippet("ok", OK), *(Snippet(f"h{i}", hang) for i in range(4))], options) as run:
        for result in run:
            assert result.id == "ok"
            spawned = [p for p in me.children(recursive=True) if p.pid not in before]
            break
    assert time.monotonic() - started < 30
    assert not run.summary.complete and run.summary.done == 1
    assert "interrupted  after 1 of 5 snippets" in run.summary.render()
    gone, alive = psutil.wait_procs(spawned, timeout=5)
    assert spawned and alive == []


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("workers", 0),
        ("timeout_s", 0),
        ("timeout_s", -1.0),
        ("timeout_s", math.nan),
        ("timeout_s", math.inf),
        ("max_imports", 0),
        ("max_sessions", 0),
        ("rss_ceiling_bytes", 0),
        ("lean_memory_mb", -5),
        ("lean_threads", 0),
        ("engine", "lukewarm"),
        ("search_path", ["/nonexistent/oleans"]),
        ("search_path", "/tmp"),
        ("sandbox", "maybe"),
    ],
)
def test_a_bad_option_is_a_typed_error_naming_it(option: str, value: object) -> None:
    with pytest.raises(VerifyOptionError) as caught:
        VerifyOptions(**{option: value})  # type: ignore[arg-type]
    assert caught.value.code == "verify.bad_option"
    assert caught.value.option == option
    assert f"option={option}" in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_the_default_pool_has_two_workers_per_core_and_checks_sandboxed_where_it_can() -> None:
    # Both chosen from measurement: architecture/90-pool-and-verify.md and 120-sandbox.md.
    options = VerifyOptions()
    cores = os.cpu_count() or 1
    assert options.workers == 2 * cores
    assert options.sandbox == "auto" and options.worker_config().sandbox.mode == "auto"


@pytest.mark.parametrize(
    "source",
    [Path("/nonexistent/snippets"), [("id", 42)], ["just a string"], None],
    ids=["missing path", "code not a string", "not a pair", "nothing"],
)
def test_bad_input_is_a_typed_error_before_any_child_starts(source: object) -> None:
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    with pytest.raises(VerifyInputError) as caught:
        with verify_snippets_sync(source, VerifyOptions(lean="/nonexistent/lean")):  # type: ignore[arg-type]
            pass
    assert caught.value.code == "verify.bad_input"
    assert {p.pid for p in me.children(recursive=True)} <= before


def test_a_missing_toolchain_is_raised_once_before_the_batch(tmp_path: Path) -> None:
    with pytest.raises(ToolchainNotFound):
        with verify_snippets_sync(SNIPPETS, VerifyOptions(workers=1, lean="/nonexistent/lean")):
            pytest.fail("the batch started without a toolchain")


@pytest.mark.anyio
async def test_build_fixtures_locates_the_library_and_fails_typed_without_lean(lean_toolchain, library) -> None:  # type: ignore[no-untyped-def]
    report = await build_fixtures(lean=str(lean_toolchain.lean))
    assert report.library_root == str(library.root)
    with pytest.raises(FixturesUnavailable) as caught:
        await build_fixtures(lean="/nonexistent/lean")
    assert caught.value.code == "verify.fixtures_failed"
    assert caught.value.cause_code == "lean.toolchain_not_found"


def test_an_exception_in_the_callers_block_comes_out_as_itself(options: VerifyOptions) -> None:
    class Stop(Exception):
        pass

    with pytest.raises(Stop):
        with verify_snippets_sync([Snippet("a", OK), Snippet("b", OK)], options) as run:
            for _ in run:
                raise Stop
