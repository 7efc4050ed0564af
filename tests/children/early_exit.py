"""A child that exits with status 5 before its handshake: ``python -m tests.children.early_exit [GENERATION...]``.

On a generation not named in its arguments it serves the ``faulty`` app normally.
"""

import sys

from .faulty import app, misbehaving_bootstrap

EXIT_STATUS = 5

if __name__ == "__main__":
    boot = misbehaving_bootstrap()
    if boot is None:
        app.serve()
    print(f"early_exit: generation {boot.generation} cannot load its configuration", file=sys.stderr, flush=True)
    sys.exit(EXIT_STATUS)
