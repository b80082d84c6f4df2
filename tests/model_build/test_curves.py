"""Escalation curves: model_build.calibrate.curves."""

from typing import Any

import numpy as np
import pytest

from model_build.calibrate.curves import curve_at_rates, escalation_curve, escalation_table_rows
from model_build.calibrate.routing import apply_threshold
from tests.model_build.hand_made import EDGE, LABELS, SCORE, TEACHER

# ------------------------------------------------------------------------------------------ curves


def test_escalation_curve_of_a_hand_made_example() -> None:
    curve = escalation_curve(EDGE, TEACHER, LABELS, SCORE, name="max_prob")

    # k=1 is missing: no threshold escalates only one of the two tied 0.2 scores.
    np.testing.assert_array_equal(curve.n_escalated, [0, 2, 3, 4, 5])
    np.testing.assert_allclose(curve.escalation_rate, [0.0, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(curve.joint_accuracy, [0.6, 1.0, 0.8, 0.8, 0.8])
    np.testing.assert_allclose(curve.thresholds, [-np.inf, 0.35, 0.65, 0.85, np.inf])
    assert (curve.edge_accuracy, curve.teacher_accuracy) == (pytest.approx(0.6), pytest.approx(0.8))
    assert curve.score_name == "max_prob"


def test_every_curve_point_is_what_the_runtime_rule_realises() -> None:
    # Given many ties (scores rounded to one decimal) and uneven weights,
    rng = np.random.default_rng(5)
    n = 400
    labels = rng.integers(0, 5, n)
    edge = np.where(rng.random(n) < 0.7, labels, (labels + 1) % 5)
    teacher = np.where(rng.random(n) < 0.9, labels, (labels + 2) % 5)
    score = np.round(rng.random(n), 1)
    weights = rng.uniform(0.5, 2.0, n)

    curve = escalation_curve(edge, teacher, labels, score, weights)

    # then applying "score < threshold" reproduces each point's rate and accuracy exactly
    assert len(curve) == np.unique(score).size + 1
    for i in range(len(curve)):
        routed = apply_threshold(edge, teacher, labels, score, curve.thresholds[i], weights=weights)
        assert routed.escalation_rate == pytest.approx(curve.escalation_rate[i], abs=1e-12)
        assert routed.joint_accuracy == pytest.approx(curve.joint_accuracy[i], abs=1e-12)
        assert int(np.sum(score < curve.thresholds[i])) == curve.n_escalated[i]


def test_integer_weights_give_the_curve_of_repeated_examples() -> None:
    repeats = np.array([1, 3, 1, 2, 1])

    weighted = escalation_curve(EDGE, TEACHER, LABELS, SCORE, repeats.astype(float))
    repeated = escalation_curve(*(np.repeat(a, repeats) for a in (EDGE, TEACHER, LABELS, SCORE)))

    np.testing.assert_allclose(weighted.escalation_rate, repeated.escalation_rate)
    np.testing.assert_allclose(weighted.joint_accuracy, repeated.joint_accuracy)
    np.testing.assert_allclose(weighted.thresholds, repeated.thresholds)


def test_adjacent_float_scores_still_get_a_separating_threshold() -> None:
    low = 0.5
    high = float(np.nextafter(low, 1.0))

    curve = escalation_curve(np.array([0, 0]), np.array([1, 1]), np.array([1, 1]), np.array([low, high]))

    assert low < curve.thresholds[1] <= high
    assert int(np.sum(np.array([low, high]) < curve.thresholds[1])) == 1


def test_curve_at_rates_takes_the_largest_point_within_each_budget() -> None:
    curve = escalation_curve(EDGE, TEACHER, LABELS, SCORE)

    points = curve_at_rates(curve, (0.0, 0.3, 0.4, 0.7, 1.0))

    assert [p.escalation_rate for p in points] == pytest.approx([0.0, 0.0, 0.4, 0.6, 1.0])
    assert [p.joint_accuracy for p in points] == pytest.approx([0.6, 0.6, 1.0, 0.8, 0.8])


def test_escalation_table_rows_follow_the_requested_budgets(routed: dict[str, Any]) -> None:
    curve = routed["comparison"].curves["margin"]

    rows = escalation_table_rows(curve)

    assert [row["budget"] for row in rows] == [0.0, 0.05, 0.10, 0.15, 0.20, 0.30, 0.50, 1.0]
    assert rows[0]["joint_accuracy"] == pytest.approx(curve.edge_accuracy)
    assert rows[-1]["joint_accuracy"] == pytest.approx(curve.teacher_accuracy)
    assert all(row["escalation_rate"] <= row["budget"] + 1e-12 for row in rows)
