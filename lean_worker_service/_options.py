"""What a service runs on and what it admits. Every value is checked here."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from lean_worker._verify import VerifyOptions

from ._errors import ServiceOptionError

API_KEY_ENV = "LEAN_WORKER_API_KEY"
"""The environment variable the API key is read from when no key is given."""
MIB = 1024 * 1024


def _positive(name: str, value: object, *, integer: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value > 0):
        raise ServiceOptionError(name, value, "a finite number > 0")
    if integer and not isinstance(value, int):
        raise ServiceOptionError(name, value, "an integer >= 1")


@dataclass(frozen=True)
class ServiceOptions:
    """How ``lean-worker serve`` runs.

    ``pool`` says what checks run on (the same options as ``verify``: workers, toolchain,
    search path, fixtures, engine, restart policy, ``ray``); its ``timeout_s`` is the
    per-snippet timeout used when a request gives none (or 0). Its ``sandbox`` defaults to
    ``required`` here: a service's snippets come from anyone who can reach it, so it does
    not start where the sandbox cannot hold (``SandboxUnavailable`` says how to fix that)."""

    pool: VerifyOptions = field(default_factory=lambda: VerifyOptions(sandbox="required"))
    host: str = "127.0.0.1"
    port: int = 12332
    """Kimina's default port; 0 picks a free one (the listening line says which)."""
    api_key: str | None = None
    """When set, every route but ``/``, ``/health`` needs ``Authorization: Bearer KEY``."""
    max_timeout_s: float = 300.0
    """The largest per-snippet timeout a request may ask for (Kimina's ``/verify`` default);
    a larger one is lowered to it."""
    request_deadline_s: float = 500.0
    """A request answers within this: snippets not finished by then get a ``timed out``
    error. Under the 600 s read timeout of ``kimina-client``."""
    max_body_bytes: int = 16 * MIB
    max_snippets: int = 1024
    """Snippets per request; more is refused with 413."""
    queue_limit: int | None = None
    """Snippets admitted (running or waiting for a worker) over all requests; a request that
    would go past it gets 429 with ``Retry-After``. Default: 32 per worker, at least 64."""
    access_log: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.pool, VerifyOptions):
            raise ServiceOptionError("pool", self.pool, "a VerifyOptions")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ServiceOptionError("port", self.port, "an integer in 0..65535")
        if not isinstance(self.host, str) or not self.host:
            raise ServiceOptionError("host", self.host, "a host name or address")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key.strip()):
            raise ServiceOptionError("api_key", "<hidden>", "a non-empty string or None")
        for name in ("max_timeout_s", "request_deadline_s"):
            _positive(name, getattr(self, name))
        for name in ("max_body_bytes", "max_snippets"):
            _positive(name, getattr(self, name), integer=True)
        if self.queue_limit is not None:
            _positive("queue_limit", self.queue_limit, integer=True)

    def admitted_limit(self, workers: int) -> int:
        """Snippets admitted at once (``queue_limit``, or its default for ``workers``)."""
        return self.queue_limit if self.queue_limit is not None else max(64, 32 * workers)

    @classmethod
    def key_from_env(cls) -> str | None:
        key = os.environ.get(API_KEY_ENV, "").strip()
        return key or None
