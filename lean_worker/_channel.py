"""The parent's end of the protocol pipes: read frames with a deadline, write frames.

Two implementations behind one interface:

- On asyncio the read end is registered once with ``loop.add_reader`` and a callback
  fills the frame buffer; a request waits on a plain future. ``bench/micro.py`` measures
  a pipe round trip both ways (``channel_add_reader_rtt_us`` against
  ``channel_wait_readable_rtt_us``; figures in architecture/40-core-benchmarks.md).
  Reading pauses while more than ``HIGH_WATER`` bytes are buffered, so a slow consumer
  stops reading and the child blocks on its write: backpressure, bounded memory.
- Elsewhere (trio) a request waits with ``anyio.wait_readable`` inside a cancel scope.

Either way a watcher can ``interrupt`` a waiting request (the child died); the channel then
reads whatever the child wrote before dying, so a response sent just before an exit is
still delivered.
"""

from __future__ import annotations

import asyncio
import math
import os
import select
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel

from lean_worker_protocol import ChildFrame, FrameReader

_READ_CHUNK = 64 * 1024
HIGH_WATER = 1024 * 1024


class ChannelTimeout(Exception):
    """The deadline passed while waiting for the child."""


class ChannelInterrupted(Exception):
    """A watcher interrupted the wait (the child has exited)."""


class ChannelEOF(Exception):
    """The child closed its end of the protocol pipe."""


class Channel:
    def __init__(self, read_fd: int, write_fd: int, max_frame_bytes: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.reader = FrameReader(ChildFrame, max_frame_bytes)
        self.eof = False
        self.interrupted = False
        self.closed = False
        self._poller: select.poll | None = None
        self.idle = True
        """No request in flight: anything the child writes now is a protocol violation."""
        self.on_unsolicited: Callable[[], None] | None = None

    # -- writing -----------------------------------------------------------------------------
    async def send(self, data: bytes | bytearray, deadline: float) -> None:
        """Write a whole frame; waits (up to ``deadline``) only when the pipe is full."""
        view = memoryview(data)
        while view:
            if self.interrupted:
                raise ChannelInterrupted()
            try:
                written = os.write(self.write_fd, view)
            except BlockingIOError:
                with anyio.CancelScope(deadline=deadline) as scope:
                    await anyio.wait_writable(self.write_fd)
                if scope.cancelled_caught:
                    raise ChannelTimeout() from None
                continue
            except BrokenPipeError:
                raise ChannelEOF() from None
            view = view[written:]

    def send_nowait(self, data: bytes | bytearray) -> bool:
        """Best-effort write of a small control frame; False if it could not be written whole."""
        try:
            return os.write(self.write_fd, data) == len(data)
        except OSError:
            return False

    # -- reading -----------------------------------------------------------------------------
    def _read_available(self) -> None:
        """Read everything the child has written so far (used once it has exited)."""
        while not self.eof:
            try:
                data = os.read(self.read_fd, _READ_CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.eof = True
                return
            self.reader.feed(data)

    def idle_output(self) -> bool:
        """Whether the child wrote anything while no request was in flight."""
        return bool(self.reader.buffered)

    def _last_frame(self) -> Any:
        """Once the child is gone (interrupted) or its pipe ended: a frame it wrote before
        that, if any; otherwise the matching error."""
        if self.interrupted:
            self._read_available()
            frame = self.reader.next()
            if frame is not None:
                return frame
            raise ChannelInterrupted()
        raise ChannelEOF()

    def now(self) -> float:
        """The event loop's clock (the clock deadlines are expressed in)."""
        return anyio.current_time()

    def spin(self, budget_s: float) -> bool | None:
        """Busy-poll for a reply (asyncio only, see ``AsyncioChannel.spin``); ``None``: not tried."""
        return None

    async def recv(self, deadline: float) -> Any:
        raise NotImplementedError

    def interrupt(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.closed = True


class AsyncioChannel(Channel):
    def __init__(self, read_fd: int, write_fd: int, max_frame_bytes: int) -> None:
        super().__init__(read_fd, write_fd, max_frame_bytes)
        self._loop = asyncio.get_running_loop()
        self.now = self._loop.time  # type: ignore[method-assign]
        self._waiter: asyncio.Future[None] | None = None
        self._reading = False
        self._deadline = math.inf
        self._timer: asyncio.TimerHandle | None = None
        self._resume()

    def _resume(self) -> None:
        if not self._reading and not self.eof and not self.closed:
            self._loop.add_reader(self.read_fd, self._on_readable)
            self._reading = True

    def _pause(self) -> None:
        if self._reading:
            self._loop.remove_reader(self.read_fd)
            self._reading = False

    def _on_readable(self) -> None:
        try:
            data = os.read(self.read_fd, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.reader.feed(data)
            if self.reader.buffered > HIGH_WATER:
                self._pause()
            if self.idle and self.on_unsolicited is not None:
                self.on_unsolicited()
        else:
            self.eof = True
            self._pause()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # One timer per channel, re-armed lazily: consecutive requests with the same timeout
    # have increasing deadlines, so the timer that fires for an old deadline just moves to
    # the current one. That is one timer per timeout period instead of one per wait.
    def _arm(self, deadline: float) -> None:
        self._deadline = deadline
        if deadline == math.inf:
            return
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._loop.time() >= self._deadline:
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif self._deadline != math.inf:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)

    async def recv(self, deadline: float) -> Any:
        reader = self.reader
        while True:
            frame = reader.next()
            if frame is not None:
                if not self._reading and reader.buffered <= HIGH_WATER:
                    self._resume()
                return frame
            self._resume()
            if self.interrupted or self.eof:
                return self._last_frame()
            if self._loop.time() >= deadline:
                raise ChannelTimeout()
            if deadline != self._deadline:
                self._arm(deadline)
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def interrupt(self) -> None:
        self.interrupted = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def spin(self, budget_s: float) -> bool | None:
        """Busy-poll the pipe for up to ``budget_s`` without yielding; True if bytes arrived,
        False if none did in time, ``None`` if it did not try (other tasks were ready).

        Parking in the event loop costs a sleep and a wake-up of the parent (an epoll wait,
        a callback, a task step); for a reply that comes back in microseconds that is most
        of the round trip. Only ``Worker.call`` uses this, and only for commands whose
        recent round trips fit the budget (see ``WorkerConfig.spin_wait_us``).
        """
        # Never hold up tasks that are ready to run. Loops that do not expose their ready
        # queue (uvloop) cannot be checked, so they never spin.
        if getattr(self._loop, "_ready", True):
            return None
        poller = self._poller
        if poller is None:
            poller = self._poller = select.poll()
            poller.register(self.read_fd, select.POLLIN)
        end = time.perf_counter() + budget_s
        while not poller.poll(0):
            if time.perf_counter() >= end:
                return False
        try:
            data = os.read(self.read_fd, _READ_CHUNK)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if data:
            self.reader.feed(data)
        else:
            self.eof = True
        return True

    def close(self) -> None:
        self._pause()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().close()


class GenericChannel(Channel):
    def __init__(self, read_fd: int, write_fd: int, max_frame_bytes: int) -> None:
        super().__init__(read_fd, write_fd, max_frame_bytes)
        self._scope: anyio.CancelScope | None = None

    async def recv(self, deadline: float) -> Any:
        reader = self.reader
        while True:
            frame = reader.next()
            if frame is not None:
                return frame
            if self.interrupted or self.eof:
                return self._last_frame()
            try:
                data = os.read(self.read_fd, _READ_CHUNK)
            except BlockingIOError:
                if anyio.current_time() >= deadline:
                    raise ChannelTimeout() from None
                with anyio.CancelScope(deadline=deadline) as scope:
                    self._scope = scope
                    await anyio.wait_readable(self.read_fd)
                self._scope = None
                continue
            except OSError:
                data = b""
            if data:
                reader.feed(data)
                # Yield once per read: with a fast child the pipe never runs dry, and the
                # caller's cancel scopes (and everyone else) must still get to run.
                await anyio.lowlevel.checkpoint()
            else:
                self.eof = True

    def idle_output(self) -> bool:
        """Without a reader callback, look for bytes the child wrote while idle."""
        if not self.eof:
            try:
                data = os.read(self.read_fd, _READ_CHUNK)
            except (BlockingIOError, OSError):
                data = None
            if data:
                self.reader.feed(data)
            elif data == b"":
                self.eof = True
        return bool(self.reader.buffered)

    def interrupt(self) -> None:
        self.interrupted = True
        if self._scope is not None:
            self._scope.cancel()


def open_channel(read_fd: int, write_fd: int, max_frame_bytes: int) -> Channel:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return GenericChannel(read_fd, write_fd, max_frame_bytes)
    return AsyncioChannel(read_fd, write_fd, max_frame_bytes)
