"""The request lock of a worker, and who holds it.

One request at a time per worker, served in arrival order. A task (or, for the sync
facades, a thread) that holds the worker through an open stream and asks it again would
wait for itself: that is refused at once (``ReentrantRequest``) instead.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


class FifoLock:
    """A FIFO lock whose uncontended acquire does not yield to the event loop.

    ``anyio.Lock`` (even with fast_acquire) costs several times more per uncontended
    acquire and release on asyncio (``bench/micro.py``: ``anyio_lock_ns`` against
    ``fifo_lock_ns``). Ownership is handed directly to the next waiter on release, so the
    lock is fair, and a waiter cancelled after the hand-off passes it on.
    """

    __slots__ = ("_locked", "_waiters")

    def __init__(self) -> None:
        self._locked = False
        self._waiters: deque[list[Any]] = deque()

    def locked(self) -> bool:
        return self._locked

    async def acquire(self) -> None:
        if not self._locked:
            self._locked = True
            return
        waiter: list[Any] = [anyio.Event(), False]
        self._waiters.append(waiter)
        try:
            await waiter[0].wait()
        except BaseException:
            if waiter[1]:
                self.release()
            else:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        if self._waiters:
            waiter = self._waiters.popleft()
            waiter[1] = True
            waiter[0].set()
        else:
            self._locked = False

    def try_acquire(self) -> bool:
        """Take the lock if it is free, without waiting."""
        if self._locked:
            return False
        self._locked = True
        return True

    async def acquire_within(self, seconds: float | None) -> bool:
        """Acquire, waiting at most ``seconds`` (``None``: no bound); False if it timed out."""
        if not self._locked:
            self._locked = True
            return True
        with anyio.move_on_after(math.inf if seconds is None else seconds):
            await self.acquire()
            return True
        return False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: Any) -> None:
        self.release()


_OWNER: ContextVar[object | None] = ContextVar("lean_worker_owner", default=None)
"""Who a request is made for, when that is not the current task: the sync facades run each
call in a task of their own and name the calling thread here."""


def owner() -> object:
    """Who is asking: the current task (a stream's holder is the task that opened it), or
    the thread a sync facade names."""
    token = _OWNER.get()
    return token if token is not None else anyio.get_current_task().id


async def run_as(owner: object, func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """Run ``func`` as ``owner`` (for the re-entrancy check), in the current task."""
    _OWNER.set(owner)
    return await func(*args, **kwargs)


@asynccontextmanager
async def entered_as(owner: object, manager: AbstractAsyncContextManager[T]) -> AsyncIterator[T]:
    """Enter ``manager`` as ``owner`` (a stream then records ``owner`` as its holder)."""
    _OWNER.set(owner)
    async with manager as value:
        yield value
