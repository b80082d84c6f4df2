"""The scores (modelpack.scores, the runtimes' own) and the rule applied to a split: calibrate.routing."""

import math

import numpy as np
import pytest

from model_build.calibrate.routing import apply_threshold
from modelpack.scores import SCORES, margin, max_prob, neg_entropy
from tests.model_build.hand_made import EDGE, LABELS, SCORE, TEACHER

# ------------------------------------------------------------------------------------------- scores


def test_scores_of_a_hand_made_row() -> None:
    probs = np.array([[0.7, 0.2, 0.1]])
    entropy = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))

    assert max_prob(probs)[0] == pytest.approx(0.7)
    assert margin(probs)[0] == pytest.approx(0.5)
    assert neg_entropy(probs)[0] == pytest.approx(1.0 - entropy / math.log(3))


def test_scores_are_one_for_a_one_hot_row_and_lowest_for_a_uniform_row() -> None:
    probs = np.array([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])

    np.testing.assert_allclose(max_prob(probs), [1.0, 0.25])
    np.testing.assert_allclose(margin(probs), [1.0, 0.0])
    np.testing.assert_allclose(neg_entropy(probs), [1.0, 0.0], atol=1e-12)
    assert set(SCORES) == {"max_prob", "margin", "neg_entropy"}


def test_margin_and_max_prob_can_disagree_on_which_request_is_harder() -> None:
    close_call, spread = [0.5, 0.49, 0.01], [0.4, 0.3, 0.3]
    probs = np.array([close_call, spread])

    assert max_prob(probs)[0] > max_prob(probs)[1]
    assert margin(probs)[0] < margin(probs)[1]


# ---------------------------------------------------------------------------------- apply_threshold


def test_apply_threshold_reports_oos_recall_and_in_scope_figures() -> None:
    # Label 4 stands for oos: the edge gets it right at 0.8, so escalation below 0.35 leaves it alone.
    routed = apply_threshold(EDGE, TEACHER, LABELS, SCORE, 0.35, oos_index=4)

    assert routed.n == 5
    assert routed.escalation_rate == pytest.approx(0.4)
    assert routed.joint_accuracy == pytest.approx(1.0)
    assert (routed.edge_accuracy, routed.teacher_accuracy) == (pytest.approx(0.6), pytest.approx(0.8))
    assert routed.joint_over_teacher == pytest.approx(1.25)
    assert routed.joint_oos_recall == pytest.approx(1.0)
    assert routed.in_scope_accuracy == pytest.approx(1.0)
    assert routed.in_scope_escalation_rate == pytest.approx(0.5)
    assert routed.oos_escalation_rate == pytest.approx(0.0)


def test_apply_threshold_without_oos_index_leaves_oos_figures_undefined() -> None:
    routed = apply_threshold(EDGE, TEACHER, LABELS, SCORE, 0.65)

    assert math.isnan(routed.joint_oos_recall)
    assert routed.in_scope_accuracy == pytest.approx(routed.joint_accuracy) == pytest.approx(0.8)


def test_apply_threshold_weights_shift_the_rate_towards_the_assumed_mix() -> None:
    weights = np.array([1.0, 1.0, 1.0, 1.0, 6.0])  # request #4 (score 0.8) is 60 % of the traffic

    routed = apply_threshold(EDGE, TEACHER, LABELS, SCORE, 0.85, weights=weights)

    assert routed.escalation_rate == pytest.approx(0.9)
    assert routed.joint_accuracy == pytest.approx(0.9)
