import math

import numpy as np
import pytest

from model_build.routing import (
    SCORES,
    apply_deferral,
    apply_threshold,
    choose_deferral,
    choose_oos_threshold,
    choose_threshold,
    compare_scores,
    curve_at_rates,
    escalation_curve,
    margin,
    max_prob,
    neg_entropy,
    predict_with_oos,
)

# Five requests. The edge is wrong on #1 and #3, the teacher on #2; #1 and #3 tie on the score.
LABELS = np.array([0, 1, 2, 3, 4])
EDGE = np.array([0, 9, 2, 9, 4])
TEACHER = np.array([0, 1, 9, 3, 4])
SCORE = np.array([0.9, 0.2, 0.5, 0.2, 0.8])


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
        pred = predict_with_oos(probs, t, classes)
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


def test_predict_with_oos_replaces_unconfident_answers() -> None:
    np.testing.assert_array_equal(predict_with_oos(HAND_OOS_PROBS, 0.5, OOS), [OOS, OOS, OOS, 1, 0, 3])


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
