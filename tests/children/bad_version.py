"""A child that speaks protocol version 999: ``python -m tests.children.bad_version [GENERATION...]``.

It sends a well-formed ``Hello`` with the wrong version using the protocol's own encoder on
the bootstrap fds, then waits for the parent to hang up (or to kill it). On a generation not
named in its arguments it serves the ``faulty`` app normally.
"""

import os
import sys

from lean_worker_protocol import FrameEncoder, Hello
from .faulty import app, misbehaving_bootstrap

BAD_VERSION = 999

if __name__ == "__main__":
    boot = misbehaving_bootstrap()
    if boot is None:
        app.serve()
    hello = Hello(BAD_VERSION, "bad-version", "0", os.getpid(), app.command_infos(), boot.max_frame_bytes)
    # The marker goes first: the parent kills us as soon as it reads this Hello.
    print(f"bad_version: generation {boot.generation} sent protocol_version={BAD_VERSION}", file=sys.stderr, flush=True)
    os.write(boot.write_fd, FrameEncoder(boot.max_frame_bytes).encode(hello))
    while os.read(boot.read_fd, 65536):
        pass
    sys.exit(0)
