"""Find the worker child of a packaged app.

An app that ships its own worker child declares where the child may be, and
``resolve_child`` picks the first place that holds one::

    child = resolve_child(env="WORDSTAT_WORKER", sibling="wordstat-worker", module="wordstat_app.worker")
    config = WorkerConfig(child=child, name="wordstat")

The order, first match wins:

1. ``env``: the environment variable the app names (``WORDSTAT_WORKER``). Its value is a
   command line (split like a shell would: ``/opt/ws/bin/wordstat-worker`` or
   ``/usr/bin/python3 -m wordstat_app.worker``); its first word is a path or a name on
   ``PATH``. **When it is set, it is the only place looked at**: an override that points
   at nothing fails instead of silently falling back to the installed child.
2. ``path``: an explicit executable the app's own code names (from its settings).
3. ``sibling``: a console script installed beside the running interpreter
   (``Path(sys.executable).parent / name``), where pip puts the app's entry points; the
   interpreter path is not resolved, so a virtual environment's ``bin`` is used.
4. ``module``: ``python -m module`` with this interpreter, if the module is importable here.

When none holds a child, ``ChildNotFound`` lists every place tried and why it did not do.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from ._config import ChildCommand
from ._errors import ChildNotFound

__all__ = ["resolve_child", "sibling"]


def _not_runnable(path: Path) -> str | None:
    """Why ``path`` cannot be executed, or ``None`` when it can."""
    if not path.exists():
        return "no such file"
    if not path.is_file():
        return "not a file"
    if not os.access(path, os.X_OK):
        return "not executable"
    return None


def _executable(word: str) -> tuple[str | None, str]:
    """Resolve the first word of a command: a path (with a ``/``) or a name on ``PATH``.
    Returns the absolute path, or ``None`` and the reason."""
    if os.sep in word:
        path = Path(os.path.abspath(word))
        problem = _not_runnable(path)
        return (None, f"{path}: {problem}") if problem else (str(path), "")
    found = shutil.which(word)
    return (found, "") if found else (None, f"{word}: not found on PATH")


def sibling(name: str, *args: str) -> ChildCommand:
    """The console script ``name`` installed beside the running interpreter.

    Raises ``ChildNotFound`` when it is missing or not executable."""
    return resolve_child(sibling=name, args=args)


def _module_problem(module: str) -> str | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:  # a parent package is missing or broken
        return f"not importable by {sys.executable} ({type(exc).__name__}: {exc})"
    return None if spec is not None else f"not importable by {sys.executable}"


def resolve_child(
    *,
    env: str | None = None,
    path: str | os.PathLike[str] | None = None,
    sibling: str | None = None,
    module: str | None = None,
    args: Sequence[str] = (),
) -> ChildCommand:
    """The worker child found in the first place that holds one (order in the module
    docstring); ``args`` are appended to its command line.

    Raises ``ChildNotFound`` (``worker.child_not_found``) listing every place tried, and
    ``ValueError`` when no place is named at all.
    """
    if env is None and path is None and sibling is None and module is None:
        raise ValueError("resolve_child needs at least one of env=, path=, sibling=, module=")
    tried: list[str] = []
    if env is not None:
        value = os.environ.get(env, "")
        if value.strip():
            return _from_env(env, value, args)
        tried.append(f"${env}: unset")
    if path is not None:
        explicit = Path(os.path.abspath(path))  # a relative path is relative to the working directory
        problem = _not_runnable(explicit)
        if problem is None:
            return ChildCommand.executable(explicit, *args)
        tried.append(f"path {explicit}: {problem}")
    if sibling is not None:
        candidate = Path(sys.executable).parent / sibling
        problem = _not_runnable(candidate)
        if problem is None:
            return ChildCommand.executable(candidate, *args)
        tried.append(f"sibling {candidate}: {problem}")
    if module is not None:
        problem = _module_problem(module)
        if problem is None:
            return ChildCommand.module(module, *args)
        tried.append(f"module {module}: {problem}")
    hints = []
    if sibling is not None or module is not None:
        hints.append(f"install the app into this environment ({sys.prefix})")
    if env is not None:
        hints.append(f"set {env} to the worker's command")
    raise ChildNotFound(
        f"cannot resolve the worker child; tried: {'; '.join(tried)}",
        tried=tuple(tried),
        hint=", or ".join(hints) or "fix the path",
    )


def _from_env(env: str, value: str, args: Sequence[str]) -> ChildCommand:
    """The override: used when it names a runnable command, an error otherwise (no fallback)."""
    try:
        argv = shlex.split(value)
    except ValueError as exc:
        argv, reason = [], f"does not parse as a command line ({exc})"
    else:
        exe, reason = _executable(argv[0])
        if exe is not None:
            return ChildCommand((exe, *argv[1:], *args))
    tried = (f"${env}={value!r}: {reason}",)
    raise ChildNotFound(
        f"cannot resolve the worker child; tried: {tried[0]}",
        tried=tried,
        hint=f"fix {env} or unset it: when set, it overrides every other place",
    )
