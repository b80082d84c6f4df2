"""BudgetLedger against in-process moto (one caller at a time), tables built from template.yaml.

Concurrency is pinned in test_budget_concurrency.py against a serialised moto server, the item layout in
test_budget_table.py. This module also holds the tests of the ledger's admin CLI (infra/budget_admin.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from botocore.exceptions import ClientError

from cloud_functions.budget import BudgetLedger, Reservation
from cloud_functions.errors import (
    BadRequest,
    BudgetExhausted,
    BudgetStoreUnavailable,
    IdempotencyConflict,
    UnknownTenant,
)
from cloud_functions.settings import Settings
from infra import budget_admin

from .conftest import Aws, FakeClock

MakeLedger = Callable[..., BudgetLedger]


def _row(aws: Aws, tenant: str, sk: str) -> dict[str, str] | None:
    item = aws.dynamodb.get_item(
        TableName=aws.budget_table, Key={"tenant_id": {"S": tenant}, "sk": {"S": sk}}, ConsistentRead=True
    ).get("Item")
    return None if item is None else {name: next(iter(value.values())) for name, value in item.items()}


# --------------------------------------------------------------------------- reserve / refund / status


def test_first_reservation_creates_todays_row_from_the_default_limit(
    make_ledger: MakeLedger, aws: Aws
) -> None:
    ledger = make_ledger(default_limit=100)

    reservation = ledger.reserve("acme", 7)

    assert reservation == Reservation(
        tenant="acme",
        period="2026-03-14",
        units=7,
        idempotency_key=None,
        replayed=False,
        resets_at=datetime(2026, 3, 15, tzinfo=UTC),
    )
    row = _row(aws, "acme", "2026-03-14")
    assert row is not None
    assert (row["limit"], row["remaining"], row["spent"]) == ("100", "93", "7")
    status = ledger.status("acme")
    assert (status.limit, status.remaining, status.spent, status.period) == (100, 93, 7, "2026-03-14")


def test_period_row_is_created_from_the_tenants_configured_limit(
    make_ledger: MakeLedger, aws: Aws, clock: FakeClock
) -> None:
    ledger = make_ledger(default_limit=100)
    ledger.set_limit("acme", 40)
    clock.advance(days=1)  # no row for the new day yet: it must come from the configuration, not the default
    assert _row(aws, "acme", "2026-03-15") is None

    ledger.reserve("acme", 5)

    assert ledger.status("acme").limit == 40
    assert ledger.status("acme").remaining == 35


def test_status_without_a_row_reports_the_full_budget_and_writes_nothing(
    make_ledger: MakeLedger, aws: Aws
) -> None:
    status = make_ledger(default_limit=100).status("newcomer")

    assert (status.limit, status.remaining, status.spent) == (100, 100, 0)
    assert status.resets_at == datetime(2026, 3, 15, tzinfo=UTC)
    assert _row(aws, "newcomer", "2026-03-14") is None


def test_refund_gives_the_units_back(make_ledger: MakeLedger) -> None:
    ledger = make_ledger(default_limit=10)
    reservation = ledger.reserve("acme", 4)

    assert ledger.refund(reservation) is True

    status = ledger.status("acme")
    assert (status.remaining, status.spent) == (10, 0)


def test_an_exhausted_budget_raises_budget_exhausted_until_next_utc_midnight(
    make_ledger: MakeLedger, aws: Aws, clock: FakeClock
) -> None:
    ledger = make_ledger(default_limit=10)
    ledger.reserve("acme", 8)

    with pytest.raises(BudgetExhausted) as caught:
        ledger.reserve("acme", 3)

    error = caught.value
    assert error.resets_at == datetime(2026, 3, 15, tzinfo=UTC)
    assert (error.status, error.code) == (429, "BUDGET_EXHAUSTED")
    assert error.retry_after_s == 12 * 3600
    assert error.headers() == {"Retry-After": str(12 * 3600)}
    assert error.body()["error"]["resets_at"] == "2026-03-15T00:00:00+00:00"
    assert isinstance(error.__cause__, ClientError)
    assert error.__cause__.response["Error"]["Code"] == "ConditionalCheckFailedException"
    row = _row(aws, "acme", "2026-03-14")
    assert row is not None and (row["remaining"], row["spent"]) == ("2", "8")
    ledger.reserve("acme", 2)  # exactly the remainder still fits


def test_a_new_utc_day_starts_a_fresh_period(make_ledger: MakeLedger, aws: Aws, clock: FakeClock) -> None:
    clock.now = datetime(2026, 3, 14, 23, 59, 59, tzinfo=UTC)
    ledger = make_ledger(default_limit=5)
    ledger.reserve("acme", 5)
    with pytest.raises(BudgetExhausted) as caught:
        ledger.reserve("acme", 1)
    assert caught.value.retry_after_s == 1

    clock.advance(seconds=1)
    reservation = ledger.reserve("acme", 1)

    assert reservation.period == "2026-03-15"
    assert reservation.resets_at == datetime(2026, 3, 16, tzinfo=UTC)
    assert ledger.status("acme").remaining == 4
    yesterday = _row(aws, "acme", "2026-03-14")
    assert yesterday is not None and yesterday["remaining"] == "0"


def test_the_period_is_the_utc_day_whatever_the_clocks_zone(
    make_ledger: MakeLedger, clock: FakeClock
) -> None:
    clock.now = datetime(2026, 3, 15, 8, 0, tzinfo=timezone(timedelta(hours=9)))  # 2026-03-14 23:00 UTC

    reservation = make_ledger().reserve("acme", 1)

    assert reservation.period == "2026-03-14"
    assert reservation.resets_at == datetime(2026, 3, 15, tzinfo=UTC)


def test_a_refund_goes_back_to_the_period_it_was_taken_from(
    make_ledger: MakeLedger, aws: Aws, clock: FakeClock
) -> None:
    ledger = make_ledger(default_limit=10)
    reservation = ledger.reserve("acme", 3)
    clock.advance(days=1)

    assert ledger.refund(reservation) is True

    yesterday = _row(aws, "acme", "2026-03-14")
    assert yesterday is not None and (yesterday["remaining"], yesterday["spent"]) == ("10", "0")
    assert _row(aws, "acme", "2026-03-15") is None


def test_tenants_without_configuration_are_unknown_when_there_is_no_default(make_ledger: MakeLedger) -> None:
    ledger = make_ledger(default_limit=None)

    with pytest.raises(UnknownTenant) as caught:
        ledger.reserve("stranger", 1)
    assert (caught.value.status, caught.value.code) == (403, "UNKNOWN_TENANT")

    ledger.set_limit("stranger", 3)
    assert ledger.reserve("stranger", 3).units == 3


@pytest.mark.parametrize("units", [0, -1, 1.5, True, "2"])
def test_a_charge_must_be_a_positive_integer(make_ledger: MakeLedger, units: object) -> None:
    with pytest.raises(BadRequest):
        make_ledger().reserve("acme", units)  # type: ignore[arg-type]


@pytest.mark.parametrize("tenant", ["", "a#b", "a b", "x" * 129, "-leading-dash"])
def test_tenant_ids_are_validated(make_ledger: MakeLedger, tenant: str) -> None:
    with pytest.raises(BadRequest):
        make_ledger().reserve(tenant, 1)


def test_an_iam_role_is_a_tenant(make_ledger: MakeLedger) -> None:
    """AuthMode=Iam: the tenant is the caller's role ARN (cloud_functions.service.iam_tenant)."""
    role = "arn:aws:iam::123456789012:role/edge+acme=1,eu"
    ledger = make_ledger()

    assert ledger.reserve(role, 3).units == 3
    assert ledger.status(role).spent == 3


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "caf\u00e9"])
def test_idempotency_keys_are_validated(make_ledger: MakeLedger, key: str) -> None:
    with pytest.raises(BadRequest):
        make_ledger().reserve("acme", 1, idempotency_key=key)


def test_a_missing_table_is_a_store_error_not_a_crash(aws: Aws, clock: FakeClock) -> None:
    ledger = BudgetLedger("no-such-table", dynamodb_client=aws.dynamodb, default_limit=10, clock=clock)

    with pytest.raises(BudgetStoreUnavailable) as caught:
        ledger.reserve("acme", 1, idempotency_key="k")

    assert caught.value.status == 503
    assert isinstance(caught.value.__cause__, ClientError)


# --------------------------------------------------------------------------- idempotent charges


def test_the_same_key_twice_is_charged_once(make_ledger: MakeLedger) -> None:
    ledger = make_ledger(default_limit=100)

    first = ledger.reserve("acme", 5, idempotency_key="req-1")
    second = ledger.reserve("acme", 5, idempotency_key="req-1")

    assert (first.replayed, second.replayed) == (False, True)
    assert (second.period, second.units, second.idempotency_key) == (first.period, 5, "req-1")
    assert ledger.status("acme").spent == 5


def test_a_replay_succeeds_even_after_the_budget_ran_out(make_ledger: MakeLedger) -> None:
    ledger = make_ledger(default_limit=5)
    ledger.reserve("acme", 5, idempotency_key="req-1")

    assert ledger.reserve("acme", 5, idempotency_key="req-1").replayed is True
    with pytest.raises(BudgetExhausted):
        ledger.reserve("acme", 1, idempotency_key="req-2")


def test_a_replay_after_midnight_returns_the_original_charge(
    make_ledger: MakeLedger, clock: FakeClock
) -> None:
    ledger = make_ledger(default_limit=10)
    ledger.reserve("acme", 2, idempotency_key="req-1")
    clock.advance(days=1)

    replay = ledger.reserve("acme", 2, idempotency_key="req-1")

    assert (replay.replayed, replay.period, replay.resets_at) == (
        True,
        "2026-03-14",
        datetime(2026, 3, 15, tzinfo=UTC),
    )
    assert ledger.status("acme").spent == 0  # nothing taken from the new day


def test_reusing_a_key_for_a_different_charge_is_a_conflict(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    ledger.reserve("acme", 2, idempotency_key="req-1")

    with pytest.raises(IdempotencyConflict) as caught:
        ledger.reserve("acme", 3, idempotency_key="req-1")

    assert (caught.value.status, caught.value.code) == (409, "IDEMPOTENCY_KEY_REUSED")
    assert ledger.status("acme").spent == 2


def test_a_key_reused_for_another_payload_of_the_same_cost_is_a_conflict(
    make_ledger: MakeLedger, aws: Aws, clock: FakeClock
) -> None:
    """Issue 9 #3: the charge record compared unit counts only, so other texts of the same count passed as
    a replay (and ran uncharged once Powertools' own record had expired)."""
    ledger = make_ledger()
    first, other = "a" * 64, "b" * 64
    ledger.reserve("acme", 3, idempotency_key="req-1", payload_digest=first)
    clock.advance(hours=30)  # past Powertools' hour and midnight, within the charge record's two days

    with pytest.raises(IdempotencyConflict) as caught:
        ledger.reserve("acme", 3, idempotency_key="req-1", payload_digest=other)

    assert (caught.value.status, caught.value.code) == (409, "IDEMPOTENCY_KEY_REUSED")
    assert ledger.reserve("acme", 3, idempotency_key="req-1", payload_digest=first).replayed is True
    assert _row(aws, "acme", "charge#req-1")["payload_sha256"] == first  # type: ignore[index]
    assert ledger.status("acme").spent == 0  # today is another day: nothing taken from it
    assert _row(aws, "acme", "2026-03-14")["spent"] == "3"  # type: ignore[index]


def test_a_charge_record_without_a_digest_still_replays_by_its_units(make_ledger: MakeLedger) -> None:
    """Records written before digests existed (or by a caller that has none) keep the old rule."""
    ledger = make_ledger()
    ledger.reserve("acme", 3, idempotency_key="req-1")

    assert ledger.reserve("acme", 3, idempotency_key="req-1", payload_digest="a" * 64).replayed is True
    with pytest.raises(IdempotencyConflict):
        ledger.reserve("acme", 4, idempotency_key="req-1", payload_digest="a" * 64)


def test_idempotency_keys_belong_to_their_tenant(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()

    assert ledger.reserve("acme", 1, idempotency_key="req-1").replayed is False
    assert ledger.reserve("globex", 1, idempotency_key="req-1").replayed is False


def test_a_keyed_charge_is_refunded_at_most_once(make_ledger: MakeLedger) -> None:
    ledger = make_ledger(default_limit=10)
    reservation = ledger.reserve("acme", 4, idempotency_key="req-1")

    assert ledger.refund(reservation) is True
    assert ledger.refund(reservation) is False
    assert ledger.refund(ledger.reserve("acme", 4, idempotency_key="req-1")) is True  # see next test

    status = ledger.status("acme")
    assert (status.remaining, status.spent) == (10, 0)


DIGEST = "ab" * 32


def test_a_metered_charge_keeps_what_the_call_cost_and_gives_the_rest_back(make_ledger: MakeLedger) -> None:
    """An LLM call is reserved at its upper bound and settled to its tokens' cost."""
    ledger = make_ledger(default_limit=100)
    reservation = ledger.reserve("acme", 40, idempotency_key="llm-1", payload_digest=DIGEST)

    assert ledger.settle(reservation, 7) is True

    status = ledger.status("acme")
    assert (status.spent, status.remaining) == (7, 93)
    assert ledger.settle(reservation, 7) is False  # at most once
    assert ledger.refund(reservation) is False  # a settled charge is spent, not refundable
    assert ledger.status("acme").spent == 7
    replay = ledger.reserve("acme", 40, idempotency_key="llm-1", payload_digest=DIGEST)
    assert (replay.replayed, replay.units, replay.settled_units) == (True, 40, 7)
    assert ledger.settle(replay, 7) is False and ledger.status("acme").spent == 7


def test_an_unkeyed_metered_charge_is_settled_too(make_ledger: MakeLedger) -> None:
    ledger = make_ledger(default_limit=100)
    reservation = ledger.reserve("acme", 40)

    assert ledger.settle(reservation, 40) is True  # nothing to give back: no write needed
    assert ledger.settle(ledger.reserve("acme", 10), 3) is True

    assert ledger.status("acme").spent == 43


@pytest.mark.parametrize("charged", [-1, 41, 1.5])
def test_a_settlement_keeps_between_nothing_and_the_reservation(make_ledger: MakeLedger, charged: object) -> None:
    ledger = make_ledger(default_limit=100)
    reservation = ledger.reserve("acme", 40, idempotency_key="llm-2")

    with pytest.raises(BadRequest):
        ledger.settle(reservation, charged)  # type: ignore[arg-type]
    assert ledger.status("acme").spent == 40


def test_a_retry_after_a_refund_is_charged_again(make_ledger: MakeLedger) -> None:
    """A failed request is refunded (and Powertools forgets it), so its retry is a new attempt."""
    ledger = make_ledger(default_limit=10)
    ledger.refund(ledger.reserve("acme", 4, idempotency_key="req-1"))

    retry = ledger.reserve("acme", 4, idempotency_key="req-1")

    assert retry.replayed is False
    assert ledger.status("acme").spent == 4
    assert ledger.reserve("acme", 4, idempotency_key="req-1").replayed is True


def test_an_expired_charge_record_no_longer_blocks_its_key(make_ledger: MakeLedger, clock: FakeClock) -> None:
    ledger = make_ledger(default_limit=10, charge_ttl=timedelta(hours=2))
    ledger.reserve("acme", 1, idempotency_key="req-1")
    clock.advance(hours=3)  # DynamoDB may not have deleted the record yet: it must count as gone

    assert ledger.reserve("acme", 1, idempotency_key="req-1").replayed is False
    assert ledger.status("acme").spent == 2


def test_charge_records_carry_a_ttl(make_ledger: MakeLedger, aws: Aws, clock: FakeClock) -> None:
    make_ledger(charge_ttl=timedelta(days=2)).reserve("acme", 1, idempotency_key="req-1")

    record = _row(aws, "acme", "charge#req-1")

    assert record is not None
    assert int(record["expires_at"]) == int((clock.now + timedelta(days=2)).timestamp())
    assert (record["state"], record["units"], record["period"]) == ("charged", "1", "2026-03-14")


# --------------------------------------------------------------------------- set_limit


def test_set_limit_applies_to_today_and_keeps_what_was_spent(make_ledger: MakeLedger) -> None:
    ledger = make_ledger(default_limit=100)
    ledger.reserve("acme", 30)

    lowered = ledger.set_limit("acme", 50)
    assert (lowered.limit, lowered.remaining, lowered.spent) == (50, 20, 30)

    below_spent = ledger.set_limit("acme", 20)
    assert (below_spent.limit, below_spent.remaining, below_spent.spent) == (20, 0, 30)
    with pytest.raises(BudgetExhausted):
        ledger.reserve("acme", 1)

    raised = ledger.set_limit("acme", 200)
    assert (raised.limit, raised.remaining, raised.spent) == (200, 170, 30)
    ledger.reserve("acme", 170)


def test_set_limit_without_a_row_creates_todays_row(make_ledger: MakeLedger, aws: Aws) -> None:
    status = make_ledger(default_limit=100).set_limit("acme", 7)

    assert (status.limit, status.remaining, status.spent) == (7, 7, 0)
    row = _row(aws, "acme", "2026-03-14")
    assert row is not None and row["limit"] == "7"
    config = _row(aws, "acme", "config")
    assert config is not None and config["daily_limit"] == "7"


@pytest.mark.parametrize("limit", [-1, 2.5, True])
def test_a_limit_must_be_a_non_negative_integer(make_ledger: MakeLedger, limit: object) -> None:
    with pytest.raises(BadRequest):
        make_ledger().set_limit("acme", limit)  # type: ignore[arg-type]


def test_a_zero_limit_blocks_every_charge(make_ledger: MakeLedger) -> None:
    ledger = make_ledger(default_limit=100)
    ledger.set_limit("acme", 0)

    with pytest.raises(BudgetExhausted):
        ledger.reserve("acme", 1)


# --------------------------------------------------------------------------- from settings


def test_a_ledger_from_settings_makes_its_own_client_and_uses_the_default_budget(aws: Aws) -> None:
    settings = Settings.from_env(
        {"BUDGET_TABLE": aws.budget_table, "IDEMPOTENCY_TABLE": "idempotency", "MODEL_URI": "/opt/model",
         "DEFAULT_DAILY_BUDGET": "12"}
    )

    ledger = BudgetLedger.from_settings(settings)

    assert ledger.reserve("acme", 2).units == 2
    assert ledger.status("acme").remaining == 10


# --------------------------------------------------------------------------- admin CLI


def test_admin_cli_sets_and_shows_a_limit(aws: Aws, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        budget_admin.main(["set-limit", "acme", "250", "--table", aws.budget_table, "--region", "us-east-1"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["limit"] == 250

    assert budget_admin.main(["--table", aws.budget_table, "show", "acme"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["tenant"], shown["limit"], shown["remaining"], shown["spent"]) == ("acme", 250, 250, 0)


def test_admin_cli_reads_the_table_from_the_environment(
    aws: Aws, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BUDGET_TABLE", aws.budget_table)

    assert budget_admin.main(["show", "acme", "--default-limit", "9"]) == 0
    assert json.loads(capsys.readouterr().out)["remaining"] == 9


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--table", "no-such-table", "show", "acme"], "ResourceNotFoundException"),
        (["--table", "TABLE", "show", "acme"], "has no budget configuration"),
        (["--table", "TABLE", "set-limit", "a#b", "5"], "tenant id"),
        (["show", "acme"], "no budget table"),
        (["--table", "TABLE", "--stack", "s", "show", "acme"], "not both"),
    ],
)
def test_admin_cli_errors_are_one_line_without_a_traceback(
    aws: Aws, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    argv = [aws.budget_table if arg == "TABLE" else arg for arg in argv]

    assert budget_admin.main(argv) == 1

    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_admin_cli_rejects_a_negative_limit_as_usage_error(
    aws: Aws, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        budget_admin.main(["--table", aws.budget_table, "set-limit", "acme", "-5"])

    assert caught.value.code == 2
    assert "Traceback" not in capsys.readouterr().err
