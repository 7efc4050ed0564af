"""Parent-side helpers for the first-party Lean worker (``python -m lean_worker_child.lean``).

The parent never runs Lean: it starts the Lean worker child, which resolves the toolchain
and owns every Lean process. Commands and result types are in
``lean_worker_protocol.lean`` and re-exported here::

    from lean_worker import Worker
    from lean_worker.lean import CHECK, CheckRequest, lean_config

    async with Worker(lean_config(search_path=[oleans])) as worker:
        result = await worker.call(CHECK, CheckRequest(code))

Importing this module registers the Lean errors (``LeanError`` and its subclasses) for their
``lean.*`` codes, so a Lean failure in the child arrives as ``LeanCrashed``, ``LeanTimeout``...
The Lean steps of ``check`` are ``lean_steps`` (or ``check_lean``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import msgspec

from lean_worker_protocol import lean as _protocol
from lean_worker_protocol.lean import *  # noqa: F403  (the commands and types, re-exported)
from lean_worker_protocol.lean import LeanSettings, WorkerEngine

from ._config import ChildEnv, WorkerConfig
from ._lean_errors import LeanCrashed, LeanError, LeanHeaderError, LeanStateInvalid, LeanTimeout, ToolchainNotFound
from ._lean_probe import LEAN_COMMANDS, ROUNDTRIP_BODY, check_lean, lean_steps

CHILD_MODULE = "lean_worker_child.lean"

LEAN_INHERITED_ENV: tuple[str, ...] = (
    "LEAN_PATH",
    "LEAN_SYSROOT",
    "ELAN_HOME",
    "ELAN_TOOLCHAIN",
    "LAKE_HOME",
    "LEAN_WORKER_LEAN",
    "LEAN_WORKER_CACHE",
    "LEAN_WORKER_FIXTURES",
)
"""Parent variables a Lean worker child sees on top of the generic defaults
(``DEFAULT_INHERITED_ENV``): the Lean toolchain's own (search path, sysroot, elan, Lake) and
lean-worker's Lean ones (which ``lean``, where the cache is, where the fixture sources are)."""

__all__ = [
    *_protocol.__all__,
    "CHILD_MODULE",
    "LEAN_COMMANDS",
    "LEAN_INHERITED_ENV",
    "ROUNDTRIP_BODY",
    "LeanCrashed",
    "LeanError",
    "LeanHeaderError",
    "LeanStateInvalid",
    "LeanTimeout",
    "ToolchainNotFound",
    "check_lean",
    "lean_child_args",
    "lean_config",
    "lean_env",
    "lean_settings",
    "lean_steps",
]


def lean_child_args(settings: LeanSettings) -> list[str]:
    """The command-line arguments of the Lean worker child for ``settings``: one
    ``--settings`` followed by them as JSON (``lean_worker_child.lean`` decodes it)."""
    if not isinstance(settings, LeanSettings):
        raise TypeError(f"lean_child_args takes a LeanSettings; got {settings!r}")
    return ["--settings", msgspec.json.encode(settings).decode()]


def lean_env(env: ChildEnv | None = None) -> ChildEnv:
    """``env`` (default: ``ChildEnv()``) with ``LEAN_INHERITED_ENV`` added to what it inherits.

    Everything else about ``env`` is kept: its own ``inherit`` names (a custom list stays
    custom) and its ``set`` variables, which win over inherited ones. To keep a Lean variable
    from the child, override it in ``set`` (an empty ``LEAN_WORKER_LEAN`` or ``LEAN_PATH``
    counts as unset), or build the ``WorkerConfig`` yourself with ``lean_child_args``."""
    base = ChildEnv() if env is None else env
    if not isinstance(base, ChildEnv):
        raise TypeError(f"env must be a ChildEnv; got {type(base).__name__}")
    extra = tuple(name for name in LEAN_INHERITED_ENV if name not in base.inherit)
    return dataclasses.replace(base, inherit=(*base.inherit, *extra))


def lean_config(
    settings: LeanSettings | None = None,
    *,
    lean: str | os.PathLike[str] | None = None,
    project: str | os.PathLike[str] | None = None,
    search_path: Sequence[str | os.PathLike[str]] = (),
    engine: WorkerEngine | None = None,
    max_sessions: int | None = None,
    lean_args: Sequence[str] = (),
    max_documents: int | None = None,
    max_document_edits: int | None = None,
    report_delay_ms: int | None = None,
    session_report_delay_ms: int | None = None,
    **options: object,
) -> WorkerConfig:
    """A ``WorkerConfig`` for the Lean worker child.

    Pass a ``LeanSettings``, or its fields as keywords (not both); see ``LeanSettings`` for
    what each means and its defaults. An invalid setting is a ``ValueError`` here, before any
    child starts. ``options`` go to ``WorkerConfig``, with these differences:

    - ``env``: the child's ``ChildEnv``, passed through ``lean_env`` (the Lean variables of
      ``LEAN_INHERITED_ENV`` join its ``inherit``; its ``set`` is kept as given);
    - ``session_limit`` is ``max_sessions`` (a pool remembers that many sessions per worker);
    - ``name`` defaults to ``lean``;
    - ``sandbox``: ``off`` by default; ``"auto"``, ``"required"`` or a ``Sandbox``. The
      child makes its toolchain, ``project`` and ``search_path`` readable in it.
    """
    fields = {"lean": lean, "project": project, "engine": engine, "max_sessions": max_sessions,
              "max_documents": max_documents, "max_document_edits": max_document_edits,
              "report_delay_ms": report_delay_ms, "session_report_delay_ms": session_report_delay_ms}
    given = {name: value for name, value in fields.items() if value is not None}
    given.update({name: value for name, value in (("search_path", search_path), ("lean_args", lean_args)) if len(value)})
    if settings is None:
        settings = lean_settings(**given)  # type: ignore[arg-type]
    elif given:
        raise TypeError(f"lean_config takes a LeanSettings or its fields as keywords, not both; got both and {sorted(given)}")
    elif not isinstance(settings, LeanSettings):
        raise TypeError(f"lean_config takes a LeanSettings; got {settings!r}")
    if options.get("session_limit", settings.max_sessions) != settings.max_sessions:
        raise ValueError(
            f"lean_config: session_limit follows max_sessions; got session_limit={options['session_limit']} "
            f"max_sessions={settings.max_sessions}"
        )
    options["session_limit"] = settings.max_sessions
    options["env"] = lean_env(options.get("env"))  # type: ignore[arg-type]
    options.setdefault("name", "lean")
    return WorkerConfig.for_module(CHILD_MODULE, *lean_child_args(settings), **options)


def lean_settings(
    *,
    lean: str | os.PathLike[str] | None = None,
    project: str | os.PathLike[str] | None = None,
    search_path: Sequence[str | os.PathLike[str]] = (),
    engine: WorkerEngine = "warm",
    max_sessions: int = 8,
    lean_args: Sequence[str] = (),
    max_documents: int = 4,
    max_document_edits: int = 2000,
    report_delay_ms: int = 5,
    session_report_delay_ms: int = 2,
) -> LeanSettings:
    """A ``LeanSettings`` from friendlier values: paths may be ``PathLike``, sequences any
    sequence. Raises ``ValueError`` for an invalid setting."""
    if isinstance(search_path, str | os.PathLike) or isinstance(lean_args, str):
        raise ValueError("search_path and lean_args take a sequence of values, not one string")
    return LeanSettings(
        lean=None if lean is None else os.fspath(lean),
        project=None if project is None else os.fspath(project),
        search_path=tuple(os.fspath(p) for p in search_path),
        engine=engine,
        max_sessions=max_sessions,
        lean_args=tuple(lean_args),
        max_documents=max_documents,
        max_document_edits=max_document_edits,
        report_delay_ms=report_delay_ms,
        session_report_delay_ms=session_report_delay_ms,
    )
