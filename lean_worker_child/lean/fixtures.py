"""Compile the Lean fixtures that tests and benchmarks import: our prelude library and a heavy header.

    python -m lean_worker_child.lean.fixtures [--heavy] [--lean PATH]

``build_library`` compiles every module of ``lean/library`` (``LwFix.*``: a small ``prelude``
library, since the test toolchain has no ``Init``) with ``lean -o`` and ``-i`` (the ``.ilean``
declaration index) in dependency order. ``build_heavy_header`` generates and compiles
``LwHeavy``: many modules of many declarations, so that importing it costs measurable time
and memory. Each build is a directory to put on ``LEAN_PATH``; it also holds the sources, so
it can serve as ``LEAN_SRC_PATH``.

Builds are cached like the toolchain (``provision``): under ``<cache>/fixtures``, keyed by a
hash of every source and of the toolchain's identity (its path and ``lean --version``), built
once per key. Concurrent builders serialise on a file lock, build into a private directory
and publish it with an atomic rename; the stamp (``fixture.json``) is written last, and a
directory without it is not trusted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from ._cache import build_once
from .provision import cache_dir

__all__ = [
    "FixtureBuild",
    "FixtureBuildError",
    "FixtureError",
    "build_heavy_header",
    "build_library",
    "default_library_source",
    "generate_heavy_header",
    "library_state",
]

FIXTURES_ENV = "LEAN_WORKER_FIXTURES"
STAMP = "fixture.json"
HEAVY_MODULES = 24
"""Default size of the heavy header; see ``build_heavy_header`` for what it costs."""
HEAVY_DECLS_PER_MODULE = 120
HEAVY_CONSTRUCTORS = 24
"""Constructors per generated inductive type: most of the header's constants are these."""
_JOBS = max(1, min(2, os.cpu_count() or 1))
_COMPILE_TIMEOUT_S = 600.0
_OUTPUT_LIMIT = 4000
_IMPORT_RE = re.compile(r"^\s*(?:(?:public|private|meta)\s+)*import\s+(.+?)\s*$")
_HEADER_SKIP_RE = re.compile(r"^\s*(?:$|--|prelude\b|module\b)")


class FixtureError(RuntimeError):
    """The fixtures cannot be built: missing sources, an import cycle, an unusable cache."""

    code = "lean.fixture_failed"


class FixtureBuildError(FixtureError):
    """Lean failed to compile a fixture module; nothing of that build was published."""

    code = "lean.fixture_build_failed"

    def __init__(self, module: str, returncode: int | None, output: str) -> None:
        self.module = module
        self.returncode = returncode
        """The exit status of ``lean``; ``None`` when it was killed for running too long."""
        self.output = output[-_OUTPUT_LIMIT:]
        """What ``lean`` printed (stdout then stderr), the last 4000 characters."""
        super().__init__(
            f"compiling fixture module failed; module={module} returncode={returncode}\n{self.output}"
        )

    def __reduce__(self) -> tuple[type[FixtureBuildError], tuple[str, int | None, str]]:
        return (type(self), (self.module, self.returncode, self.output))


@dataclass(frozen=True)
class FixtureBuild:
    """A compiled fixture tree."""

    root: Path
    """Module root to put on ``LEAN_PATH``: module ``A.B`` is ``root/A/B.olean`` (and ``.ilean``, ``.lean``)."""
    modules: tuple[str, ...]
    """Every module, in the order they were compiled (dependencies first)."""
    build_s: float
    """Seconds this call spent compiling; 0 when the build came from the cache."""
    key: str
    """Hash of the sources and the toolchain identity; names the cache directory."""


def default_library_source() -> Path:
    """``$LEAN_WORKER_FIXTURES``, else the repository's ``lean/library``."""
    if env := os.environ.get(FIXTURES_ENV):
        return Path(env)
    return Path(__file__).resolve().parents[2] / "lean" / "library"


def build_library(lean: Path | str, *, source: Path | None = None, cache: Path | None = None) -> FixtureBuild:
    """Compile (once per sources and toolchain) every module under ``source``; idempotent and safe across processes.

    ``source`` defaults to ``default_library_source()``; ``cache`` is the cache root (default
    ``provision.cache_dir()``), the build goes to ``<cache>/fixtures/lwfix-<key>``.
    """
    return _build("lwfix", Path(lean), _library_sources(source), cache)


def library_state(lean: Path | str, *, source: Path | None = None, cache: Path | None = None) -> Path | None:
    """The root ``build_library(lean, source=..., cache=...)`` would return if it is already
    built, else ``None``. Builds nothing (it runs ``lean --version`` to compute the key)."""
    key = _key(_toolchain_identity(Path(lean)), _library_sources(source))
    final = (cache or cache_dir()) / "fixtures" / f"lwfix-{key}"
    return final if (final / STAMP).is_file() else None


def _library_sources(source: Path | None) -> dict[str, str]:
    source = Path(source) if source is not None else default_library_source()
    if not source.is_dir():
        raise FixtureError(f"fixture library source is not a directory; source={source}; set {FIXTURES_ENV}")
    sources = {path.relative_to(source).as_posix(): path.read_text() for path in sorted(source.rglob("*.lean"))}
    if not sources:
        raise FixtureError(f"fixture library source has no .lean files; source={source}")
    return sources


def generate_heavy_header(dest: Path, *, modules: int, decls_per_module: int) -> list[str]:
    """Write the ``LwHeavy`` module tree under ``dest``; return its module names, dependencies first.

    The same sizes always give the same files."""
    sources = _heavy_sources(modules, decls_per_module)
    for relative, text in sources.items():
        path = Path(dest) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return _build_order(sources)


def build_heavy_header(
    lean: Path | str,
    *,
    modules: int = HEAVY_MODULES,
    decls_per_module: int = HEAVY_DECLS_PER_MODULE,
    cache: Path | None = None,
) -> FixtureBuild:
    """Generate and compile (once per size and toolchain) the heavy header ``LwHeavy``.

    With the defaults (24 modules of 120 declaration groups: 83 529 constants, 161 MB of
    .olean) the build took 26 s on 2 cores, and ``import LwHeavy`` adds about 40 ms and 150 MB
    of RSS to a ``lean`` run: Lean 4.35 maps .olean files into memory and imports lazily, so
    time grows slowly with size while RSS follows the bytes. lean/README.md has the numbers.
    ``cache`` is as for ``build_library``; the build goes to ``<cache>/fixtures/lwheavy-<key>``.
    """
    if modules < 1 or decls_per_module < 1:
        raise FixtureError(f"heavy header needs at least one module and one declaration; modules={modules} decls_per_module={decls_per_module}")
    return _build("lwheavy", Path(lean), _heavy_sources(modules, decls_per_module), cache)


# --- the heavy header ---------------------------------------------------------------------


def _heavy_sources(modules: int, decls_per_module: int) -> dict[str, str]:
    """The generated files, by path relative to the module root.

    ``LwHeavy.Base`` declares equality and unary naturals; module ``M<i>`` imports it and, for
    i > 0, its parent ``M<(i-1)//2>`` (a binary tree: depth log2(modules), so two modules can
    compile at a time); ``LwHeavy`` imports every module. Each declaration group is an
    inductive type with 24 constructors (one refers to the parent module's type), a
    definition by its recursor and a theorem checked by reduction. Everything lives in the
    ``LwHeavy`` namespace, so it can be imported next to any other prelude library.
    """
    files: dict[str, str] = {}
    files["LwHeavy/Base.lean"] = "\n".join([
        "prelude",
        "",
        "/-! Generated by lean_worker_child.lean.fixtures: the base of the heavy header. -/",
        "",
        "namespace LwHeavy",
        "",
        "universe u",
        "",
        "inductive Eq {α : Sort u} (a : α) : α → Prop where",
        "  | refl : Eq a a",
        "",
        "inductive Nat where",
        "  | zero : Nat",
        "  | succ : Nat → Nat",
        "",
        "end LwHeavy",
        "",
    ])
    width = len(str(modules - 1))
    names = [f"M{i:0{width}d}" for i in range(modules)]
    for i, name in enumerate(names):
        parent = names[(i - 1) // 2] if i > 0 else None
        lines = ["prelude", "import LwHeavy.Base"]
        if parent is not None:
            lines.append(f"import LwHeavy.{parent}")
        lines += ["", f"/-! Generated by lean_worker_child.lean.fixtures: heavy header module {i}. -/", ""]
        lines += [f"namespace LwHeavy.{name}", ""]
        for j in range(decls_per_module):
            lines += _heavy_group(j, parent)
        lines += [f"end LwHeavy.{name}", ""]
        files[f"LwHeavy/{name}.lean"] = "\n".join(lines)
    files["LwHeavy.lean"] = "prelude\n" + "".join(f"import LwHeavy.{name}\n" for name in names)
    return files


def _heavy_group(j: int, parent: str | None) -> list[str]:
    t = f"T{j}"
    # The parent's T0 exists whenever a parent does: every module has at least one group.
    from_parent = f"LwHeavy.{parent}.T0" if parent is not None else "Nat"
    ctors = [f"  | c0 : {t}", f"  | c1 : Nat → {t}", f"  | c2 : {t} → {t}", f"  | c3 : {from_parent} → {t}"]
    ctors += [f"  | c{k} : {t}" for k in range(4, HEAVY_CONSTRUCTORS)]
    minors = ["Nat.zero", "(fun n => Nat.succ n)", "(fun _ ih => Nat.succ ih)", "(fun _ => Nat.zero)"]
    minors += ["Nat.zero"] * (HEAVY_CONSTRUCTORS - 4)
    return [
        f"inductive {t} where",
        *ctors,
        "",
        f"noncomputable def {t}.weight (x : {t}) : Nat :=",
        f"  {t}.rec (motive := fun _ => Nat) {' '.join(minors)} x",
        "",
        f"theorem {t}.weight_c2 (n : Nat) : Eq ({t}.weight ({t}.c2 ({t}.c1 n))) (Nat.succ (Nat.succ n)) := Eq.refl",
        "",
    ]


# --- building -----------------------------------------------------------------------------


def _module_name(relative: str) -> str:
    return relative.removesuffix(".lean").replace("/", ".")


def _imports(text: str) -> list[str]:
    """The modules a Lean file's header imports (the header ends at the first other command)."""
    found: list[str] = []
    in_comment = False
    for line in text.splitlines():
        if in_comment:
            in_comment = "-/" not in line
            continue
        if line.lstrip().startswith("/-"):
            in_comment = "-/" not in line
            continue
        if match := _IMPORT_RE.match(line):
            found.extend(match[1].split())
        elif not _HEADER_SKIP_RE.match(line):
            break
    return found


def _build_order(sources: Mapping[str, str]) -> list[str]:
    """Module names with every module after the modules of ``sources`` it imports; ties by name."""
    deps = {_module_name(rel): {m for m in _imports(text) if _module_name_in(m, sources)} for rel, text in sources.items()}
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(deps):
        ready = sorted(m for m in deps if m not in done and deps[m] <= done)
        if not ready:
            cycle = sorted(m for m in deps if m not in done)
            raise FixtureError(f"fixture modules import each other in a cycle; modules={','.join(cycle)}")
        order.extend(ready)
        done.update(ready)
    return order


def _module_name_in(module: str, sources: Mapping[str, str]) -> bool:
    return module.replace(".", "/") + ".lean" in sources


def _toolchain_identity(lean: Path) -> str:
    try:
        result = subprocess.run([str(lean), "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise FixtureError(f"fixture build cannot run lean; lean={lean} error={exc}") from exc
    if result.returncode != 0:
        raise FixtureError(f"fixture build: `lean --version` failed; lean={lean} returncode={result.returncode}")
    return f"{lean.resolve()}\0{result.stdout.strip()}"


def _key(identity: str, sources: Mapping[str, str]) -> str:
    digest = hashlib.sha256(identity.encode())
    for relative in sorted(sources):
        digest.update(b"\0" + relative.encode() + b"\0" + sources[relative].encode())
    return digest.hexdigest()[:16]


def _build(kind: str, lean: Path, sources: Mapping[str, str], cache: Path | None) -> FixtureBuild:
    order = _build_order(sources)
    key = _key(_toolchain_identity(lean), sources)
    root = (cache or cache_dir()) / "fixtures"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FixtureError(f"cannot create the fixture cache; path={root} error={exc}; set LEAN_WORKER_CACHE") from exc
    build_s = 0.0

    def build(work: Path, final: Path) -> None:
        nonlocal build_s
        started = time.monotonic()
        for relative, text in sources.items():
            (work / relative).parent.mkdir(parents=True, exist_ok=True)
            (work / relative).write_text(text)
        _compile_all(lean, work, order, sources)
        build_s = time.monotonic() - started
        (work / STAMP).write_text(json.dumps(
            {"key": key, "modules": order, "lean": str(lean), "build_s": round(build_s, 3)}, indent=2
        ))

    final, built = build_once(root, f"{kind}-{key}", STAMP, build)
    if not built:
        return _load(final)
    return FixtureBuild(root=final, modules=tuple(order), build_s=build_s, key=key)


def _load(final: Path) -> FixtureBuild:
    data = json.loads((final / STAMP).read_text())
    return FixtureBuild(root=final, modules=tuple(data["modules"]), build_s=0.0, key=data["key"])


def _compile_all(lean: Path, work: Path, order: list[str], sources: Mapping[str, str]) -> None:
    """Compile in dependency order, up to ``_JOBS`` modules at a time; the first failure is raised."""
    deps = {m: {d for d in _imports(sources[m.replace(".", "/") + ".lean"]) if d in order} for m in order}
    pending = list(order)
    done: set[str] = set()
    running: dict[Future[None], str] = {}
    failure: FixtureBuildError | None = None
    with ThreadPoolExecutor(max_workers=_JOBS) as pool:
        while pending or running:
            while failure is None and len(running) < _JOBS:
                ready = next((m for m in pending if deps[m] <= done), None)
                if ready is None:
                    break
                pending.remove(ready)
                running[pool.submit(_compile, lean, work, ready)] = ready
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                module = running.pop(future)
                try:
                    future.result()
                except FixtureBuildError as exc:
                    failure = failure or exc
                else:
                    done.add(module)
    if failure is not None:
        raise failure


def _compile(lean: Path, work: Path, module: str) -> None:
    relative = module.replace(".", "/")
    env = {**os.environ, "LEAN_PATH": str(work)}
    command = [
        str(lean), "-R", str(work),
        "-o", str(work / f"{relative}.olean"), "-i", str(work / f"{relative}.ilean"),
        str(work / f"{relative}.lean"),
    ]
    try:
        result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        output = _text(exc.stdout) + _text(exc.stderr)
        raise FixtureBuildError(module, None, f"{output}\n(killed after {_COMPILE_TIMEOUT_S:.0f} s)") from None
    except OSError as exc:
        raise FixtureBuildError(module, None, f"cannot run {lean}: {exc}") from None
    if result.returncode != 0:
        raise FixtureBuildError(module, result.returncode, result.stdout + result.stderr)


def _text(data: str | bytes | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lean_worker_child.lean.fixtures", description=__doc__.split("\n")[0])
    parser.add_argument("--lean", help="use this lean executable (default: resolve the toolchain)")
    parser.add_argument("--heavy", action="store_true", help="also build the heavy header LwHeavy")
    args = parser.parse_args(argv)
    from .toolchain import ToolchainError, resolve_toolchain

    try:
        lean = args.lean or resolve_toolchain().lean
        builds = [("library", build_library(lean))]
        if args.heavy:
            builds.append(("heavy", build_heavy_header(lean)))
    except (FixtureError, ToolchainError) as exc:
        print(f"{exc.code}: {exc}", file=sys.stderr)
        return 1
    for name, build in builds:
        state = f"built in {build.build_s:.1f} s" if build.build_s else "cached"
        print(f"{name}: root={build.root} modules={len(build.modules)} {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
