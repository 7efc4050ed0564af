"""Worker children used by the tests (each a ``python -m tests.children.<name>`` entrypoint)."""
