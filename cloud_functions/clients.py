"""The Lambda's AWS clients, made in this one place from one table of timeouts and retries.

botocore's defaults wait 60 s to connect and 60 s per read, with legacy retries: one stalled call would
outlast the function (`Timeout: 30` in template.yaml) and API Gateway's 29 s integration limit. Every
client here fails in seconds instead, with a bounded number of attempts (`total_max_attempts` counts the
first try; "standard" mode backs off with jitter and retries throttling and transient errors only).

    dynamodb         connect 2 s, read 3 s, 3 attempts. Budget charges, refunds and Powertools'
                     idempotency records: single-item writes that answer in milliseconds, made on every
                     request, so a budget write must not eat the function's 30 s (worst case ~15 s).
    s3               connect 3 s, read 10 s, 3 attempts. The model at a cold start: manifest, pointer and
                     files of up to ~90 MB. `read_timeout` bounds each socket read, not the download, so
                     it is longer than DynamoDB's to ride out a slow first byte, yet short enough that a
                     stalled stream fails the cold start (the next request retries it) instead of
                     hanging until the Lambda timeout.
    bedrock-runtime  connect 3 s, read 20 s, 2 attempts. A Converse call generates the whole answer
                     before it replies, so it gets the longest read. One attempt fits inside API
                     Gateway's 29 s; a retry after a timed-out first attempt does not (the caller sees a
                     504 first), so it is there for quick failures. One retry only: a throttled model
                     rarely recovers within a request, and the edge retries with the same idempotency key.

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
        "bedrock-runtime": {"connect_timeout": 3, "read_timeout": 20,
                            "retries": {"mode": "standard", "total_max_attempts": 2}},
    }
)


def dynamodb() -> Any:
    """The budget ledger's and Powertools idempotency's DynamoDB client."""
    return _client("dynamodb")


def s3() -> Any:
    """The model store's S3 client."""
    return _client("s3")


def bedrock_runtime() -> Any:
    """The Bedrock backend's client (Converse)."""
    return _client("bedrock-runtime")


def _client(service: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(service, config=Config(**CLIENT_CONFIGS[service]))
