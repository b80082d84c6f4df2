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
    backend_loader,
)
from cloud_functions.budget import BudgetLedger, BudgetStatus, Pricing, Reservation, utc_now
from cloud_functions.errors import (
    BudgetExhausted,
    BudgetStoreUnavailable,
    InvalidIdempotencyKey,
    ModelUnavailable,
    UnknownTenant,
    refused,
)
from modelpack.cloud_api import (
    IDEMPOTENCY_HEADER,
    BudgetInfo,
    InferReply,
    InferRequest,
    RequestRefused,
    TextResult,
    decode_json,
    is_idempotency_key,
)

if TYPE_CHECKING:
    from cloud_functions.budget import Clock
    from cloud_functions.settings import InferenceSettings, Settings

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- request


@dataclass(frozen=True, slots=True)
class Limits:
    max_texts: int
    max_chars: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(max_texts=settings.max_texts_per_call, max_chars=settings.max_chars_per_text)


def payload_digest(request: InferRequest) -> str:
    """SHA-256 of the texts, canonically encoded (a JSON array, ASCII-escaped, no spaces): what the ledger's
    charge record remembers, so a key reused for other texts is refused even once Powertools' record has
    expired. The edge answers are not part of it: they change neither answer nor cost."""
    canonical = json.dumps(list(request.texts), ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def parse_infer_request(body: str | bytes | None, limits: Limits) -> InferRequest:
    """The request in `body` (`modelpack.cloud_api.InferRequest`), or the typed 400 it is refused with."""
    try:
        return InferRequest.from_json(decode_json(body), max_texts=limits.max_texts, max_chars=limits.max_chars)
    except RequestRefused as refusal:
        raise refused(refusal) from None


def tenant_from(request_context: Mapping[str, Any] | None, auth_mode: str = "apikey") -> str:
    """The calling tenant, from the one request-context field the configured authorizer vouches for; never
    from the body or a header, so a caller cannot name someone else's budget.

    apikey: the id of the API key API Gateway validated (identity.apiKeyId).
    iam:    the IAM principal whose SigV4 signature API Gateway verified (identity.userArn), by `iam_tenant`.
    """
    identity = (request_context or {}).get("identity") or {}
    if not isinstance(identity, Mapping):
        identity = {}
    if auth_mode == "iam":
        arn = identity.get("userArn")
        if not isinstance(arn, str) or not arn:
            raise UnknownTenant("the request carries no IAM identity")
        return iam_tenant(arn)
    tenant = identity.get("apiKeyId")
    if not isinstance(tenant, str) or not tenant:
        raise UnknownTenant("the request carries no API key identity")
    return tenant


# arn:<partition>:sts::<account>:assumed-role/<role>/<session>  |  arn:<partition>:iam::<account>:user/<path/>name
_ASSUMED_ROLE = re.compile(r"^arn:(?P<partition>aws[a-z-]*):sts::(?P<account>\d{12}):assumed-role/(?P<role>[\w+=,.@-]{1,64})/[\w+=,.@-]+$")
_IAM_USER = re.compile(r"^arn:(?P<partition>aws[a-z-]*):iam::(?P<account>\d{12}):user/(?:[\x21-\x7e]*/)?(?P<user>[\w+=,.@-]{1,64})$")


def iam_tenant(user_arn: str) -> str:
    """The tenant of a SigV4 caller: its IAM role, or its IAM user.

    A role's session is deliberately left out. Whoever may assume a role names the session
    (`RoleSessionName`, any string), so a tenant per session would let a device reset its budget by
    picking a new name; the role is what IAM actually authorised, and what an operator grants and sees in
    the console. A device fleet therefore shares the budget of its role: give tenants separate roles.
    The tenant is written as the role's ARN without its path (the assumed-role ARN does not carry it):
    `arn:aws:iam::123456789012:role/edge-acme`. A user is `arn:aws:iam::123456789012:user/<name>`
    (user names are unique in an account whatever their path). Anything else (the root user, a federated
    user) is refused: a budget needs a principal an operator can name and grant."""
    if match := _ASSUMED_ROLE.match(user_arn):
        return f"arn:{match['partition']}:iam::{match['account']}:role/{match['role']}"
    if match := _IAM_USER.match(user_arn):
        return f"arn:{match['partition']}:iam::{match['account']}:user/{match['user']}"
    raise UnknownTenant("the caller is neither an IAM role nor an IAM user")


def idempotency_key_from(headers: Mapping[str, str] | None) -> str | None:
    """The `Idempotency-Key` header (`headers` must be case-insensitive), or None when absent."""
    value = (headers or {}).get(IDEMPOTENCY_HEADER)
    if value is None:
        return None
    if not is_idempotency_key(value):
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
        fee = self.pricing.cost(len(request.texts))
        # A metered backend's worst case is reserved with the fee: the real token cost is known only after.
        bound = self.pricing.units(backend.max_cost_usd(request.texts))
        reservation = self._reserve(tenant, fee + bound, charge_key, payload_digest(request))
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
        cost = self._settle(reservation, fee, bound, inference)
        self._metrics.count("TextsInferred", len(request.texts))
        self._record_edge_agreement(request, inference.results)
        stale = backend if isinstance(backend, StaleBackend) else None
        if stale is not None:
            self._metrics.count("StaleModelResponses")
        return InferReply(
            results=tuple(inference.results),
            model_version=backend.model_version,
            cost=cost,
            budget=self._budget_after(tenant),
            request_id=request.request_id or request_id,
            model_status="current" if stale is None else "stale",
            degraded_reason=None if stale is None else stale.reason,
            usage=inference.usage,
        ).to_json()

    def budget(self, tenant: str) -> dict[str, Any]:
        return self.ledger.status(tenant).to_json()

    # ------------------------------------------------------------------ helpers

    def _settle(self, reservation: Reservation | None, fee: int, bound: int, inference: Inference) -> int:
        """What the call costs in units: the fee plus its tokens' price (at most the bound reserved); the
        reserved units beyond that go back to the tenant. A failed settlement keeps the whole reservation
        charged (never an overspend) and is logged for reconciliation."""
        if bound == 0 or inference.usage is None:
            return fee + bound
        used = self.pricing.units(inference.usage.cost_usd)
        if used > bound:  # a server that ignored max_tokens, or a bound that is wrong: the bound is the cap
            logger.warning("an LLM call cost %s units, more than the %s reserved: charged %s",
                           used, bound, bound)
            self._metrics.count("UsageAboveBound")
            used = bound
        charged = fee + used
        if reservation is None:
            return charged
        if reservation.replayed:
            return reservation.settled_units if reservation.settled_units is not None else reservation.units
        try:
            self.ledger.settle(reservation, charged)
        except BudgetStoreUnavailable:
            logger.exception(
                "settling a metered charge failed: the whole reservation stays spent",
                extra={"tenant": reservation.tenant, "period": reservation.period,
                       "charge_key": reservation.idempotency_key, "units": reservation.units,
                       "cost": charged},
            )
            self._metrics.count("SettleFailures")
            return reservation.units
        self._metrics.count("UnitsReturned", reservation.units - charged)
        return charged

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

    def _budget_after(self, tenant: str) -> BudgetInfo | None:
        """The budget after this call, or None if it cannot be read: the answer is already paid for, so
        a failed read must not turn it into an error."""
        try:
            status: BudgetStatus = self.ledger.status(tenant)
        except BudgetStoreUnavailable:
            logger.warning("budget status unavailable after a charged call", exc_info=True)
            self._metrics.count("BudgetStatusFailures")
            return None
        return BudgetInfo(status.remaining, status.limit, status.period, status.resets_at)

    def _record_edge_agreement(self, request: InferRequest, results: Sequence[TextResult]) -> None:
        if request.edge is None:
            return
        agreed = sum(edge.label == result.label for edge, result in zip(request.edge, results, strict=True))
        self._metrics.count("EdgeCompared", len(results))
        self._metrics.count("EdgeAgreed", agreed)

