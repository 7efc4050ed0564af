"""``check()``, ``doctor()`` and ``lean-worker check|doctor``: each failure mode of a worker
child becomes a check item with its stable code and a repair hint, never an exception.

Real children throughout: the test children, the typed streaming example and the Lean
worker with the provisioned Lean 4.35 and our prelude library.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from children.bad_version import BAD_VERSION
from conftest import ROOT, child_config

from examples.typed_streaming.commands import TOKENIZE, TOP_WORDS, Text, TokenizeSummary
from lean_worker import DOCTOR, Call, ChildCommand, ChildEnv, Stream, WorkerConfig, check, doctor
from lean_worker.lean import CHECK, OPEN, TOOLCHAIN, check_lean, lean_config, lean_steps
from lean_worker_protocol.probe import CheckItem, CheckReport

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

CLI_TIMEOUT_S = 90


def lean_worker(lean: object, *search_path: object, **options: object) -> WorkerConfig:
    """The Lean worker, with the parent's cache dir handed to the child (so the fixture
    state it reports is the parent's, whatever XDG_CACHE_HOME says)."""
    from lean_worker_child.lean.provision import cache_dir

    env = ChildEnv(set={"LEAN_WORKER_CACHE": str(cache_dir())})
    return lean_config(lean=lean, search_path=search_path, env=env, request_timeout_s=60, **options)  # type: ignore[arg-type]


def item(report: CheckReport, code: str):  # type: ignore[no-untyped-def]
    found = [i for i in report.items if i.code == code]
    assert len(found) == 1, report.codes()
    return found[0]


# -- the child itself --------------------------------------------------------------------------


async def test_a_child_executable_that_does_not_exist_is_child_not_found(tmp_path: Path) -> None:
    report = await check(WorkerConfig(child=ChildCommand.executable(tmp_path / "no-such-worker")))
    assert report.codes() == ["check.child_not_found"]
    assert not report.ok
    found = item(report, "check.child_not_found")
    assert str(tmp_path / "no-such-worker") in found.message
    assert found.severity == "error" and found.hint


async def test_a_child_module_that_is_not_importable_is_child_not_found() -> None:
    report = await check(child_config("no_such_package.worker"))
    assert report.codes() == ["check.child_not_found"]
    assert "no_such_package" in item(report, "check.child_not_found").message


async def test_a_child_file_without_the_execute_bit_is_child_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "worker"
    script.write_text(f"#!{sys.executable}\n")
    script.chmod(0o644)
    report = await check(WorkerConfig(child=ChildCommand.executable(script)))
    assert report.codes() == ["check.child_not_executable"]
    assert "chmod +x" in item(report, "check.child_not_executable").hint


async def test_a_child_that_speaks_another_protocol_version_is_protocol_version() -> None:
    report = await check(child_config("tests.children.bad_version"))
    assert report.codes() == ["check.child_ok", "check.protocol_version"]
    found = item(report, "check.protocol_version")
    assert f"speaks protocol {BAD_VERSION}" in found.message
    assert "matching lean-worker versions" in found.hint


async def test_a_child_that_exits_before_its_handshake_is_startup_failed_with_its_last_words() -> None:
    report = await check(child_config("tests.children.early_exit"))
    assert report.codes() == ["check.child_ok", "check.startup_failed"]
    assert "cannot load its configuration" in item(report, "check.startup_failed").message


# -- what it serves ----------------------------------------------------------------------------


async def test_a_child_serving_every_expected_command_passes_and_its_round_trip_is_worker_doctor() -> None:
    report = await check(child_config("examples.typed_streaming.worker"), expect=[TOKENIZE, TOP_WORDS])
    assert report.codes() == ["check.child_ok", "check.handshake_ok", "check.commands_ok", "check.roundtrip_ok"]
    assert report.ok
    assert item(report, "check.roundtrip_ok").subject == DOCTOR.name


async def test_a_command_declared_differently_is_schema_mismatch_and_one_not_served_is_command_missing() -> None:
    changed = Stream("tokenize", request=Text, row=str, summary=TokenizeSummary)  # rows are no longer Tokens
    missing = Call("wordfreq.translate", request=Text, response=str)
    report = await check(child_config("examples.typed_streaming.worker"), expect=[changed, TOP_WORDS, missing])
    assert report.codes() == [
        "check.child_ok", "check.handshake_ok", "check.schema_mismatch", "check.command_missing", "check.roundtrip_ok",
    ]
    mismatch = item(report, "check.schema_mismatch")
    assert (mismatch.subject, mismatch.severity) == ("tokenize", "error")
    assert f"parent=stream:{changed.fingerprint} child=stream:{TOKENIZE.fingerprint}" in mismatch.message
    assert item(report, "check.command_missing").subject == "wordfreq.translate"


# -- capability steps --------------------------------------------------------------------------


async def test_capability_steps_run_in_order_and_stop_after_the_first_that_reports_an_error() -> None:
    ran: list[str] = []

    def step(name: str, severity: str):  # type: ignore[no-untyped-def]
        async def run(worker: object) -> list[CheckItem]:
            ran.append(name)
            return [CheckItem(f"check.{name}", severity, name, f"{name} ran")]  # type: ignore[arg-type]

        return run

    steps = [step("first_ok", "ok"), step("second_warns", "warning"), step("third_fails", "error"), step("never", "ok")]
    report = await check(child_config("examples.typed_streaming.worker"), steps=steps)
    assert report.codes() == ["check.child_ok", "check.handshake_ok", "check.first_ok", "check.second_warns", "check.third_fails"]
    assert ran == ["first_ok", "second_warns", "third_fails"]


async def test_a_worker_error_that_escapes_a_step_is_step_failed_naming_the_step() -> None:
    async def asks_for_what_is_not_served(worker):  # type: ignore[no-untyped-def]
        await worker.call(Call("wordfreq.translate", request=Text, response=str), Text("hi"))
        return []

    report = await check(child_config("examples.typed_streaming.worker"), steps=[asks_for_what_is_not_served])
    assert report.codes() == ["check.child_ok", "check.handshake_ok", "check.step_failed"]
    failed = item(report, "check.step_failed")
    assert failed.subject.endswith("asks_for_what_is_not_served")
    assert failed.message.startswith("worker.schema_mismatch: ")


async def test_the_generic_check_of_a_lean_worker_runs_only_the_doctor_round_trip() -> None:
    # The Lean steps come with the Lean API (lean_steps); the generic probe knows no Lean.
    report = await check(lean_worker("/nonexistent/lean"))
    assert report.codes() == ["check.child_ok", "check.handshake_ok", "check.roundtrip_ok"]
    assert item(report, "check.roundtrip_ok").subject == DOCTOR.name


async def test_lean_steps_against_a_child_that_is_not_a_lean_worker_are_toolchain_failed() -> None:
    report = await check(child_config("examples.typed_streaming.worker"), steps=lean_steps(["LwFix.Nat"]))
    assert report.codes() == ["check.child_ok", "check.handshake_ok", "check.toolchain_failed"]
    assert "does not serve lean.toolchain" in item(report, "check.toolchain_failed").message


# -- the Lean worker ---------------------------------------------------------------------------


async def test_the_lean_worker_with_the_fixture_library_passes_every_check(lean_toolchain, library) -> None:  # type: ignore[no-untyped-def]
    config = lean_worker(lean_toolchain.lean, library.root)
    report = await check(config, expect=[CHECK, OPEN, TOOLCHAIN, DOCTOR], steps=lean_steps(["LwFix.Nat", "LwFix.List"]))
    assert report.codes() == [
        "check.child_ok", "check.handshake_ok", "check.commands_ok",
        "check.toolchain_ok", "check.session_ok", "check.roundtrip_ok",
    ]
    assert report.ok
    toolchain = item(report, "check.toolchain_ok").message
    assert lean_toolchain.version in toolchain and "standard library absent" in toolchain
    assert item(report, "check.session_ok").subject == "LwFix.Nat LwFix.List"


async def test_a_lean_worker_without_a_toolchain_is_toolchain_not_found() -> None:
    report = await check(lean_worker("/nonexistent/lean"), steps=lean_steps(["LwFix.Nat"]))
    assert report.codes() == ["check.child_ok", "check.handshake_ok", "check.toolchain_not_found"]
    found = item(report, "check.toolchain_not_found")
    assert "/nonexistent/lean" in found.message and "--lean" in found.hint


async def test_imports_of_a_module_that_does_not_exist_are_session_failed(lean_toolchain, library) -> None:  # type: ignore[no-untyped-def]
    report = await check_lean(lean_worker(lean_toolchain.lean, library.root), imports=["LwFix.Missing"])
    assert report.codes() == [
        "check.child_ok", "check.handshake_ok", "check.commands_ok", "check.toolchain_ok", "check.session_failed",
    ]
    found = item(report, "check.session_failed")
    assert found.subject == "LwFix.Missing"
    assert "LwFix.Missing does not exist" in found.message  # Lean's own words
    assert "search path" in found.hint


# -- doctor ------------------------------------------------------------------------------------


async def test_doctor_of_the_lean_worker_reports_toolchain_search_path_cache_and_fixture_state(
    lean_toolchain, library, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    from lean_worker_child.lean.provision import cache_dir

    missing = tmp_path / "not-built"
    report = await doctor(lean_worker(lean_toolchain.lean, library.root, missing, max_sessions=3))
    assert (report.worker, report.ok) == ("lean-worker-lean", True)  # warnings only
    items = {i.name: i for i in report.items}
    assert list(items) == ["lean.toolchain", "lean.stdlib", "lean.search_path", "lean.cache", "lean.fixtures", "lean.engine"]
    assert items["lean.toolchain"].data["lean"] == str(lean_toolchain.lean)
    assert items["lean.toolchain"].data["version"] == lean_toolchain.version
    assert items["lean.stdlib"].severity == "warning"  # the test toolchain has no Init
    assert items["lean.search_path"].severity == "warning"
    assert items["lean.search_path"].data == {str(library.root): "exists", str(missing): "missing"}
    assert items["lean.cache"].data["path"] == str(cache_dir())
    assert items["lean.fixtures"].data == {"state": "built", "root": str(library.root)}
    assert items["lean.engine"].data["max_sessions"] == "3"


async def test_doctor_of_a_lean_worker_without_a_toolchain_is_an_error_item_with_a_hint() -> None:
    report = await doctor(lean_worker("/nonexistent/lean"))
    toolchain = report.items[0]
    assert (toolchain.name, toolchain.severity) == ("lean.toolchain", "error")
    assert "LEAN_WORKER_LEAN" in toolchain.hint
    assert not report.ok


async def test_doctor_keeps_every_contributor_and_turns_a_failing_one_into_an_error_item() -> None:
    report = await doctor(child_config("tests.children.doctors"))
    assert (report.worker, report.version) == ("doctors", "2.0")
    assert [(i.name, i.severity) for i in report.items] == [
        ("doctors.disk", "ok"),
        ("doctors.cache", "warning"),
        ("broken", "error"),
        ("confused", "error"),
        ("doctors.late", "ok"),
    ]
    assert "RuntimeError: licence file unreadable" in report.items[2].message
    assert report.items[0].data == {"free_mib": "512"}


async def test_a_worker_without_doctor_contributors_reports_no_items() -> None:
    report = await doctor(child_config("examples.typed_streaming.worker"))
    assert (report.worker, report.items, report.ok) == ("wordfreq", [], True)


# -- the command line --------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-m", "lean_worker.cli", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
    )


def test_cli_check_json_exits_0_for_the_working_lean_worker(lean_toolchain, library) -> None:  # type: ignore[no-untyped-def]
    result = cli("check", "--json", "--lean", str(lean_toolchain.lean), "--search-path", str(library.root),
                 "--lean-imports", "LwFix.Nat,LwFix.List")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert [i["code"] for i in report["items"]][-3:] == ["check.toolchain_ok", "check.session_ok", "check.roundtrip_ok"]


def test_cli_check_json_exits_1_and_names_the_code_when_lean_is_missing() -> None:
    result = cli("check", "--json", "--lean", "/nonexistent/lean")
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False
    errors = [i for i in report["items"] if i["severity"] == "error"]
    assert [i["code"] for i in errors] == ["check.toolchain_not_found"]
    assert errors[0]["hint"]


def test_cli_check_of_an_unresolvable_child_lists_every_place_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LW_TEST_NO_WORKER", raising=False)
    result = cli("check", "--json", "--env-var", "LW_TEST_NO_WORKER", "--sibling", "no-such-worker",
                 "--module", "no_such_package.worker")
    assert result.returncode == 1, result.stdout + result.stderr
    (only,) = json.loads(result.stdout)["items"]
    assert only["code"] == "check.child_not_found"
    for place in ("$LW_TEST_NO_WORKER: unset", "no-such-worker: no such file", "module no_such_package.worker"):
        assert place in only["message"]


def test_cli_check_prints_a_human_report_and_exits_1_on_a_protocol_mismatch() -> None:
    result = cli("check", "--module", "tests.children.bad_version")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("check ") and lines[-1] == "1 ok, 0 warnings, 1 error"
    assert any(line.split()[:2] == ["ERROR", "check.protocol_version"] for line in lines)
    assert any(line.strip().startswith("hint: install matching lean-worker versions") for line in lines)


def test_cli_lean_options_with_another_child_are_a_usage_error() -> None:
    result = cli("check", "--module", "examples.typed_streaming.worker", "--lean", "/usr/bin/lean")
    assert result.returncode == 2
    assert "apply only to the first-party Lean worker" in result.stderr


def test_cli_doctor_exits_0_with_warnings_and_1_with_an_error(lean_toolchain) -> None:  # type: ignore[no-untyped-def]
    ok = cli("doctor", "--lean", str(lean_toolchain.lean))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.splitlines()[0] == "doctor lean-worker-lean 0.1.0"
    assert any(line.split()[:2] == ["WARN", "lean.stdlib"] for line in ok.stdout.splitlines())
    broken = cli("doctor", "--json", "--lean", "/nonexistent/lean")
    assert broken.returncode == 1, broken.stdout + broken.stderr
    report = json.loads(broken.stdout)
    assert (report["ok"], report["items"][0]["name"], report["items"][0]["severity"]) == (False, "lean.toolchain", "error")
