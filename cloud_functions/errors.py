"""Typed errors of the cloud tier.

Every error a client can see is a `CloudError` subclass that names its HTTP status and a stable,
machine-readable `code`. The handler maps them to responses in one place (`CloudError.body()` /
`CloudError.headers()`, from `modelpack.errors.ApiError`); anything else is a 500 with no details leaked.
"""

from __future__ import annotations

import math
from datetime import datetime

from modelpack.cloud_api import ErrorCode, RequestRefused
from modelpack.errors import ApiError


class CloudError(ApiError):
    """Base class of the cloud tier's errors. `status` and `code` (`modelpack.cloud_api.ErrorCode`) are part
    of the API contract: never change a published code."""


class BadRequest(CloudError):
    status = 400
    code = ErrorCode.BAD_REQUEST


class InvalidJson(BadRequest):
    """The body is not a JSON object."""

    code = ErrorCode.INVALID_JSON


class InvalidRequest(BadRequest):
    """A field is missing, of the wrong type, or unknown; `field` names it (e.g. `texts[3]`)."""

    code = ErrorCode.INVALID_REQUEST


class TooManyTexts(BadRequest):
    """More texts than MAX_TEXTS_PER_CALL: split the batch."""

    code = ErrorCode.TOO_MANY_TEXTS


class TextTooLong(BadRequest):
    """A text is longer than MAX_CHARS_PER_TEXT characters: shorten it."""

    code = ErrorCode.TEXT_TOO_LONG


class InvalidText(BadRequest):
    """A text that is valid JSON but not Unicode text (an unpaired UTF-16 surrogate such as "\\ud800"): the
    tokenizer cannot read it. `field` and `index` name it, as the edge's INVALID_TEXT does."""

    code = ErrorCode.INVALID_TEXT


class InvalidIdempotencyKey(BadRequest):
    code = ErrorCode.INVALID_IDEMPOTENCY_KEY


class NotFound(CloudError):
    status = 404
    code = ErrorCode.NOT_FOUND


class UnknownTenant(CloudError):
    status = 403
    code = ErrorCode.UNKNOWN_TENANT


class IdempotencyConflict(CloudError):
    """The same idempotency key was reused for a different request: other texts (Powertools' record, or
    the ledger's charge record, which remembers the texts' digest for two days) or another cost."""

    status = 409
    code = ErrorCode.IDEMPOTENCY_KEY_REUSED


class IdempotencyInProgress(CloudError):
    """A request with the same idempotency key is still running: retry after it has finished."""

    status = 409
    code = ErrorCode.IDEMPOTENCY_IN_PROGRESS

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class BudgetExhausted(CloudError):
    """The tenant's daily budget cannot cover this request; it refills at `resets_at` (next UTC midnight)."""

    status = 429
    code = ErrorCode.BUDGET_EXHAUSTED

    def __init__(self, tenant: str, *, requested: int, resets_at: datetime, now: datetime) -> None:
        super().__init__(
            f"daily budget of tenant {tenant!r} cannot cover {requested} unit(s)",
            tenant=tenant,
            requested=requested,
            resets_at=resets_at.isoformat(),
        )
        self.tenant = tenant
        self.requested = requested
        self.resets_at = resets_at
        self.retry_after_s = max(1, math.ceil((resets_at - now).total_seconds()))

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class ConfigurationError(CloudError):
    """The deployment is misconfigured (bad or missing environment value). The message names the key."""

    status = 500
    code = ErrorCode.CONFIGURATION_ERROR


class ModelUnavailable(CloudError):
    status = 503
    code = ErrorCode.MODEL_UNAVAILABLE


class BudgetStoreUnavailable(CloudError):
    """The budget table could not be reached or kept conflicting.

    The outcome of the charge is unknown to the caller: a retry with the same idempotency key is safe.
    """

    status = 503
    code = ErrorCode.BUDGET_STORE_UNAVAILABLE

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class IdempotencyStoreUnavailable(CloudError):
    """The idempotency table could not be read or written; a retry with the same key is safe."""

    status = 503
    code = ErrorCode.IDEMPOTENCY_STORE_UNAVAILABLE

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


_REFUSALS: dict[str, type[BadRequest]] = {
    cls.code: cls for cls in (InvalidJson, InvalidRequest, TooManyTexts, TextTooLong, InvalidText)
}


def refused(refusal: RequestRefused) -> BadRequest:
    """The typed error of a request `modelpack.cloud_api` refused (same code, same details)."""
    return _REFUSALS.get(refusal.code, BadRequest)(refusal.message, **refusal.details)
