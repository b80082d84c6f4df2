"""An API key kept in AWS Secrets Manager or an SSM SecureString parameter, read when first needed and
cached for a while.

The key is never an environment value or a template parameter (anyone allowed to describe the function or
the stack could read it there): the function is granted read access to that one secret or parameter
(template.yaml), and reads it at the first LLM call. It is kept for `ttl_s` (SECRET_TTL_S, 300 s), so a
rotated key is picked up within minutes without a read per request; a caller that is refused by the API
(401/403) calls `invalidate` and reads it again at once. Failures are `BackendError`s naming where the key
lives, never the key.

A secret's value is the key itself, or a JSON object with an "api_key" field (how the console's "other type
of secret" stores key/value pairs).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from cloud_functions.inference import BackendError

Fetch = Callable[[], str]


class CachedSecret:
    """A secret string from `fetch`, cached for `ttl_s` seconds (0: read on every call)."""

    def __init__(self, fetch: Fetch, *, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self._ttl_s = ttl_s
        self._clock = clock
        self._value: str | None = None
        self._fetched_at = 0.0
        self._lock = threading.Lock()

    def get(self) -> str:
        with self._lock:
            now = self._clock()
            if self._value is None or now - self._fetched_at >= self._ttl_s:
                self._value, self._fetched_at = self._fetch(), now
            return self._value

    def invalidate(self) -> None:
        with self._lock:
            self._value = None


def from_secrets_manager(client: Any, secret_id: str) -> Fetch:
    def fetch() -> str:
        where = f"Secrets Manager secret {secret_id}"
        response = _read(where, lambda: client.get_secret_value(SecretId=secret_id))
        return _key_in(response.get("SecretString"), where)

    return fetch


def from_ssm(client: Any, name: str) -> Fetch:
    def fetch() -> str:
        where = f"SSM parameter {name}"
        response = _read(where, lambda: client.get_parameter(Name=name, WithDecryption=True))
        return _key_in(response.get("Parameter", {}).get("Value"), where)

    return fetch


def _read(where: str, call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return call()
    except ClientError as exc:
        raise BackendError(f"the API key cannot be read from {where}: {_code(exc)}") from None
    except BotoCoreError as exc:
        raise BackendError(f"the API key cannot be read from {where}: {type(exc).__name__}") from None


def _key_in(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BackendError(f"{where} holds no API key (a binary or empty secret)")
    text = value.strip()
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = None
        key = parsed.get("api_key") if isinstance(parsed, dict) else None
        if not isinstance(key, str) or not key.strip():
            raise BackendError(f"{where} is a JSON object without a string api_key field")
        return key.strip()
    return text


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "")) or "refused"
