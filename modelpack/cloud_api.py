"""The cloud API's wire contract: `POST /v1/infer`, `GET /v1/budget` and error bodies, written once.

    InferRequest.to_json() / InferRequest.from_json(raw, max_texts=, max_chars=)   what the edge sends
    InferReply.to_json()   / InferReply.from_json(raw, n_texts=)                   what the cloud answers
    Usage                                                                          a metered call's tokens and USD
    BudgetStatus                                                                   GET /v1/budget
    ErrorBody                                                                      {"error": {...}} of a non-200
    IDEMPOTENCY_HEADER, is_idempotency_key                                         the key a call is charged once by

The Lambda handler builds its answers with `to_json` and reads requests with `from_json`; the edge's cloud
client does the opposite; the demo and the test fakes use the same types. A request the cloud refuses
raises `RequestRefused` with the stable `code` (`ErrorCode`) the cloud answers with; a reply that breaks
the contract raises `ContractViolation` naming where. Readers ignore fields they do not know (the contract
grows additively); writers write only what is defined here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from modelpack import jsonvalues as jv
from modelpack.jsonvalues import ContractViolation
from modelpack.limits import CLOUD_MAX_TEXT_CHARS, CLOUD_MAX_TEXTS, text_problem

__all__ = [
    "IDEMPOTENCY_HEADER", "Answer", "BudgetInfo", "BudgetStatus", "ContractViolation", "ErrorBody", "ErrorCode",
    "InferReply", "InferRequest", "RequestRefused", "TextResult", "Usage", "decode_json", "is_idempotency_key",
]

MAX_REQUEST_ID = 128
_REQUEST_FIELDS = frozenset({"texts", "edge", "request_id"})
# The header a caller names a call's charge with: its retries carry the same value and are charged once.
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def is_idempotency_key(value: str) -> bool:
    """1-255 printable ASCII characters without spaces: what the cloud takes as an `Idempotency-Key` (400
    `INVALID_IDEMPOTENCY_KEY` otherwise) and keeps a charge record under; every key the edge derives is one."""
    return bool(_IDEMPOTENCY_KEY.match(value))


class ErrorCode:
    """The stable `error.code` values of the cloud API (never change a published one)."""

    BAD_REQUEST: Final = "BAD_REQUEST"
    INVALID_JSON: Final = "INVALID_JSON"
    INVALID_REQUEST: Final = "INVALID_REQUEST"
    TOO_MANY_TEXTS: Final = "TOO_MANY_TEXTS"
    TEXT_TOO_LONG: Final = "TEXT_TOO_LONG"
    INVALID_TEXT: Final = "INVALID_TEXT"
    INVALID_IDEMPOTENCY_KEY: Final = "INVALID_IDEMPOTENCY_KEY"
    NOT_FOUND: Final = "NOT_FOUND"
    UNKNOWN_TENANT: Final = "UNKNOWN_TENANT"
    IDEMPOTENCY_KEY_REUSED: Final = "IDEMPOTENCY_KEY_REUSED"
    IDEMPOTENCY_IN_PROGRESS: Final = "IDEMPOTENCY_IN_PROGRESS"
    BUDGET_EXHAUSTED: Final = "BUDGET_EXHAUSTED"
    CONFIGURATION_ERROR: Final = "CONFIGURATION_ERROR"
    MODEL_UNAVAILABLE: Final = "MODEL_UNAVAILABLE"
    BUDGET_STORE_UNAVAILABLE: Final = "BUDGET_STORE_UNAVAILABLE"
    IDEMPOTENCY_STORE_UNAVAILABLE: Final = "IDEMPOTENCY_STORE_UNAVAILABLE"
    INTERNAL_ERROR: Final = "INTERNAL_ERROR"


# Statuses a client may retry with the same Idempotency-Key (throttling and gateway/availability errors).
RETRYABLE_STATUS: Final = frozenset({429, 502, 503, 504})


class RequestRefused(ValueError):
    """A request body the cloud refuses with 400: `code` is its `ErrorCode`, `details` the body's extra
    fields (`field`, and `limit` or `index` where they apply)."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


def decode_json(body: str | bytes | None) -> Any:
    """The decoded body, or `RequestRefused(INVALID_JSON)` for an empty, undecodable or too deep one."""
    if not body:
        raise RequestRefused(ErrorCode.INVALID_JSON, "the request body must be a JSON object")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise RequestRefused(ErrorCode.INVALID_JSON, "the request body is not valid JSON") from None


# --------------------------------------------------------------------------- request


@dataclass(frozen=True, slots=True)
class Answer:
    """A label with its calibrated confidence: the edge's own answer, or one of the cloud's top k."""

    label: str
    confidence: float

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "confidence": self.confidence}

    @classmethod
    def from_json(cls, raw: Any, where: str) -> Answer:
        item = jv.obj(raw, where)
        return cls(jv.string(item.get("label"), f"{where}.label"),
                   jv.probability(item.get("confidence"), f"{where}.confidence"))


@dataclass(frozen=True, slots=True)
class InferRequest:
    texts: tuple[str, ...]
    edge: tuple[Answer, ...] | None = None  # the edge's own answers, same order as texts
    request_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"texts": list(self.texts)}
        if self.edge is not None:
            body["edge"] = [a.to_json() for a in self.edge]
        if self.request_id is not None:
            body["request_id"] = self.request_id
        return body

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: Any, *, max_texts: int = CLOUD_MAX_TEXTS,
                  max_chars: int = CLOUD_MAX_TEXT_CHARS) -> InferRequest:
        """The request in `raw` (decoded JSON), or `RequestRefused` naming the first bad field."""
        if not isinstance(raw, dict):
            raise RequestRefused(ErrorCode.INVALID_JSON, "the request body must be a JSON object")
        unknown = sorted(set(raw) - _REQUEST_FIELDS)
        if unknown:
            raise RequestRefused(ErrorCode.INVALID_REQUEST, f"unknown field(s): {', '.join(unknown)}",
                                 field=unknown[0])
        texts = _texts(raw.get("texts"), max_texts, max_chars)
        edge = raw.get("edge")
        answers: tuple[Answer, ...] | None = None
        if edge is not None:
            if not isinstance(edge, list) or len(edge) != len(texts):
                raise RequestRefused(ErrorCode.INVALID_REQUEST, "edge must be a list with one answer per text",
                                     field="edge")
            answers = tuple(_edge_answer(item, i) for i, item in enumerate(edge))
        request_id = raw.get("request_id")
        if request_id is not None and (not isinstance(request_id, str)
                                       or not 0 < len(request_id) <= MAX_REQUEST_ID):
            raise RequestRefused(ErrorCode.INVALID_REQUEST,
                                 f"request_id must be a string of 1-{MAX_REQUEST_ID} characters", field="request_id")
        return cls(texts, answers, request_id)


def _texts(texts: Any, max_texts: int, max_chars: int) -> tuple[str, ...]:
    if not isinstance(texts, list) or not texts:
        raise RequestRefused(ErrorCode.INVALID_REQUEST, "texts must be a non-empty list of strings", field="texts")
    if len(texts) > max_texts:
        raise RequestRefused(ErrorCode.TOO_MANY_TEXTS, f"at most {max_texts} texts per call, got {len(texts)}",
                             field="texts", limit=max_texts)
    for i, text in enumerate(texts):
        where = f"texts[{i}]"
        if not isinstance(text, str) or not text.strip():
            raise RequestRefused(ErrorCode.INVALID_REQUEST, f"{where} must be a non-blank string", field=where)
        if len(text) > max_chars:
            raise RequestRefused(ErrorCode.TEXT_TOO_LONG,
                                 f"{where} has {len(text)} characters; the limit is {max_chars}",
                                 field=where, limit=max_chars)
        problem = text_problem(text)
        if problem is not None:  # the tokenizer would raise on it: a 500 for the whole call
            raise RequestRefused(ErrorCode.INVALID_TEXT, f"{where} {problem}: not valid Unicode text",
                                 field=where, index=i)
    return tuple(texts)


def _edge_answer(item: Any, i: int) -> Answer:
    try:
        return Answer.from_json(item, f"edge[{i}]")
    except ContractViolation:
        raise RequestRefused(ErrorCode.INVALID_REQUEST,
                             f"edge[{i}] must be {{\"label\": string, \"confidence\": number in [0, 1]}}",
                             field=f"edge[{i}]") from None


# --------------------------------------------------------------------------- reply


@dataclass(frozen=True, slots=True)
class TextResult:
    label: str
    confidence: float  # the calibrated max probability (the label may be `oos` below the cloud's threshold)
    top_k: tuple[Answer, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "confidence": self.confidence, "top_k": [a.to_json() for a in self.top_k]}

    @classmethod
    def from_json(cls, raw: Any, where: str) -> TextResult:
        item = jv.obj(raw, where)
        top_k = item.get("top_k")
        top_k = jv.array([] if top_k is None else top_k, f"{where}.top_k")
        return cls(jv.string(item.get("label"), f"{where}.label"),
                   jv.probability(item.get("confidence"), f"{where}.confidence"),
                   tuple(Answer.from_json(t, f"{where}.top_k[{j}]") for j, t in enumerate(top_k)))


@dataclass(frozen=True, slots=True)
class BudgetInfo:
    """The tenant's budget after a call (in the reply of `POST /v1/infer`)."""

    remaining: int
    limit: int
    period: str
    resets_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {"remaining": self.remaining, "limit": self.limit, "period": self.period,
                "resets_at": None if self.resets_at is None else self.resets_at.isoformat()}

    @classmethod
    def from_json(cls, raw: Any, where: str = "budget") -> BudgetInfo:
        b = jv.obj(raw, where)
        return cls(remaining=jv.count(b.get("remaining"), f"{where}.remaining"),
                   limit=jv.count(b.get("limit"), f"{where}.limit"),
                   period=jv.string(b.get("period", ""), f"{where}.period", empty=True),
                   resets_at=jv.aware_time(b.get("resets_at"), f"{where}.resets_at"))


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """`GET /v1/budget`: the calling tenant's budget for the current period."""

    tenant: str
    period: str
    limit: int
    remaining: int
    spent: int
    resets_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "period": self.period, "limit": self.limit, "remaining": self.remaining,
                "spent": self.spent, "resets_at": self.resets_at.isoformat()}

    @classmethod
    def from_json(cls, raw: Any) -> BudgetStatus:
        b = jv.obj(raw, "the body")
        resets_at = jv.aware_time(b.get("resets_at"), "resets_at")
        if resets_at is None:
            raise ContractViolation("resets_at is missing")
        return cls(tenant=jv.string(b.get("tenant"), "tenant"), period=jv.string(b.get("period"), "period"),
                   limit=jv.count(b.get("limit"), "limit"), remaining=jv.count(b.get("remaining"), "remaining"),
                   spent=jv.count(b.get("spent"), "spent"), resets_at=resets_at)


@dataclass(frozen=True, slots=True)
class Usage:
    """What a metered backend (an LLM) reported for one call, and what it cost at the configured prices:
    the cloud's backends return it, the budget charges `cost_usd`, the reply carries it. On the wire
    `cost_usd` is an exact decimal string (`"0.0000112"`), never a float."""

    input_tokens: int
    output_tokens: int
    cost_usd: Decimal

    def to_json(self) -> dict[str, Any]:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cost_usd": str(self.cost_usd)}

    @classmethod
    def from_json(cls, raw: Any, where: str = "usage") -> Usage:
        u = jv.obj(raw, where)
        return cls(jv.count(u.get("input_tokens"), f"{where}.input_tokens"),
                   jv.count(u.get("output_tokens"), f"{where}.output_tokens"),
                   _usd(u.get("cost_usd"), f"{where}.cost_usd"))


def _usd(value: Any, where: str) -> Decimal:
    text = jv.string(value, where)
    try:
        usd = Decimal(text)
    except InvalidOperation:
        usd = None
    if usd is None or not usd.is_finite() or usd < 0:
        raise ContractViolation(f"{where} is {jv.kind(value)}, not a decimal number of dollars >= 0")
    return usd


@dataclass(frozen=True, slots=True)
class InferReply:
    results: tuple[TextResult, ...]
    model_version: str
    cost: int
    budget: BudgetInfo | None = None  # None when the cloud could not read it after charging
    request_id: str | None = None
    model_status: str = "current"  # "stale": the last verified model answers because the current one cannot
    degraded_reason: str | None = None  # why, when stale
    usage: Usage | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "results": [r.to_json() for r in self.results],
            "model_version": self.model_version,
            "model_status": self.model_status,
            "cost": self.cost,
            "budget": None if self.budget is None else self.budget.to_json(),
            "request_id": self.request_id,
        }
        if self.degraded_reason is not None:
            body["degraded"] = {"reason": self.degraded_reason}
        if self.usage is not None:
            body["usage"] = self.usage.to_json()
        return body

    @classmethod
    def from_json(cls, raw: Any, *, n_texts: int | None = None) -> InferReply:
        """The reply in `raw`; with `n_texts`, it must hold exactly one result per text sent."""
        body = jv.obj(raw, "the body")
        items = jv.array(body.get("results"), "results")
        if n_texts is not None and len(items) != n_texts:
            raise ContractViolation(f"{len(items)} results for {n_texts} texts")
        budget, usage, degraded = body.get("budget"), body.get("usage"), body.get("degraded")
        return cls(
            results=tuple(TextResult.from_json(item, f"results[{i}]") for i, item in enumerate(items)),
            model_version=jv.string(body.get("model_version", ""), "model_version", empty=True),
            cost=jv.count(body.get("cost", 0), "cost"),
            budget=None if budget is None else BudgetInfo.from_json(budget),
            request_id=jv.opt_string(body.get("request_id"), "request_id"),
            model_status=jv.string(body.get("model_status", "current"), "model_status"),
            degraded_reason=None if degraded is None else jv.string(jv.obj(degraded, "degraded").get("reason"),
                                                                    "degraded.reason"),
            usage=None if usage is None else Usage.from_json(usage),
        )


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """`{"error": {"code", "message", ...details}}`: the body of every non-200 answer of the cloud API."""

    code: str
    message: str
    details: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **(self.details or {})}}

    @classmethod
    def from_json(cls, raw: Any) -> ErrorBody:
        """Lenient: gateways answer 502/503 with HTML or other shapes, which is no reason to treat a
        retryable status differently, so anything unreadable is an empty code and message."""
        error = raw.get("error") if isinstance(raw, dict) else None
        if not isinstance(error, dict):
            return cls("", "")
        code, message = error.get("code"), error.get("message")
        details = {k: v for k, v in error.items() if k not in ("code", "message")}
        return cls(code if isinstance(code, str) else "", message if isinstance(message, str) else "", details)

    def resets_at(self) -> datetime | None:
        """A BUDGET_EXHAUSTED body's reset time (strict: `ContractViolation` if present but unusable)."""
        return jv.aware_time((self.details or {}).get("resets_at"), "error.resets_at")

