"""The first-party Lean capability (child side): the only part of lean-worker that runs Lean.

For now it provisions the test toolchain (``provision``); sessions and check commands come
with the real-Lean issue.
"""
