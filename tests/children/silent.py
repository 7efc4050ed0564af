"""A child that never sends its Hello: ``python -m tests.children.silent [GENERATION...]``.

It writes a marker to stderr and then waits for the parent to hang up (or to kill it). On a
generation not named in its arguments it serves the ``faulty`` app normally.
"""

import os
import sys

from .faulty import app, misbehaving_bootstrap

if __name__ == "__main__":
    boot = misbehaving_bootstrap()
    if boot is None:
        app.serve()
    print(f"silent: generation {boot.generation} will never handshake", file=sys.stderr, flush=True)
    while os.read(boot.read_fd, 65536):
        pass
    sys.exit(0)
