"""The budget table's items: their layout, their DynamoDB attribute encoding, and the requests that write
them (plain data: no client, no I/O). `cloud_functions.budget_table` sends these requests and turns
DynamoDB's answers into the ledger's outcomes.

Items (partition key `tenant_id`, sort key `sk`, all amounts are integer cost units):

    sk = "YYYY-MM-DD"       period row (one per tenant per UTC day): limit, remaining, spent, expires_at
    sk = "config"           tenant configuration: daily_limit (absent -> the deployment's default)
    sk = "charge#<key>"     charge record of one idempotency key: period, units (reserved), payload_sha256,
                            state, settled_units (what the call really cost, once known), expires_at

Invariant of a period row: remaining + spent == limit. A deduction is ONE conditional write
(`remaining >= :units`), so concurrent requests can never overspend; a keyed deduction is one
`TransactWriteItems` of the charge record's conditional put and that same update (why: see the ledger).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

PARTITION_KEY = "tenant_id"
SORT_KEY = "sk"
TTL_ATTRIBUTE = "expires_at"
CONFIG_SK = "config"
CHARGE_PREFIX = "charge#"
CHARGED, REFUNDED = "charged", "refunded"  # a charge record's states


@dataclass(frozen=True, slots=True)
class PeriodRow:
    """One tenant's budget for one UTC day, as stored (`remaining` may be negative after a lowered limit)."""

    period: str
    limit: int
    remaining: int
    spent: int


@dataclass(frozen=True, slots=True)
class ChargeRecord:
    """What a key was charged: `payload_sha256` is None for a record written without a digest."""

    period: str
    units: int
    payload_sha256: str | None
    settled_units: int | None = None  # what a metered call really cost, once settled


def period_of(now: datetime) -> str:
    """The sort key of the period row `now` (UTC) falls in."""
    return now.date().isoformat()


def resets_at(now: datetime) -> datetime:
    """The next UTC midnight: when the period `now` falls in ends."""
    return datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)


class BudgetItems:
    """The requests of one table. `charge_ttl`: how long a charge record blocks its key; `period_retention`:
    how long a period row is kept after its day ends."""

    def __init__(self, name: str, *, charge_ttl: timedelta, period_retention: timedelta) -> None:
        self.name = name
        self._charge_ttl = charge_ttl
        self._period_retention = period_retention

    def config(self, tenant: str, limit: int, now: datetime) -> dict[str, Any]:
        return {
            "TableName": self.name,
            "Item": {**item_key(tenant, CONFIG_SK), "daily_limit": number(limit),
                     "updated_at": string(now.isoformat())},
        }

    def limit_move(self, tenant: str, period: str, old: int, new: int) -> dict[str, Any]:
        """The row's limit from `old` to `new`, `remaining` moved by the difference; returns the new row."""
        return {
            "TableName": self.name,
            "Key": item_key(tenant, period),
            "UpdateExpression": "SET #limit = :new, #remaining = #remaining + :delta",
            "ConditionExpression": "#limit = :old",
            "ExpressionAttributeNames": {"#limit": "limit", "#remaining": "remaining"},
            "ExpressionAttributeValues": {":new": number(new), ":old": number(old),
                                          ":delta": number(new - old)},
            "ReturnValues": "ALL_NEW",
        }

    def deduction(self, tenant: str, period: str, units: int) -> dict[str, Any]:
        return {
            **self._move_units(
                tenant, period, units,
                update="SET #remaining = #remaining - :units ADD #spent :units",
                condition="#remaining >= :units",
            ),
            # The old row comes back on failure: present -> exhausted, absent -> create the row first.
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }

    def credit(self, tenant: str, period: str, units: int) -> dict[str, Any]:
        return self._move_units(
            tenant, period, units,
            update="SET #remaining = #remaining + :units, #spent = #spent - :units",
            condition="#spent >= :units",
        )

    def _move_units(
        self, tenant: str, period: str, units: int, *, update: str, condition: str
    ) -> dict[str, Any]:
        """An update of a period row's `remaining` and `spent` by `units`."""
        return {
            "TableName": self.name,
            "Key": item_key(tenant, period),
            "UpdateExpression": update,
            "ConditionExpression": condition,
            "ExpressionAttributeNames": {"#remaining": "remaining", "#spent": "spent"},
            "ExpressionAttributeValues": {":units": number(units)},
        }

    def charge_record(
        self, tenant: str, key: str, period: str, units: int, digest: str | None, now: datetime
    ) -> dict[str, Any]:
        return {
            "TableName": self.name,
            "Item": {
                **item_key(tenant, CHARGE_PREFIX + key),
                "period": string(period),
                "units": number(units),
                **({} if digest is None else {"payload_sha256": string(digest)}),
                "state": string(CHARGED),
                "charged_at": string(now.isoformat()),
                TTL_ATTRIBUTE: number(epoch(now + self._charge_ttl)),
            },
            # DynamoDB deletes expired items lazily (up to days late): treat them as absent here.
            "ConditionExpression": "attribute_not_exists(#sk) OR #state = :refunded OR #ttl < :now",
            "ExpressionAttributeNames": {"#sk": SORT_KEY, "#state": "state", "#ttl": TTL_ATTRIBUTE},
            "ExpressionAttributeValues": {":refunded": string(REFUNDED), ":now": number(epoch(now))},
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }

    def mark_settled(
        self, tenant: str, key: str, period: str, reserved: int, charged: int, now: datetime
    ) -> dict[str, Any]:
        return self._charged_record_update(
            tenant, key, period, reserved, "SET #settled = :settled, settled_at = :now",
            {":settled": number(charged), ":now": string(now.isoformat())},
        )

    def mark_refunded(self, tenant: str, key: str, period: str, units: int, now: datetime) -> dict[str, Any]:
        return self._charged_record_update(
            tenant, key, period, units, "SET #state = :refunded, refunded_at = :now",
            {":refunded": string(REFUNDED), ":now": string(now.isoformat())},
        )

    def _charged_record_update(
        self, tenant: str, key: str, period: str, units: int, update: str, values: dict[str, Any]
    ) -> dict[str, Any]:
        """An update of the key's charge record, only while it is this charge, charged and not settled: a
        refunded charge is neither refunded nor settled again, a settled one is spent (never refunded)."""
        return {
            "TableName": self.name,
            "Key": item_key(tenant, CHARGE_PREFIX + key),
            "UpdateExpression": update,
            "ConditionExpression": (
                "#state = :charged AND #period = :period AND #units = :units AND attribute_not_exists(#settled)"
            ),
            "ExpressionAttributeNames": {
                "#state": "state", "#period": "period", "#units": "units", "#settled": "settled_units",
            },
            "ExpressionAttributeValues": {
                ":charged": string(CHARGED), ":period": string(period), ":units": number(units), **values,
            },
        }

    def new_period_row(self, tenant: str, now: datetime, limit: int) -> dict[str, Any]:
        return {
            "TableName": self.name,
            "Item": {
                **item_key(tenant, period_of(now)),
                "limit": number(limit),
                "remaining": number(limit),
                "spent": number(0),
                "created_at": string(now.isoformat()),
                TTL_ATTRIBUTE: number(epoch(resets_at(now) + self._period_retention)),
            },
            "ConditionExpression": "attribute_not_exists(#sk)",
            "ExpressionAttributeNames": {"#sk": SORT_KEY},
        }


def read_period_row(item: dict[str, Any]) -> PeriodRow:
    return PeriodRow(
        period=item[SORT_KEY]["S"],
        limit=int(item["limit"]["N"]),
        remaining=int(item["remaining"]["N"]),
        spent=int(item["spent"]["N"]),
    )


def read_charge(item: dict[str, Any]) -> ChargeRecord:
    digest = item.get("payload_sha256", {}).get("S")
    settled = item.get("settled_units", {}).get("N")
    return ChargeRecord(period=item["period"]["S"], units=int(item["units"]["N"]), payload_sha256=digest,
                        settled_units=None if settled is None else int(settled))


def epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def item_key(tenant: str, sk: str) -> dict[str, Any]:
    return {PARTITION_KEY: string(tenant), SORT_KEY: string(sk)}


def number(value: int) -> dict[str, str]:
    return {"N": str(value)}


def string(value: str) -> dict[str, str]:
    return {"S": value}
