"""The Lambda's AWS clients, made in this one place from one table of timeouts and retries.

botocore's defaults wait 60 s to connect and 60 s per read, with legacy retries: one stalled call would
outlast the function (`Timeout: 25` in template.yaml) and API Gateway's 29 s integration limit. Every
client here fails in seconds instead, with a bounded number of attempts (`total_max_attempts` counts the
first try; "standard" mode backs off with jitter and retries throttling and transient errors only).

    dynamodb         connect 2 s, read 3 s, 3 attempts. Budget charges, refunds and Powertools'
                     idempotency records: single-item writes that answer in milliseconds, made on every
                     request, so a budget write must not eat the function's 25 s (worst case ~15 s).
    s3               connect 3 s, read 10 s, 3 attempts. The model at a cold start: manifest, pointer and
                     files of up to ~90 MB. `read_timeout` bounds each socket read, not the download, so
                     it is longer than DynamoDB's to ride out a slow first byte, yet short enough that a
                     stalled stream fails the cold start (the next request retries it) instead of
                     hanging until the Lambda timeout.
    bedrock-runtime  connect 2 s, and every attempt within the LLM's time (LLM_TIMEOUT_S, 20 s; 2
                     attempts: read 8 s each). A Converse call generates the whole answer before it
                     replies, so the read is long; all attempts together must end inside the function's
                     25 s, or the caller has API Gateway's 504 while the charge stands. One retry only: a
                     throttled model rarely recovers within a request, and the edge retries with the same
                     idempotency key.
    secretsmanager,  connect 2 s, read 3 s, 3 attempts. The OpenAI-compatible backend's API key, read at
    ssm              the first call and again once its cache expires (SECRET_TTL_S).

Callers that are given a client (tests, the local API) use it; these are made only when none is. boto3 is
imported inside the functions, so importing this module opens and loads nothing.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

CLIENT_CONFIGS: MappingProxyType[str, dict[str, Any]] = MappingProxyType(
    {
        "dynamodb": {"connect_timeout": 2, "read_timeout": 3,
                     "retries": {"mode": "standard", "total_max_attempts": 3}},
        "s3": {"connect_timeout": 3, "read_timeout": 10,
               "retries": {"mode": "standard", "total_max_attempts": 3}},
        "secretsmanager": {"connect_timeout": 2, "read_timeout": 3,
                           "retries": {"mode": "standard", "total_max_attempts": 3}},
        "ssm": {"connect_timeout": 2, "read_timeout": 3,
                "retries": {"mode": "standard", "total_max_attempts": 3}},
    }
)
BEDROCK_CONNECT_TIMEOUT_S = 2


def dynamodb() -> Any:
    """The budget ledger's and Powertools idempotency's DynamoDB client."""
    return _client("dynamodb")


def s3() -> Any:
    """The model store's S3 client."""
    return _client("s3")


def bedrock_runtime(*, timeout_s: float = 20.0, attempts: int = 2) -> Any:
    """The Bedrock backend's client (Converse): `attempts` attempts (botocore retries timeouts, throttling
    and 5xx) that all end within `timeout_s` (connect + read each)."""
    return _client("bedrock-runtime", bedrock_config(timeout_s=timeout_s, attempts=attempts))


def bedrock_config(*, timeout_s: float, attempts: int) -> dict[str, Any]:
    read = timeout_s / attempts - BEDROCK_CONNECT_TIMEOUT_S
    if read < 1:
        raise ValueError(f"{timeout_s} s cannot hold {attempts} Bedrock attempts")
    return {"connect_timeout": BEDROCK_CONNECT_TIMEOUT_S, "read_timeout": read,
            "retries": {"mode": "standard", "total_max_attempts": attempts}}


def secretsmanager() -> Any:
    """Where the OpenAI-compatible backend's API key may be kept."""
    return _client("secretsmanager")


def ssm() -> Any:
    """Where the OpenAI-compatible backend's API key may be kept (a SecureString parameter)."""
    return _client("ssm")


def _client(service: str, config: dict[str, Any] | None = None) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(service, config=Config(**(config or CLIENT_CONFIGS[service])))
