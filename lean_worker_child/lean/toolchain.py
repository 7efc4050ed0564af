"""Find the Lean toolchain to use, and report what it is.

    python -m lean_worker_child.lean.toolchain [--lean PATH] [--project DIR] [--json]

Resolution order (the first that applies wins):

1. an explicit path (the ``lean`` argument), else the ``LEAN_WORKER_LEAN`` environment
   variable: the ``lean`` executable to use;
2. ``lake env`` inside a Lake project (a directory with ``lakefile.lean`` or
   ``lakefile.toml``, and ``lake`` on PATH): the project's own toolchain, with the search
   path Lake computes (``LEAN_PATH``);
3. ``lean`` on PATH;
4. the test toolchain built from the PyPI wheel (``provision``), if it can be provisioned.

The report names where the toolchain came from, its version, commit and prefix, and
whether the standard library is present (``Init.olean`` in its library directory).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .provision import _VERSION_RE, ProvisionError, provision_test_toolchain

LEAN_ENV = "LEAN_WORKER_LEAN"
LAKEFILES = ("lakefile.lean", "lakefile.toml")
_TIMEOUT_S = 60.0


class ToolchainError(RuntimeError):
    """No usable Lean toolchain; the message lists every place that was tried."""

    code = "lean.toolchain_not_found"


@dataclass(frozen=True)
class Toolchain:
    lean: str
    """The ``lean`` executable."""
    source: str
    """Where it was found: ``explicit``, ``env``, ``lake``, ``path`` or ``test``."""
    version: str
    commit: str
    target: str
    prefix: str
    library_dir: str
    stdlib_present: bool
    """Whether ``Init.olean`` is in the library directory (no stdlib: prelude files only)."""
    search_path: list[str] = field(default_factory=list)
    """Extra module search path (``LEAN_PATH``) the toolchain must run with, from Lake."""


def _run(argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT_S, env=env, cwd=cwd)
    except subprocess.TimeoutExpired:
        raise ToolchainError(f"`{' '.join(argv)}` did not answer within {_TIMEOUT_S} s") from None
    except OSError as exc:
        raise ToolchainError(f"`{' '.join(argv)}` could not run: {exc}") from None
    if result.returncode != 0:
        raise ToolchainError(f"`{' '.join(argv)}` failed with status {result.returncode}: {result.stderr.strip()[:500]}")
    return result.stdout.strip()


def describe(lean: str | os.PathLike[str], source: str, search_path: list[str] | None = None) -> Toolchain:
    """Ask a ``lean`` executable what it is."""
    exe = os.fspath(lean)
    if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        raise ToolchainError(f"{source}: {exe} is not an executable file")
    version_text = _run([exe, "--version"])
    match = _VERSION_RE.search(version_text)
    if match is None:
        raise ToolchainError(f"{source}: {exe} does not answer --version like lean: {version_text[:200]!r}")
    prefix = _run([exe, "--print-prefix"])
    library_dir = _run([exe, "--print-libdir"])
    return Toolchain(
        lean=exe,
        source=source,
        version=match["version"],
        commit=match["commit"],
        target=match["target"],
        prefix=prefix,
        library_dir=library_dir,
        stdlib_present=(Path(library_dir) / "Init.olean").is_file(),
        search_path=list(search_path or []),
    )


def _lake_project(start: Path) -> Path | None:
    for directory in (start, *start.parents):
        if any((directory / name).is_file() for name in LAKEFILES):
            return directory
    return None


def _from_lake(project: Path) -> Toolchain:
    lake = shutil.which("lake")
    if lake is None:
        raise ToolchainError(f"lake: {project} is a Lake project but `lake` is not on PATH")
    # `lake env` prints the environment it would run commands in: the project's toolchain
    # (LEAN_SYSROOT) and the module search path of its dependencies (LEAN_PATH).
    env_text = _run([lake, "env", "env"], cwd=str(project))
    env = dict(line.split("=", 1) for line in env_text.splitlines() if "=" in line)
    sysroot = env.get("LEAN_SYSROOT")
    lean = env.get("LEAN") or (str(Path(sysroot) / "bin" / "lean") if sysroot else None)
    if not lean:
        raise ToolchainError(f"lake: `lake env` in {project} names neither LEAN nor LEAN_SYSROOT")
    search = [p for p in env.get("LEAN_PATH", "").split(os.pathsep) if p]
    return describe(lean, "lake", search)


def resolve_toolchain(
    lean: str | os.PathLike[str] | None = None,
    *,
    project: str | os.PathLike[str] | None = None,
    allow_test_toolchain: bool = True,
) -> Toolchain:
    """The toolchain to use, by the resolution order in this module's docstring."""
    tried: list[str] = []
    if lean is not None:
        return describe(lean, "explicit")
    if env_lean := os.environ.get(LEAN_ENV):
        return describe(env_lean, "env")
    tried.append(f"explicit path: none given; ${LEAN_ENV}: unset")
    found = _lake_project(Path(project) if project is not None else Path.cwd())
    if found is not None:
        return _from_lake(found)
    tried.append(f"lake: no lakefile in {Path(project) if project is not None else Path.cwd()} or above")
    on_path = shutil.which("lean")
    if on_path is not None:
        return describe(on_path, "path")
    tried.append("PATH: no `lean`")
    if allow_test_toolchain:
        try:
            provisioned = provision_test_toolchain()
        except ProvisionError as exc:
            tried.append(f"test toolchain: {exc}")
        else:
            return describe(provisioned.lean, "test")
    else:
        tried.append("test toolchain: not allowed")
    raise ToolchainError("no Lean toolchain found; tried:\n  " + "\n  ".join(tried))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lean_worker_child.lean.toolchain", description=__doc__.split("\n")[0])
    parser.add_argument("--lean", help="use this lean executable")
    parser.add_argument("--project", help="look for a Lake project here (default: the current directory)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        toolchain = resolve_toolchain(args.lean, project=args.project)
    except ToolchainError as exc:
        print(f"{exc.code}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(asdict(toolchain), indent=2))
    else:
        for key, value in asdict(toolchain).items():
            print(f"{key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
