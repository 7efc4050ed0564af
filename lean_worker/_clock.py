"""The clock the restart policy reads: the system's, or a manual one for tests.

Time-based policy (idle retirement, the restart-intensity window, the pool's view of a
tripped worker) reads ``now()`` from a ``Clock`` and waits with its ``sleep()``, so a test
can move time forward instead of sleeping. Request deadlines are not policy: they stay on
the event loop's clock, because they bound real waits on a real pipe.
"""

from __future__ import annotations

import math
import time
from typing import Protocol

import anyio

__all__ = ["Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once ``now()`` has moved on by ``seconds`` (at least)."""
        ...


class SystemClock:
    """``time.monotonic`` and ``anyio.sleep``: the default."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


class ManualClock:
    """A clock that moves only when told to: ``advance(seconds)``.

    Sleepers wake when the time they wait for has come. After ``advance``, await
    ``anyio.wait_all_tasks_blocked()`` to let the woken tasks (a worker's policy monitor)
    run their step before asserting on what they did.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._changed = anyio.Event()

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if not seconds >= 0 or math.isinf(seconds):
            raise ValueError(f"advance takes a finite number of seconds >= 0; got {seconds}")
        self._now += seconds
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    async def sleep(self, seconds: float) -> None:
        until = self._now + seconds
        while self._now < until:
            await self._changed.wait()
