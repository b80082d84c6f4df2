"""The Lambda's configuration: one frozen object built once at cold start from the environment.

This is the only module of the package that reads `os.environ`. POWERTOOLS_* variables are read by
Powertools itself and are not repeated here.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from cloud_functions.errors import ConfigurationError
from modelpack import limits
from modelpack.env import EnvReader

_S3_URI = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(?:/(?P<key>.*))?$")
_URI_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://")
_HTTP_URL = re.compile(r"^https?://[^\s/?#]+[^\s?#]*$")

# Who the caller is: "apikey" - requestContext.identity.apiKeyId (API Gateway checked the key);
# "iam" - requestContext.identity.userArn (API Gateway checked the SigV4 signature). The handler trusts only
# the field its authorizer vouches for: template.yaml sets AUTH_MODE from the same AuthMode parameter that
# chooses the API's authorizer.
AUTH_MODES = ("apikey", "iam")


@dataclass(frozen=True, slots=True)
class Settings:
    budget_table: str
    idempotency_table: str
    default_daily_budget: int
    cost_per_request: int
    cost_per_text: int
    max_texts_per_call: int
    max_chars_per_text: int
    model_uri: str
    model_cache_dir: Path
    auth_mode: str = "apikey"
    # What one budget unit is worth when an LLM call's token cost is charged (rounded up to whole units).
    budget_unit_usd: Decimal = Decimal("0.0001")

    @property
    def model_is_remote(self) -> bool:
        return self.model_uri.startswith("s3://")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = _Env(os.environ if environ is None else environ)
        return cls(
            budget_table=env.text("BUDGET_TABLE"),
            idempotency_table=env.text("IDEMPOTENCY_TABLE"),
            default_daily_budget=env.integer("DEFAULT_DAILY_BUDGET", default=1000, minimum=0),
            cost_per_request=env.integer("COST_PER_REQUEST", default=1, minimum=0),
            cost_per_text=env.integer("COST_PER_TEXT", default=1, minimum=0),
            # The defaults are the limits the edge chunks its escalations to: written once, in modelpack.
            max_texts_per_call=env.integer("MAX_TEXTS_PER_CALL", default=limits.CLOUD_MAX_TEXTS, minimum=1),
            max_chars_per_text=env.integer(
                "MAX_CHARS_PER_TEXT", default=limits.CLOUD_MAX_TEXT_CHARS, minimum=1
            ),
            model_uri=env.model_uri("MODEL_URI"),
            model_cache_dir=Path(env.text("MODEL_CACHE_DIR", default="/tmp/models")),
            auth_mode=env.choice("AUTH_MODE", AUTH_MODES, default="apikey"),
            budget_unit_usd=env.positive_decimal("BUDGET_UNIT_USD", default=Decimal("0.0001")),
        )


BACKENDS = ("litert", "bedrock", "openai")
LLM_BACKENDS = ("bedrock", "openai")
API_KEY_HEADERS = ("authorization", "api-key")


@dataclass(frozen=True, slots=True)
class InferenceSettings:
    """Which backend answers, and how. Every value has a default, so the template need not set any: the
    default is the packaged teacher on LiteRT. An LLM backend (bedrock, openai) needs LLM_MODEL_ID; openai
    also OPENAI_BASE_URL and, unless the server takes no key, where its key is kept (a Secrets Manager
    secret or an SSM SecureString parameter: the key itself is never an environment value). Prices are USD
    per million tokens (the unit of the providers' price lists); the budget is charged what a call cost."""

    backend: str = "litert"
    top_k: int = 3
    llm_model_id: str = ""
    llm_input_usd_per_mtok: Decimal = Decimal(0)
    llm_output_usd_per_mtok: Decimal = Decimal(0)
    llm_timeout_s: float = 20.0  # every attempt of one LLM call, within the function's 25 s
    llm_max_attempts: int = 2
    openai_base_url: str = ""
    openai_api_key_secret_arn: str = ""
    openai_api_key_parameter: str = ""
    openai_api_key_header: str = "authorization"
    openai_logprobs: bool = True  # ask for log-probabilities (turned off by itself if the server refuses)
    secret_ttl_s: float = 300.0  # how long a fetched API key is used before it is read again

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> InferenceSettings:
        env = _Env(os.environ if environ is None else environ)
        backend = env.choice("INFERENCE_BACKEND", BACKENDS, default="litert")
        llm = backend in LLM_BACKENDS
        openai = backend == "openai"
        secret_arn = env.text("OPENAI_API_KEY_SECRET_ARN", default="")
        parameter = env.text("OPENAI_API_KEY_PARAMETER", default="")
        timeout_s = env.seconds("LLM_TIMEOUT_S", default=20.0, minimum=1.0)
        attempts = env.integer("LLM_MAX_ATTEMPTS", default=2, minimum=1)
        if llm and timeout_s / attempts < 3:
            raise env.error(f"LLM_TIMEOUT_S={timeout_s:g} leaves under 3 s for each of LLM_MAX_ATTEMPTS={attempts}",
                            "LLM_TIMEOUT_S")
        if openai and secret_arn and parameter:
            raise env.error("set one of OPENAI_API_KEY_SECRET_ARN and OPENAI_API_KEY_PARAMETER, not both",
                            "OPENAI_API_KEY_PARAMETER")
        return cls(
            backend=backend,
            top_k=env.integer("TOP_K", default=3, minimum=1),
            llm_model_id=env.text("LLM_MODEL_ID", default=None if llm else ""),
            llm_input_usd_per_mtok=env.decimal("LLM_INPUT_USD_PER_MTOK"),
            llm_output_usd_per_mtok=env.decimal("LLM_OUTPUT_USD_PER_MTOK"),
            llm_timeout_s=timeout_s,
            llm_max_attempts=attempts,
            openai_base_url=env.http_url("OPENAI_BASE_URL") if openai else env.text("OPENAI_BASE_URL", ""),
            openai_api_key_secret_arn=secret_arn,
            openai_api_key_parameter=parameter,
            openai_api_key_header=env.choice("OPENAI_API_KEY_HEADER", API_KEY_HEADERS, default="authorization"),
            openai_logprobs=env.boolean("OPENAI_LOGPROBS", True),
            secret_ttl_s=env.seconds("SECRET_TTL_S", default=300.0, minimum=0.0),
        )


class _Env(EnvReader):
    """The shared reader, plus the cloud's own bounds (worded `must be >= N`) and its model URI rule."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        super().__init__(environ, ConfigurationError)

    def decimal(self, key: str) -> Decimal:
        value = self.decimal_or_none(key)
        if value is None:
            return Decimal(0)
        if not value.is_finite() or value < 0:
            raise self.bad(key, self.raw(key), "must be >= 0")
        return value

    def positive_decimal(self, key: str, *, default: Decimal) -> Decimal:
        value = self.decimal_or_none(key)
        if value is None:
            return default
        if not value.is_finite() or value <= 0:
            raise self.bad(key, self.raw(key), "must be > 0")
        return value

    def seconds(self, key: str, *, default: float, minimum: float) -> float:
        value = self.float_or_none(key)
        if value is None:
            return default
        if not math.isfinite(value) or value < minimum:
            raise self.bad(key, self.raw(key), f"must be >= {minimum:g}")
        return value

    def http_url(self, key: str) -> str:
        value = self.text(key)
        if not _HTTP_URL.match(value):
            raise self.bad(key, value, "is not an http(s):// URL")
        return value.rstrip("/")

    def integer(self, key: str, *, default: int, minimum: int) -> int:
        value = self.int_or_none(key)
        if value is None:
            return default
        if value < minimum:
            raise self.error(f"environment variable {key}={value} must be >= {minimum}", key)
        return value

    def model_uri(self, key: str) -> str:
        value = self.text(key)
        if value.startswith("s3://"):
            match = _S3_URI.match(value)
            if match is None or not match["key"]:
                raise self.bad(key, value, "is not s3://<bucket>/<key>")
        elif _URI_SCHEME.match(value):
            raise self.error(
                f"environment variable {key}={value!r}: only s3:// URIs or local paths are supported", key
            )
        return value
