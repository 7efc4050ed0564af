"""The errors of the service. Importing this module imports no web framework.

    WorkerError
    └── ServiceError                 service.error
        ├── ServiceOptionError       service.bad_option: a ServiceOptions value out of range
        └── RequestDeadlineExceeded  service.deadline: an item unfinished at its request's deadline

What a client sees is an HTTP status and a JSON body ``{"error": {"code", "message"},
"detail"}`` (``detail`` repeats the message for clients written against FastAPI):

    400 service.bad_json           the body is not JSON
    401 service.unauthorized       a key is required and the request did not carry it
    404 service.not_found          no such route (405 service.method_not_allowed)
    413 service.body_too_large     the body is over ``max_body_bytes``
    413 service.too_many_snippets  more snippets than ``max_snippets``
    422 service.bad_request        the JSON does not have the route's shape (the message
                                   says which field); for a session route also the Lean
                                   worker's own codes (lean.state_invalid, lean.bad_header)
    429 service.queue_full         admitting the request would go past ``queue_limit``
                                   (``Retry-After`` says when to try again)
    503 service.unavailable        the pool cannot serve (``/health`` says why)

A snippet that fails inside a batch is never one of these: it is that item's own error.
"""

from __future__ import annotations

from collections.abc import Mapping

from lean_worker._errors import WorkerError


class ServiceError(WorkerError):
    """Base of the errors of ``lean_worker_service``."""

    code = "service.error"


class ServiceOptionError(ServiceError, ValueError):
    """A ``ServiceOptions`` value out of range (``option``, ``value``)."""

    code = "service.bad_option"

    def __init__(self, option: str, value: object, expected: str) -> None:
        self.option = option
        self.value = value
        super().__init__(f"service option {option} must be {expected}; option={option} value={value!r}")


class HttpError(Exception):
    """Answered as ``status`` with the JSON error body (raised inside a route)."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


class RequestDeadlineExceeded(ServiceError):
    """A snippet that had not finished when its request's deadline passed (an item's error,
    never an HTTP status): ``deadline_s``."""

    code = "service.deadline"

    def __init__(self, deadline_s: float) -> None:
        self.deadline_s = deadline_s
        super().__init__(
            f"timed out: the request's deadline passed before this snippet finished; deadline_s={deadline_s:g}"
        )
