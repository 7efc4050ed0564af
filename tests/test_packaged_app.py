"""A packaged app that owns its worker child: ``examples/packaged_app`` (``wordstat-app``),
installed into a fresh virtual environment, finds its ``wordstat-worker`` console script
beside its interpreter, lets ``$WORDSTAT_WORKER`` override it, fails a bad override with
what it tried, and passes ``lean-worker check``. Before that, ``resolve_child`` in-process.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lean_worker import ChildCommand, ChildNotFound, resolve_child, sibling

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "examples" / "packaged_app"
RUN_TIMEOUT_S = 60

pytestmark = pytest.mark.timeout(300)


# -- resolve_child, in this interpreter --------------------------------------------------------


def test_resolution_lists_every_place_tried_in_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LW_TEST_WORKER", raising=False)
    with pytest.raises(ChildNotFound) as raised:
        resolve_child(env="LW_TEST_WORKER", path=tmp_path / "w", sibling="no-such-worker", module="no_such_package.w")
    exc = raised.value
    assert exc.code == "worker.child_not_found"
    assert exc.tried == (
        "$LW_TEST_WORKER: unset",
        f"path {tmp_path / 'w'}: no such file",
        f"sibling {Path(sys.executable).parent / 'no-such-worker'}: no such file",
        f"module no_such_package.w: not importable by {sys.executable} "
        "(ModuleNotFoundError: No module named 'no_such_package')",
    )
    assert all(place in str(exc) for place in exc.tried)
    assert "LW_TEST_WORKER" in exc.hint


def test_the_first_place_that_holds_a_child_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LW_TEST_WORKER", raising=False)
    python = Path(sys.executable)
    assert resolve_child(sibling=python.name, module="json.tool") == ChildCommand((str(python),))
    assert resolve_child(sibling="no-such-worker", module="json.tool", args=["-x"]) == ChildCommand.module("json.tool", "-x")
    assert resolve_child(path=python, sibling=python.name) == ChildCommand((str(python),))


def test_a_set_override_is_a_command_line_and_wins_over_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LW_TEST_WORKER", f"{sys.executable} -m wordstat_app.worker")
    child = resolve_child(env="LW_TEST_WORKER", sibling=Path(sys.executable).name, args=["--verbose"])
    assert child.argv == (sys.executable, "-m", "wordstat_app.worker", "--verbose")


def test_a_bad_override_fails_instead_of_falling_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LW_TEST_WORKER", "/nonexistent/worker --flag")
    with pytest.raises(ChildNotFound) as raised:
        resolve_child(env="LW_TEST_WORKER", sibling=Path(sys.executable).name)  # the sibling exists
    assert raised.value.tried == ("$LW_TEST_WORKER='/nonexistent/worker --flag': /nonexistent/worker: no such file",)
    assert "unset it" in raised.value.hint


def test_sibling_is_the_script_beside_the_interpreter_and_names_it_when_missing() -> None:
    python = Path(sys.executable)
    assert sibling(python.name, "-V") == ChildCommand((str(python), "-V"))
    with pytest.raises(ChildNotFound, match="no-such-worker: no such file"):
        sibling("no-such-worker")
    with pytest.raises(ValueError):
        resolve_child()


# -- the installed example app -----------------------------------------------------------------


def _offline_build() -> bool:
    """Whether this environment's setuptools can build a wheel by itself (setuptools >= 70.1
    has bdist_wheel built in; older ones need the wheel package). Otherwise pip fetches
    setuptools into an isolated build environment (a few seconds with PyPI reachable)."""
    if importlib.util.find_spec("wheel") is not None:
        return True
    try:
        major, minor = (int(part) for part in importlib.metadata.version("setuptools").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (70, 1)


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv that sees this interpreter's packages (lean-worker) with wordstat-app installed.

    The app is copied first: setuptools builds in the source tree (build/, *.egg-info)."""
    base = tmp_path_factory.mktemp("packaged")
    source = base / "src"
    shutil.copytree(APP, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    # --without-pip: the venv borrows this interpreter's pip through its system site-packages.
    isolation = ["--no-build-isolation"] if _offline_build() else []
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--quiet", *isolation, str(source)],
        capture_output=True, text=True, timeout=240,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return venv


def run(venv: Path, *argv: str, override: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command of the venv from a directory outside the repository."""
    env = {k: v for k, v in os.environ.items() if k != "WORDSTAT_WORKER"}
    if override is not None:
        env["WORDSTAT_WORKER"] = override
    return subprocess.run(
        [str(venv / "bin" / argv[0]), *argv[1:]], cwd=venv, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )


def test_the_installed_client_runs_the_console_script_beside_its_interpreter(venv: Path) -> None:
    result = run(venv, "wordstat", "the cat and the dog chased the supervised cat")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        f"worker: {venv / 'bin' / 'wordstat-worker'}",
        "words=9 distinct=6 longest=supervised",
        "top: cat=2 dog=1 chased=1 (of 4)",
    ]


def test_the_environment_override_wins_over_the_console_script(venv: Path) -> None:
    override = f"{venv / 'bin' / 'python'} -m wordstat_app.worker"
    result = run(venv, "wordstat", "one two two", override=override)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [f"worker: {override}", "words=3 distinct=2 longest=one", "top: two=2 one=1 (of 2)"]


def test_a_bad_override_fails_and_says_what_was_tried(venv: Path) -> None:
    result = run(venv, "wordstat", "text", override="/nonexistent/wordstat-worker")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "worker.child_not_found" in result.stderr
    assert "$WORDSTAT_WORKER='/nonexistent/wordstat-worker': /nonexistent/wordstat-worker: no such file" in result.stderr
    assert "unset it" in result.stderr


def test_lean_worker_check_passes_for_the_installed_app(venv: Path) -> None:
    result = run(venv, "python", "-m", "lean_worker.cli", "check", "--json",
                 "--env-var", "WORDSTAT_WORKER", "--sibling", "wordstat-worker", "--expect", "wordstat_app.commands")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["target"] == str(venv / "bin" / "wordstat-worker")
    assert [i["code"] for i in report["items"]] == [
        "check.child_ok", "check.handshake_ok", "check.commands_ok", "check.roundtrip_ok",
    ]
    assert "wordstat.stats, wordstat.top" in report["items"][2]["message"]


def test_the_apps_own_check_and_doctor_report_its_worker(venv: Path) -> None:
    own = run(venv, "wordstat", "--check")
    assert own.returncode == 0, own.stdout + own.stderr
    assert "ok      check.commands_ok: 2 expected commands served as declared" in own.stdout
    doctor = run(venv, "python", "-m", "lean_worker.cli", "doctor", "--sibling", "wordstat-worker")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    lines = doctor.stdout.splitlines()
    assert lines[0] == "doctor wordstat 1.0.0"
    assert [line.split()[:2] for line in lines[1:3]] == [["ok", "wordstat.stopwords"], ["ok", "wordstat.python"]]
    assert f"the worker runs on {venv / 'bin' / 'python'}" in doctor.stdout
