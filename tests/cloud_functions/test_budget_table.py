"""The budget table's items and conditional writes: in-process moto for what it implements, botocore's
Stubber for the refusals moto cannot produce (transaction conflicts, a store that returns no old item)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.stub import Stubber

from cloud_functions.budget_items import ChargeRecord, PeriodRow, period_of, resets_at
from cloud_functions.budget_table import AlreadyCharged, BudgetTable, PeriodRowMissing, WriteConflict
from cloud_functions.errors import BudgetExhausted, BudgetStoreUnavailable

from .conftest import Aws

NOW = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)
DIGEST = "ab" * 32


def _table(client: Any, name: str = "budgets") -> BudgetTable:
    return BudgetTable(name, client, charge_ttl=timedelta(days=2), period_retention=timedelta(days=400))


def _item(aws: Aws, tenant: str, sk: str) -> dict[str, Any]:
    key = {"tenant_id": {"S": tenant}, "sk": {"S": sk}}
    return aws.dynamodb.get_item(TableName=aws.budget_table, Key=key, ConsistentRead=True)["Item"]


@pytest.fixture
def table(aws: Aws) -> BudgetTable:
    return _table(aws.dynamodb, aws.budget_table)


@pytest.fixture
def stubbed() -> Iterator[tuple[BudgetTable, Stubber]]:
    client = boto3.client("dynamodb", region_name="us-east-1")
    with Stubber(client) as stubber:
        yield _table(client), stubber
        stubber.assert_no_pending_responses()


# --------------------------------------------------------------------------- items


def test_a_period_is_the_utc_day_and_ends_at_the_next_utc_midnight() -> None:
    late_evening = datetime(2026, 3, 14, 23, 59, 59, tzinfo=UTC)

    assert period_of(late_evening) == "2026-03-14"
    assert resets_at(late_evening) == datetime(2026, 3, 15, tzinfo=UTC)


def test_a_period_row_is_created_once_and_expires_after_its_retention(table: BudgetTable, aws: Aws) -> None:
    assert table.create_period_row("acme", NOW, 50) is True
    assert table.create_period_row("acme", NOW, 99) is False  # the first creator wins, racing or not

    assert table.period_row("acme", "2026-03-14") == PeriodRow("2026-03-14", limit=50, remaining=50, spent=0)
    expires = int(_item(aws, "acme", "2026-03-14")["expires_at"]["N"])
    assert expires == int((datetime(2026, 3, 15, tzinfo=UTC) + timedelta(days=400)).timestamp())


def test_a_charge_record_keeps_the_period_units_digest_and_a_ttl(table: BudgetTable, aws: Aws) -> None:
    table.create_period_row("acme", NOW, 10)

    table.deduct_once("acme", 3, "req-1", DIGEST, NOW)

    record = {name: next(iter(value.values())) for name, value in _item(aws, "acme", "charge#req-1").items()}
    assert (record["state"], record["period"], record["units"], record["payload_sha256"]) == (
        "charged", "2026-03-14", "3", DIGEST
    )
    assert int(record["expires_at"]) == int((NOW + timedelta(days=2)).timestamp())
    assert table.period_row("acme", "2026-03-14") == PeriodRow("2026-03-14", limit=10, remaining=7, spent=3)


def test_the_configured_limit_is_none_until_one_is_stored(table: BudgetTable) -> None:
    assert table.configured_limit("acme") is None

    table.put_config("acme", 40, NOW)

    assert table.configured_limit("acme") == 40


# --------------------------------------------------------------------------- conditional writes


def test_a_deduction_without_todays_row_asks_for_the_row(table: BudgetTable) -> None:
    with pytest.raises(PeriodRowMissing):
        table.deduct("acme", 1, NOW)
    with pytest.raises(PeriodRowMissing):
        table.deduct_once("acme", 1, "req-1", None, NOW)

    assert table.period_row("acme", "2026-03-14") is None
    table.create_period_row("acme", NOW, 5)
    table.deduct_once("acme", 1, "req-1", None, NOW)  # the cancelled transaction left no charge record


def test_a_deduction_beyond_what_remains_is_exhausted_and_takes_nothing(table: BudgetTable) -> None:
    table.create_period_row("acme", NOW, 5)
    table.deduct("acme", 4, NOW)

    for deduct in (lambda: table.deduct("acme", 2, NOW), lambda: table.deduct_once("acme", 2, "k", None, NOW)):
        with pytest.raises(BudgetExhausted) as caught:
            deduct()
        assert (caught.value.requested, caught.value.resets_at) == (2, datetime(2026, 3, 15, tzinfo=UTC))

    assert table.period_row("acme", "2026-03-14") == PeriodRow("2026-03-14", limit=5, remaining=1, spent=4)


def test_a_charged_key_reports_its_record_and_deducts_nothing_more(table: BudgetTable) -> None:
    table.create_period_row("acme", NOW, 10)
    table.deduct_once("acme", 3, "req-1", DIGEST, NOW)

    with pytest.raises(AlreadyCharged) as caught:
        table.deduct_once("acme", 3, "req-1", DIGEST, NOW + timedelta(minutes=1))

    assert caught.value.record == ChargeRecord(period="2026-03-14", units=3, payload_sha256=DIGEST)
    assert table.period_row("acme", "2026-03-14").spent == 3  # type: ignore[union-attr]


def test_a_keyed_refund_credits_the_row_once(table: BudgetTable) -> None:
    table.create_period_row("acme", NOW, 10)
    table.deduct_once("acme", 4, "req-1", None, NOW)

    assert table.refund("acme", "2026-03-14", 4, "req-1", NOW) is True
    assert table.refund("acme", "2026-03-14", 4, "req-1", NOW) is False

    assert table.period_row("acme", "2026-03-14") == PeriodRow("2026-03-14", limit=10, remaining=10, spent=0)


def test_moving_a_limit_that_changed_meanwhile_asks_to_read_again(table: BudgetTable) -> None:
    table.create_period_row("acme", NOW, 10)
    table.deduct("acme", 3, NOW)

    assert table.move_limit("acme", "2026-03-14", old=20, new=5) is None
    moved = table.move_limit("acme", "2026-03-14", old=10, new=5)

    assert moved == PeriodRow("2026-03-14", limit=5, remaining=2, spent=3)


# --------------------------------------------------------------------------- refusals moto cannot make


def _cancelled(*codes: str) -> dict[str, Any]:
    return {"service_error_code": "TransactionCanceledException", "http_status_code": 400,
            "modeled_fields": {"CancellationReasons": [{"Code": code} for code in codes]}}


def test_a_write_held_by_another_transaction_is_a_conflict(stubbed: tuple[BudgetTable, Stubber]) -> None:
    table, stubber = stubbed
    stubber.add_client_error("update_item", service_error_code="TransactionConflictException")
    stubber.add_client_error("transact_write_items", **_cancelled("None", "TransactionConflict"))

    with pytest.raises(WriteConflict):
        table.deduct("acme", 1, NOW)
    with pytest.raises(WriteConflict):
        table.deduct_once("acme", 1, "req-1", None, NOW)


def test_a_charged_key_is_read_back_when_the_store_returns_no_old_item(
    stubbed: tuple[BudgetTable, Stubber],
) -> None:
    table, stubber = stubbed
    stubber.add_client_error("transact_write_items", **_cancelled("ConditionalCheckFailed", "None"))
    record = {"tenant_id": {"S": "acme"}, "sk": {"S": "charge#req-1"}, "period": {"S": "2026-03-13"},
              "units": {"N": "2"}}
    stubber.add_response("get_item", {"Item": record})

    with pytest.raises(AlreadyCharged) as caught:
        table.deduct_once("acme", 2, "req-1", DIGEST, NOW)

    assert caught.value.record == ChargeRecord(period="2026-03-13", units=2, payload_sha256=None)


def test_another_refusal_is_the_store_failing_with_its_code(stubbed: tuple[BudgetTable, Stubber]) -> None:
    table, stubber = stubbed
    stubber.add_client_error("update_item", service_error_code="ProvisionedThroughputExceededException")

    with pytest.raises(BudgetStoreUnavailable) as caught:
        table.deduct("acme", 1, NOW)

    assert caught.value.message == "the budget table rejected the charge"
    assert caught.value.details == {"cause": "ProvisionedThroughputExceededException"}


def test_a_table_that_cannot_be_reached_is_unavailable(fake_aws_credentials: None) -> None:
    config = Config(connect_timeout=0.5, read_timeout=0.5, retries={"mode": "standard", "total_max_attempts": 1})
    client = boto3.client("dynamodb", endpoint_url="http://127.0.0.1:9", region_name="us-east-1", config=config)
    table = _table(client)

    for write in (lambda: table.deduct("acme", 1, NOW), lambda: table.period_row("acme", "2026-03-14")):
        with pytest.raises(BudgetStoreUnavailable, match="could not be reached"):
            write()
