"""Parent-side helpers for the first-party Lean worker (``python -m lean_worker_child.lean``).

The parent never runs Lean: it starts the Lean worker child, which resolves the toolchain
and owns every Lean process. Commands and result types are in
``lean_worker_protocol.lean`` and re-exported here::

    from lean_worker import Worker
    from lean_worker.lean import CHECK, CheckRequest, lean_config

    async with Worker(lean_config(search_path=[oleans])) as worker:
        result = await worker.call(CHECK, CheckRequest(code))
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

from lean_worker_protocol import lean as _protocol
from lean_worker_protocol.lean import *  # noqa: F403  (the commands and types, re-exported)

from ._config import WorkerConfig
from ._errors import LeanCrashed, LeanError, LeanHeaderError, LeanTimeout, ToolchainNotFound

CHILD_MODULE = "lean_worker_child.lean"

__all__ = [
    *_protocol.__all__,
    "CHILD_MODULE",
    "LeanCrashed",
    "LeanError",
    "LeanHeaderError",
    "LeanTimeout",
    "ToolchainNotFound",
    "lean_config",
    "lean_child_args",
]


def lean_child_args(
    *,
    lean: str | os.PathLike[str] | None = None,
    project: str | os.PathLike[str] | None = None,
    search_path: Sequence[str | os.PathLike[str]] = (),
    engine: Literal["warm", "cold"] = "warm",
    max_sessions: int = 8,
    lean_args: Sequence[str] = (),
) -> list[str]:
    """The command-line arguments of the Lean worker child for these settings."""
    if max_sessions < 1:
        raise ValueError(f"max_sessions must be >= 1; got {max_sessions}")
    args: list[str] = ["--engine", engine, "--max-sessions", str(max_sessions)]
    if lean is not None:
        args += ["--lean", os.fspath(lean)]
    if project is not None:
        args += ["--project", os.fspath(project)]
    for path in search_path:
        args += ["--search-path", os.fspath(path)]
    for arg in lean_args:
        args.append(f"--lean-arg={arg}")
    return args


def lean_config(
    *,
    lean: str | os.PathLike[str] | None = None,
    project: str | os.PathLike[str] | None = None,
    search_path: Sequence[str | os.PathLike[str]] = (),
    engine: Literal["warm", "cold"] = "warm",
    max_sessions: int = 8,
    lean_args: Sequence[str] = (),
    **options: object,
) -> WorkerConfig:
    """A ``WorkerConfig`` for the Lean worker child; ``options`` go to ``WorkerConfig``.

    - ``lean``: the ``lean`` executable; default: ``$LEAN_WORKER_LEAN``, then ``lake env``
      in ``project`` (default: the working directory), then PATH, then the test toolchain.
    - ``search_path``: directories of ``.olean`` files, ahead of Lake's and ``$LEAN_PATH``.
    - ``engine``: ``warm`` (sessions kept alive) or ``cold`` (one process per check).
    - ``max_sessions``: warm sessions the child keeps; the least recently used is closed.
    - ``lean_args``: extra arguments for every Lean process (e.g. ``-DmaxHeartbeats=1000``).
    """
    args = lean_child_args(
        lean=lean, project=project, search_path=search_path, engine=engine, max_sessions=max_sessions, lean_args=lean_args
    )
    options.setdefault("name", "lean")
    return WorkerConfig.for_module(CHILD_MODULE, *args, **options)
