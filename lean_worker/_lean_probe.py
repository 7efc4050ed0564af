"""The Lean steps of ``check``: the toolchain is found, a session with the app's imports
opens, and a trivial snippet checks (``check.toolchain_*``, ``check.session_*``,
``check.roundtrip_*``). The generic probe (``_probe.py``) knows nothing of Lean; it runs
these because ``lean_steps`` hands them to ``check(steps=...)``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from lean_worker_protocol import Command
from lean_worker_protocol.lean import (
    CHECK,
    CHECK_BATCH,
    INDEX,
    OPEN,
    TOOLCHAIN,
    CheckRequest,
    OpenRequest,
    ToolchainQuery,
    ToolchainReport,
)
from lean_worker_protocol.probe import DOCTOR, CheckItem, CheckReport, Severity

from ._config import WorkerConfig
from ._errors import WorkerError
from ._lean_errors import ToolchainNotFound
from ._probe import ProbeStep, check
from ._worker import Worker

__all__ = ["LEAN_COMMANDS", "ROUNDTRIP_BODY", "check_lean", "lean_steps"]

LEAN_COMMANDS: tuple[Command, ...] = (CHECK, CHECK_BATCH, INDEX, OPEN, TOOLCHAIN, DOCTOR)
"""What ``check_lean`` expects the Lean worker to serve as declared by default."""

ROUNDTRIP_BODY = "example : Type 1 := Type"
"""The snippet body of the Lean round trip: elaborates with or without a standard library."""

_HINT_TOOLCHAIN = (
    "pass --lean PATH (lean_config(lean=...)), or set $LEAN_WORKER_LEAN, run it in a "
    "Lake project, put lean on PATH, or install the test toolchain: pip install -e '.[toolchain]'"
)


def lean_steps(imports: Sequence[str] = ()) -> tuple[ProbeStep, ...]:
    """The ``check`` steps of a Lean worker whose snippets import ``imports`` (default: none,
    a bare header). One step, as each part needs the one before: the toolchain report (for
    the header), then ``lean.open`` of that header when served, then ``lean.check`` of
    ``ROUNDTRIP_BODY`` under it when served."""
    modules = list(imports)

    async def lean_toolchain_session_roundtrip(worker: Worker) -> list[CheckItem]:
        return await _lean_items(worker, modules)

    return (lean_toolchain_session_roundtrip,)


async def check_lean(
    config: WorkerConfig, *, imports: Sequence[str] = (), expect: Sequence[Command] = LEAN_COMMANDS
) -> CheckReport:
    """``check`` of a Lean worker (``lean_config(...)``): handshake, ``expect`` (default: the
    Lean commands and ``worker.doctor``), then ``lean_steps(imports)``."""
    return await check(config, expect=expect, steps=lean_steps(imports))


def _item(code: str, severity: Severity, subject: str, message: str, hint: str = "") -> CheckItem:
    return CheckItem(code, severity, subject, message, hint)


async def _lean_items(worker: Worker, imports: list[str]) -> list[CheckItem]:
    hello = worker.hello
    served = {c.name for c in hello.commands} if hello is not None else set()
    if TOOLCHAIN.name not in served:
        return [_item("check.toolchain_failed", "error", TOOLCHAIN.name,
                      f"the child does not serve {TOOLCHAIN.name}: it is not a Lean worker",
                      "check a Lean worker (lean_config), or leave out the Lean steps (--lean-imports)")]
    try:
        report = await worker.call(TOOLCHAIN, ToolchainQuery())
    except ToolchainNotFound as exc:
        return [_item("check.toolchain_not_found", "error", TOOLCHAIN.name, exc.remote_message, _HINT_TOOLCHAIN)]
    except WorkerError as exc:
        return [_item("check.toolchain_failed", "error", TOOLCHAIN.name, f"{exc.code}: {exc}", _HINT_TOOLCHAIN)]
    stdlib = "present" if report.stdlib_present else "absent (prelude files only)"
    items = [_item(
        "check.toolchain_ok", "ok", TOOLCHAIN.name,
        f"Lean {report.version} found by {report.source}: {report.lean}; standard library {stdlib}",
    )]
    header = _header(report, imports)
    subject = " ".join(imports) or "(no imports)"
    if OPEN.name in served:
        item = await _open_session(worker, header, subject, report)
        items.append(item)
        if item.severity == "error":
            return items
    if CHECK.name in served:
        items.append(await _lean_roundtrip(worker, header))
    return items


def _header(report: ToolchainReport, imports: list[str]) -> str:
    lines = [f"import {module}" for module in imports]
    if not report.stdlib_present:
        lines.insert(0, "prelude")  # without Init a header must say so, or the implicit `import Init` fails
    return "\n".join(lines or ["import Init"]) + "\n"


async def _open_session(worker: Worker, header: str, subject: str, report: ToolchainReport) -> CheckItem:
    hint = "build those modules (lake build) and put their directory on the search path (--search-path)"
    if not report.stdlib_present:
        hint += "; this toolchain has no standard library, so only prelude libraries import"
    try:
        info = await worker.call(OPEN, OpenRequest(header))
    except WorkerError as exc:
        return _item("check.session_failed", "error", subject, f"{exc.code}: {exc}", hint)
    errors = [m for m in info.messages if m.severity == "error"]
    if errors:
        return _item("check.session_failed", "error", subject, "; ".join(m.text for m in errors[:3]), hint)
    return _item("check.session_ok", "ok", subject, f"session {info.key} opened in {info.elapsed_ms:.0f} ms ({info.session})")


async def _lean_roundtrip(worker: Worker, header: str) -> CheckItem:
    hint = "run lean-worker doctor, and the snippet by hand with the toolchain it reports"
    started = time.perf_counter()
    try:
        result = await worker.call(CHECK, CheckRequest(header + ROUNDTRIP_BODY, id="check"))
    except WorkerError as exc:
        return _item("check.roundtrip_failed", "error", CHECK.name, f"{exc.code}: {exc}", hint)
    elapsed_ms = (time.perf_counter() - started) * 1e3
    if result.verdict != "ok":
        texts = "; ".join(m.text for m in result.messages[:3])
        return _item("check.roundtrip_failed", "error", CHECK.name, f"verdict {result.verdict}: {texts}", hint)
    return _item("check.roundtrip_ok", "ok", CHECK.name, f"a trivial snippet checked ok in {elapsed_ms:.0f} ms ({result.session})")
