"""Start-up of one child generation: the state kept about it, and the handshake.

The worker spawns the process (``_process.ChildProcess``) and opens its channel; this
module holds what the supervisor tracks per generation and checks the child's ``Hello``
(protocol version, expected name) before answering with ``Welcome``.
"""

from __future__ import annotations

from collections.abc import Hashable

import msgspec

from lean_worker_protocol import (
    PROTOCOL_VERSION,
    SANDBOX_ERROR_MARK,
    SANDBOX_EXIT_CODE,
    CommandInfo,
    FrameEncoder,
    Hello,
    ProtocolError,
    SandboxFailure,
    Welcome,
)

from ._channel import Channel, ChannelEOF, ChannelInterrupted, ChannelTimeout
from ._config import RestartReason, WorkerConfig
from ._errors import HandshakeError, SandboxUnavailable, StartupError, StartupTimeout
from ._exit import ExitInfo
from ._process import ChildProcess
from ._rss import TreeMemory


class Generation:
    """A child plus everything the supervisor tracks about it."""

    __slots__ = ("child", "channel", "hello", "served", "requests", "imports", "last_activity", "memory",
                 "exit_info", "disposed", "first_request_done", "born_over_ceiling", "warm_keys")

    def __init__(self, child: ChildProcess, channel: Channel, now: float) -> None:
        self.child = child
        self.channel = channel
        self.hello: Hello | None = None
        self.served: dict[str, CommandInfo] = {}
        self.requests = 0
        self.imports = 0
        self.last_activity = now
        self.memory = TreeMemory(child.pid)
        self.exit_info: ExitInfo | None = None
        self.disposed = False
        self.first_request_done = False
        self.born_over_ceiling = False
        """Above the RSS ceiling (PSS-confirmed) right after its handshake: never cycled for it."""
        self.warm_keys: set[Hashable] = set()
        """Session keys this child has served: a request needing only these is no import."""


async def handshake(gen: Generation, config: WorkerConfig, encoder: FrameEncoder, deadline: float) -> Hello:
    """Read the child's ``Hello``, check it, answer with ``Welcome``; on any failure the
    child is killed and a ``StartupError`` says why."""
    name = config.name
    try:
        frame = await gen.channel.recv(deadline)
    except ChannelTimeout:
        await gen.child.kill(RestartReason.STARTUP_FAILURE)
        raise StartupTimeout(
            f"worker {name} child did not complete its handshake; limit_s={config.startup_timeout_s}",
            limit_s=config.startup_timeout_s,
            exit=gen.exit_info,
        ) from None
    except (ChannelInterrupted, ChannelEOF):
        await gen.child.exited.wait()
        raise StartupError(f"worker {name} child exited before its handshake", exit=gen.exit_info) from None
    except ProtocolError as exc:
        await gen.child.kill(RestartReason.STARTUP_FAILURE)
        raise HandshakeError(f"worker {name} child sent a bad handshake: {exc}", exit=gen.exit_info) from None
    if not isinstance(frame, Hello):
        await gen.child.kill(RestartReason.STARTUP_FAILURE)
        raise HandshakeError(
            f"worker {name} child spoke first with {type(frame).__name__}, expected Hello", exit=gen.exit_info
        )
    if frame.protocol_version != PROTOCOL_VERSION:
        await gen.child.kill(RestartReason.STARTUP_FAILURE)
        raise HandshakeError(
            f"worker {name} protocol version mismatch; parent={PROTOCOL_VERSION} child={frame.protocol_version} "
            f"child_worker={frame.worker_name} {frame.worker_version}: install matching lean-worker versions",
            exit=gen.exit_info,
            parent_protocol=PROTOCOL_VERSION,
            child_protocol=frame.protocol_version,
            child_worker=f"{frame.worker_name} {frame.worker_version}",
        )
    expected = config.expected_worker_name
    if expected is not None and frame.worker_name != expected:
        await gen.child.kill(RestartReason.STARTUP_FAILURE)
        raise HandshakeError(
            f"worker {name} started the wrong child; expected={expected} got={frame.worker_name}",
            exit=gen.exit_info,
        )
    welcome = Welcome(
        PROTOCOL_VERSION,
        gen.child.generation,
        config.row_batch_rows,
        config.row_batch_bytes,
        config.row_flush_interval_s,
    )
    try:
        await gen.channel.send(encoder.encode(welcome), deadline)
    except (ChannelTimeout, ChannelInterrupted, ChannelEOF):
        await gen.child.kill(RestartReason.STARTUP_FAILURE)
        raise StartupError(f"worker {name} child did not take its Welcome", exit=gen.exit_info) from None
    return frame


def sandbox_unavailable(exc: BaseException, config: WorkerConfig) -> SandboxUnavailable | None:
    """The typed error for a start-up that failed because the child could not build its
    sandbox (its exit status and its one marked stderr line say so); else ``None``."""
    exit = exc.exit if isinstance(exc, StartupError) else None
    if exit is None or exit.returncode != SANDBOX_EXIT_CODE:
        return None
    for line in reversed(exit.stderr_tail.splitlines()):
        if line.startswith(SANDBOX_ERROR_MARK):
            try:
                failure = msgspec.json.decode(line[len(SANDBOX_ERROR_MARK):], type=SandboxFailure)
            except msgspec.DecodeError:
                return None
            break
    else:
        return None
    facts = "".join(f" {k}={v}" for k, v in (("path", failure.path), ("errno", failure.errno)) if v)
    fix = failure.fix
    if config.sandbox.mode == "required":
        fix += "; or choose sandbox='auto' to run unsandboxed where it cannot be built (trusted input only)"
    reason = f"step={failure.step}{facts}: {failure.message}"
    return SandboxUnavailable(
        f"worker {config.name} cannot build its sandbox; {reason}; fix: {fix}", reason=reason,
        step=failure.step, fix=fix, path=failure.path, errno=failure.errno, exit=exit,
    )
