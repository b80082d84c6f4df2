"""Typed errors of the edge service.

`EdgeError` subclasses are what a client can see: each names its HTTP status and a stable `code`, and
`app.py` maps them to `{"error": {"code", "message"}}` responses in one place. `CloudFailure` subclasses
never reach a client: the service turns them into an edge fallback whose `reason` is the subclass's.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from modelpack.errors import ApiError


class EdgeError(ApiError):
    """Base class of what the edge answers with. `status` and `code` are part of the API contract: never
    change a published code."""


class ConfigurationError(EdgeError):
    """A bad or missing EDGE_* value; `key` names it. Raised at start-up, before anything is served."""

    code = "CONFIGURATION_ERROR"

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message, key=key)
        self.key = key


class BadRequest(EdgeError):
    status = 400
    code = "BAD_REQUEST"


class InvalidJson(BadRequest):
    code = "INVALID_JSON"


class EmptyText(BadRequest):
    code = "EMPTY_TEXT"


class TextTooLong(BadRequest):
    code = "TEXT_TOO_LONG"


class TooManyTexts(BadRequest):
    code = "TOO_MANY_TEXTS"


class InvalidText(BadRequest):
    """A text the tokenizer cannot read (an unpaired UTF-16 surrogate, which valid JSON can carry)."""

    code = "INVALID_TEXT"


class UnsupportedMediaType(EdgeError):
    """A JSON route got a body declared as something else: also what stops a cross-site `text/plain` POST."""

    status = 415
    code = "UNSUPPORTED_MEDIA_TYPE"


class PayloadTooLarge(EdgeError):
    status = 413
    code = "PAYLOAD_TOO_LARGE"


class Unauthorized(EdgeError):
    status = 401
    code = "UNAUTHORIZED"


class ClientUnauthorized(Unauthorized):
    """EDGE_CLIENT_KEYS is set and the request carries no key, or one not in it."""

    code = "CLIENT_UNAUTHORIZED"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="edge", ApiKey header="x-api-key"'}


class AdminDisabled(EdgeError):
    status = 403
    code = "ADMIN_DISABLED"


class CloudRouteForbidden(EdgeError):
    """`route: "cloud"` spends the tenant's budget on the caller's say-so: only an authenticated client may."""

    status = 403
    code = "CLOUD_ROUTE_FORBIDDEN"


class PriorityForbidden(EdgeError):
    """`priority: "high"` may spend the budget ahead of the pace: only an authenticated client may ask."""

    status = 403
    code = "PRIORITY_FORBIDDEN"


class NotFound(EdgeError):
    status = 404
    code = "NOT_FOUND"


class ModelNotFound(NotFound):
    code = "MODEL_NOT_FOUND"


class MethodNotAllowed(EdgeError):
    status = 405
    code = "METHOD_NOT_ALLOWED"


class ReloadRefused(EdgeError):
    """The new artifact failed verification (manifest, checksum, load or smoke inference); the old one serves."""

    status = 409
    code = "RELOAD_REFUSED"


class NothingToRollBack(EdgeError):
    """No *different* version in memory to go back to: none loaded before this one, or only the version
    serving (a reload of it does not rotate the history)."""

    status = 409
    code = "NO_PREVIOUS_MODEL"


class ProcessesDiverged(EdgeError):
    """With EDGE_PROCESSES > 1: this process did what was asked (reload, rollback), some sibling did not, so
    they may serve different versions now; `processes` says which serves what."""

    status = 502
    code = "PROCESSES_DIVERGED"


class Overloaded(EdgeError):
    """The batch queue is full: shed load now rather than answer late."""

    status = 503
    code = "OVERLOADED"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class NotReady(Overloaded):
    code = "NOT_READY"


class CloudFailure(Exception):
    """The cloud did not answer an escalation; `reason` is what the fallback result reports."""

    reason: ClassVar[str] = "cloud_error"


class CloudCallFailed(CloudFailure):
    """5xx, connection refused or reset, an unexpected 4xx or a response that breaks the contract (the
    cloud tier's own `CloudError` is the base of what it answers with; this is the edge's view of a call)."""


class CloudTimeout(CloudFailure):
    reason = "cloud_timeout"


class DeadlineExceeded(CloudFailure):
    """The request's own deadline left no (or no more) time for the cloud."""

    reason = "deadline"


class CircuitOpen(CloudFailure):
    reason = "circuit_open"


class CloudDisabled(CloudFailure):
    reason = "cloud_disabled"


class RateLimited(CloudFailure):
    """This client escalated more than its share (EDGE_CLIENT_ESCALATIONS_PER_S); the edge answers instead."""

    reason = "rate_limited"


class CloudBudgetExhausted(CloudFailure):
    """The cloud answered 429 BUDGET_EXHAUSTED (or the edge knows the budget is spent until `resets_at`)."""

    reason = "budget_exhausted"

    def __init__(self, message: str, *, resets_at: datetime | None) -> None:
        super().__init__(message)
        self.resets_at = resets_at


class ModelSourceUnavailable(EdgeError):
    """A model source (S3) could not be read: not the artifact's fault, so it is retried with backoff."""

    status = 503
    code = "MODEL_SOURCE_UNAVAILABLE"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, round(self.retry_after_s)))}
