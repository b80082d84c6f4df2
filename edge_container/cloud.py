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
`CloudCallFailed`, logged with what was wrong, never an exception the caller does not expect.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import httpx

from edge_container.breaker import CircuitBreaker
from edge_container.errors import (
    CircuitOpen,
    CloudBudgetExhausted,
    CloudCallFailed,
    CloudFailure,
    CloudTimeout,
    DeadlineExceeded,
)
from modelpack.cloud_api import (
    IDEMPOTENCY_HEADER,
    RETRYABLE_STATUS,
    Answer,
    ContractViolation,
    ErrorBody,
    ErrorCode,
    InferReply,
    InferRequest,
)
from modelpack.limits import CLOUD_MAX_TEXT_CHARS, CLOUD_MAX_TEXTS, clip_text

log = logging.getLogger("edge_container.cloud")
_MIN_ATTEMPT_S = 0.005  # below this, an attempt cannot succeed: do not start it
Signer = Callable[[str, Mapping[str, str], bytes], Mapping[str, str]]


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
        on_bytes: Callable[[str, int], None] | None = None,
        max_texts: int = CLOUD_MAX_TEXTS,
        max_text_chars: int = CLOUD_MAX_TEXT_CHARS,
    ) -> None:
        self._http, self.url, self._api_key, self.breaker = http, url, api_key, breaker
        self.max_texts, self.max_text_chars = max_texts, max_text_chars
        self.timeout_s, self.retries, self.backoff_s, self.max_backoff_s = timeout_s, retries, backoff_s, max_backoff_s
        self._signer, self._rng, self._sleep, self._clock = signer, rng, sleep, clock
        self._on_error = on_error or (lambda kind: None)
        self._on_bytes = on_bytes or (lambda direction, n: None)  # ("sent" | "received", bytes): device metrics

    async def infer(
        self,
        texts: Sequence[str],
        *,
        idempotency_key: str,
        deadline: float,  # on `clock`
        request_id: str | None = None,
        edge: Sequence[Answer] = (),
    ) -> InferReply:
        """One call for at most `max_texts` texts (more is the caller's bug: it must chunk): the cloud's
        reply, validated (`modelpack.cloud_api.InferReply`)."""
        if not 0 < len(texts) <= self.max_texts:
            raise ValueError(f"{len(texts)} texts: the cloud takes 1-{self.max_texts} per call")
        if not self.breaker.allow():
            raise CircuitOpen("the circuit to the cloud is open")
        verdict: bool | None = None  # True: cloud healthy; False: failing; None: say nothing (cancelled)
        try:
            reply = await self._call(texts, idempotency_key, deadline, request_id, edge)
            verdict = True
            return reply
        except (CloudBudgetExhausted, DeadlineExceeded) as exc:
            # The cloud answered (429) or was never really tried: neither says it is unhealthy.
            verdict = True if isinstance(exc, CloudBudgetExhausted) else None
            raise
        except CloudFailure as exc:
            verdict = isinstance(exc, _Rejected)
            if isinstance(exc, CloudCallFailed):  # the fallback's reason says `cloud_error`; this line says which
                log.warning("the cloud call failed: %s", exc, extra={"request_id": request_id})
            raise
        finally:
            if verdict is True:
                self.breaker.success()
            elif verdict is False:
                self.breaker.failure()
            else:
                self.breaker.release()

    async def _call(self, texts: Sequence[str], key: str, deadline: float, request_id: str | None,
                    edge: Sequence[Answer]) -> InferReply:
        # Whitespace around a text means nothing to the tokenizer but counts against the cloud's limit (and a
        # cut of a long blank lead would be a blank text, which the cloud refuses).
        body = InferRequest(tuple(clip_text(t.strip(), self.max_text_chars) for t in texts),
                            tuple(edge) if edge else None, request_id or None).encode()
        headers = {"content-type": "application/json", IDEMPOTENCY_HEADER: key}
        if request_id:  # the cloud logs it (edge_request_id): one escalation, one id in both tiers' logs
            headers["X-Request-Id"] = request_id
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
            self._on_bytes("sent", len(body))
            try:
                response = await self._http.post(self.url, content=body, headers=sent, timeout=timeout)
            except httpx.TimeoutException:
                self._on_error("timeout")
                last = (CloudTimeout if timeout >= self.timeout_s else DeadlineExceeded)(
                    f"no answer from the cloud within {timeout * 1000:.0f} ms")
                continue
            except httpx.HTTPError as exc:  # connection refused/reset, protocol or decoding errors
                self._on_error("connection")
                last = CloudCallFailed(f"cannot reach the cloud: {type(exc).__name__}")
                continue
            self._on_bytes("received", response.num_bytes_downloaded)
            if response.status_code == 200:
                try:
                    return InferReply.from_json(_json(response), n_texts=len(texts))
                except ContractViolation as exc:
                    raise self._refuse(response.status_code, exc) from None
            error = ErrorBody.from_json(_json_or_none(response))
            code = error.code
            if response.status_code == 429 and code == ErrorCode.BUDGET_EXHAUSTED:
                try:
                    resets_at = error.resets_at()
                except ContractViolation as exc:
                    raise self._refuse(response.status_code, exc) from None
                raise CloudBudgetExhausted(error.message or "budget exhausted", resets_at=resets_at)
            self._on_error(f"http_{response.status_code // 100}xx")
            message = f"the cloud answered {response.status_code} {code}".strip()
            if response.status_code in RETRYABLE_STATUS:
                last = CloudCallFailed(message)
                continue
            raise (_Rejected if response.status_code < 500 else CloudCallFailed)(message)
        raise last

    def _refuse(self, status: int, problem: ContractViolation) -> CloudCallFailed:
        self._on_error("bad_response")
        return CloudCallFailed(f"the cloud's {status} reply breaks the contract: {problem}")

    def _sign(self, headers: dict[str, str], body: bytes) -> Mapping[str, str]:
        if self._signer is None:
            return headers
        try:
            return dict(self._signer(self.url, headers, body))
        except Exception as exc:  # e.g. expired credentials: a cloud failure to the caller, logged with its cause
            log.exception("cannot sign the cloud request")
            self._on_error("signing")
            raise CloudCallFailed(f"cannot sign the cloud request: {type(exc).__name__}") from exc


class _Rejected(CloudCallFailed):
    """A 4xx other than budget/throttling: our request was at fault, the cloud itself is healthy."""


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, or nested deeper than the parser goes
        raise ContractViolation(f"the body is not usable JSON ({type(exc).__name__})") from None


def _json_or_none(response: httpx.Response) -> Any:
    """The body as JSON, or None: an error body a gateway wrote in HTML is no reason to fail differently."""
    try:
        return _json(response)
    except ContractViolation:
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
