"""Exit causes and the classification of an exit status: pure functions of the status and
its circumstances."""

from __future__ import annotations

import enum
import signal


class ExitCause(enum.StrEnum):
    """Every way a child can end. The values are stable codes users can match on."""

    IDLE_CLEAN = "worker.exit.idle_clean"
    """Exited with status 0 while no request was in flight."""
    CLEAN_IN_FLIGHT = "worker.exit.clean_in_flight"
    """Exited with status 0 while a request was in flight (the request is lost)."""
    NONZERO = "worker.exit.nonzero"
    """Exited with a non-zero status."""
    SIGKILL = "worker.exit.sigkill"
    """Killed by SIGKILL from outside the supervisor."""
    LIKELY_OOM = "worker.exit.likely_oom"
    """Killed by SIGKILL and the cgroup recorded an OOM kill meanwhile."""
    SIGSEGV = "worker.exit.sigsegv"
    SIGABRT = "worker.exit.sigabrt"
    SIGBUS = "worker.exit.sigbus"
    SIGNAL = "worker.exit.signal"
    """Killed by another signal (see ``ExitInfo.signal``)."""
    SUPERVISOR_KILL = "worker.exit.supervisor_kill"
    """Ended by the supervisor (timeout, cancel grace, RSS limit, protocol violation)."""
    SHUTDOWN = "worker.exit.shutdown"
    """Ended by a graceful shutdown or a planned cycle."""


_SIGNAL_CAUSES: dict[int, ExitCause] = {
    signal.SIGSEGV.value: ExitCause.SIGSEGV,
    signal.SIGABRT.value: ExitCause.SIGABRT,
    signal.SIGBUS.value: ExitCause.SIGBUS,
}


def signal_name(returncode: int | None) -> str | None:
    """``SIGSEGV`` for a process killed by that signal (a negative ``returncode``), else ``None``."""
    if returncode is None or returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"SIG{-returncode}"


def classify(
    returncode: int | None,
    *,
    in_flight: bool,
    supervisor_reason: str | None,
    graceful: bool,
    oom_kills_seen: bool,
) -> tuple[ExitCause, str | None]:
    """Map an exit status and its circumstances to a cause and an optional hint."""
    if supervisor_reason is not None:
        return (ExitCause.SHUTDOWN if graceful else ExitCause.SUPERVISOR_KILL), f"ended by the supervisor: {supervisor_reason}"
    if returncode is None:
        return ExitCause.SIGNAL, "exit status unavailable"
    if returncode == 0:
        return (ExitCause.CLEAN_IN_FLIGHT if in_flight else ExitCause.IDLE_CLEAN), None
    if returncode > 0:
        return ExitCause.NONZERO, None
    sig = -returncode
    if sig == signal.SIGKILL:
        if oom_kills_seen:
            return ExitCause.LIKELY_OOM, "the cgroup recorded an OOM kill while this child ran: raise memory or lower the RSS ceiling"
        return ExitCause.SIGKILL, "SIGKILL from outside the supervisor: likely the kernel OOM killer or an operator"
    cause = _SIGNAL_CAUSES.get(sig, ExitCause.SIGNAL)
    if sig == signal.SIGXCPU:
        return cause, "CPU time limit (rlimits.cpu_seconds) reached"
    return cause, None
