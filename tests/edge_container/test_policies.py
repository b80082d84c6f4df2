import random

import numpy as np
import pytest

from edge_container.policies import (
    AdaptivePolicy,
    CloudOnlyPolicy,
    EdgeOnlyPolicy,
    EntropyPolicy,
    MarginPolicy,
    RandomPolicy,
    ThresholdPolicy,
    make_policy,
)
from edge_container.settings import Settings
from modelpack.manifest import RoutingEntry
from modelpack.policy_names import POLICY_NAMES
from modelpack.scores import SCORES, softmax

PROBS = np.array([
    [0.96, 0.01, 0.01, 0.01, 0.01],  # sure
    [0.50, 0.45, 0.02, 0.02, 0.01],  # torn between two
    [0.30, 0.20, 0.20, 0.15, 0.15],  # spread out
])


def routing(score: str = "max_prob", threshold: float = 0.6, rate: float = 0.2) -> RoutingEntry:
    return RoutingEntry(score=score, threshold=threshold, target_joint_over_teacher=0.99,
                        traffic_oos_fraction=None, expected_escalation_rate=rate)


@pytest.mark.parametrize("score", ["max_prob", "margin", "neg_entropy"])
def test_threshold_uses_the_manifest_score_and_threshold(score: str) -> None:
    threshold = float(np.median(SCORES[score](PROBS)))
    mask = ThresholdPolicy().escalate(PROBS, routing(score, threshold))
    assert mask.tolist() == (SCORES[score](PROBS) < threshold).tolist()
    assert mask.sum() == 1  # only the row strictly below the median


def test_margin_escalates_answers_torn_between_two_labels() -> None:
    assert MarginPolicy(0.2).escalate(PROBS, routing()).tolist() == [False, True, True]
    # Without its own threshold it takes the manifest's only if the manifest routes on margin too.
    assert MarginPolicy().threshold_for(routing("margin", 0.07)) == 0.07
    assert MarginPolicy().threshold_for(routing("max_prob", 0.6)) == MarginPolicy.default_threshold


def test_entropy_escalates_spread_out_answers() -> None:
    assert EntropyPolicy(0.3).escalate(PROBS, routing()).tolist() == [False, False, True]
    assert EntropyPolicy().threshold_for(routing("neg_entropy", 0.4)) == 0.4


def test_edge_only_and_cloud_only_are_fixed_baselines() -> None:
    assert not EdgeOnlyPolicy().escalate(PROBS, routing()).any()
    assert CloudOnlyPolicy().escalate(PROBS, routing()).all()
    assert (EdgeOnlyPolicy.keep_reason, CloudOnlyPolicy.escalate_reason) == ("forced_edge", "forced_cloud")


def test_random_escalates_its_rate_whatever_the_confidence() -> None:
    policy = RandomPolicy(0.25, rng=random.Random(7))
    sure = np.tile(PROBS[:1], (20_000, 1))
    assert abs(policy.escalate(sure, routing()).mean() - 0.25) < 0.02
    assert RandomPolicy(rng=random.Random(1)).escalate(sure, routing(rate=0.0)).sum() == 0  # manifest's rate


def test_adaptive_holds_the_target_rate_when_scores_drift() -> None:
    """A quantile of recent scores keeps ~10 % escalated while confidence drifts from high to low;
    the manifest's fixed threshold would escalate 0 % then ~100 %."""
    rng = np.random.default_rng(0)
    policy, entry = AdaptivePolicy(0.10, window=500), routing(threshold=0.6)
    rates = []
    for phase_mean in (3.0, 1.5, 0.2):  # logit scale of the true class: confident -> unsure traffic
        escalated = 0
        for _ in range(100):  # batches of 16
            logits = rng.normal(0, 1, (16, 5))
            logits[:, 0] += phase_mean + rng.normal(0, 1, 16)
            escalated += int(policy.escalate(softmax(logits), entry).sum())
        rates.append(escalated / 1600)
    assert all(0.05 <= r <= 0.16 for r in rates), rates


def test_adaptive_uses_the_manifest_threshold_until_it_has_seen_enough() -> None:
    policy = AdaptivePolicy(0.5, window=100, min_samples=50)
    assert policy.escalate(PROBS, routing(threshold=0.6)).tolist() == [False, True, True]
    assert policy.current_threshold(routing(threshold=0.6)) == 0.6


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_policy_is_made_by_name(name: str) -> None:
    policy = make_policy(name, Settings(target_escalation_rate=0.3, margin_threshold=0.1))
    assert policy.name == name
    assert policy.escalate(PROBS, routing()).shape == (3,)


def test_budget_gate_rechecks_before_a_distant_reset():
    from datetime import UTC, datetime, timedelta

    from edge_container.escalation import BudgetGate

    now = [datetime(2026, 11, 22, 9, 0, tzinfo=UTC)]
    gate = BudgetGate(clock=lambda: now[0], default_block=timedelta(minutes=1))
    gate.block(datetime(2026, 11, 23, tzinfo=UTC))  # resets at midnight, 15 hours away
    assert not gate.is_open()
    now[0] += timedelta(seconds=59)
    assert not gate.is_open()
    now[0] += timedelta(seconds=2)
    assert gate.is_open()  # asks the cloud again after a minute
    gate.block(now[0] + timedelta(seconds=10))  # a reset sooner than the re-check wins
    now[0] += timedelta(seconds=11)
    assert gate.is_open()
