"""The inference flow, free of HTTP and of Powertools: validate, price, reserve, infer, refund on failure.

    parse_infer_request(body, limits)  -> InferRequest            (400s with stable codes)
    tenant_from(request_context)       -> the API key's id        (never the body)
    InferenceService.infer(tenant, request, charge_key=...)      -> the response payload
    InferenceService.budget(tenant)                               -> the tenant's status

Order matters: the model is made ready first (a cold start that cannot load the model charges nothing),
then the cost is reserved in ONE conditional write (two concurrent calls can never both take the last
unit; a call that costs more than what is left is refused whole), then the backend runs; if it fails,
the reservation is refunded before the error goes out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from cloud_functions.backends import (
    BackendError,
    Inference,
    InferenceBackend,
    LazyBackend,
    StaleBackend,
    TextResult,
    backend_loader,
)
from cloud_functions.budget import BudgetLedger, BudgetStatus, Pricing, Reservation, utc_now
from cloud_functions.errors import (
    BudgetExhausted,
    BudgetStoreUnavailable,
    InvalidIdempotencyKey,
    InvalidJson,
    InvalidRequest,
    InvalidText,
    ModelUnavailable,
    TextTooLong,
    TooManyTexts,
    UnknownTenant,
)
from modelpack.limits import text_problem

if TYPE_CHECKING:
    from cloud_functions.budget import Clock
    from cloud_functions.settings import InferenceSettings, Settings

logger = logging.getLogger(__name__)

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # the ledger's rule: printable ASCII, no spaces
_REQUEST_FIELDS = frozenset({"texts", "edge", "request_id"})
_MAX_REQUEST_ID = 128


# --------------------------------------------------------------------------- request


@dataclass(frozen=True, slots=True)
class Limits:
    max_texts: int
    max_chars: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(max_texts=settings.max_texts_per_call, max_chars=settings.max_chars_per_text)


@dataclass(frozen=True, slots=True)
class EdgeAnswer:
    label: str
    confidence: float


@dataclass(frozen=True, slots=True)
class InferRequest:
    texts: tuple[str, ...]
    edge: tuple[EdgeAnswer, ...] | None = None  # the edge's own answers, same order as texts
    request_id: str | None = None

    def to_payload(self) -> dict[str, Any]:
        """Plain JSON data (what Powertools hashes for idempotency); `from_payload` reads it back."""
        return {
            "texts": list(self.texts),
            "edge": None if self.edge is None else [[a.label, a.confidence] for a in self.edge],
            "request_id": self.request_id,
        }

    @property
    def payload_digest(self) -> str:
        """SHA-256 of the texts, canonically encoded (a JSON array, ASCII-escaped, no spaces): what the
        ledger's charge record remembers, so a key reused for other texts is refused even once Powertools'
        record has expired. The edge answers are not part of it: they change neither answer nor cost."""
        canonical = json.dumps(list(self.texts), ensure_ascii=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> InferRequest:
        edge = payload.get("edge")
        return cls(
            texts=tuple(payload["texts"]),
            edge=None if edge is None else tuple(EdgeAnswer(label, confidence) for label, confidence in edge),
            request_id=payload.get("request_id"),
        )


def parse_infer_request(body: str | bytes | None, limits: Limits) -> InferRequest:
    if not body:
        raise InvalidJson("the request body must be a JSON object")
    try:
        raw = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise InvalidJson("the request body is not valid JSON") from None
    if not isinstance(raw, dict):
        raise InvalidJson("the request body must be a JSON object")
    unknown = sorted(set(raw) - _REQUEST_FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(unknown)}", field=unknown[0])

    texts = raw.get("texts")
    if not isinstance(texts, list) or not texts:
        raise InvalidRequest("texts must be a non-empty list of strings", field="texts")
    if len(texts) > limits.max_texts:
        raise TooManyTexts(
            f"at most {limits.max_texts} texts per call, got {len(texts)}",
            field="texts",
            limit=limits.max_texts,
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise InvalidRequest(f"texts[{i}] must be a non-blank string", field=f"texts[{i}]")
        if len(text) > limits.max_chars:
            raise TextTooLong(
                f"texts[{i}] has {len(text)} characters; the limit is {limits.max_chars}",
                field=f"texts[{i}]",
                limit=limits.max_chars,
            )
        problem = text_problem(text)
        if problem is not None:  # the tokenizer would raise on it: a 500 for the whole call
            raise InvalidText(f"texts[{i}] {problem}: not valid Unicode text", field=f"texts[{i}]", index=i)

    edge = raw.get("edge")
    answers: tuple[EdgeAnswer, ...] | None = None
    if edge is not None:
        if not isinstance(edge, list) or len(edge) != len(texts):
            raise InvalidRequest("edge must be a list with one answer per text", field="edge")
        answers = tuple(_edge_answer(item, i) for i, item in enumerate(edge))

    request_id = raw.get("request_id")
    if request_id is not None and (
        not isinstance(request_id, str) or not 0 < len(request_id) <= _MAX_REQUEST_ID
    ):
        raise InvalidRequest(
            f"request_id must be a string of 1-{_MAX_REQUEST_ID} characters", field="request_id"
        )
    return InferRequest(tuple(texts), answers, request_id)


def _edge_answer(item: Any, i: int) -> EdgeAnswer:
    label = item.get("label") if isinstance(item, dict) else None
    confidence = item.get("confidence") if isinstance(item, dict) else None
    if (
        not isinstance(label, str)
        or not label
        or isinstance(confidence, bool)
        or not isinstance(confidence, int | float)
        or not 0.0 <= confidence <= 1.0
    ):
        raise InvalidRequest(
            f"edge[{i}] must be {{\"label\": string, \"confidence\": number in [0, 1]}}", field=f"edge[{i}]"
        )
    return EdgeAnswer(label, float(confidence))


def tenant_from(request_context: Mapping[str, Any] | None) -> str:
    """The tenant is the id of the API key API Gateway validated (requestContext.identity.apiKeyId).
    Never taken from the body or a header: a caller cannot name someone else's budget."""
    identity = (request_context or {}).get("identity") or {}
    tenant = identity.get("apiKeyId") if isinstance(identity, Mapping) else None
    if not isinstance(tenant, str) or not tenant:
        raise UnknownTenant("the request carries no API key identity")
    return tenant


def idempotency_key_from(headers: Mapping[str, str] | None) -> str | None:
    """The `Idempotency-Key` header (`headers` must be case-insensitive), or None when absent."""
    value = (headers or {}).get("Idempotency-Key")
    if value is None:
        return None
    if not _IDEMPOTENCY_KEY.match(value):
        raise InvalidIdempotencyKey(
            "the Idempotency-Key header must be 1-255 printable ASCII characters without spaces"
        )
    return value


# --------------------------------------------------------------------------- service


class MetricsSink(Protocol):
    def count(self, name: str, value: float = 1) -> None: ...
    def milliseconds(self, name: str, value: float) -> None: ...


class NoMetrics:
    def count(self, name: str, value: float = 1) -> None:
        pass

    def milliseconds(self, name: str, value: float) -> None:
        pass


class InferenceService:
    def __init__(
        self,
        *,
        ledger: BudgetLedger,
        backend: Callable[[], InferenceBackend],
        pricing: Pricing,
        limits: Limits,
        metrics: MetricsSink | None = None,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        """`backend` is called for every request (a `LazyBackend` loads once and then hands back the same
        object); it raises `ModelUnavailable` when no model can be had."""
        self.ledger = ledger
        self.pricing = pricing
        self.limits = limits
        self._backend = backend
        self._metrics = metrics or NoMetrics()
        self._timer = timer

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        options: InferenceSettings,
        *,
        dynamodb_client: Any = None,
        s3_client: Any = None,
        bedrock_client: Any = None,
        backend: InferenceBackend | None = None,
        clock: Clock = utc_now,
        metrics: MetricsSink | None = None,
    ) -> InferenceService:
        """Wiring: clients are created here only when none is injected; `backend` replaces the model."""
        load = backend_loader(settings, options, s3_client=s3_client, bedrock_client=bedrock_client)
        return cls(
            ledger=BudgetLedger.from_settings(settings, dynamodb_client=dynamodb_client, clock=clock),
            backend=(lambda: backend) if backend is not None else LazyBackend(load, fallback=load.last_good),
            pricing=Pricing.from_settings(settings),
            limits=Limits.from_settings(settings),
            metrics=metrics,
        )

    def infer(
        self, tenant: str, request: InferRequest, *, charge_key: str, request_id: str
    ) -> dict[str, Any]:
        """Charge `tenant` once per `charge_key` and answer. `request_id` is echoed when the body has none."""
        backend = self._backend()  # before charging: a model that cannot load costs the caller nothing
        cost = self.pricing.cost(len(request.texts))
        reservation = self._reserve(tenant, cost, charge_key, request.payload_digest)
        started = self._timer()
        try:
            inference = backend.infer(request.texts)
            if len(inference.results) != len(request.texts):
                raise BackendError(f"{len(inference.results)} results for {len(request.texts)} texts")
        except Exception as exc:  # anything after the charge gives the units back, then propagates
            self._refund(reservation, exc)
            if isinstance(exc, BackendError):
                raise ModelUnavailable("the model failed to answer") from exc
            raise
        self._metrics.milliseconds("InferenceLatency", (self._timer() - started) * 1000)
        self._metrics.count("TextsInferred", len(request.texts))
        self._record_edge_agreement(request, inference.results)
        stale = backend if isinstance(backend, StaleBackend) else None
        if stale is not None:
            self._metrics.count("StaleModelResponses")
        return {
            "results": [_result(r) for r in inference.results],
            "model_version": backend.model_version,
            # Additive: "stale" when the last verified version answers because the current one cannot.
            "model_status": "current" if stale is None else "stale",
            **({} if stale is None else {"degraded": {"reason": stale.reason}}),
            "cost": cost,
            "budget": self._budget_after(tenant),
            "request_id": request.request_id or request_id,
            **({} if inference.usage is None else {"usage": _usage(inference)}),
        }

    def budget(self, tenant: str) -> dict[str, Any]:
        return self.ledger.status(tenant).to_dict()

    # ------------------------------------------------------------------ helpers

    def _reserve(self, tenant: str, cost: int, charge_key: str, digest: str) -> Reservation | None:
        if cost == 0:  # free calls (both prices 0) need no write at all
            return None
        try:
            reservation = self.ledger.reserve(tenant, cost, idempotency_key=charge_key, payload_digest=digest)
        except BudgetExhausted:
            self._metrics.count("BudgetExhausted")
            raise
        self._metrics.count("ChargeReplayed" if reservation.replayed else "UnitsCharged",
                            1 if reservation.replayed else cost)
        return reservation

    def _refund(self, reservation: Reservation | None, cause: BaseException) -> None:
        if reservation is None:
            return
        try:
            refunded = self.ledger.refund(reservation)
        except BudgetStoreUnavailable:
            # The units stay spent; the log line is what reconciles them (tenant, period, key, units).
            logger.exception(
                "refund failed after %s", type(cause).__name__,
                extra={"tenant": reservation.tenant, "period": reservation.period,
                       "charge_key": reservation.idempotency_key, "units": reservation.units},
            )
            self._metrics.count("RefundFailures")
            return
        self._metrics.count("Refunds" if refunded else "RefundsSkipped")

    def _budget_after(self, tenant: str) -> dict[str, Any] | None:
        """The budget after this call, or None if it cannot be read: the answer is already paid for, so
        a failed read must not turn it into an error."""
        try:
            status: BudgetStatus = self.ledger.status(tenant)
        except BudgetStoreUnavailable:
            logger.warning("budget status unavailable after a charged call", exc_info=True)
            self._metrics.count("BudgetStatusFailures")
            return None
        return {
            "remaining": status.remaining,
            "limit": status.limit,
            "period": status.period,
            "resets_at": status.resets_at.isoformat(),
        }

    def _record_edge_agreement(self, request: InferRequest, results: Sequence[TextResult]) -> None:
        if request.edge is None:
            return
        agreed = sum(edge.label == result.label for edge, result in zip(request.edge, results, strict=True))
        self._metrics.count("EdgeCompared", len(results))
        self._metrics.count("EdgeAgreed", agreed)


def _result(result: TextResult) -> dict[str, Any]:
    return {
        "label": result.label,
        "confidence": result.confidence,
        "top_k": [{"label": s.label, "confidence": s.confidence} for s in result.top_k],
    }


def _usage(inference: Inference) -> dict[str, Any]:
    assert inference.usage is not None
    return {
        "input_tokens": inference.usage.input_tokens,
        "output_tokens": inference.usage.output_tokens,
        "cost_usd": str(inference.usage.cost_usd),  # exact decimal, as a string
    }
