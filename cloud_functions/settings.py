"""The Lambda's configuration: one frozen object built once at cold start from the environment.

This is the only module of the package that reads `os.environ`. POWERTOOLS_* variables are read by
Powertools itself and are not repeated here.
"""

from __future__ import annotations

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
        )


BACKENDS = ("litert", "bedrock")


@dataclass(frozen=True, slots=True)
class InferenceSettings:
    """Which backend answers, and how. Every value has a default, so the template need not set any:
    the default is the packaged teacher on LiteRT. Bedrock prices are USD per million tokens (the unit of
    the Bedrock price list); they only feed the reported `usage.cost_usd`, not the budget units."""

    backend: str = "litert"
    top_k: int = 3
    bedrock_model_id: str = ""
    bedrock_input_usd_per_mtok: Decimal = Decimal(0)
    bedrock_output_usd_per_mtok: Decimal = Decimal(0)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> InferenceSettings:
        env = _Env(os.environ if environ is None else environ)
        backend = env.choice("INFERENCE_BACKEND", BACKENDS, default="litert")
        return cls(
            backend=backend,
            top_k=env.integer("TOP_K", default=3, minimum=1),
            bedrock_model_id=env.text("BEDROCK_MODEL_ID", default=None if backend == "bedrock" else ""),
            bedrock_input_usd_per_mtok=env.decimal("BEDROCK_INPUT_USD_PER_MTOK"),
            bedrock_output_usd_per_mtok=env.decimal("BEDROCK_OUTPUT_USD_PER_MTOK"),
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
