"""Per-tenant daily budgets in one DynamoDB table.

The table's items are `cloud_functions.budget_items`'s, its conditional writes
`cloud_functions.budget_table`'s.

Invariant of a period row: remaining + spent == limit. A charge is ONE conditional write
(`remaining >= :units`), so concurrent requests can never overspend; the row is created lazily from the
tenant's configured limit by a put conditioned on `attribute_not_exists`, so racing creators agree.

Idempotent charging (why a transaction): with an idempotency key, the charge record and the deduction are
written in ONE `TransactWriteItems` — a conditional put of `charge#<key>` (`attribute_not_exists`, or
refunded, or past its TTL) plus the conditional update of the period row. Both happen or neither does, so
there is no crash window: a duplicate key arriving concurrently, after a lost response (botocore retry),
after a Lambda crash, or after Powertools' idempotency record has expired, finds the charge record and gets
the original reservation back (`replayed=True`) without a second deduction — but only for the same payload:
the record keeps the caller's digest of it (`payload_sha256`), and the same key with another digest, or
another cost, is `IdempotencyConflict` (409) for as long as the record lives, so a reused key can never
buy a free inference once Powertools' shorter-lived record is gone. The two-step alternative (put
the record, then deduct) either double-charges or silently skips a charge if the process dies between the
steps. Cost: a transaction is 2 items x 2 write units instead of 1, paid only when a key is given.
Without a key the charge is the single conditional UpdateItem — cheapest, but a retried call whose first
response was lost would charge twice, so the handler should always pass a key (the client's
Idempotency-Key, else the Lambda request id, which is stable across botocore's own retries).

A refund of a keyed charge flips the record's state to `refunded` in the same transaction that credits the
period row, so a refund is applied at most once, and a later retry of the same key may charge again (the
failed request was given back, Powertools deletes its record on failure, so the retry is a new attempt).

Metered calls (an LLM paid per token) are reserved at their upper bound and settled once their cost is
known: `settle` gives back the unused units and writes `settled_units` on the key's record in the same
transaction (at most once; a settled charge is never refunded). A replay of the key reports the settled
cost. Reserving the bound first is what keeps concurrent calls from overspending: the real cost is only
known after the tokens are spent.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from cloud_functions import clients
from cloud_functions.budget_items import ChargeRecord, PeriodRow, period_of, resets_at
from cloud_functions.budget_table import (
    AlreadyCharged,
    BudgetTable,
    DynamoDBClient,
    PeriodRowMissing,
    WriteConflict,
)
from cloud_functions.errors import BadRequest, BudgetStoreUnavailable, IdempotencyConflict, UnknownTenant
from cloud_functions.pricing import Pricing  # noqa: F401  (re-exported: the service imports it from here)
# BudgetStatus: the wire type of GET /v1/budget (`remaining` never negative); the key rule, the handler's too
from modelpack.cloud_api import BudgetStatus, is_idempotency_key

if TYPE_CHECKING:
    from cloud_functions.settings import Settings

# An API key id, or an IAM role/user ARN (`service.iam_tenant`: / + = , appear in those).
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/+=,\-]{0,127}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")  # a lower-case hex SHA-256

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Reservation:
    """Units taken from a tenant's budget before inference; give them back with `BudgetLedger.refund`."""

    tenant: str
    period: str
    units: int
    idempotency_key: str | None
    replayed: bool  # the key had been charged before: nothing new was taken, this is the original charge
    resets_at: datetime
    settled_units: int | None = None  # a replayed metered charge: what its first call really cost


class BudgetLedger:
    def __init__(
        self,
        table_name: str,
        *,
        dynamodb_client: DynamoDBClient,
        default_limit: int | None,
        clock: Clock = utc_now,
        charge_ttl: timedelta = timedelta(days=2),
        period_retention: timedelta = timedelta(days=400),
        max_attempts: int = 5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """`default_limit=None` makes tenants without a configuration unknown (403) instead of defaulted.

        `charge_ttl` must outlive every retry of a key (Powertools' idempotency expiry is 1 h by default);
        `max_attempts` bounds the loop that creates a missing period row or retries transaction conflicts.
        """
        if default_limit is not None and default_limit < 0:
            raise ValueError("default_limit must be >= 0")
        if max_attempts < 2:
            raise ValueError("max_attempts must be >= 2 (one to create the period row, one to charge)")
        self._table = BudgetTable(
            table_name, dynamodb_client, charge_ttl=charge_ttl, period_retention=period_retention
        )
        self._default_limit = default_limit
        self._clock = clock
        self._max_attempts = max_attempts
        self._sleep = sleep

    @classmethod
    def from_settings(
        cls, settings: Settings, *, dynamodb_client: DynamoDBClient | None = None, clock: Clock = utc_now
    ) -> BudgetLedger:
        return cls(
            settings.budget_table,
            dynamodb_client=clients.dynamodb() if dynamodb_client is None else dynamodb_client,
            default_limit=settings.default_daily_budget,
            clock=clock,
        )

    def reserve(
        self,
        tenant: str,
        units: int,
        *,
        idempotency_key: str | None = None,
        payload_digest: str | None = None,
    ) -> Reservation:
        """Take `units` from today's budget, once per `idempotency_key`. `payload_digest` (a hex SHA-256 of
        what is being paid for) is kept in the key's charge record: a replay must bring the same digest."""
        _check_tenant(tenant)
        if type(units) is not int or units < 1:
            raise BadRequest("a charge must be a positive integer number of units")
        if idempotency_key is not None and not is_idempotency_key(idempotency_key):
            raise BadRequest("the idempotency key must be 1-255 printable ASCII characters without spaces")
        if payload_digest is not None and not _DIGEST.match(payload_digest):
            raise BadRequest("a payload digest must be a lower-case hex SHA-256")
        for attempt in range(self._max_attempts):
            now = self._now()
            try:
                if idempotency_key is None:
                    self._table.deduct(tenant, units, now)
                else:
                    self._table.deduct_once(tenant, units, idempotency_key, payload_digest, now)
                return Reservation(tenant, period_of(now), units, idempotency_key, False, resets_at(now))
            except AlreadyCharged as charged:
                assert idempotency_key is not None
                return _replay(tenant, idempotency_key, units, payload_digest, charged.record)
            except PeriodRowMissing:
                self._table.create_period_row(tenant, now, self._configured_limit(tenant))
            except WriteConflict:
                self._backoff(attempt)
        raise BudgetStoreUnavailable("the budget charge kept conflicting", attempts=self._max_attempts)

    def refund(self, reservation: Reservation) -> bool:
        """Give the units back to the period they were taken from. False if there was nothing to refund
        (a keyed charge already refunded)."""
        r = reservation
        return self._table.refund(r.tenant, r.period, r.units, r.idempotency_key, self._now())

    def settle(self, reservation: Reservation, charged: int) -> bool:
        """Keep `charged` units of `reservation` (0 <= charged <= units) and give the rest back. False if
        there was nothing to settle (a replayed, refunded or already settled charge)."""
        r = reservation
        if type(charged) is not int or not 0 <= charged <= r.units:
            raise BadRequest("a settlement keeps between 0 and the reserved units")
        if r.replayed:
            return False
        return self._table.settle(r.tenant, r.period, r.units, charged, r.idempotency_key, self._now())

    def status(self, tenant: str) -> BudgetStatus:
        _check_tenant(tenant)
        now = self._now()
        row = self._table.period_row(tenant, period_of(now))
        if row is None:
            limit = self._configured_limit(tenant)
            return BudgetStatus(tenant, period_of(now), limit, limit, 0, resets_at(now))
        return _status(tenant, row, now)

    def set_limit(self, tenant: str, limit: int) -> BudgetStatus:
        """Store the tenant's daily limit and apply it to today's row at once (remaining moves by the
        difference, so units already spent today stay spent)."""
        _check_tenant(tenant)
        if type(limit) is not int or limit < 0:
            raise BadRequest("a daily limit must be a non-negative integer")
        self._table.put_config(tenant, limit, self._now())
        for _attempt in range(self._max_attempts):
            now = self._now()
            period = period_of(now)
            row = self._table.period_row(tenant, period)
            if row is None:
                created = self._table.create_period_row(
                    tenant, now, limit, failure="the limit could not be written"
                )
                if created:
                    return BudgetStatus(tenant, period, limit, limit, 0, resets_at(now))
                continue  # another request created it: apply the limit to that row
            if row.limit == limit:
                return _status(tenant, row, now)
            updated = self._table.move_limit(tenant, period, row.limit, limit)
            if updated is not None:
                return _status(tenant, updated, now)
        raise BudgetStoreUnavailable("today's budget row kept changing", attempts=self._max_attempts)

    def _configured_limit(self, tenant: str) -> int:
        limit = self._table.configured_limit(tenant)
        if limit is not None:
            return limit
        if self._default_limit is None:
            raise UnknownTenant(f"tenant {tenant!r} has no budget configuration", tenant=tenant)
        return self._default_limit

    def _now(self) -> datetime:
        now = self._clock()
        return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)

    def _backoff(self, attempt: int) -> None:
        self._sleep(random.uniform(0, min(0.5, 0.02 * 2**attempt)))  # jitter, not crypto


def _replay(tenant: str, key: str, units: int, digest: str | None, charged: ChargeRecord) -> Reservation:
    """The original reservation of a key charged before, if this is the same request again."""
    # A record without a digest (written before digests, or by a caller without one) is judged by its
    # units alone; it expires with its TTL, so that weaker rule does not outlive two days.
    if digest is not None and charged.payload_sha256 is not None and charged.payload_sha256 != digest:
        raise IdempotencyConflict("this idempotency key was already used for a different request")
    if charged.units != units:
        raise IdempotencyConflict(
            "this idempotency key was already used for a different charge",
            charged_units=charged.units,
            requested_units=units,
        )
    period_end = datetime.fromisoformat(charged.period).replace(tzinfo=UTC) + timedelta(days=1)
    return Reservation(tenant, charged.period, units, key, True, period_end, charged.settled_units)


def _check_tenant(tenant: str) -> None:
    if not isinstance(tenant, str) or not _TENANT.match(tenant):
        raise BadRequest(
            "a tenant id is 1-128 characters of letters, digits and . _ : @ / + = , -", tenant=str(tenant)
        )


def _status(tenant: str, row: PeriodRow, now: datetime) -> BudgetStatus:
    return BudgetStatus(tenant, row.period, row.limit, max(0, row.remaining), row.spent, resets_at(now))
