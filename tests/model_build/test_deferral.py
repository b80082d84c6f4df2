"""The three-way rule's threshold search: model_build.calibrate.deferral."""

import numpy as np
import pytest

from model_build.calibrate.deferral import choose_deferral
from model_build.calibrate.routing import apply_deferral

# ------------------------------------------------------------------------------- three-way deferral

OOS_LABEL = 9


def _brute_force(score, edge, teacher, y, target, w):
    """Every pair of thresholds between sorted scores, the rule applied literally."""
    cuts = np.concatenate(([-np.inf], np.sort(np.unique(score)) + 1e-9, [np.inf]))
    best = None
    for lo in cuts:
        for hi in cuts[cuts >= lo]:
            m = apply_deferral(edge, teacher, y, score, hi, lo, oos_index=OOS_LABEL, weights=w)
            if m.joint_accuracy >= target * m.teacher_accuracy - 1e-12:
                key = (round(m.escalation_rate, 9), -round(m.joint_accuracy, 9))
                best = key if best is None or key < best else best
    return best


def test_deferral_answers_hopeless_texts_oos_at_the_edge_instead_of_paying_the_cloud() -> None:
    # Two oos texts with the lowest scores: the teacher would say oos, but so can the edge for free.
    y = np.array([OOS_LABEL, OOS_LABEL, 1, 2, 3, 4])
    edge = np.array([0, 0, 9, 2, 3, 4])  # wrong on both oos texts and on #2
    teacher = np.array([OOS_LABEL, OOS_LABEL, 1, 2, 3, 4])
    score = np.array([0.05, 0.1, 0.4, 0.8, 0.9, 0.95])
    choice = choose_deferral(score, edge, teacher, y, OOS_LABEL, target_ratio=1.0)
    assert choice.reachable and choice.joint_accuracy == pytest.approx(1.0)
    assert choice.edge_oos_rate == pytest.approx(2 / 6)
    assert choice.escalation_rate == pytest.approx(1 / 6)  # only the in-scope text the edge gets wrong
    assert choice.two_way_escalation_rate == pytest.approx(3 / 6)
    assert 0.1 < choice.oos_threshold <= 0.4 < choice.threshold <= 0.8
    routed = apply_deferral(edge, teacher, y, score, choice.threshold, choice.oos_threshold, oos_index=OOS_LABEL)
    assert routed.escalation_rate == pytest.approx(choice.escalation_rate)
    assert routed.joint_accuracy == pytest.approx(1.0)


def test_deferral_keeps_the_two_way_rule_when_an_oos_band_would_cost_accuracy() -> None:
    y = np.array([1, OOS_LABEL, 2, 3])
    edge = np.array([0, 0, 2, 3])
    teacher = np.array([1, OOS_LABEL, 2, 3])
    score = np.array([0.1, 0.2, 0.8, 0.9])  # the least confident text is in scope: answering oos loses it
    choice = choose_deferral(score, edge, teacher, y, OOS_LABEL, target_ratio=1.0)
    assert choice.oos_threshold == -np.inf and choice.edge_oos_rate == 0.0
    assert choice.escalation_rate == pytest.approx(0.5) == choice.two_way_escalation_rate


@pytest.mark.parametrize("seed", range(6))
def test_deferral_finds_the_cheapest_pair_a_literal_search_finds(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 40
    y = np.where(rng.random(n) < 0.25, OOS_LABEL, rng.integers(0, 4, n))
    score = np.round(rng.random(n), 1)  # ties on purpose
    edge = np.where(rng.random(n) < score, y, rng.integers(0, 5, n))
    teacher = np.where(rng.random(n) < 0.9, y, 0)
    w = rng.integers(1, 4, n).astype(float)
    target = 0.97
    choice = choose_deferral(score, edge, teacher, y, OOS_LABEL, target_ratio=target, weights=w)
    expected = _brute_force(score, edge, teacher, y, target, w)
    assert choice.reachable == (expected is not None)
    if expected is not None:
        assert (round(choice.escalation_rate, 9), -round(choice.joint_accuracy, 9)) == expected
        m = apply_deferral(edge, teacher, y, score, choice.threshold, choice.oos_threshold, oos_index=OOS_LABEL,
                           weights=w)
        assert m.escalation_rate == pytest.approx(choice.escalation_rate)
        assert m.joint_accuracy == pytest.approx(choice.joint_accuracy)
        assert choice.escalation_rate <= choice.two_way_escalation_rate + 1e-12


def test_deferral_reports_an_unreachable_target() -> None:
    y, edge, teacher = np.array([1, 2]), np.array([0, 0]), np.array([1, 0])
    choice = choose_deferral(np.array([0.5, 0.6]), edge, teacher, y, OOS_LABEL, target_ratio=1.5)
    assert not choice.reachable and choice.escalation_rate == 1.0 and choice.threshold == np.inf


def _brute_force_two_scores(score, band, edge, teacher, y, target, w):
    best = None
    for lo in np.concatenate(([-np.inf], np.sort(np.unique(band)) + 1e-9)):
        for hi in np.concatenate(([-np.inf], np.sort(np.unique(score)) + 1e-9, [np.inf])):
            m = apply_deferral(edge, teacher, y, score, hi, lo, oos_index=OOS_LABEL, weights=w, oos_score=band)
            if m.joint_accuracy >= target * m.teacher_accuracy - 1e-12:
                key = (round(m.escalation_rate, 9), -round(m.joint_accuracy, 9))
                best = key if best is None or key < best else best
    return best


@pytest.mark.parametrize("seed", range(5))
def test_deferral_with_a_band_score_of_its_own_matches_a_literal_search(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n = 36
    y = np.where(rng.random(n) < 0.3, OOS_LABEL, rng.integers(0, 4, n))
    score = np.round(rng.random(n), 1)
    band = np.round(np.where(y == OOS_LABEL, rng.random(n) * 0.6, rng.random(n)), 1)  # oos sits low on it
    edge = np.where(rng.random(n) < score, y, rng.integers(0, 5, n))
    teacher = np.where(rng.random(n) < 0.9, y, 0)
    w = rng.integers(1, 4, n).astype(float)
    choice = choose_deferral(score, edge, teacher, y, OOS_LABEL, target_ratio=0.97, weights=w, oos_score=band)
    expected = _brute_force_two_scores(score, band, edge, teacher, y, 0.97, w)
    assert choice.reachable == (expected is not None)
    if expected is not None:
        assert (round(choice.escalation_rate, 9), -round(choice.joint_accuracy, 9)) == expected
        m = apply_deferral(edge, teacher, y, score, choice.threshold, choice.oos_threshold, oos_index=OOS_LABEL,
                           weights=w, oos_score=band)
        assert m.escalation_rate == pytest.approx(choice.escalation_rate)
        assert m.joint_accuracy == pytest.approx(choice.joint_accuracy)
