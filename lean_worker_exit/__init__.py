"""How a process ended: stable cause codes, the classification of an exit status, and the
cgroup's OOM-kill evidence.

Shared by the parent (``lean_worker``, for its child) and the child's capabilities (the
Lean engine, for the Lean processes it runs), so both report an end the same way. It reads
signals and ``/proc``/``/sys`` and so stays out of ``lean_worker_protocol``, which is pure
types and codec; it imports none of the other three packages.
"""

from ._cause import ExitCause, classify, signal_name
from ._cgroup import oom_kill_count

__all__ = ["ExitCause", "classify", "oom_kill_count", "signal_name"]
