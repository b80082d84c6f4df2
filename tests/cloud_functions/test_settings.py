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
        ("INFERENCE_BACKEND", "gpu", "INFERENCE_BACKEND='gpu' must be one of litert, bedrock, openai"),
        ("LLM_INPUT_USD_PER_MTOK", "cheap", "LLM_INPUT_USD_PER_MTOK='cheap' is not a number"),
        ("LLM_INPUT_USD_PER_MTOK", "NaN", "LLM_INPUT_USD_PER_MTOK='NaN' must be >= 0"),
        ("AUTH_MODE", "cognito", "AUTH_MODE='cognito' must be one of apikey, iam"),
        ("BUDGET_UNIT_USD", "0", "BUDGET_UNIT_USD='0' must be > 0"),
        ("LLM_TIMEOUT_S", "0.5", "LLM_TIMEOUT_S='0.5' must be >= 1"),
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
        {"INFERENCE_BACKEND": "bedrock", "LLM_MODEL_ID": "anthropic.claude-3-haiku-20240307-v1:0",
         "LLM_INPUT_USD_PER_MTOK": "0.25", "TOP_K": "5"}
    )
    assert (options.backend, options.top_k) == ("bedrock", 5)
    assert options.llm_input_usd_per_mtok == Decimal("0.25")
    for env, key in [
        ({"INFERENCE_BACKEND": "gpu"}, "INFERENCE_BACKEND"),
        ({"INFERENCE_BACKEND": "bedrock"}, "LLM_MODEL_ID"),
        ({"INFERENCE_BACKEND": "openai", "OPENAI_BASE_URL": "https://api.openai.com/v1"}, "LLM_MODEL_ID"),
        ({"INFERENCE_BACKEND": "openai", "LLM_MODEL_ID": "gpt-4o-mini"}, "OPENAI_BASE_URL"),
        ({"INFERENCE_BACKEND": "openai", "LLM_MODEL_ID": "m", "OPENAI_BASE_URL": "api.openai.com"},
         "OPENAI_BASE_URL"),
        ({"INFERENCE_BACKEND": "openai", "LLM_MODEL_ID": "m", "OPENAI_BASE_URL": "https://h/v1",
          "OPENAI_API_KEY_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:k-AbCdEf",
          "OPENAI_API_KEY_PARAMETER": "/k"}, "OPENAI_API_KEY_PARAMETER"),
        ({"OPENAI_API_KEY_HEADER": "x-key"}, "OPENAI_API_KEY_HEADER"),
        ({"LLM_OUTPUT_USD_PER_MTOK": "-1"}, "LLM_OUTPUT_USD_PER_MTOK"),
        ({"LLM_OUTPUT_USD_PER_MTOK": "cheap"}, "LLM_OUTPUT_USD_PER_MTOK"),
        ({"TOP_K": "0"}, "TOP_K"),
        ({"LLM_MAX_ATTEMPTS": "0"}, "LLM_MAX_ATTEMPTS"),
    ]:
        with pytest.raises(ConfigurationError, match=key):
            InferenceSettings.from_env(env)


def test_the_openai_backend_reads_where_its_key_is_kept_never_the_key() -> None:
    options = InferenceSettings.from_env({
        "INFERENCE_BACKEND": "openai", "LLM_MODEL_ID": "gpt-4o-mini", "OPENAI_BASE_URL": "https://api.openai.com/v1/",
        "OPENAI_API_KEY_PARAMETER": "/edge/llm-key", "OPENAI_API_KEY_HEADER": "api-key", "LLM_TIMEOUT_S": "12.5",
    })

    assert options.openai_base_url == "https://api.openai.com/v1"  # the API's paths are appended to it
    assert (options.openai_api_key_parameter, options.openai_api_key_secret_arn) == ("/edge/llm-key", "")
    assert (options.openai_api_key_header, options.llm_timeout_s, options.llm_max_attempts) == ("api-key", 12.5, 2)
    assert not [name for name in InferenceSettings.__slots__ if name.endswith(("api_key", "_key_value"))]


def test_auth_mode_and_the_budget_unit_have_defaults() -> None:
    settings = Settings.from_env(_ENV)

    assert (settings.auth_mode, settings.budget_unit_usd) == ("apikey", Decimal("0.0001"))
    iam = Settings.from_env({**_ENV, "AUTH_MODE": "iam", "BUDGET_UNIT_USD": "0.001"})
    assert (iam.auth_mode, iam.budget_unit_usd) == ("iam", Decimal("0.001"))
