"""Any OpenAI-compatible Chat Completions API as a backend: OpenAI, Azure OpenAI (v1 API), or a self-hosted
server (vLLM, Ollama, llama.cpp, LiteLLM...). Zero-shot classification over the artifact's labels with
`cloud_functions.zero_shot`'s contract, one `POST {base}/chat/completions` per batch.

    transport = HttpTransport("https://api.openai.com/v1")
    backend = OpenAIBackend(transport, model="gpt-4o-mini", labels=..., oos_label="oos",
                            prices=TokenPrices(Decimal("0.15"), Decimal("0.60")), api_key=cached_secret)

Time: every attempt of one call ends within `timeout_s` (LLM_TIMEOUT_S, 20 s) of its start, however the
server behaves (silent, or trickling bytes): a watchdog closes the socket at the deadline. Retries: at most
`max_attempts` attempts, on what the official `openai` client retries (connection errors, timeouts, 408,
409, 429, 5xx; an `x-should-retry` header overrides), waiting what `retry-after-ms` / `retry-after` say
when that is at most 60 s and fits before the deadline, else an exponential backoff with jitter. A 401/403
reads the key again once (it may have been rotated). A server that refuses an optional request field
(`logprobs`, `response_format`: 400 naming it) is asked again without it, and is not asked again for it.

Confidence: with log-probabilities (most servers give them; `logprobs: true`), a result's confidence is
the model's own probability of the label it wrote: exp of the summed log-probabilities of the tokens that
spell it. Without them, the confidence the model states. Neither is fitted like the teacher's temperature.

The HTTP itself (one kept-alive connection, the hard deadline, no library): `cloud_functions.http_transport`.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any

from cloud_functions import zero_shot
from cloud_functions.http_transport import (
    MIN_ATTEMPT_S,
    HttpReply,
    HttpTransport,
    TransportError,
    TransportTimeout,
)
from cloud_functions.inference import BackendError, Inference
from cloud_functions.pricing import TokenPrices
from cloud_functions.secrets import CachedSecret
from modelpack.cloud_api import Answer, TextResult, Usage

logger = logging.getLogger(__name__)

CHAT_COMPLETIONS = "/chat/completions"
OPTIONAL_FIELDS = ("logprobs", "response_format")  # dropped for good when a server refuses them
_MAX_RETRY_AFTER_S = 60.0  # as the openai client: a longer wait is not honoured
_BACKOFF_S, _MAX_BACKOFF_S = 0.5, 8.0
_MAX_ERROR_CHARS = 300


# --------------------------------------------------------------------------- backend


class OpenAIBackend:
    """Zero-shot classification by a Chat Completions model; see the module's docstring."""

    def __init__(
        self,
        transport: HttpTransport,
        *,
        model: str,
        labels: Sequence[str],
        oos_label: str | None,
        prices: TokenPrices = TokenPrices(),
        api_key: CachedSecret | None = None,
        key_header: str = "authorization",
        timeout_s: float = 20.0,
        max_attempts: int = 2,
        logprobs: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not model:
            raise ValueError("an OpenAI-compatible backend needs a model name")
        if max_attempts < 1 or timeout_s <= 0:
            raise ValueError("max_attempts must be >= 1 and timeout_s > 0")
        self._transport = transport
        self._model = model
        self._labels = tuple(labels)
        self._oos_label = oos_label
        self._prices = prices
        self._api_key = api_key
        self._key_header = key_header
        self._timeout_s = timeout_s
        self._max_attempts = max_attempts
        self._fields = set(OPTIONAL_FIELDS) if logprobs else {"response_format"}
        self._sleep, self._clock, self._rng = sleep, clock, rng
        self._system = zero_shot.system_prompt(self._labels, oos_label)

    @property
    def model_version(self) -> str:
        return f"openai:{self._model}"

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    def request(self, texts: Sequence[str]) -> dict[str, Any]:
        """The Chat Completions request body for `texts`."""
        body: dict[str, Any] = {
            "model": self._model,
            "messages": [
                {"role": "system", "content": self._system},
                {"role": "user", "content": zero_shot.user_message(texts)},
            ],
            "temperature": 0,
            # max_tokens, not max_completion_tokens: every compatible server takes it. It is the output
            # bound the budget reserves.
            "max_tokens": zero_shot.max_output_tokens(len(texts)),
        }
        if "response_format" in self._fields:
            body["response_format"] = {"type": "json_object"}
        if "logprobs" in self._fields:
            body["logprobs"] = True
        return body

    def max_cost_usd(self, texts: Sequence[str]) -> Decimal:
        prompt = zero_shot.max_input_tokens(self._system, zero_shot.user_message(texts))
        return self._prices.usd(prompt, zero_shot.max_output_tokens(len(texts)))

    def infer(self, texts: Sequence[str]) -> Inference:
        reply = self._complete(texts)
        choices = reply.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
        if choice is None:
            raise BackendError("the LLM's reply has no choices")
        finish = choice.get("finish_reason")
        if finish == "length":
            raise BackendError("the LLM's answer was cut off at max_tokens")
        if finish == "content_filter":
            raise BackendError("the LLM's answer was withheld by its content filter")
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str) or not content:
            raise BackendError("the LLM's reply holds no text")
        answers = zero_shot.parse(content, len(texts), self._labels, self._oos_label, source="the LLM")
        probabilities = _label_probabilities(answers, content, choice.get("logprobs"))
        results = []
        for i, answer in enumerate(answers):
            confidence = answer.confidence if probabilities is None else probabilities[i]
            results.append(TextResult(answer.label, confidence, (Answer(answer.label, confidence),)))
        return Inference(tuple(results), self._usage(reply.get("usage"), texts))

    # ------------------------------------------------------------------ the call

    def _complete(self, texts: Sequence[str]) -> dict[str, Any]:
        deadline = self._clock() + self._timeout_s
        attempts, key_refreshed = 0, False
        while True:
            left = deadline - self._clock()
            if left < MIN_ATTEMPT_S:
                raise BackendError(f"no answer from the LLM within {self._timeout_s:g} s")
            attempts += 1
            body = json.dumps(self.request(texts), ensure_ascii=False).encode("utf-8")
            retry_after: float | None = None
            try:
                reply = self._transport.post(CHAT_COMPLETIONS, body, self._headers(), timeout_s=left)
            except TransportTimeout:
                failure, retryable = f"no answer from the LLM within {left:.1f} s", True
            except TransportError as exc:
                failure, retryable = f"the LLM API could not be reached: {exc}", True
            else:
                if reply.status == 200:
                    return _json_object(reply.body)
                error = _error_of(reply.body)
                failure = f"the LLM API answered {reply.status}: {error.get('message', '')}"[:_MAX_ERROR_CHARS]
                if reply.status in (401, 403) and self._api_key is not None and not key_refreshed:
                    self._api_key.invalidate()  # a rotated key: read it again, once, at no attempt's cost
                    key_refreshed, attempts = True, attempts - 1
                    continue
                if reply.status in (400, 422) and (dropped := self._refused_field(error)):
                    logger.warning("the LLM API refuses %r: asking without it from now on", dropped)
                    attempts -= 1
                    continue
                retryable = _should_retry(reply)
                retry_after = _retry_after_s(reply.headers)
            if not retryable or attempts >= self._max_attempts:
                raise BackendError(failure)
            delay = retry_after if retry_after is not None else self._backoff(attempts)
            if self._clock() + delay + MIN_ATTEMPT_S >= deadline:
                raise BackendError(f"{failure} (no time left to retry)")
            logger.info("retrying the LLM call in %.2f s: %s", delay, failure)
            self._sleep(delay)

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "application/json"}
        if self._api_key is not None:
            key = self._api_key.get()
            if self._key_header == "api-key":
                headers["api-key"] = key
            else:
                headers["authorization"] = f"Bearer {key}"
        return headers

    def _refused_field(self, error: Mapping[str, Any]) -> str | None:
        param, message = str(error.get("param") or ""), str(error.get("message") or "")
        for name in OPTIONAL_FIELDS:
            if name in self._fields and (param == name or name in message):
                self._fields.discard(name)
                return name
        return None

    def _backoff(self, attempt: int) -> float:
        return min(_MAX_BACKOFF_S, _BACKOFF_S * 2 ** (attempt - 1)) * (0.75 + 0.25 * self._rng())

    def _usage(self, usage: Any, texts: Sequence[str]) -> Usage:
        tokens_in = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        tokens_out = usage.get("completion_tokens") if isinstance(usage, dict) else None
        if not _count(tokens_in) or not _count(tokens_out):
            # Without usage the real cost is unknown: charge the bound that was reserved, never less.
            logger.warning("the LLM API reported no token usage: the call is charged its upper bound")
            tokens_in = zero_shot.max_input_tokens(self._system, zero_shot.user_message(texts))
            tokens_out = zero_shot.max_output_tokens(len(texts))
        return Usage(int(tokens_in), int(tokens_out), self._prices.usd(int(tokens_in), int(tokens_out)))


# --------------------------------------------------------------------------- reading replies


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise BackendError("the LLM API's 200 reply is not JSON") from None
    if not isinstance(parsed, dict):
        raise BackendError("the LLM API's 200 reply is not a JSON object")
    return parsed


def _error_of(body: bytes) -> dict[str, Any]:
    """The error object: OpenAI's {"error": {...}}, or vLLM's older top-level {"message", "param", ...}."""
    try:
        parsed = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return {"message": body[:_MAX_ERROR_CHARS].decode("utf-8", "replace")}
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        return dict(parsed["error"])
    if isinstance(parsed, dict):
        return parsed if isinstance(parsed.get("message"), str) else {"message": str(parsed.get("error", ""))}
    return {}


def _should_retry(reply: HttpReply) -> bool:
    explicit = reply.headers.get("x-should-retry")
    if explicit in ("true", "false"):
        return explicit == "true"
    return reply.status in (408, 409, 429) or reply.status >= 500


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The wait a 429/503 asks for (`retry-after-ms`, else `retry-after` in seconds or as an HTTP date),
    if it is in (0, 60] s; None otherwise (back off instead)."""
    wait: float | None = None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            wait = float(ms) / 1000
        except ValueError:
            wait = None
    if wait is None and (after := headers.get("retry-after")) is not None:
        try:
            wait = float(after)
        except ValueError:
            try:
                wait = parsedate_to_datetime(after).timestamp() - time.time()
            except (TypeError, ValueError, IndexError, OverflowError):
                wait = None
    if wait is None or not math.isfinite(wait) or not 0 < wait <= _MAX_RETRY_AFTER_S:
        return None
    return wait


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _label_probabilities(answers: Sequence[zero_shot.Answer], content: str, logprobs: Any) -> list[float] | None:
    """Per answer, exp(sum of the log-probabilities of the tokens spelling its label); None when the reply
    carries no usable token log-probabilities (absent, or tokens that do not spell the content)."""
    tokens = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(tokens, list) or not tokens or any(a.span is None for a in answers):
        return None
    pieces: list[tuple[int, int, float]] = []
    offset = 0
    for token in tokens:
        text = token.get("token") if isinstance(token, dict) else None
        logprob = token.get("logprob") if isinstance(token, dict) else None
        if not isinstance(text, str) or isinstance(logprob, bool) or not isinstance(logprob, int | float):
            return None
        pieces.append((offset, offset + len(text), float(logprob)))
        offset += len(text)
    if "".join(t["token"] for t in tokens) != content:
        return None
    probabilities = []
    for answer in answers:
        start, end = answer.span  # type: ignore[misc]
        total = sum(lp for a, b, lp in pieces if a < end and b > start)
        probabilities.append(min(1.0, max(0.0, math.exp(total))) if math.isfinite(total) else 0.0)
    return probabilities
