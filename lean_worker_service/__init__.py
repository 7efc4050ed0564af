"""An HTTP service for checking Lean: Kimina Lean Server's routes, a native ``/v1`` API,
health and Prometheus metrics, on a ``Pool`` (or a Ray ``ClusterPool``).

Run it with ``lean-worker serve`` (needs ``pip install 'lean-worker[service]'``); see
``recipes/06-http-service.md`` and ``architecture/110-service.md``. The native API's wire
types are in ``lean_worker_service.wire`` (msgspec only). From Python::

    async with Backend(ServiceOptions(pool=VerifyOptions(workers=4))) as backend:
        app = create_app(options, backend)     # any ASGI server can run it

The core (``lean_worker``) never imports this package.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "API_KEY_ENV",
    "Backend",
    "BackendStats",
    "RequestDeadlineExceeded",
    "ServiceError",
    "ServiceOptionError",
    "ServiceOptions",
    "create_app",
    "serve",
]

# Imported on first use, so that ``lean_worker_service.wire`` (what a client needs) does
# not pull in Starlette, uvicorn and the Prometheus client.
_WHERE = {
    "API_KEY_ENV": "._options", "ServiceOptions": "._options",
    "Backend": "._backend", "BackendStats": "._backend",
    "RequestDeadlineExceeded": "._errors", "ServiceError": "._errors", "ServiceOptionError": "._errors",
    "create_app": "._app", "serve": "._serve",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name], __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
