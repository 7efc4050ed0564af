"""The public surface: one version source, ``__all__`` grouped and sorted, the generic core
free of Lean names."""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys

import anyio
import pytest

import lean_worker
import lean_worker_protocol
from conftest import ROOT
from lean_worker import Worker, WorkerConfig


def test_the_version_is_written_once_and_the_package_metadata_agrees() -> None:
    installed = importlib.metadata.version("lean-worker")
    assert lean_worker.__version__ == lean_worker_protocol.VERSION == installed
    shown = subprocess.run(
        [sys.executable, "-m", "lean_worker.cli", "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    assert shown.stdout.strip() == f"lean-worker {installed}"


@pytest.mark.anyio
async def test_the_first_party_child_announces_the_package_version() -> None:
    with anyio.fail_after(30):
        async with Worker(WorkerConfig.for_module("lean_worker_child.demo", cwd=str(ROOT))) as worker:
            assert worker.hello is not None
            assert worker.hello.worker_version == importlib.metadata.version("lean-worker")


def _groups(module_path: str) -> list[list[str]]:
    """The names of ``__all__``, split at its ``# ...`` comment lines."""
    source = (ROOT / module_path).read_text()
    tree = ast.parse(source)
    node = next(
        n for n in tree.body
        if isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)
    )
    lines = source.splitlines()[node.lineno - 1 : node.end_lineno]
    groups: list[list[str]] = []
    for line in lines:
        text = line.strip()
        if text.startswith("#"):
            groups.append([])
        elif text.startswith('"'):
            if not groups:
                groups.append([])
            groups[-1].append(ast.literal_eval(text.rstrip(",")))
    return groups


def _sort_key(name: str) -> tuple[int, str]:
    # Constants first, then classes, then functions (the order isort and ruff use).
    kind = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return kind, name


def test_all_is_grouped_by_purpose_and_sorted_within_each_group() -> None:
    groups = _groups("lean_worker/__init__.py")
    assert len(groups) >= 5
    for group in groups:
        assert group == sorted(group, key=_sort_key), group
    names = [n for g in groups for n in g]
    assert len(names) == len(set(names)) and sorted(names) == sorted(lean_worker.__all__)
    for name in names:
        assert getattr(lean_worker, name) is not None


def test_the_generic_core_exports_no_lean_names() -> None:
    import lean_worker.lean as lean_api

    lean_names = {"LeanError", "LeanCrashed", "LeanTimeout", "LeanHeaderError", "ToolchainNotFound", "CHECK", "Hole"}
    assert not lean_names & set(lean_worker.__all__)
    assert lean_names <= set(lean_api.__all__)
