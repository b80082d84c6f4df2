"""The cloud's error types: each a distinct, stable code and HTTP status."""

from __future__ import annotations

from cloud_functions.errors import (
    BadRequest,
    BudgetExhausted,
    BudgetStoreUnavailable,
    CloudError,
    ConfigurationError,
    IdempotencyConflict,
    InvalidText,
    ModelUnavailable,
    UnknownTenant,
)


def test_every_error_has_a_distinct_stable_code_and_status() -> None:
    expected = {
        BadRequest: (400, "BAD_REQUEST"),
        UnknownTenant: (403, "UNKNOWN_TENANT"),
        IdempotencyConflict: (409, "IDEMPOTENCY_KEY_REUSED"),
        InvalidText: (400, "INVALID_TEXT"),
        BudgetExhausted: (429, "BUDGET_EXHAUSTED"),
        ConfigurationError: (500, "CONFIGURATION_ERROR"),
        ModelUnavailable: (503, "MODEL_UNAVAILABLE"),
        BudgetStoreUnavailable: (503, "BUDGET_STORE_UNAVAILABLE"),
    }
    for error_type, (status, code) in expected.items():
        assert issubclass(error_type, CloudError)
        assert (error_type.status, error_type.code) == (status, code)
    assert ModelUnavailable("loading failed", model_uri="s3://b/k").body() == {
        "error": {"code": "MODEL_UNAVAILABLE", "message": "loading failed", "model_uri": "s3://b/k"}
    }
