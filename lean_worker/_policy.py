"""The restart policy's decisions: pure functions of the facts and a clock reading.

The worker gathers the facts (requests and imports served by the current child, when it
last answered, the RSS reading, whether a lease holds it) and applies what these decide;
nothing here touches a process. See ``architecture/30-restart-policy.md``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Set

from ._config import RestartPolicy, RestartReason
from ._errors import RestartLimitExceeded
from ._exit import ExitInfo


def idle_due(policy: RestartPolicy, *, requests: int, last_activity: float, now: float, held: bool) -> bool:
    """The one idle rule: a child that has served and then sat idle for ``idle_restart_s``
    is retired. A fresh child is as good as its replacement, and a worker held by a lease
    is never idle."""
    limit = policy.idle_restart_s
    return limit is not None and not held and requests > 0 and now - last_activity >= limit


def planned_reason(
    policy: RestartPolicy,
    *,
    requests: int,
    imports: int,
    import_like: bool,
    keys: Set[Hashable] | None,
    warm_keys: Set[Hashable],
    idle: bool,
) -> RestartReason | None:
    """The planned restart due before a request, except the RSS ceiling (``rss_reason``),
    which needs a measurement. ``keys``: the session keys the request needs (``None``:
    unknown, so an import-like request counts as an import)."""
    if policy.max_requests is not None and requests >= policy.max_requests:
        return RestartReason.MAX_REQUESTS
    if (
        import_like
        and policy.max_imports is not None
        and imports >= policy.max_imports
        and (keys is None or not keys <= warm_keys)
    ):
        return RestartReason.MAX_IMPORTS
    if idle:
        return RestartReason.IDLE
    return None


def rss_reason(*, over_ceiling: bool, requests: int, born_over_ceiling: bool) -> RestartReason | None:
    """Cycle a child over the RSS ceiling, unless cycling cannot help: a child that has not
    served yet, or was already over the ceiling right after its handshake (its replacement
    would be too, and the worker would loop)."""
    if over_ceiling and requests and not born_over_ceiling:
        return RestartReason.RSS_CEILING
    return None


class RestartWindow:
    """The restart-intensity limit: at most ``max_restarts`` unplanned child ends in
    ``restart_window_s``, counted since the last request a child answered.

    A child that answers is not in a crash loop, so an answer clears the count: a batch
    whose items crash the child now and then keeps its worker, while children that die
    with no answer in between (at start-up, or on every request) are stopped."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self._ends: deque[float] = deque()

    def record(self, now: float) -> None:
        """An unplanned end at ``now``."""
        self._ends.append(now)

    def answered(self) -> None:
        """A child answered a request."""
        self._ends.clear()

    def _recent(self, now: float) -> deque[float]:
        window = self.policy.restart_window_s
        while self._ends and now - self._ends[0] > window:
            self._ends.popleft()
        return self._ends

    def blocked_s(self, now: float) -> float:
        """Seconds until a child may start again (0: it may now)."""
        recent = self._recent(now)
        over = len(recent) - self.policy.max_restarts
        if over <= 0:
            return 0.0
        # Allowed again once the oldest ``over`` ends have left the window.
        return max(0.0, recent[over - 1] + self.policy.restart_window_s - now)

    def error(self, now: float, name: str, last_exit: ExitInfo | None) -> RestartLimitExceeded | None:
        """The error a start at ``now`` meets, or ``None`` when it may start."""
        recent = self._recent(now)
        if len(recent) <= self.policy.max_restarts:
            return None
        window = self.policy.restart_window_s
        cause = last_exit.cause.value if last_exit is not None else None
        return RestartLimitExceeded(
            f"worker {name} restarted too often; unplanned_exits={len(recent)} window_s={window} "
            f"max_restarts={self.policy.max_restarts} last_cause={cause} "
            f"retry_after_s={self.blocked_s(now):.1f}: fix the crash cause or wait",
            restarts=len(recent),
            window_s=window,
            last_exit=last_exit,
        )
