"""Per-tenant daily budgets in one DynamoDB table.

Items (partition key `tenant_id`, sort key `sk`, all amounts are integer cost units):

    sk = "YYYY-MM-DD"       period row (one per tenant per UTC day): limit, remaining, spent, expires_at
    sk = "config"           tenant configuration: daily_limit (absent -> the deployment's default)
    sk = "charge#<key>"     charge record of one idempotency key: period, units, payload_sha256, state,
                            expires_at

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
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from cloud_functions.errors import (
    BadRequest,
    BudgetExhausted,
    BudgetStoreUnavailable,
    IdempotencyConflict,
    UnknownTenant,
)
from modelpack.cloud_api import BudgetStatus  # the wire type of GET /v1/budget; `remaining` never negative

if TYPE_CHECKING:
    from cloud_functions.settings import Settings

PARTITION_KEY = "tenant_id"
SORT_KEY = "sk"
TTL_ATTRIBUTE = "expires_at"
CONFIG_SK = "config"
CHARGE_PREFIX = "charge#"

_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@\-]{0,127}$")
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, no spaces
_DIGEST = re.compile(r"^[0-9a-f]{64}$")  # a lower-case hex SHA-256
_CHARGED, _REFUNDED = "charged", "refunded"

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class DynamoDBClient(Protocol):
    """The part of a boto3 DynamoDB client the ledger uses."""

    def get_item(self, **kwargs: Any) -> dict[str, Any]: ...
    def put_item(self, **kwargs: Any) -> dict[str, Any]: ...
    def update_item(self, **kwargs: Any) -> dict[str, Any]: ...
    def transact_write_items(self, **kwargs: Any) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Reservation:
    """Units taken from a tenant's budget before inference; give them back with `BudgetLedger.refund`."""

    tenant: str
    period: str
    units: int
    idempotency_key: str | None
    replayed: bool  # the key had been charged before: nothing new was taken, this is the original charge
    resets_at: datetime


@dataclass(frozen=True, slots=True)
class Pricing:
    """Integer cost of one call. A cost of 0 (both prices 0) means the handler need not reserve at all."""

    per_request: int
    per_text: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Pricing:
        return cls(per_request=settings.cost_per_request, per_text=settings.cost_per_text)

    def cost(self, n_texts: int) -> int:
        if n_texts < 0:
            raise BadRequest("the number of texts cannot be negative", n_texts=n_texts)
        return self.per_request + self.per_text * n_texts


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
        self._table = table_name
        self._client = dynamodb_client
        self._default_limit = default_limit
        self._clock = clock
        self._charge_ttl = charge_ttl
        self._period_retention = period_retention
        self._max_attempts = max_attempts
        self._sleep = sleep

    @classmethod
    def from_settings(
        cls, settings: Settings, *, dynamodb_client: DynamoDBClient | None = None, clock: Clock = utc_now
    ) -> BudgetLedger:
        if dynamodb_client is None:
            import boto3
            from botocore.config import Config

            # Short timeouts: a budget check must not eat the Lambda's time budget.
            config = Config(
                connect_timeout=2, read_timeout=3, retries={"mode": "standard", "max_attempts": 3}
            )
            dynamodb_client = boto3.client("dynamodb", config=config)
        return cls(
            settings.budget_table,
            dynamodb_client=dynamodb_client,
            default_limit=settings.default_daily_budget,
            clock=clock,
        )

    # ------------------------------------------------------------------ public API

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
        if idempotency_key is not None and not _IDEMPOTENCY_KEY.match(idempotency_key):
            raise BadRequest("the idempotency key must be 1-255 printable ASCII characters without spaces")
        if payload_digest is not None and not _DIGEST.match(payload_digest):
            raise BadRequest("a payload digest must be a lower-case hex SHA-256")
        for attempt in range(self._max_attempts):
            now = self._now()
            try:
                if idempotency_key is None:
                    return self._charge(tenant, units, now)
                return self._charge_once(tenant, units, idempotency_key, payload_digest, now)
            except _PeriodRowMissing:
                self._create_period_row(tenant, now)
            except _Conflict:
                self._backoff(attempt)
        raise BudgetStoreUnavailable("the budget charge kept conflicting", attempts=self._max_attempts)

    def refund(self, reservation: Reservation) -> bool:
        """Give the units back to the period they were taken from. False if there was nothing to refund
        (a keyed charge already refunded)."""
        credit = self._credit(reservation.tenant, reservation.period, reservation.units)
        try:
            if reservation.idempotency_key is None:
                self._client.update_item(**credit)
            else:
                self._client.transact_write_items(
                    TransactItems=[
                        {"Update": self._mark_refunded(reservation)},
                        {"Update": credit},
                    ]
                )
            return True
        except ClientError as exc:
            code = _error_code(exc)
            if code == "ConditionalCheckFailedException":
                return False
            if code == "TransactionCanceledException":
                charge, _row = _cancellation_reasons(exc)
                if charge.get("Code") == "ConditionalCheckFailed":
                    return False
            raise BudgetStoreUnavailable("the refund could not be written", cause=code) from exc
        except BotoCoreError as exc:
            raise BudgetStoreUnavailable("the budget table could not be reached") from exc

    def status(self, tenant: str) -> BudgetStatus:
        _check_tenant(tenant)
        now = self._now()
        row = self._get(tenant, _period(now))
        if row is None:
            limit = self._configured_limit(tenant)
            return BudgetStatus(tenant, _period(now), limit, limit, 0, _resets_at(now))
        return _status(tenant, row, now)

    def set_limit(self, tenant: str, limit: int) -> BudgetStatus:
        """Store the tenant's daily limit and apply it to today's row at once (remaining moves by the
        difference, so units already spent today stay spent)."""
        _check_tenant(tenant)
        if type(limit) is not int or limit < 0:
            raise BadRequest("a daily limit must be a non-negative integer")
        now = self._now()
        self._call(
            "put_item",
            TableName=self._table,
            Item={**_key(tenant, CONFIG_SK), "daily_limit": _n(limit), "updated_at": _s(now.isoformat())},
        )
        for _attempt in range(self._max_attempts):
            now = self._now()
            period = _period(now)
            row = self._get(tenant, period)
            try:
                if row is None:
                    self._client.put_item(**self._new_period_row(tenant, now, limit))
                    return BudgetStatus(tenant, period, limit, limit, 0, _resets_at(now))
                old = int(row["limit"]["N"])
                if old == limit:
                    return _status(tenant, row, now)
                updated = self._client.update_item(
                    TableName=self._table,
                    Key=_key(tenant, period),
                    UpdateExpression="SET #limit = :new, #remaining = #remaining + :delta",
                    ConditionExpression="#limit = :old",
                    ExpressionAttributeNames={"#limit": "limit", "#remaining": "remaining"},
                    ExpressionAttributeValues={":new": _n(limit), ":old": _n(old), ":delta": _n(limit - old)},
                    ReturnValues="ALL_NEW",
                )
                return _status(tenant, updated["Attributes"], now)
            except ClientError as exc:
                if _error_code(exc) != "ConditionalCheckFailedException":
                    raise BudgetStoreUnavailable(
                        "the limit could not be written", cause=_error_code(exc)
                    ) from exc
            except BotoCoreError as exc:
                raise BudgetStoreUnavailable("the budget table could not be reached") from exc
        raise BudgetStoreUnavailable("today's budget row kept changing", attempts=self._max_attempts)

    # ------------------------------------------------------------------ charging

    def _charge(self, tenant: str, units: int, now: datetime) -> Reservation:
        try:
            self._client.update_item(**self._deduct(tenant, _period(now), units))
        except ClientError as exc:
            code = _error_code(exc)
            if code == "ConditionalCheckFailedException":
                if "Item" in exc.response:
                    raise BudgetExhausted(
                        tenant, requested=units, resets_at=_resets_at(now), now=now
                    ) from exc
                raise _PeriodRowMissing from exc
            if code == "TransactionConflictException":  # a keyed charge of this tenant holds the row
                raise _Conflict from exc
            raise BudgetStoreUnavailable("the budget table rejected the charge", cause=code) from exc
        except BotoCoreError as exc:
            raise BudgetStoreUnavailable("the budget table could not be reached") from exc
        return Reservation(tenant, _period(now), units, None, False, _resets_at(now))

    def _charge_once(
        self, tenant: str, units: int, key: str, digest: str | None, now: datetime
    ) -> Reservation:
        try:
            self._client.transact_write_items(
                TransactItems=[
                    {"Put": self._charge_record(tenant, key, _period(now), units, digest, now)},
                    {"Update": self._deduct(tenant, _period(now), units)},
                ]
            )
        except ClientError as exc:
            code = _error_code(exc)
            if code != "TransactionCanceledException":
                raise BudgetStoreUnavailable("the budget table rejected the charge", cause=code) from exc
            charge, row = _cancellation_reasons(exc)
            # A charged key wins over an exhausted budget: its replay must succeed after the budget ran out.
            if charge.get("Code") == "ConditionalCheckFailed":
                return self._replay(tenant, key, units, digest, charge.get("Item"))
            if row.get("Code") == "ConditionalCheckFailed":
                if "Item" in row:
                    raise BudgetExhausted(
                        tenant, requested=units, resets_at=_resets_at(now), now=now
                    ) from exc
                raise _PeriodRowMissing from exc
            if "TransactionConflict" in (charge.get("Code"), row.get("Code")):
                raise _Conflict from exc
            raise BudgetStoreUnavailable("the budget transaction was cancelled", cause=code) from exc
        except BotoCoreError as exc:
            raise BudgetStoreUnavailable("the budget table could not be reached") from exc
        return Reservation(tenant, _period(now), units, key, False, _resets_at(now))

    # ------------------------------------------------------------------ request builders

    def _deduct(self, tenant: str, period: str, units: int) -> dict[str, Any]:
        return {
            "TableName": self._table,
            "Key": _key(tenant, period),
            "UpdateExpression": "SET #remaining = #remaining - :units ADD #spent :units",
            "ConditionExpression": "#remaining >= :units",
            "ExpressionAttributeNames": {"#remaining": "remaining", "#spent": "spent"},
            "ExpressionAttributeValues": {":units": _n(units)},
            # The old row comes back on failure: present -> exhausted, absent -> create the row first.
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }

    def _credit(self, tenant: str, period: str, units: int) -> dict[str, Any]:
        return {
            "TableName": self._table,
            "Key": _key(tenant, period),
            "UpdateExpression": "SET #remaining = #remaining + :units, #spent = #spent - :units",
            "ConditionExpression": "#spent >= :units",
            "ExpressionAttributeNames": {"#remaining": "remaining", "#spent": "spent"},
            "ExpressionAttributeValues": {":units": _n(units)},
        }

    def _charge_record(
        self, tenant: str, key: str, period: str, units: int, digest: str | None, now: datetime
    ) -> dict[str, Any]:
        return {
            "TableName": self._table,
            "Item": {
                **_key(tenant, CHARGE_PREFIX + key),
                "period": _s(period),
                "units": _n(units),
                **({} if digest is None else {"payload_sha256": _s(digest)}),
                "state": _s(_CHARGED),
                "charged_at": _s(now.isoformat()),
                TTL_ATTRIBUTE: _n(_epoch(now + self._charge_ttl)),
            },
            # DynamoDB deletes expired items lazily (up to days late): treat them as absent here.
            "ConditionExpression": "attribute_not_exists(#sk) OR #state = :refunded OR #ttl < :now",
            "ExpressionAttributeNames": {"#sk": SORT_KEY, "#state": "state", "#ttl": TTL_ATTRIBUTE},
            "ExpressionAttributeValues": {":refunded": _s(_REFUNDED), ":now": _n(_epoch(now))},
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }

    def _mark_refunded(self, reservation: Reservation) -> dict[str, Any]:
        assert reservation.idempotency_key is not None
        return {
            "TableName": self._table,
            "Key": _key(reservation.tenant, CHARGE_PREFIX + reservation.idempotency_key),
            "UpdateExpression": "SET #state = :refunded, refunded_at = :now",
            "ConditionExpression": "#state = :charged AND #period = :period AND #units = :units",
            "ExpressionAttributeNames": {"#state": "state", "#period": "period", "#units": "units"},
            "ExpressionAttributeValues": {
                ":refunded": _s(_REFUNDED),
                ":charged": _s(_CHARGED),
                ":now": _s(self._now().isoformat()),
                ":period": _s(reservation.period),
                ":units": _n(reservation.units),
            },
        }

    def _new_period_row(self, tenant: str, now: datetime, limit: int) -> dict[str, Any]:
        return {
            "TableName": self._table,
            "Item": {
                **_key(tenant, _period(now)),
                "limit": _n(limit),
                "remaining": _n(limit),
                "spent": _n(0),
                "created_at": _s(now.isoformat()),
                TTL_ATTRIBUTE: _n(_epoch(_resets_at(now) + self._period_retention)),
            },
            "ConditionExpression": "attribute_not_exists(#sk)",
            "ExpressionAttributeNames": {"#sk": SORT_KEY},
        }

    # ------------------------------------------------------------------ helpers

    def _replay(
        self, tenant: str, key: str, units: int, digest: str | None, item: dict[str, Any] | None
    ) -> Reservation:
        if item is None:  # not every DynamoDB-compatible store returns the old item: read it
            item = self._get(tenant, CHARGE_PREFIX + key)
            if item is None:
                raise BudgetStoreUnavailable("the charge record vanished while being replayed")
        # A record without a digest (written before digests, or by a caller without one) is judged by its
        # units alone; it expires with its TTL, so that weaker rule does not outlive two days.
        charged_digest = item.get("payload_sha256", {}).get("S")
        if digest is not None and charged_digest is not None and charged_digest != digest:
            raise IdempotencyConflict("this idempotency key was already used for a different request")
        charged = int(item["units"]["N"])
        if charged != units:
            raise IdempotencyConflict(
                "this idempotency key was already used for a different charge",
                charged_units=charged,
                requested_units=units,
            )
        period = item["period"]["S"]
        resets_at = datetime.fromisoformat(period).replace(tzinfo=UTC) + timedelta(days=1)
        return Reservation(tenant, period, units, key, True, resets_at)

    def _create_period_row(self, tenant: str, now: datetime) -> None:
        try:
            self._client.put_item(**self._new_period_row(tenant, now, self._configured_limit(tenant)))
        except ClientError as exc:
            if _error_code(exc) != "ConditionalCheckFailedException":  # else: another request created it
                raise BudgetStoreUnavailable(
                    "the period row could not be created", cause=_error_code(exc)
                ) from exc
        except BotoCoreError as exc:
            raise BudgetStoreUnavailable("the budget table could not be reached") from exc

    def _configured_limit(self, tenant: str) -> int:
        config = self._get(tenant, CONFIG_SK)
        if config is not None:
            return int(config["daily_limit"]["N"])
        if self._default_limit is None:
            raise UnknownTenant(f"tenant {tenant!r} has no budget configuration", tenant=tenant)
        return self._default_limit

    def _get(self, tenant: str, sk: str) -> dict[str, Any] | None:
        response = self._call("get_item", TableName=self._table, Key=_key(tenant, sk), ConsistentRead=True)
        return response.get("Item")

    def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        try:
            result: dict[str, Any] = getattr(self._client, method)(**kwargs)
            return result
        except ClientError as exc:
            raise BudgetStoreUnavailable(f"budget table {method} failed", cause=_error_code(exc)) from exc
        except BotoCoreError as exc:
            raise BudgetStoreUnavailable("the budget table could not be reached") from exc

    def _now(self) -> datetime:
        now = self._clock()
        return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)

    def _backoff(self, attempt: int) -> None:
        self._sleep(random.uniform(0, min(0.5, 0.02 * 2**attempt)))  # jitter, not crypto


class _PeriodRowMissing(Exception):
    """Today's row does not exist yet: create it from the tenant's limit, then charge again."""


class _Conflict(Exception):
    """DynamoDB refused the write because another transaction held the item: back off, then retry."""


def _check_tenant(tenant: str) -> None:
    if not isinstance(tenant, str) or not _TENANT.match(tenant):
        raise BadRequest(
            "a tenant id is 1-128 characters of letters, digits and . _ : @ -", tenant=str(tenant)
        )


def _status(tenant: str, row: dict[str, Any], now: datetime) -> BudgetStatus:
    return BudgetStatus(
        tenant=tenant,
        period=row[SORT_KEY]["S"],
        limit=int(row["limit"]["N"]),
        remaining=max(0, int(row["remaining"]["N"])),
        spent=int(row["spent"]["N"]),
        resets_at=_resets_at(now),
    )


def _cancellation_reasons(exc: ClientError) -> tuple[dict[str, Any], dict[str, Any]]:
    """(charge-record reason, period-row reason) of a cancelled two-item transaction."""
    reasons = [*(exc.response.get("CancellationReasons") or []), {}, {}]
    return reasons[0], reasons[1]


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _period(now: datetime) -> str:
    return now.date().isoformat()


def _resets_at(now: datetime) -> datetime:
    return datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def _key(tenant: str, sk: str) -> dict[str, Any]:
    return {PARTITION_KEY: _s(tenant), SORT_KEY: _s(sk)}


def _n(value: int) -> dict[str, str]:
    return {"N": str(value)}


def _s(value: str) -> dict[str, str]:
    return {"S": value}
