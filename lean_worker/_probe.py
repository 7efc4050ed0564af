"""``check`` and ``doctor``: is this worker child installed right, and what does it say about itself?

``check(config)`` walks the path from the parent to a working child and reports each step
as a ``CheckItem`` with a stable code, instead of raising at the first failure:

1. the child's executable exists and may be executed (``check.child_*``);
2. it starts and completes the handshake in our protocol version (``check.startup_failed``,
   ``check.handshake_*``, ``check.protocol_version``);
3. it serves every command the app expects, with the same schema fingerprint
   (``check.commands_ok``, ``check.command_missing``, ``check.schema_mismatch``);
4. the capability's own steps, each an async callable ``(worker) -> list[CheckItem]``
   (``ProbeStep``). The default is ``doctor_roundtrip``: the built-in ``worker.doctor``
   answers (``check.roundtrip_*``). A capability brings its own: ``lean_worker.lean``'s
   ``lean_steps`` find a toolchain, open a session and check a trivial snippet.

A step runs only when the steps it needs passed: the capability steps run in order and
stop after the first that reports an error. ``doctor(config)`` asks the child for its
capabilities' own diagnostics (``worker.doctor``). The codes and the doctor contract are in
``architecture/80-probes-and-packaging.md``.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import anyio
import msgspec

from lean_worker_protocol import PROTOCOL_VERSION, Command, Hello
from lean_worker_protocol.probe import DOCTOR, CheckItem, CheckReport, DoctorItem, DoctorReport, DoctorRequest, Severity

from ._config import WorkerConfig
from ._errors import ChildNotFound, HandshakeError, SandboxUnavailable, StartupError, StartupTimeout, WorkerError
from ._worker import Worker

__all__ = [
    "DEFAULT_STEPS",
    "ProbeStep",
    "check",
    "check_sync",
    "doctor",
    "doctor_roundtrip",
    "doctor_sync",
    "not_found_report",
    "render_check",
    "render_doctor",
]

ProbeStep = Callable[[Worker], Awaitable[list[CheckItem]]]
"""One capability step of ``check``: given the started worker (``worker.hello`` says what it
serves), the items it found. A step reports failures as error items; a ``WorkerError`` that
escapes it becomes a ``check.step_failed`` item."""

_HINT_UPGRADE = "build the parent and the child from the same version of the app's commands module (upgrade both)"


def _item(code: str, severity: Severity, subject: str, message: str, hint: str = "") -> CheckItem:
    return CheckItem(code, severity, subject, message, hint)


def not_found_report(exc: ChildNotFound) -> CheckReport:
    """The report of a check whose child could not even be resolved."""
    return CheckReport("(unresolved)", [_item("check.child_not_found", "error", "child", str(exc), exc.hint)])


async def check(
    config: WorkerConfig,
    *,
    expect: Sequence[Command] = (),
    steps: Sequence[ProbeStep] | None = None,
) -> CheckReport:
    """Check that ``config``'s child works; never raises for a broken child.

    ``expect``: the commands the app will call; each must be served with the same schema
    fingerprint. ``steps``: the capability's own steps, run in order after the handshake
    until one reports an error (default ``DEFAULT_STEPS``: the ``worker.doctor`` round trip;
    for the Lean worker, ``lean_worker.lean.lean_steps(imports=...)``).
    """
    target = shlex.join(config.child.argv)
    child = _child_item(config)
    if child.severity == "error":
        return CheckReport(target, [child])
    items = [child]
    try:
        async with Worker(config) as worker:
            hello = worker.hello
            assert hello is not None  # set once the handshake passed
            items.append(_handshake_item(hello))
            items += _command_items(hello, expect)
            if worker.sandbox.mode != "off":
                items.append(await sandbox_item(worker))
            for step in DEFAULT_STEPS if steps is None else steps:
                found = await _run_step(step, worker)
                items += found
                if any(item.severity == "error" for item in found):
                    break
    except StartupError as exc:  # only the first start raises it: every later step catches its own errors
        items = await _startup_items(config, child, exc)
    return CheckReport(target, items)


def _child_item(config: WorkerConfig) -> CheckItem:
    word = config.child.argv[0]
    if os.sep in word:
        base = Path(config.cwd) if config.cwd else Path.cwd()
        path = base / word
    else:
        found = shutil.which(word, path=config.env.build().get("PATH"))
        if found is None:
            return _item(
                "check.child_not_found", "error", "child", f"{word} is not on the child's PATH",
                "install the worker, or name it by its absolute path",
            )
        path = Path(found)
    if not path.exists():
        return _item("check.child_not_found", "error", "child", f"{path} does not exist",
                     "install the worker (its console script), or fix the path in the ChildCommand")
    if not path.is_file() or not os.access(path, os.X_OK):
        return _item("check.child_not_executable", "error", "child", f"{path} is not an executable file",
                     f"chmod +x {shlex.quote(str(path))}, or start it through its interpreter")
    module = _module_of(config)
    return _item("check.child_ok", "ok", "child", f"{path} is executable" + (f" (python -m {module})" if module else ""))


def _module_of(config: WorkerConfig) -> str | None:
    argv = config.child.argv
    return argv[2] if len(argv) >= 3 and argv[1] == "-m" else None


async def _startup_items(config: WorkerConfig, child: CheckItem, exc: StartupError) -> list[CheckItem]:
    """What the failed start says: the child item, then why it did not come up."""
    message = str(exc)
    if isinstance(exc, SandboxUnavailable):
        return [child, _item("check.sandbox_unavailable", "error", "sandbox", exc.reason,
                             f"{exc.fix}; or run with --sandbox off for trusted input only")]
    if isinstance(exc, HandshakeError):
        if exc.child_protocol is not None:
            return [child, _item(
                "check.protocol_version", "error", "handshake",
                f"the child ({exc.child_worker}) speaks protocol {exc.child_protocol}; "
                f"this parent speaks {PROTOCOL_VERSION}",
                "install matching lean-worker versions in the parent's and the child's environments",
            )]
        return [child, _item("check.handshake_failed", "error", "handshake", message,
                             "the child must be a WorkerApp calling serve(); check expected_worker_name")]
    cause = exc.__cause__
    if isinstance(cause, OSError):  # exec failed: the file went away or lost its x bit since the pre-check
        code = "check.child_not_executable" if isinstance(cause, PermissionError) else "check.child_not_found"
        return [_item(code, "error", "child", message, "install the worker, or fix the path in the ChildCommand")]
    module = _module_of(config)
    if module is not None and not isinstance(exc, StartupTimeout):
        problem = await anyio.to_thread.run_sync(_module_problem, config, module)
        if problem is not None:
            return [_item("check.child_not_found", "error", "child",
                          f"module {module} is not importable by {config.child.argv[0]}: {problem}",
                          "install the package that provides it into that interpreter, or fix PYTHONPATH / cwd")]
    return [child, _item("check.startup_failed", "error", "startup", f"{exc.code}: {message}",
                         "read the child's stderr tail above; a child must call WorkerApp.serve() when it starts")]


_FIND_SPEC = (
    "import importlib.util, sys\n"
    "try:\n"
    "    found = importlib.util.find_spec(sys.argv[1]) is not None\n"
    "except Exception as exc:\n"
    "    print(f'{type(exc).__name__}: {exc}'); sys.exit(1)\n"
    "sys.exit(0 if found else 1)\n"
)


def _module_problem(config: WorkerConfig, module: str) -> str | None:
    """Whether the child's interpreter can import ``module`` in the child's environment."""
    try:
        result = subprocess.run(
            [config.child.argv[0], "-c", _FIND_SPEC, module],
            env=config.env.build(), cwd=config.cwd, capture_output=True, text=True, timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if result.returncode == 0:
        return None
    return result.stdout.strip()[:500] or "no such module"


def _handshake_item(hello: Hello) -> CheckItem:
    return _item(
        "check.handshake_ok", "ok", "handshake",
        f"worker {hello.worker_name} {hello.worker_version} pid={hello.pid} protocol={hello.protocol_version} "
        f"commands={len(hello.commands)}",
    )


def _command_items(hello: Hello, expect: Sequence[Command]) -> list[CheckItem]:
    if not expect:
        return []
    served = {c.name: c for c in hello.commands}
    items: list[CheckItem] = []
    for command in expect:
        info = served.get(command.name)
        if info is None:
            items.append(_item(
                "check.command_missing", "error", command.name,
                f"worker {hello.worker_name} {hello.worker_version} does not serve {command.name}; serves: {sorted(served)}",
                _HINT_UPGRADE,
            ))
        elif info.kind != command.kind or info.fingerprint != command.fingerprint:
            items.append(_item(
                "check.schema_mismatch", "error", command.name,
                f"{command.name} differs; parent={command.kind}:{command.fingerprint} "
                f"child={info.kind}:{info.fingerprint}",
                _HINT_UPGRADE,
            ))
    if not items:
        names = ", ".join(c.name for c in expect)
        items.append(_item("check.commands_ok", "ok", "commands", f"{len(expect)} expected commands served as declared: {names}"))
    return items


async def _run_step(step: ProbeStep, worker: Worker) -> list[CheckItem]:
    try:
        return list(await step(worker))
    except WorkerError as exc:
        name = getattr(step, "__qualname__", repr(step))
        return [_item("check.step_failed", "error", name, f"{exc.code}: {exc}",
                      "the step let a worker error escape; read the error")]


async def doctor_roundtrip(worker: Worker) -> list[CheckItem]:
    """The generic round trip: the built-in ``worker.doctor`` answers (``check.roundtrip_*``);
    nothing for a child too old to serve it."""
    hello = worker.hello
    if hello is None or DOCTOR.name not in {c.name for c in hello.commands}:
        return []
    return [await _doctor_item(worker)]


async def _doctor_item(worker: Worker) -> CheckItem:
    started = time.perf_counter()
    try:
        report = await worker.call(DOCTOR, DoctorRequest())
    except WorkerError as exc:
        return _item("check.roundtrip_failed", "error", DOCTOR.name, f"{exc.code}: {exc}",
                     "the child starts but cannot answer; read the error")
    elapsed_ms = (time.perf_counter() - started) * 1e3
    errors = sum(item.severity == "error" for item in report.items)
    return _item("check.roundtrip_ok", "ok", DOCTOR.name,
                 f"answered in {elapsed_ms:.1f} ms with {len(report.items)} doctor items ({errors} errors)")


SANDBOX_ITEM = "worker.sandbox"
"""The doctor item in which a sandboxed child says what its sandbox enforces."""


async def sandbox_item(worker: Worker) -> CheckItem:
    """What the sandbox enforces here (the child's ``worker.sandbox`` doctor item), for a
    worker asked to run in one; a warning when ``auto`` fell back, naming why."""
    status = worker.sandbox
    if status.fallback_reason:
        return _item("check.sandbox_fallback", "warning", "sandbox",
                     f"NOT SANDBOXED: sandbox={status.mode} fell back to running the child unsandboxed; "
                     f"{status.fallback_reason}", status.fallback_fix or "")
    try:
        report = await worker.call(DOCTOR, DoctorRequest())
    except WorkerError as exc:
        return _item("check.sandbox_active", "ok", "sandbox", f"active (its report failed: {exc.code})")
    own = next((i for i in report.items if i.name == SANDBOX_ITEM), None)
    if own is None:
        return _item("check.sandbox_active", "ok", "sandbox", "active")
    return _item("check.sandbox_active", own.severity, "sandbox", own.message, own.hint)

DEFAULT_STEPS: tuple[ProbeStep, ...] = (doctor_roundtrip,)
"""The steps of a ``check`` that names none: any worker child serves ``worker.doctor``."""


async def doctor(config: WorkerConfig) -> DoctorReport:
    """Start ``config``'s child and return its capabilities' own diagnostics.

    Raises what starting the child raises (``StartupError``...), and ``SchemaMismatch`` for
    a child built before ``worker.doctor`` existed."""
    async with Worker(config) as worker:
        report: DoctorReport = await worker.call(DOCTOR, DoctorRequest())
        status = worker.sandbox
    if status.fallback_reason:  # the child cannot know it was meant to be sandboxed: say so loudly
        loud = DoctorItem(SANDBOX_ITEM, "warning", f"NOT SANDBOXED: sandbox={status.mode} fell back; "
                          f"{status.fallback_reason}", status.fallback_fix or "")
        report = msgspec.structs.replace(report, items=[*(i for i in report.items if i.name != SANDBOX_ITEM), loud])
    return report


def check_sync(
    config: WorkerConfig, *, expect: Sequence[Command] = (), steps: Sequence[ProbeStep] | None = None
) -> CheckReport:
    """``check`` for code without an event loop (runs one with ``anyio.run``)."""
    return anyio.run(functools.partial(check, config, expect=expect, steps=steps))


def doctor_sync(config: WorkerConfig) -> DoctorReport:
    """``doctor`` for code without an event loop (runs one with ``anyio.run``)."""
    return anyio.run(doctor, config)


# -- human output ------------------------------------------------------------------------------

_MARK = {"ok": "ok", "warning": "WARN", "error": "ERROR"}


def _lines(text: str, indent: str) -> str:
    return text.replace("\n", "\n" + indent)


def _tally(severities: list[str]) -> str:
    warnings, errors = severities.count("warning"), severities.count("error")
    return (f"{severities.count('ok')} ok, {warnings} warning{'' if warnings == 1 else 's'}, "
            f"{errors} error{'' if errors == 1 else 's'}")


def render_check(report: CheckReport) -> str:
    width = max((len(item.code) for item in report.items), default=0)
    out = [f"check {report.target}"]
    for item in report.items:
        out.append(f"  {_MARK[item.severity]:<5} {item.code:<{width}}  {item.subject}: "
                   + _lines(item.message, " " * (width + 10)))
        if item.hint:
            out.append(f"{'':{width + 10}}hint: {item.hint}")
    out.append(_tally([item.severity for item in report.items]))
    return "\n".join(out)


def render_doctor(report: DoctorReport) -> str:
    """Messages and hints; the items' ``data`` is in the JSON output only."""
    width = max((len(item.name) for item in report.items), default=0)
    out = [f"doctor {report.worker} {report.version}"]
    if not report.items:
        out.append("  (this worker registers no doctor contributors)")
    for item in report.items:
        out.append(f"  {_MARK[item.severity]:<5} {item.name:<{width}}  " + _lines(item.message, " " * (width + 10)))
        if item.hint:
            out.append(f"{'':{width + 10}}hint: {item.hint}")
    out.append(_tally([item.severity for item in report.items]))
    return "\n".join(out)
