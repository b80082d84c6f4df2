"""The client of the cloud tier's `POST /v1/infer`: one call per batch of escalations.

Every call has a timeout no longer than what is left of the request's deadline; retryable failures
(connection errors, timeouts, 429 throttling, 502/503/504) are retried a bounded number of times with
exponential backoff and full jitter, always with the **same** Idempotency-Key, so a retry of a call the
cloud did run is replayed there, not charged twice. 4xx and 500 are not retried. A circuit breaker stops
calling a cloud that keeps failing. Failures come out as `CloudFailure` subclasses naming the fallback
reason; the caller answers from the edge.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from edge_container.breaker import CircuitBreaker
from edge_container.errors import (
    BudgetExhausted,
    CircuitOpen,
    CloudError,
    CloudFailure,
    CloudTimeout,
    DeadlineExceeded,
)

log = logging.getLogger("edge_container.cloud")
_RETRY_STATUS = frozenset({429, 502, 503, 504})
_MIN_ATTEMPT_S = 0.005  # below this, an attempt cannot succeed: do not start it
Signer = Callable[[str, Mapping[str, str], bytes], Mapping[str, str]]


@dataclass(frozen=True, slots=True)
class Answer:
    label: str
    confidence: float


@dataclass(frozen=True, slots=True)
class CloudResult:
    label: str
    confidence: float
    top_k: tuple[Answer, ...]


@dataclass(frozen=True, slots=True)
class Budget:
    remaining: int
    limit: int
    period: str
    resets_at: datetime | None


@dataclass(frozen=True, slots=True)
class CloudReply:
    results: tuple[CloudResult, ...]
    model_version: str
    cost: int
    budget: Budget | None
    attempts: int


class CloudClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        url: str,
        api_key: str | None,
        breaker: CircuitBreaker,
        timeout_s: float = 0.8,
        retries: int = 2,
        backoff_s: float = 0.05,
        max_backoff_s: float = 1.0,
        signer: Signer | None = None,
        rng: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self._http, self.url, self._api_key, self.breaker = http, url, api_key, breaker
        self.timeout_s, self.retries, self.backoff_s, self.max_backoff_s = timeout_s, retries, backoff_s, max_backoff_s
        self._signer, self._rng, self._sleep, self._clock = signer, rng, sleep, clock
        self._on_error = on_error or (lambda kind: None)

    async def infer(
        self,
        texts: Sequence[str],
        *,
        idempotency_key: str,
        deadline: float,  # on `clock`
        request_id: str | None = None,
        edge: Sequence[Answer] = (),
    ) -> CloudReply:
        if not self.breaker.allow():
            raise CircuitOpen("the circuit to the cloud is open")
        verdict: bool | None = None  # True: cloud healthy; False: failing; None: say nothing (cancelled)
        try:
            reply = await self._call(texts, idempotency_key, deadline, request_id, edge)
            verdict = True
            return reply
        except (BudgetExhausted, DeadlineExceeded) as exc:
            # The cloud answered (429) or was never really tried: neither says it is unhealthy.
            verdict = True if isinstance(exc, BudgetExhausted) else None
            raise
        except CloudFailure as exc:
            verdict = isinstance(exc, _Rejected)
            raise
        finally:
            if verdict is True:
                self.breaker.success()
            elif verdict is False:
                self.breaker.failure()
            else:
                self.breaker.release()

    async def _call(self, texts: Sequence[str], key: str, deadline: float, request_id: str | None,
                    edge: Sequence[Answer]) -> CloudReply:
        payload: dict[str, Any] = {"texts": list(texts)}
        if edge:
            payload["edge"] = [{"label": a.label, "confidence": a.confidence} for a in edge]
        if request_id:
            payload["request_id"] = request_id
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {"content-type": "application/json", "Idempotency-Key": key}
        if self._api_key:
            headers["x-api-key"] = self._api_key
        last: CloudFailure = DeadlineExceeded("no time left for the cloud")
        for attempt in range(self.retries + 1):
            if attempt:
                delay = self._rng() * min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                if self._clock() + delay + _MIN_ATTEMPT_S >= deadline:
                    break
                await self._sleep(delay)
            left = deadline - self._clock()
            if left < _MIN_ATTEMPT_S:
                break
            timeout = min(self.timeout_s, left)
            sent = self._sign(headers, body)
            try:
                response = await self._http.post(self.url, content=body, headers=sent, timeout=timeout)
            except httpx.TimeoutException:
                self._on_error("timeout")
                last = (CloudTimeout if timeout >= self.timeout_s else DeadlineExceeded)(
                    f"no answer from the cloud within {timeout * 1000:.0f} ms")
                continue
            except httpx.HTTPError as exc:  # connection refused/reset, protocol or decoding errors
                self._on_error("connection")
                last = CloudError(f"cannot reach the cloud: {type(exc).__name__}")
                continue
            if response.status_code == 200:
                try:
                    return _parse_reply(response.json(), len(texts), attempt + 1)
                except (ValueError, KeyError, TypeError) as exc:
                    self._on_error("bad_response")
                    raise CloudError(f"the cloud's answer breaks the contract: {exc}") from None
            error = _error_body(response)
            if response.status_code == 429 and error.get("code") == "BUDGET_EXHAUSTED":
                raise BudgetExhausted(str(error.get("message", "budget exhausted")),
                                      resets_at=_parse_time(error.get("resets_at")))
            self._on_error(f"http_{response.status_code // 100}xx")
            message = f"the cloud answered {response.status_code} {error.get('code', '')}".strip()
            if response.status_code in _RETRY_STATUS:
                last = CloudError(message)
                continue
            raise (_Rejected if response.status_code < 500 else CloudError)(message)
        raise last


    def _sign(self, headers: dict[str, str], body: bytes) -> Mapping[str, str]:
        if self._signer is None:
            return headers
        try:
            return dict(self._signer(self.url, headers, body))
        except Exception as exc:  # e.g. expired credentials: a cloud failure to the caller, logged with its cause
            log.exception("cannot sign the cloud request")
            self._on_error("signing")
            raise CloudError(f"cannot sign the cloud request: {type(exc).__name__}") from exc


class _Rejected(CloudError):
    """A 4xx other than budget/throttling: our request was at fault, the cloud itself is healthy."""


def _parse_reply(raw: Any, n: int, attempts: int) -> CloudReply:
    results = tuple(
        CloudResult(
            label=_str(r["label"]),
            confidence=float(r["confidence"]),
            top_k=tuple(Answer(_str(t["label"]), float(t["confidence"])) for t in r.get("top_k") or ()),
        )
        for r in raw["results"]
    )
    if len(results) != n:
        raise ValueError(f"{len(results)} results for {n} texts")
    b = raw.get("budget")
    budget = None if not isinstance(b, dict) else Budget(
        remaining=int(b["remaining"]), limit=int(b["limit"]), period=str(b.get("period", "")),
        resets_at=_parse_time(b.get("resets_at")))
    return CloudReply(results, str(raw.get("model_version", "")), int(raw.get("cost", 0)), budget, attempts)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _error_body(response: httpx.Response) -> dict[str, Any]:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return {}
    return error if isinstance(error, dict) else {}


def _parse_time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


class SigV4Signer:
    """Signs each attempt with AWS SigV4 (botocore), for an API Gateway that authorises with IAM.

    `credentials` is a botocore credentials object (refreshable ones are frozen per call).
    """

    def __init__(self, credentials: Any, *, region: str, service: str = "execute-api") -> None:
        from botocore.auth import SigV4Auth  # optional dependency: only imported when signing is on

        self._credentials, self._auth, self.region, self.service = credentials, SigV4Auth, region, service

    def __call__(self, url: str, headers: Mapping[str, str], body: bytes) -> Mapping[str, str]:
        from botocore.awsrequest import AWSRequest

        frozen = getattr(self._credentials, "get_frozen_credentials", lambda: self._credentials)()
        request = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
        self._auth(frozen, self.service, self.region).add_auth(request)
        return dict(request.headers.items())
