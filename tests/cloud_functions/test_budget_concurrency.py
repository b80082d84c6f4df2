"""Concurrent charges against the SERIALISED moto server (one request at a time, like DynamoDB's per-item
conditional writes). The in-process mock is not thread-safe and would let hundreds of extra charges
through (see FACTS.md), so these tests must not use it."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from cloud_functions.budget import BudgetLedger, Reservation
from cloud_functions.errors import BudgetExhausted

from .conftest import ServerTables

CLIENTS = 16


def _ledger(tables: ServerTables, default_limit: int) -> BudgetLedger:
    return BudgetLedger(tables.budget_table, dynamodb_client=tables.dynamodb, default_limit=default_limit)


def _run_concurrently(calls: list[tuple[str, str | None]], ledger: BudgetLedger, units: int) -> list[object]:
    """Run `reserve(tenant, units, key)` for every (tenant, key) on CLIENTS threads that start together."""
    start = threading.Barrier(CLIENTS)

    def client(share: list[tuple[str, str | None]]) -> list[object]:
        start.wait()
        outcomes: list[object] = []
        for tenant, key in share:
            try:
                outcomes.append(ledger.reserve(tenant, units, idempotency_key=key))
            except BudgetExhausted as exc:
                outcomes.append(exc)
        return outcomes

    shares = [calls[i::CLIENTS] for i in range(CLIENTS)]
    with ThreadPoolExecutor(CLIENTS) as pool:
        return [outcome for outcomes in pool.map(client, shares) for outcome in outcomes]


def test_a_thousand_concurrent_reservations_never_overspend_a_budget_of_500(
    server_tables: ServerTables,
) -> None:
    # The tenant has no row yet: the 16 first requests also race to create it.
    ledger = _ledger(server_tables, default_limit=500)

    outcomes = _run_concurrently([("acme", None)] * 1000, ledger, units=1)

    kinds = Counter(type(outcome).__name__ for outcome in outcomes)
    assert kinds == {"Reservation": 500, "BudgetExhausted": 500}
    status = ledger.status("acme")
    assert (status.limit, status.remaining, status.spent) == (500, 0, 500)


def test_one_key_sent_by_every_client_at_once_is_charged_once(server_tables: ServerTables) -> None:
    ledger = _ledger(server_tables, default_limit=100)

    outcomes = _run_concurrently([("acme", "req-1")] * CLIENTS, ledger, units=3)

    assert all(isinstance(outcome, Reservation) for outcome in outcomes)
    assert sorted(outcome.replayed for outcome in outcomes if isinstance(outcome, Reservation)) == [False] + [
        True
    ] * (CLIENTS - 1)
    assert ledger.status("acme").spent == 3


def test_retried_keys_under_contention_charge_each_key_once_and_never_overspend(
    server_tables: ServerTables,
) -> None:
    # 150 distinct requests, each sent three times (a client retrying after lost responses), against a
    # budget that covers 100 of them.
    ledger = _ledger(server_tables, default_limit=100)
    calls = [("acme", f"req-{i}") for i in range(150) for _retry in range(3)]

    outcomes = _run_concurrently(calls, ledger, units=1)

    charged_keys = Counter(
        o.idempotency_key for o in outcomes if isinstance(o, Reservation) and not o.replayed
    )
    assert len(charged_keys) == 100
    assert set(charged_keys.values()) == {1}  # no key was charged twice
    status = ledger.status("acme")
    assert (status.remaining, status.spent) == (0, 100)
    replays = [o for o in outcomes if isinstance(o, Reservation) and o.replayed]
    assert {o.idempotency_key for o in replays} <= set(charged_keys)


def test_concurrent_refunds_of_one_charge_give_it_back_once(server_tables: ServerTables) -> None:
    ledger = _ledger(server_tables, default_limit=10)
    reservation = ledger.reserve("acme", 4, idempotency_key="req-1")
    start = threading.Barrier(CLIENTS)

    def refund(_: int) -> bool:
        start.wait()
        return ledger.refund(reservation)

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(refund, range(CLIENTS)))

    assert results.count(True) == 1
    status = ledger.status("acme")
    assert (status.remaining, status.spent) == (10, 0)
