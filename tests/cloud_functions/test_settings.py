"""The Lambda's settings: defaults, every variable read, and a bad value failing fast naming its key."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from cloud_functions.errors import ConfigurationError
from cloud_functions.settings import InferenceSettings, Settings
from modelpack import limits

_ENV = {
    "BUDGET_TABLE": "budgets",
    "IDEMPOTENCY_TABLE": "idempotency",
    "MODEL_URI": "s3://models-bucket/teacher/v1/",
}


def test_settings_have_defaults_for_everything_but_tables_and_model() -> None:
    settings = Settings.from_env(_ENV)

    assert settings.budget_table == "budgets"
    assert settings.idempotency_table == "idempotency"
    assert (settings.default_daily_budget, settings.cost_per_request, settings.cost_per_text) == (1000, 1, 1)
    assert (settings.max_texts_per_call, settings.max_chars_per_text) == (32, 512)
    assert settings.model_cache_dir == Path("/tmp/models")
    assert settings.model_is_remote


def test_the_text_limits_default_to_the_shared_cloud_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """modelpack.limits is the one place the limits are written: the edge chunks to the same numbers."""
    monkeypatch.setattr(limits, "CLOUD_MAX_TEXTS", 7)
    monkeypatch.setattr(limits, "CLOUD_MAX_TEXT_CHARS", 99)

    settings = Settings.from_env(_ENV)

    assert (settings.max_texts_per_call, settings.max_chars_per_text) == (7, 99)


def test_settings_read_every_value_from_the_environment() -> None:
    env = {
        **_ENV,
        "DEFAULT_DAILY_BUDGET": "50",
        "COST_PER_REQUEST": "0",
        "COST_PER_TEXT": "4",
        "MAX_TEXTS_PER_CALL": "8",
        "MAX_CHARS_PER_TEXT": "256",
        "MODEL_URI": "/opt/models/teacher",
        "MODEL_CACHE_DIR": "/tmp/cache",
    }

    settings = Settings.from_env(env)

    assert (settings.default_daily_budget, settings.cost_per_request, settings.cost_per_text) == (50, 0, 4)
    assert (settings.max_texts_per_call, settings.max_chars_per_text) == (8, 256)
    assert settings.model_uri == "/opt/models/teacher" and not settings.model_is_remote
    assert settings.model_cache_dir == Path("/tmp/cache")
    with pytest.raises(AttributeError):
        settings.budget_table = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("BUDGET_TABLE", ""),
        ("IDEMPOTENCY_TABLE", "  "),
        ("MODEL_URI", ""),
        ("MODEL_URI", "s3://bucket-only"),
        ("MODEL_URI", "https://example.com/model"),
        ("DEFAULT_DAILY_BUDGET", "ten"),
        ("COST_PER_TEXT", "-1"),
        ("MAX_TEXTS_PER_CALL", "0"),
    ],
)
def test_a_bad_setting_fails_fast_naming_its_key(key: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({**_ENV, key: value})

    assert key in str(caught.value)
    assert caught.value.details["key"] == key



@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("BUDGET_TABLE", "", "BUDGET_TABLE is missing or empty"),
        ("COST_PER_TEXT", "-1", "COST_PER_TEXT=-1 must be >= 0"),
        ("COST_PER_TEXT", " 2x ", "COST_PER_TEXT='2x' is not an integer"),
        ("MODEL_URI", "s3://bucket", "MODEL_URI='s3://bucket' is not s3://<bucket>/<key>"),
        ("MODEL_URI", "ftp://h/m", "MODEL_URI='ftp://h/m': only s3:// URIs or local paths are supported"),
        ("INFERENCE_BACKEND", "gpu", "INFERENCE_BACKEND='gpu' must be one of litert, bedrock"),
        ("BEDROCK_INPUT_USD_PER_MTOK", "cheap", "BEDROCK_INPUT_USD_PER_MTOK='cheap' is not a number"),
        ("BEDROCK_INPUT_USD_PER_MTOK", "NaN", "BEDROCK_INPUT_USD_PER_MTOK='NaN' must be >= 0"),
    ],
)
def test_a_bad_setting_says_what_is_wrong_with_it(key: str, value: str, message: str) -> None:
    """Operators read these in the Lambda's init log: the wording is part of the deployment's interface."""
    env = {**_ENV, key: value}
    with pytest.raises(ConfigurationError) as caught:  # each key is read by one of the two
        Settings.from_env(env)
        InferenceSettings.from_env(env)

    assert caught.value.message == f"environment variable {message}"


def test_settings_choose_the_backend_and_fail_fast_on_a_bad_choice() -> None:
    assert InferenceSettings.from_env({}) == InferenceSettings()
    options = InferenceSettings.from_env(
        {"INFERENCE_BACKEND": "bedrock", "BEDROCK_MODEL_ID": "anthropic.claude-3-haiku-20240307-v1:0",
         "BEDROCK_INPUT_USD_PER_MTOK": "0.25", "TOP_K": "5"}
    )
    assert (options.backend, options.top_k) == ("bedrock", 5)
    assert options.bedrock_input_usd_per_mtok == Decimal("0.25")
    for env, key in [
        ({"INFERENCE_BACKEND": "gpu"}, "INFERENCE_BACKEND"),
        ({"INFERENCE_BACKEND": "bedrock"}, "BEDROCK_MODEL_ID"),
        ({"BEDROCK_OUTPUT_USD_PER_MTOK": "-1"}, "BEDROCK_OUTPUT_USD_PER_MTOK"),
        ({"BEDROCK_OUTPUT_USD_PER_MTOK": "cheap"}, "BEDROCK_OUTPUT_USD_PER_MTOK"),
        ({"TOP_K": "0"}, "TOP_K"),
    ]:
        with pytest.raises(ConfigurationError, match=key):
            InferenceSettings.from_env(env)
