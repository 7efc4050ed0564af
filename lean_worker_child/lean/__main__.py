"""``python -m lean_worker_child.lean``: the Lean worker child (see ``worker.py``)."""

from . import fixtures_command  # noqa: F401  (registers lean.fixtures on the app)
from .worker import main

main()
