"""The cgroup v2 OOM-kill counter: the evidence that tells ``worker.exit.likely_oom`` from a
plain ``worker.exit.sigkill``."""

from __future__ import annotations

import os


def _cgroup_events_path() -> str | None:
    try:
        with open("/proc/self/cgroup") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        hier, _controllers, path = line.split(":", 2)
        if hier == "0":
            candidate = f"/sys/fs/cgroup{path}/memory.events"
            if os.path.exists(candidate):
                return candidate
            candidate = f"/sys/fs/cgroup/unified{path}/memory.events"
            if os.path.exists(candidate):
                return candidate
    return None


_EVENTS_PATH: str | None | bool = False
"""``False`` until the first lookup; the cgroup of a process does not change under it."""


def oom_kill_count() -> int | None:
    """The cgroup's OOM-kill counter (cgroup v2 ``memory.events``), or ``None`` when unavailable."""
    global _EVENTS_PATH
    if _EVENTS_PATH is False:
        _EVENTS_PATH = _cgroup_events_path()
    if not _EVENTS_PATH:
        return None
    try:
        with open(_EVENTS_PATH) as fh:  # type: ignore[arg-type]
            for line in fh:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except (OSError, ValueError):
        return None
    return None
