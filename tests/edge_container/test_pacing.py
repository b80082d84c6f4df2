"""edge_container.pacing and PacedPolicy: the budget lasts until its reset, the least confident go first,
the budget is never overspent, and priorities order who may spend it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from edge_container.pacing import BudgetPacer, ScoreWindow, paced_mask
from edge_container.policies import PacedPolicy, ThresholdPolicy
from modelpack.manifest import RoutingEntry, load_manifest
from tests.edge_container.conftest import UNSURE, FakeCloud, edge_settings, serve_edge


class Clock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def at(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


def test_nothing_known_about_the_budget_means_no_pacing() -> None:
    pacer = BudgetPacer(clock=Clock())
    pacer.observe_demand(50)
    assert pacer.affordable_fraction() == 1.0


def test_the_affordable_fraction_is_what_is_left_over_the_demand_until_the_reset() -> None:
    clock = Clock()
    pacer = BudgetPacer(window_s=100, reserve=0.0, clock=clock)
    for _ in range(2000):  # a steady 2 would-be escalations a second
        clock.now += 1.0
        pacer.observe_demand(2)
    assert pacer.demand_per_s == pytest.approx(2.0, rel=0.02)
    pacer.observe_budget(3600, at(clock.now + 3600), cost=10, n_texts=10)  # 1 unit a second affordable
    assert pacer.affordable_fraction() == pytest.approx(0.5, rel=0.02)
    pacer.observe_budget(100_000, at(clock.now + 3600), cost=10, n_texts=10)
    assert pacer.affordable_fraction() == 1.0
    pacer.observe_budget(0, at(clock.now + 3600), cost=0, n_texts=0)
    assert pacer.affordable_fraction() == 0.0


def test_each_of_n_processes_paces_its_share_of_the_budget() -> None:
    """EDGE_PROCESSES=2: each process hears of the whole budget but sees half the demand."""
    clock = Clock()
    alone, half = (BudgetPacer(window_s=100, reserve=0.0, share=share, clock=clock) for share in (1.0, 0.5))
    for _ in range(2000):
        clock.now += 1.0
        alone.observe_demand(2)
        half.observe_demand(1)
    for pacer in (alone, half):
        pacer.observe_budget(3600, at(clock.now + 3600), cost=10, n_texts=10)
    assert alone.affordable_fraction() == pytest.approx(0.5, rel=0.02)
    assert half.affordable_fraction() == pytest.approx(alone.affordable_fraction(), rel=0.02)


def test_the_paced_share_is_the_least_confident_and_follows_priority() -> None:
    rng = np.random.default_rng(0)
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.9])
    base = scores < 0.5
    window = ScoreWindow()
    window.add(scores[base])
    admitted = window.admit(scores, 0.5, rng)
    assert paced_mask(base, 0.5, admitted, "normal").tolist() == [True, True, False, False, False]
    assert paced_mask(base, 0.5, admitted, "high").tolist() == base.tolist()
    assert not paced_mask(base, 0.5, admitted, "low").any()
    assert paced_mask(base, 1.0, admitted, "low").tolist() == base.tolist()  # room for all: low goes too


def test_tied_scores_are_admitted_in_the_paced_proportion() -> None:
    window = ScoreWindow()
    window.add(np.full(1000, 0.48))  # one text, asked again and again
    admitted = window.admit(np.full(20_000, 0.48), 0.25, np.random.default_rng(1))
    assert admitted.mean() == pytest.approx(0.25, abs=0.02)


def replay_day(policy: ThresholdPolicy, budget: int, *, seed: int = 7) -> tuple[list[int], int, float | None]:
    """A compressed day (1 simulated hour, a request every 2 s) of 4-text requests against an exact ledger
    that refuses what it cannot cover, as the cloud's does. Returns (spent per hour-tenth, total spent, the
    fraction of the period elapsed when the budget ran out, or None)."""
    rng = np.random.default_rng(seed)
    clock = Clock()
    if isinstance(policy, PacedPolicy):
        policy.pacer._clock = clock  # the simulated day
    routing = RoutingEntry(score="max_prob", threshold=0.6, target_joint_over_teacher=0.99,
                           traffic_oos_fraction=None, expected_escalation_rate=0.5)
    start, period = clock.now, 3600.0
    remaining, spent_by_tenth, exhausted = budget, [0] * 10, None
    while clock.now < start + period:
        probs = rng.dirichlet(np.ones(5) * 0.6, size=4)
        mask = policy.pace(probs, routing, policy.escalate(probs, routing))
        wanted = int(mask.sum())
        if wanted:
            if wanted <= remaining:  # the ledger: one conditional write, all or nothing
                remaining -= wanted
                spent_by_tenth[int((clock.now - start) / period * 10)] += wanted
            elif exhausted is None:
                exhausted = (clock.now - start) / period
            policy.observe_budget(remaining, at(start + period), cost=wanted, n_texts=wanted)
        clock.now += 2.0
    return spent_by_tenth, budget - remaining, exhausted


def test_paced_spending_lasts_the_whole_period_and_never_overspends() -> None:
    _, greedy_spent, greedy_out = replay_day(ThresholdPolicy(), budget=10_000_000)
    budget = greedy_spent // 2  # half of what the threshold alone would spend
    _, _, out_early = replay_day(ThresholdPolicy(), budget=budget)
    paced = PacedPolicy(BudgetPacer(window_s=120), rng=np.random.default_rng(3))
    paced_by_tenth, paced_spent, paced_out = replay_day(paced, budget=budget)
    assert greedy_out is None and out_early is not None and out_early < 0.6  # greedy runs dry by noon
    assert paced_spent <= budget  # never overspent
    assert paced_out is None or paced_out > 0.95  # and never ran dry before the end
    assert paced_spent >= 0.8 * budget  # and not hoarded
    assert all(spent > 0 for spent in paced_by_tenth)  # something escalated in every tenth of the period
    assert paced_by_tenth[-1] >= 0.5 * budget / 10  # the last tenth still gets about its share


def test_a_paced_edge_holds_back_escalations_a_small_budget_cannot_last_with(
        tiny_artifact: Path, cloud: FakeCloud) -> None:
    # The fake cloud reports 40 units left until a reset an hour away: far less than this demand lasts with.
    cloud.reset(remaining=40)
    settings = edge_settings(tiny_artifact, policy="paced", cloud_url=cloud.url, cloud_api_key="k")
    assert load_manifest(tiny_artifact).routing.score == "max_prob"
    with serve_edge(settings) as (client, _):
        first = client.post("/v1/predict", json={"texts": [UNSURE] * 4}).json()
        assert {r["source"] for r in first["results"]} == {"cloud"}  # nothing known yet: no pacing
        later = [client.post("/v1/predict", json={"texts": [UNSURE] * 4}).json() for _ in range(5)]
        reasons = {r["reason"] for body in later for r in body["results"]}
        assert "paced" in reasons and later[-1]["priority"] == "normal"
        metrics = client.get("/metrics").text
    assert 'edge_fallbacks_total{reason="paced"}' in metrics
    assert 'edge_escalations_by_priority_total{priority="normal"}' in metrics


def test_priority_high_needs_a_client_key_and_low_is_open_to_all(tiny_artifact: Path, cloud: FakeCloud) -> None:
    common = {"policy": "paced", "cloud_url": cloud.url, "cloud_api_key": "k"}
    with serve_edge(edge_settings(tiny_artifact, client_keys=(), **common)) as (anonymous, _):
        refused = anonymous.post("/v1/predict", json={"text": UNSURE, "priority": "high"})
        low = anonymous.post("/v1/predict", json={"text": UNSURE, "priority": "low"})
        bad = anonymous.post("/v1/predict", json={"text": UNSURE, "priority": "urgent"})
    with serve_edge(edge_settings(tiny_artifact, **common)) as (client, _):
        high = client.post("/v1/predict", json={"text": UNSURE, "priority": "high"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "PRIORITY_FORBIDDEN"
    assert low.status_code == 200 and low.json()["priority"] == "low"
    assert high.status_code == 200 and high.json()["results"][0]["source"] == "cloud"
    assert bad.status_code == 400
