"""The test Lean toolchain: provisioned from the PyPI wheel, a real ``lean`` executable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lean_worker_child.lean.provision import ProvisionedToolchain, provision_test_toolchain

BASIC = """prelude
universe u

inductive Eq {α : Sort u} (a : α) : α → Prop where
  | refl : Eq a a

inductive Bool where
  | true
  | false

noncomputable def Bool.not (b : Bool) : Bool := Bool.rec (motive := fun _ => Bool) Bool.false Bool.true b

theorem Bool.not_not_true : Eq (Bool.not (Bool.not Bool.true)) Bool.true := Eq.refl
"""

USE = """prelude
import Basic
theorem again : Eq (Bool.not Bool.false) Bool.true := Eq.refl
theorem wrong : Eq (Bool.not Bool.true) Bool.true := Eq.refl
"""


def test_provisioned_lean_is_lean_4_35_0_and_reports_its_commit(lean_toolchain: ProvisionedToolchain) -> None:
    out = subprocess.run([str(lean_toolchain.lean), "--version"], capture_output=True, text=True, check=True).stdout
    assert lean_toolchain.version == "4.35.0"
    assert lean_toolchain.commit in out and "4.35.0" in out
    assert os.access(lean_toolchain.lean, os.X_OK)
    # a real ELF executable (the Lean server re-executes its own path), not a script
    assert lean_toolchain.lean.read_bytes()[:4] == b"\x7fELF"


def test_provisioning_again_reuses_the_cached_toolchain(lean_toolchain: ProvisionedToolchain) -> None:
    again = provision_test_toolchain()
    assert again == lean_toolchain
    assert again.lean.stat().st_mtime_ns == lean_toolchain.lean.stat().st_mtime_ns


def test_concurrent_provisioning_builds_once_and_every_process_gets_the_same_lean(tmp_path: Path) -> None:
    env = {**os.environ, "LEAN_WORKER_CACHE": str(tmp_path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "lean_worker_child.lean.provision"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(4)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [err for _out, err in results]
    paths = {out.strip() for out, _err in results}
    assert len(paths) == 1
    entries = sorted(e.name for e in (tmp_path / "toolchains").iterdir())
    built = [e for e in entries if not e.endswith(".lock")]
    assert len(built) == 1, entries  # one toolchain, no leftover private build directories
    stamp = json.loads((tmp_path / "toolchains" / built[0] / "toolchain.json").read_text())
    assert stamp["lean"] == paths.pop() and stamp["version"] == "4.35.0"


def test_prelude_module_compiles_to_olean_and_an_importing_module_is_checked(
    lean_toolchain: ProvisionedToolchain, tmp_path: Path
) -> None:
    (tmp_path / "Basic.lean").write_text(BASIC)
    (tmp_path / "Use.lean").write_text(USE)
    lean = str(lean_toolchain.lean)
    subprocess.run([lean, "-o", "Basic.olean", "Basic.lean"], cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "Basic.olean").stat().st_size > 0

    env = {**os.environ, "LEAN_PATH": str(tmp_path)}
    result = subprocess.run([lean, "--json", "Use.lean"], cwd=tmp_path, env=env, capture_output=True, text=True)
    messages = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert result.returncode == 1
    errors = [m for m in messages if m["severity"] == "error"]
    # `again` checks against the imported definitions; only `wrong` fails, at its proof term
    assert errors and all(m["pos"]["line"] == 4 for m in errors)
    assert any(m["pos"] == {"line": 4, "column": 53} and "Type mismatch" in m["data"] for m in errors)


def test_stdin_check_of_a_well_typed_prelude_snippet_reports_nothing(lean_toolchain: ProvisionedToolchain) -> None:
    snippet = "prelude\ninductive T where\n  | a\n  | b\ndef t : T → T := fun x => x\n"
    result = subprocess.run(
        [str(lean_toolchain.lean), "--stdin", "--json"], input=snippet, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_a_dead_builders_leftovers_are_cleared_and_the_build_completes(tmp_path: Path, lean_toolchain: ProvisionedToolchain) -> None:
    first = provision_test_toolchain(tmp_path)
    root = tmp_path / "toolchains"
    final = first.lean.parent.parent
    # simulate a builder killed mid-build (private directory) and a published toolchain
    # whose stamp never got written
    leftover = root / f"{final.name}.abc123"
    (leftover / "bin").mkdir(parents=True)
    (final / "toolchain.json").unlink()
    again = provision_test_toolchain(tmp_path)
    assert again.lean == first.lean and again.version == "4.35.0"
    assert not leftover.exists()
    assert (final / "toolchain.json").is_file()


def test_an_unwritable_cache_is_a_typed_error_naming_the_place(tmp_path: Path) -> None:
    from lean_worker_child.lean.provision import ProvisionError

    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    with pytest.raises(ProvisionError, match="cannot create the toolchain cache"):
        provision_test_toolchain(blocked)
