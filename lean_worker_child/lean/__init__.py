"""The first-party Lean capability (child side): the only part of lean-worker that runs Lean.

- ``provision``: the test toolchain built from the PyPI wheel;
- ``toolchain``: which Lean to use, and a report of it;
- ``fixtures``: our prelude library and the heavy header, compiled by content hash;
- ``lsp`` and ``engine``: the warm engine (``lean --worker`` sessions) and the cold one;
- ``worker``: the worker child, ``python -m lean_worker_child.lean``.
"""
