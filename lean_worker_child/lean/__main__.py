"""``python -m lean_worker_child.lean``: the Lean worker child (see ``worker.py``)."""

from .worker import main

main()
