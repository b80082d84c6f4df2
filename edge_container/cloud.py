"""The client of the cloud tier's `POST /v1/infer`: one call per batch of escalations.

Every call has a timeout no longer than what is left of the request's deadline; retryable failures
(connection errors, timeouts, 429 throttling, 502/503/504) are retried a bounded number of times with
exponential backoff and full jitter, always with the **same** Idempotency-Key, so a retry of a call the
cloud did run is replayed there, not charged twice. 4xx and 500 are not retried. A circuit breaker stops
calling a cloud that keeps failing. Failures come out as `CloudFailure` subclasses naming the fallback
reason; the caller answers from the edge.

The client never sends what the cloud refuses: at most `max_texts` texts a call (the caller chunks), each
cut to `max_text_chars` (`modelpack.limits`). Replies are validated strictly (finite numbers in range,
labels strings, one result per text, timestamps with an offset); one that breaks the contract is a
`CloudError`, logged with what was wrong, never an exception the caller does not expect.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
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
from modelpack.limits import CLOUD_MAX_TEXT_CHARS, CLOUD_MAX_TEXTS, clip_text

log = logging.getLogger("edge_container.cloud")
_RETRY_STATUS = frozenset({429, 502, 503, 504})
_MIN_ATTEMPT_S = 0.005  # below this, an attempt cannot succeed: do not start it
_MAX_COUNT = 2**53  # budgets and costs end up in float gauges: larger is a broken reply, not a budget
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
        max_texts: int = CLOUD_MAX_TEXTS,
        max_text_chars: int = CLOUD_MAX_TEXT_CHARS,
    ) -> None:
        self._http, self.url, self._api_key, self.breaker = http, url, api_key, breaker
        self.max_texts, self.max_text_chars = max_texts, max_text_chars
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
        """One call for at most `max_texts` texts (more is the caller's bug: it must chunk)."""
        if not 0 < len(texts) <= self.max_texts:
            raise ValueError(f"{len(texts)} texts: the cloud takes 1-{self.max_texts} per call")
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
            if isinstance(exc, CloudError):  # the fallback's reason says `cloud_error`; this line says which
                log.warning("the cloud call failed: %s", exc)
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
        # Whitespace around a text means nothing to the tokenizer but counts against the cloud's limit (and a
        # cut of a long blank lead would be a blank text, which the cloud refuses).
        payload: dict[str, Any] = {"texts": [clip_text(t.strip(), self.max_text_chars) for t in texts]}
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
                    return _parse_reply(_json(response), len(texts), attempt + 1)
                except _BadReply as exc:
                    raise self._refuse(response.status_code, exc) from None
            error = _error_body(response)
            code = error.get("code") if isinstance(error.get("code"), str) else ""
            if response.status_code == 429 and code == "BUDGET_EXHAUSTED":
                message = error.get("message")
                try:
                    resets_at = _aware_time(error.get("resets_at"), "error.resets_at")
                except _BadReply as exc:
                    raise self._refuse(response.status_code, exc) from None
                raise BudgetExhausted(message if isinstance(message, str) else "budget exhausted",
                                      resets_at=resets_at)
            self._on_error(f"http_{response.status_code // 100}xx")
            message = f"the cloud answered {response.status_code} {code}".strip()
            if response.status_code in _RETRY_STATUS:
                last = CloudError(message)
                continue
            raise (_Rejected if response.status_code < 500 else CloudError)(message)
        raise last

    def _refuse(self, status: int, problem: _BadReply) -> CloudError:
        self._on_error("bad_response")
        return CloudError(f"the cloud's {status} reply breaks the contract: {problem}")

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


class _BadReply(ValueError):
    """What makes a reply of the cloud unusable; the message says where (`results[3].confidence`)."""


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, or nested deeper than the parser goes
        raise _BadReply(f"the body is not usable JSON ({type(exc).__name__})") from None


def _parse_reply(raw: Any, n: int, attempts: int) -> CloudReply:
    body = _object(raw, "the body")
    items = body.get("results")
    if not isinstance(items, list):
        raise _BadReply(f"results is {_kind(items)}, not a list")
    if len(items) != n:
        raise _BadReply(f"{len(items)} results for {n} texts")
    results = tuple(_result(item, f"results[{i}]") for i, item in enumerate(items))
    budget = body.get("budget")
    return CloudReply(results, _string(body.get("model_version", ""), "model_version", empty=True),
                      _count(body.get("cost", 0), "cost"), None if budget is None else _budget(budget),
                      attempts)


def _result(raw: Any, where: str) -> CloudResult:
    item = _object(raw, where)
    top_k = item.get("top_k")
    top_k = [] if top_k is None else top_k
    if not isinstance(top_k, list):
        raise _BadReply(f"{where}.top_k is not a list")
    return CloudResult(_string(item.get("label"), f"{where}.label"),
                       _confidence(item.get("confidence"), f"{where}.confidence"),
                       tuple(_answer(t, f"{where}.top_k[{j}]") for j, t in enumerate(top_k)))


def _answer(raw: Any, where: str) -> Answer:
    item = _object(raw, where)
    return Answer(_string(item.get("label"), f"{where}.label"),
                  _confidence(item.get("confidence"), f"{where}.confidence"))


def _budget(raw: Any) -> Budget:
    b = _object(raw, "budget")
    return Budget(remaining=_count(b.get("remaining"), "budget.remaining"),
                  limit=_count(b.get("limit"), "budget.limit"),
                  period=_string(b.get("period", ""), "budget.period", empty=True),
                  resets_at=_aware_time(b.get("resets_at"), "budget.resets_at"))


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _BadReply(f"{where} is {_kind(value)}, not an object")
    return value


def _string(value: Any, where: str, *, empty: bool = False) -> str:
    if not isinstance(value, str) or not (value or empty):
        raise _BadReply(f"{where} is {_kind(value)}, not a {'' if empty else 'non-empty '}string")
    return value


def _confidence(value: Any, where: str) -> float:
    # NaN fails the range check too: every comparison with it is false.
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise _BadReply(f"{where} is {_kind(value)}, not a number in [0, 1]")
    return float(value)


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_COUNT:
        raise _BadReply(f"{where} is {_kind(value)}, not a whole number in [0, 2^53]")
    return value


def _aware_time(value: Any, where: str) -> datetime | None:
    """None when absent. A time without an offset is refused, not guessed: the contract is ISO 8601 with an
    offset (the cloud writes `+00:00`), and this one decides how long the edge stops escalating."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise _BadReply(f"{where} is {_kind(value)}, not an ISO 8601 time")
    if parsed.utcoffset() is None:
        raise _BadReply(f"{where} {value[:40]!r} has no timezone offset")
    return parsed


def _kind(value: Any) -> str:
    """A short description of a bad value for logs: never the value's whole repr (it may be huge or deep)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value) if not math.isfinite(value) else f"{value:.6g}"
    if isinstance(value, int):
        return str(value) if abs(value) < 10**18 else "a huge integer"
    if isinstance(value, str):
        return f"the string {value[:40]!r}" if value else "the empty string"
    return "a list" if isinstance(value, list) else "an object" if isinstance(value, dict) else type(value).__name__


def _error_body(response: httpx.Response) -> dict[str, Any]:
    """The `error` object of a non-200 reply, or {}: gateways answer 502/503 with HTML, which is no reason
    to treat a retryable status differently."""
    try:
        body = response.json()
    except (ValueError, RecursionError):
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


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
