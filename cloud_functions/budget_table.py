"""The budget table's conditional writes, the ledger (`cloud_functions.budget`) is made of: it sends the
requests `cloud_functions.budget_items` builds and turns DynamoDB's answers into the ledger's outcomes. With
`budget_items`, the only module that knows DynamoDB's attribute encoding or its error codes.

Failures leave as named errors: `BudgetExhausted` (429), `BudgetStoreUnavailable` (503) when the table
cannot be reached or refuses for another reason, and three outcomes the ledger acts on —
`PeriodRowMissing` (create the row, charge again), `WriteConflict` (another transaction held the item:
back off, retry) and `AlreadyCharged` (the key's charge record exists: replay it).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from cloud_functions.budget_items import (
    CHARGE_PREFIX,
    CONFIG_SK,
    BudgetItems,
    ChargeRecord,
    PeriodRow,
    item_key,
    period_of,
    read_charge,
    read_period_row,
    resets_at,
)
from cloud_functions.errors import BudgetExhausted, BudgetStoreUnavailable

_CONDITION_FAILED = "ConditionalCheckFailedException"
_UNREACHABLE = "the budget table could not be reached"


class DynamoDBClient(Protocol):
    """The part of a boto3 DynamoDB client the ledger uses."""

    def get_item(self, **kwargs: Any) -> dict[str, Any]: ...
    def put_item(self, **kwargs: Any) -> dict[str, Any]: ...
    def update_item(self, **kwargs: Any) -> dict[str, Any]: ...
    def transact_write_items(self, **kwargs: Any) -> dict[str, Any]: ...


class PeriodRowMissing(Exception):
    """Today's row does not exist yet: create it from the tenant's limit, then charge again."""


class WriteConflict(Exception):
    """DynamoDB refused the write because another transaction held the item: back off, then retry."""


class AlreadyCharged(Exception):
    """The key's charge record exists (charged, not refunded, not expired): nothing was deducted."""

    def __init__(self, record: ChargeRecord) -> None:
        super().__init__(record)
        self.record = record


class BudgetTable:
    def __init__(
        self, name: str, client: DynamoDBClient, *, charge_ttl: timedelta, period_retention: timedelta
    ) -> None:
        """`charge_ttl`: how long a charge record blocks its key; `period_retention`: how long a period row
        is kept after its day ends."""
        self.name = name
        self._client = client
        self._items = BudgetItems(name, charge_ttl=charge_ttl, period_retention=period_retention)

    # ------------------------------------------------------------------ reads

    def period_row(self, tenant: str, period: str) -> PeriodRow | None:
        item = self._get(tenant, period)
        return None if item is None else read_period_row(item)

    def configured_limit(self, tenant: str) -> int | None:
        """The tenant's stored daily limit, None when it has no configuration."""
        item = self._get(tenant, CONFIG_SK)
        return None if item is None else int(item["daily_limit"]["N"])

    # ------------------------------------------------------------------ writes

    def put_config(self, tenant: str, limit: int, now: datetime) -> None:
        self._call("put_item", **self._items.config(tenant, limit, now))

    def create_period_row(
        self, tenant: str, now: datetime, limit: int, *, failure: str = "the period row could not be created"
    ) -> bool:
        """Create today's row holding `limit`; False when it exists already (another request made it).
        `failure` is the message of any other refusal."""
        try:
            self._send("put_item", self._items.new_period_row(tenant, now, limit))
        except ClientError as exc:
            if _error_code(exc) == _CONDITION_FAILED:
                return False
            raise BudgetStoreUnavailable(failure, cause=_error_code(exc)) from exc
        return True

    def move_limit(self, tenant: str, period: str, old: int, new: int) -> PeriodRow | None:
        """Set the row's limit from `old` to `new`, moving `remaining` by the difference (units spent stay
        spent). None when the row's limit was no longer `old`: read it again."""
        try:
            updated = self._send("update_item", self._items.limit_move(tenant, period, old, new))
        except ClientError as exc:
            if _error_code(exc) == _CONDITION_FAILED:
                return None
            raise BudgetStoreUnavailable("the limit could not be written", cause=_error_code(exc)) from exc
        return read_period_row(updated["Attributes"])

    def deduct(self, tenant: str, units: int, now: datetime) -> None:
        """Take `units` from today's row in one conditional update."""
        try:
            self._send("update_item", self._items.deduction(tenant, period_of(now), units))
        except ClientError as exc:
            code = _error_code(exc)
            if code == _CONDITION_FAILED:
                if "Item" in exc.response:
                    raise BudgetExhausted(tenant, requested=units, resets_at=resets_at(now), now=now) from exc
                raise PeriodRowMissing from exc
            if code == "TransactionConflictException":  # a keyed charge of this tenant holds the row
                raise WriteConflict from exc
            raise BudgetStoreUnavailable("the budget table rejected the charge", cause=code) from exc

    def deduct_once(self, tenant: str, units: int, key: str, digest: str | None, now: datetime) -> None:
        """Write the key's charge record and take `units` from today's row, both or neither."""
        period = period_of(now)
        try:
            self._send(
                "transact_write_items",
                {
                    "TransactItems": [
                        {"Put": self._items.charge_record(tenant, key, period, units, digest, now)},
                        {"Update": self._items.deduction(tenant, period, units)},
                    ]
                },
            )
        except ClientError as exc:
            code = _error_code(exc)
            if code != "TransactionCanceledException":
                raise BudgetStoreUnavailable("the budget table rejected the charge", cause=code) from exc
            charge, row = _cancellation_reasons(exc)
            # A charged key wins over an exhausted budget: its replay must succeed after the budget ran out.
            if charge.get("Code") == "ConditionalCheckFailed":
                raise AlreadyCharged(self._existing_charge(tenant, key, charge.get("Item"))) from exc
            if row.get("Code") == "ConditionalCheckFailed":
                if "Item" in row:
                    raise BudgetExhausted(tenant, requested=units, resets_at=resets_at(now), now=now) from exc
                raise PeriodRowMissing from exc
            if "TransactionConflict" in (charge.get("Code"), row.get("Code")):
                raise WriteConflict from exc
            raise BudgetStoreUnavailable("the budget transaction was cancelled", cause=code) from exc

    def refund(self, tenant: str, period: str, units: int, key: str | None, now: datetime) -> bool:
        """Give `units` back to `period`; with a key, also mark its charge record refunded, in the same
        transaction. False if there was nothing to refund (a keyed charge already refunded or settled)."""
        marker = None if key is None else self._items.mark_refunded(tenant, key, period, units, now)
        return self._give_back(tenant, period, units, marker, "the refund could not be written")

    def settle(self, tenant: str, period: str, reserved: int, charged: int, key: str | None, now: datetime) -> bool:
        """Keep `charged` of the `reserved` units (a metered call's real cost, known after it ran): give the
        rest back to `period`; with a key, also record `settled_units` on its charge record, in the same
        transaction, so a charge is settled at most once. False if there was nothing to settle (the key's
        charge was refunded or settled already)."""
        if charged > reserved:
            raise ValueError("a settlement cannot charge more than was reserved")
        marker = None if key is None else \
            self._items.mark_settled(tenant, key, period, reserved, charged, now)
        return self._give_back(tenant, period, reserved - charged, marker,
                               "the settlement could not be written")

    def _give_back(
        self, tenant: str, period: str, units: int, marker: dict[str, Any] | None, failure: str
    ) -> bool:
        """Credit `units` to the period row and apply `marker` (an update of the key's charge record, whose
        condition makes it happen once) together: one write, or one transaction of both."""
        credit = [self._items.credit(tenant, period, units)] if units else []
        updates = ([] if marker is None else [marker]) + credit
        try:
            if len(updates) == 1:
                self._send("update_item", updates[0])
            elif updates:
                self._send("transact_write_items", {"TransactItems": [{"Update": u} for u in updates]})
        except ClientError as exc:
            code = _error_code(exc)
            if code == _CONDITION_FAILED:
                return False
            if code == "TransactionCanceledException":
                charge, _row = _cancellation_reasons(exc)
                if charge.get("Code") == "ConditionalCheckFailed":
                    return False
            raise BudgetStoreUnavailable(failure, cause=code) from exc
        return True

    # ------------------------------------------------------------------ calls

    def _existing_charge(self, tenant: str, key: str, item: dict[str, Any] | None) -> ChargeRecord:
        if item is None:  # not every DynamoDB-compatible store returns the old item: read it
            item = self._get(tenant, CHARGE_PREFIX + key)
            if item is None:
                raise BudgetStoreUnavailable("the charge record vanished while being replayed")
        return read_charge(item)

    def _get(self, tenant: str, sk: str) -> dict[str, Any] | None:
        response = self._call("get_item", TableName=self.name, Key=item_key(tenant, sk), ConsistentRead=True)
        return response.get("Item")

    def _call(self, method: str, **request: Any) -> dict[str, Any]:
        """A read or a plain write: any refusal is the store's failure."""
        try:
            return self._send(method, request)
        except ClientError as exc:
            raise BudgetStoreUnavailable(f"budget table {method} failed", cause=_error_code(exc)) from exc

    def _send(self, method: str, request: dict[str, Any]) -> dict[str, Any]:
        """The call; no answer at all is `BudgetStoreUnavailable`, a refusal stays a `ClientError`."""
        try:
            result: dict[str, Any] = getattr(self._client, method)(**request)
        except BotoCoreError as exc:
            raise BudgetStoreUnavailable(_UNREACHABLE) from exc
        return result



def _cancellation_reasons(exc: ClientError) -> tuple[dict[str, Any], dict[str, Any]]:
    """(charge-record reason, period-row reason) of a cancelled two-item transaction."""
    reasons = [*(exc.response.get("CancellationReasons") or []), {}, {}]
    return reasons[0], reasons[1]


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
