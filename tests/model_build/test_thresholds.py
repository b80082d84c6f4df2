"""One-threshold choices (the routing threshold, the score to ship, the cloud's oos threshold):
model_build.calibrate.thresholds."""

import math

import numpy as np
import pytest

from model_build.calibrate.curves import escalation_curve
from model_build.calibrate.routing import apply_threshold
from model_build.calibrate.thresholds import choose_oos_threshold, choose_threshold, compare_scores
from modelpack.routing import CloudRule, cloud_answer
from modelpack.scores import SCORES
from tests.model_build.hand_made import EDGE, LABELS, SCORE, TEACHER

# ---------------------------------------------------------------------------------- choose_threshold


def test_choose_threshold_picks_the_lowest_rate_meeting_the_target() -> None:
    curve = escalation_curve(EDGE, TEACHER, LABELS, SCORE, name="max_prob")

    choice = choose_threshold(curve, teacher_accuracy=0.8, target_ratio=0.99)

    # every point from rate 0.4 on meets 0.792; the cheapest is taken
    assert choice.reachable
    assert choice.escalation_rate == pytest.approx(0.4)
    assert choice.joint_accuracy == pytest.approx(1.0)
    assert choice.joint_over_teacher == pytest.approx(1.25)
    assert choice.threshold == pytest.approx(0.35)
    assert choice.target_accuracy == pytest.approx(0.792)
    assert (choice.score_name, choice.n_escalated) == ("max_prob", 2)


def test_choose_threshold_respects_ties_so_the_runtime_realises_the_reported_rate() -> None:
    curve = escalation_curve(EDGE, TEACHER, LABELS, SCORE)

    # Escalating only one of the tied pair would already give 0.8 at rate 0.2, but no threshold can.
    choice = choose_threshold(curve, teacher_accuracy=0.8, target_ratio=1.0)
    routed = apply_threshold(EDGE, TEACHER, LABELS, SCORE, choice.threshold)

    assert choice.escalation_rate == pytest.approx(0.4)
    assert routed.escalation_rate == pytest.approx(choice.escalation_rate)
    assert routed.joint_accuracy == pytest.approx(choice.joint_accuracy)


def test_choose_threshold_takes_the_edge_alone_when_it_already_meets_the_target() -> None:
    curve = escalation_curve(EDGE, TEACHER, LABELS, SCORE)

    choice = choose_threshold(curve, teacher_accuracy=0.8, target_ratio=0.75)

    assert (choice.escalation_rate, choice.threshold, choice.reachable) == (0.0, -math.inf, True)


def test_an_unreachable_target_is_reported_and_escalates_everything() -> None:
    # Given a teacher that is 90 % accurate elsewhere but only 50 % on these requests,
    labels = np.array([0, 1, 2, 3])
    edge, teacher, score = np.array([0, 9, 9, 9]), np.array([0, 1, 9, 9]), np.array([0.9, 0.1, 0.2, 0.3])
    curve = escalation_curve(edge, teacher, labels, score)

    choice = choose_threshold(curve, teacher_accuracy=0.9, target_ratio=0.99)

    assert not choice.reachable
    assert choice.threshold == math.inf
    assert choice.escalation_rate == 1.0
    assert choice.joint_accuracy == pytest.approx(0.5)
    assert choice.joint_over_teacher == pytest.approx(0.5 / 0.9)


def test_choose_threshold_rejects_a_meaningless_teacher_accuracy() -> None:
    curve = escalation_curve(EDGE, TEACHER, LABELS, SCORE)

    with pytest.raises(ValueError, match="teacher_accuracy"):
        choose_threshold(curve, teacher_accuracy=0.0)


# ------------------------------------------------------------------------------------- oos threshold


def row(confidence: float, argmax: int, classes: int = 5) -> list[float]:
    rest = (1.0 - confidence) / (classes - 1)
    return [confidence if k == argmax else rest for k in range(classes)]


# Five intent columns, oos is label 5 (no column): oos at .30, .45 and .90; right in-scope at .40, .60, .80.
OOS = 5
HAND_OOS_PROBS = np.array(
    [row(0.30, 0), row(0.40, 0), row(0.45, 2), row(0.60, 1), row(0.80, 0), row(0.90, 3)]
)
HAND_OOS_LABELS = np.array([OOS, 0, OOS, 1, 0, OOS])


def test_oos_threshold_with_a_strict_floor_only_flags_below_the_first_in_scope_request() -> None:
    choice = choose_oos_threshold(HAND_OOS_PROBS, HAND_OOS_LABELS, OOS, min_in_scope_accuracy=1.0)

    assert choice.threshold == pytest.approx(0.35)
    assert choice.oos_recall == pytest.approx(1 / 3)
    assert choice.in_scope_accuracy == pytest.approx(1.0)
    assert choice.oos_precision == pytest.approx(1.0)
    assert choice.flagged_rate == pytest.approx(1 / 6)
    assert (choice.base_oos_recall, choice.base_in_scope_accuracy, choice.feasible) == (0.0, 1.0, True)


def test_oos_threshold_trades_in_scope_accuracy_for_recall_down_to_the_floor() -> None:
    choice = choose_oos_threshold(HAND_OOS_PROBS, HAND_OOS_LABELS, OOS, min_in_scope_accuracy=0.6)

    # flagging .40 (in-scope) buys .45 (oos); flagging .60 too would fall to 1/3 < 0.6
    assert choice.threshold == pytest.approx(0.525)
    assert choice.oos_recall == pytest.approx(2 / 3)
    assert choice.in_scope_accuracy == pytest.approx(2 / 3)
    assert choice.oos_precision == pytest.approx(2 / 3)
    assert choice.in_scope_floor == 0.6


def test_oos_threshold_does_not_flag_in_scope_requests_that_buy_no_recall() -> None:
    # A floor of 0.3 would allow flagging the .60 in-scope request too, but no oos request sits before .90.
    choice = choose_oos_threshold(HAND_OOS_PROBS, HAND_OOS_LABELS, OOS, min_in_scope_accuracy=0.3)

    assert choice.threshold == pytest.approx(0.525)
    assert choice.oos_recall == pytest.approx(2 / 3)
    assert choice.in_scope_accuracy == pytest.approx(2 / 3)


def test_oos_threshold_default_floor_allows_a_one_point_drop_from_the_unthresholded_accuracy() -> None:
    choice = choose_oos_threshold(HAND_OOS_PROBS, HAND_OOS_LABELS, OOS)

    assert choice.in_scope_floor == pytest.approx(0.99)
    assert choice.threshold == pytest.approx(0.35)


def test_oos_threshold_on_synthetic_data_is_the_best_recall_meeting_the_floor() -> None:
    # Given in-scope requests that are confident (and right more often when confident)
    # and oos requests that are not,
    rng = np.random.default_rng(9)
    n_in, n_oos, classes = 2000, 300, 20
    confidence = np.concatenate([rng.beta(8, 2, n_in), rng.beta(2, 3, n_oos)])
    confidence = np.clip(confidence, 1.0 / classes + 1e-3, 1.0)
    argmax = rng.integers(0, classes, n_in + n_oos)
    probs = np.array([row(c, k, classes) for c, k in zip(confidence, argmax, strict=True)])
    right = rng.random(n_in) < confidence[:n_in]
    in_labels = np.where(right, argmax[:n_in], (argmax[:n_in] + 1) % classes)
    labels = np.concatenate([in_labels, np.full(n_oos, classes)])

    strict = choose_oos_threshold(probs, labels, classes, max_in_scope_drop=0.005)
    loose = choose_oos_threshold(probs, labels, classes, max_in_scope_drop=0.05)

    # then a looser floor buys recall with in-scope accuracy, and both floors hold
    assert strict.threshold < loose.threshold
    assert strict.oos_recall < loose.oos_recall
    assert strict.in_scope_accuracy > loose.in_scope_accuracy
    for choice in (strict, loose):
        assert choice.in_scope_accuracy >= choice.in_scope_floor
    # and no threshold on a fine grid gets more recall while keeping the loose floor
    is_oos = labels == classes
    for t in np.linspace(0.0, 1.0, 501):
        pred = cloud_answer(probs, CloudRule(t), classes)
        if np.mean(pred[~is_oos] == labels[~is_oos]) >= loose.in_scope_floor:
            assert np.mean(pred[is_oos] == classes) <= loose.oos_recall + 1e-12


def test_oos_threshold_counts_an_argmax_on_the_oos_column_as_an_oos_answer() -> None:
    probs = np.array([[0.1, 0.9], [0.8, 0.2], [0.6, 0.4]])  # column 1 is oos

    choice = choose_oos_threshold(probs, np.array([1, 0, 1]), oos_index=1, min_in_scope_accuracy=1.0)

    assert choice.base_oos_recall == pytest.approx(0.5)
    assert choice.oos_recall == pytest.approx(1.0)
    assert choice.threshold == pytest.approx(0.7)


def test_oos_threshold_reports_an_infeasible_floor_and_switches_the_rule_off() -> None:
    # The request at .40 is now wrong (label 1, argmax 0): in-scope accuracy is 2/3 before any flagging.
    labels = np.array([OOS, 1, OOS, 1, 0, OOS])

    choice = choose_oos_threshold(HAND_OOS_PROBS, labels, OOS, min_in_scope_accuracy=0.9)

    assert not choice.feasible
    assert choice.threshold == -math.inf
    assert choice.oos_recall == 0.0


def test_oos_threshold_needs_oos_examples() -> None:
    with pytest.raises(ValueError, match="oos and in-scope"):
        choose_oos_threshold(HAND_OOS_PROBS, np.array([0, 0, 2, 1, 0, 3]), OOS)


def test_cloud_answer_replaces_unconfident_answers() -> None:
    np.testing.assert_array_equal(cloud_answer(HAND_OOS_PROBS, CloudRule(0.5), OOS), [OOS, OOS, OOS, 1, 0, 3])


# ---------------------------------------------------------------------------------- compare_scores


def test_compare_scores_ships_the_score_needing_the_fewest_escalations() -> None:
    # The edge is wrong only on the close call, which margin ranks first and max_prob/entropy second.
    probs = np.array([[0.5, 0.49, 0.01], [0.4, 0.3, 0.3], [0.9, 0.05, 0.05], [0.9, 0.05, 0.05]])
    labels = np.array([1, 0, 0, 0])
    edge = probs.argmax(axis=1)

    comparison = compare_scores(probs, edge, labels.copy(), labels, target_ratio=1.0)

    assert comparison.best == "margin"
    assert comparison.best_choice.escalation_rate == pytest.approx(0.25)
    assert comparison.choices["max_prob"].escalation_rate == pytest.approx(0.5)
    assert comparison.choices["neg_entropy"].escalation_rate == pytest.approx(0.5)
    assert (comparison.edge_only_accuracy, comparison.cloud_only_accuracy) == (0.75, 1.0)
    assert set(comparison.curves) == set(SCORES)


def test_compare_scores_breaks_a_rate_tie_by_joint_accuracy() -> None:
    # Edge wrong on #0, #1, #2; teacher right on #1 and #2 only. Score "a" escalates #0 first;
    # score "b" ties #1 and #2 below everything. Both first meet 0.79 x 5/6 at rate 1/3.
    labels = np.zeros(6, dtype=int)
    edge = np.array([1, 1, 1, 0, 0, 0])
    teacher = np.array([1, 0, 0, 0, 0, 0])
    a = np.array([0.1, 0.2, 0.3, 0.9, 0.9, 0.9])
    b = np.array([0.5, 0.1, 0.1, 0.9, 0.9, 0.9])
    probs = np.full((6, 2), 0.5)

    comparison = compare_scores(
        probs, edge, teacher, labels, target_ratio=0.79, scores={"a": lambda p: a, "b": lambda p: b}
    )

    assert comparison.choices["a"].escalation_rate == pytest.approx(comparison.choices["b"].escalation_rate)
    assert comparison.choices["a"].joint_accuracy == pytest.approx(4 / 6)
    assert comparison.choices["b"].joint_accuracy == pytest.approx(5 / 6)
    assert comparison.best == "b"


def test_compare_scores_never_ships_a_score_that_misses_the_target() -> None:
    # The edge is wrong on #0 and #1, the teacher on #2 and #3; the target is an external 100 %.
    labels = np.zeros(4, dtype=int)
    edge = np.array([1, 1, 0, 0])
    teacher = np.array([0, 0, 1, 1])
    hides_errors = np.array([0.9, 0.9, 0.1, 0.1])
    finds_errors = np.array([0.1, 0.1, 0.9, 0.9])

    comparison = compare_scores(
        np.full((4, 2), 0.5),
        edge,
        teacher,
        labels,
        teacher_accuracy=1.0,
        target_ratio=1.0,
        scores={"hides": lambda p: hides_errors, "finds": lambda p: finds_errors},
    )

    assert not comparison.choices["hides"].reachable
    assert comparison.choices["hides"].escalation_rate == 1.0
    assert comparison.best == "finds"
    assert comparison.best_choice.reachable
    assert comparison.best_choice.escalation_rate == pytest.approx(0.5)
    assert comparison.best_choice.joint_accuracy == pytest.approx(1.0)


def test_oos_threshold_on_another_score_ranks_by_it_and_names_it() -> None:
    # The same rows ranked by a score of their own: the confident oos text (.90) is now the least sure.
    score = np.array([1.0, 4.0, 2.0, 5.0, 6.0, 0.5])
    by_score = choose_oos_threshold(HAND_OOS_PROBS, HAND_OOS_LABELS, OOS, min_in_scope_accuracy=1.0,
                                    score=("neg_energy", score))
    by_prob = choose_oos_threshold(HAND_OOS_PROBS, HAND_OOS_LABELS, OOS, min_in_scope_accuracy=1.0)

    assert (by_score.score, by_prob.score) == ("neg_energy", "max_prob")
    assert by_score.oos_recall == pytest.approx(1.0) and by_prob.oos_recall == pytest.approx(1 / 3)
    assert by_score.in_scope_accuracy == 1.0 and by_score.threshold == pytest.approx(3.0)  # between 2 and 4
    with pytest.raises(ValueError, match="shape"):
        choose_oos_threshold(HAND_OOS_PROBS, HAND_OOS_LABELS, OOS, score=("neg_energy", score[:3]))
