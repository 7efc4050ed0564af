"""A request the child never reads (a stopped child, a request larger than the pipe)."""

from __future__ import annotations

import os
import signal

import anyio
import pytest

from lean_worker import RequestTimeout, RestartPolicy, Worker
from lean_worker_protocol.demo import ECHO, Echo

from conftest import child_config

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("restart_on_timeout", [True, False])
async def test_request_stuck_in_a_full_pipe_times_out_and_the_child_is_replaced(restart_on_timeout: bool) -> None:
    config = child_config(
        "lean_worker_child.demo",
        restart=RestartPolicy(restart_on_timeout=restart_on_timeout),
        request_timeout_s=0.5,
    )
    async with Worker(config) as worker:
        with anyio.fail_after(20):
            assert (await worker.call(ECHO, Echo("warm"))).text == "warm"
            pid = worker.pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)  # the child stops reading its pipe
            try:
                with pytest.raises(RequestTimeout) as raised:
                    await worker.call(ECHO, Echo("x" * (1024 * 1024)))  # far larger than a pipe buffer
            finally:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            error = raised.value
            # Part of the request frame may sit in the pipe: a cancel frame after it would
            # desynchronise the stream, so the child is replaced whatever the policy says.
            assert error.exit is not None and not error.exit.work_entered
            assert worker.stats().restarts == {"request_timeout": 1}
            assert (await worker.call(ECHO, Echo("after"))).text == "after"
            assert worker.generation == 2
