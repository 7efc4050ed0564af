"""One child process (one generation): spawn, drain its output, watch it die, reap it.

- The protocol travels over two dedicated pipes passed as extra file descriptors, so a
  handler's ``print`` or a Lean process writing to the inherited stdout cannot corrupt frames.
- stdout and stderr are pipes drained continuously into bounded tails: the child never
  blocks on a full pipe and parent memory never grows with its output.
- The child leads its own session and process group; kills go to the whole group, so
  grandchildren started by a handler die with it.
- Death is detected from the process itself through a pidfd, not from pipe EOF: a
  grandchild that inherited a pipe keeps it open after the child is gone.
- Spawning uses ``subprocess`` (fork-free vfork/exec), never a fork of the parent's memory.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections import deque
from collections.abc import Callable

import anyio
import msgspec

from lean_worker_exit import oom_kill_count
from lean_worker_protocol import BOOTSTRAP_ENV, Bootstrap, SandboxSpec

from ._config import WorkerConfig

logger = logging.getLogger("lean_worker.child")

_DRAIN_CHUNK = 64 * 1024
_TAIL_LINES = 40


class OutputTail:
    """The last ``limit`` bytes a child wrote to one stream, plus a running total."""

    __slots__ = ("limit", "_chunks", "_size", "total_bytes")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self.total_bytes = 0

    def append(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        self.total_bytes += len(data)
        while self._size > self.limit:
            excess = self._size - self.limit
            head = self._chunks[0]
            if len(head) <= excess:
                self._chunks.popleft()
                self._size -= len(head)
            else:
                self._chunks[0] = head[excess:]
                self._size -= excess

    def text(self, max_lines: int = _TAIL_LINES) -> str:
        data = b"".join(self._chunks).decode("utf-8", "replace")
        lines = data.splitlines()
        return "\n".join(lines[-max_lines:])


def _pipe() -> tuple[int, int]:
    return os.pipe2(os.O_CLOEXEC)


class ChildProcess:
    """A spawned child and the parent's ends of its pipes."""

    def __init__(self, config: WorkerConfig, generation: int, *, sandbox: SandboxSpec | None = None) -> None:
        self.config = config
        self.generation = generation
        to_child_r, to_child_w = _pipe()
        from_child_r, from_child_w = _pipe()
        out_r, out_w = _pipe()
        err_r, err_w = _pipe()
        boot = Bootstrap(
            read_fd=to_child_r,
            write_fd=from_child_w,
            parent_pid=os.getpid(),
            generation=generation,
            max_frame_bytes=config.max_frame_bytes,
            rlimits=config.rlimits,
            sandbox=sandbox,
        )
        env = config.env.build()
        env[BOOTSTRAP_ENV] = msgspec.json.encode(boot).decode()
        self.oom_kills_at_start = oom_kill_count()
        child_ends = (to_child_r, from_child_w, out_w, err_w)
        try:
            self.popen = subprocess.Popen(
                config.child.argv,
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                pass_fds=(to_child_r, from_child_w),
                cwd=config.cwd,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        except BaseException:
            for fd in (*child_ends, to_child_w, from_child_r, out_r, err_r):
                os.close(fd)
            raise
        for fd in child_ends:
            os.close(fd)
        self.pid = self.popen.pid
        self.write_fd = to_child_w
        self.read_fd = from_child_r
        for fd in (to_child_w, from_child_r, out_r, err_r):
            os.set_blocking(fd, False)
        self._out_fd = out_r
        self._err_fd = err_r
        self.pidfd = os.pidfd_open(self.pid)
        self.stdout_tail = OutputTail(config.output_tail_bytes)
        self.stderr_tail = OutputTail(config.output_tail_bytes)
        self.exited = anyio.Event()
        self.returncode: int | None = None
        self.kill_reason: str | None = None
        """Set when the supervisor ends the child on purpose (its reason code)."""
        self.graceful = False

    # -- lifecycle tasks ---------------------------------------------------------------------
    async def run(self, on_exit: Callable[[ChildProcess], None]) -> None:
        """Drain output until the child has exited and its pipes are closed, then reap it.

        Runs as a task in the worker's task group; ``on_exit`` is called once, after the
        child is reaped and its stderr drained, and before ``exited`` is set.
        """
        drains_done = anyio.Event()
        remaining = [2]

        async def drain(fd: int, tail: OutputTail, label: str) -> None:
            try:
                while True:
                    try:
                        data = os.read(fd, _DRAIN_CHUNK)
                    except BlockingIOError:
                        await anyio.wait_readable(fd)
                        continue
                    if not data:
                        return
                    tail.append(data)
                    if logger.isEnabledFor(logging.DEBUG):
                        logger.debug("%s[gen=%d pid=%d %s] %s", self.config.name, self.generation, self.pid, label,
                                     data.decode("utf-8", "replace").rstrip())
            finally:
                remaining[0] -= 1
                if not remaining[0]:
                    drains_done.set()

        # Shielded: a cancelled caller scope (``move_on_after`` around ``async with Worker``, a
        # failing sibling task) would otherwise cancel this reaper too, and the supervisor's
        # shielded cleanup would then wait forever on ``exited`` next to an unreaped zombie.
        # The supervisor always kills a child it stops caring about, so this ends.
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                tg.start_soon(drain, self._out_fd, self.stdout_tail, "stdout")
                tg.start_soon(drain, self._err_fd, self.stderr_tail, "stderr")
                await anyio.wait_readable(self.pidfd)
                # The leader is now a zombie: its pid (and so its group id) cannot be reused
                # yet. Take the rest of the group down before reaping.
                self._signal_group(signal.SIGKILL)
                self.returncode = self.popen.wait()
                with anyio.move_on_after(0.5):
                    await drains_done.wait()
                tg.cancel_scope.cancel()
        for fd in (self._out_fd, self._err_fd, self.pidfd):
            os.close(fd)
        on_exit(self)  # first: whoever waits on ``exited`` finds the exit facts in place
        self.exited.set()

    def close_protocol_fds(self) -> None:
        for fd in (self.write_fd, self.read_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    # -- signals -----------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.returncode is None

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def signal_group(self, sig: int) -> None:
        """Signal the child's whole process group, while the child is not yet reaped."""
        if self.returncode is None:
            self._signal_group(sig)

    async def terminate(self, reason: str, *, kill_grace_s: float) -> None:
        """SIGTERM the group, SIGKILL it after ``kill_grace_s``, and wait until reaped."""
        if self.kill_reason is None:
            self.kill_reason = reason
        if self.returncode is None:
            self.signal_group(signal.SIGTERM)
            with anyio.move_on_after(kill_grace_s):
                await self.exited.wait()
        await self.kill(reason)

    async def kill(self, reason: str) -> None:
        """SIGKILL the group and wait until reaped."""
        if self.kill_reason is None:
            self.kill_reason = reason
        self.signal_group(signal.SIGKILL)
        await self.exited.wait()

    def oom_kills_seen(self) -> bool:
        now = oom_kill_count()
        return self.oom_kills_at_start is not None and now is not None and now > self.oom_kills_at_start
