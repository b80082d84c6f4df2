import numpy as np
import pytest

from model_build.calibrate.calibration import (
    ece,
    evaluate_calibration,
    fit_temperature,
    nll,
    reliability_bins,
    softmax,
    traffic_weights,
)


def calibrated_sample(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits z and labels drawn from softmax(z): a model that is calibrated at T = 1."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(n, classes))
    cumulative = softmax(logits).cumsum(axis=1)
    labels = (rng.random((n, 1)) > cumulative).sum(axis=1)
    return logits, np.minimum(labels, classes - 1)


# ------------------------------------------------------------------------------------------ softmax


def test_softmax_rows_are_distributions_that_keep_the_logit_order() -> None:
    logits = np.array([[2.0, 1.0, -1.0], [0.0, 0.0, 0.0], [-3.0, 5.0, 4.0]])

    probs = softmax(logits)

    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert np.all(probs > 0)
    np.testing.assert_array_equal(np.argsort(probs, axis=1), np.argsort(logits, axis=1))
    np.testing.assert_allclose(probs[1], [1 / 3, 1 / 3, 1 / 3])


def test_softmax_ignores_a_per_row_shift_and_survives_huge_logits() -> None:
    logits = np.array([[1.0, 2.0, 3.0]])

    shifted = softmax(logits + 1000.0)
    huge = softmax(np.array([[1000.0, 0.0, -1000.0]]))

    np.testing.assert_allclose(shifted, softmax(logits), rtol=1e-12)
    assert np.all(np.isfinite(huge))
    np.testing.assert_allclose(huge, [[1.0, 0.0, 0.0]], atol=1e-300)


def test_softmax_temperature_sharpens_below_one_and_flattens_above() -> None:
    logits = np.array([[2.0, 0.0]])

    sharp, plain, flat = softmax(logits, 0.5), softmax(logits), softmax(logits, 1000.0)

    assert sharp[0, 0] > plain[0, 0] > flat[0, 0]
    np.testing.assert_allclose(sharp, softmax(logits * 2.0), rtol=1e-12)
    assert flat[0, 0] == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_softmax_rejects_a_temperature_that_is_not_positive_and_finite(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        softmax(np.zeros((1, 2)), temperature)


# ---------------------------------------------------------------------------------- fit_temperature


def test_fit_temperature_recovers_the_temperature_that_calibrates_the_logits() -> None:
    logits, labels = calibrated_sample(n=4000, classes=10, seed=7)

    fitted = fit_temperature(logits * 2.5, labels)

    assert fitted == pytest.approx(2.5, rel=0.05)
    assert nll(logits * 2.5, labels, fitted) < nll(logits * 2.5, labels, 1.0)


def test_fit_temperature_of_an_already_calibrated_model_is_about_one() -> None:
    logits, labels = calibrated_sample(n=4000, classes=10, seed=8)

    assert fit_temperature(logits, labels) == pytest.approx(1.0, rel=0.05)


def test_fit_temperature_returns_the_bound_when_the_optimum_lies_outside() -> None:
    separable = np.array([[10.0, 0.0], [0.0, 10.0]])

    assert fit_temperature(separable, np.array([0, 1])) == 0.05
    assert fit_temperature(separable, np.array([1, 0])) == 20.0


def test_fit_temperature_weights_act_like_repeated_examples() -> None:
    logits, labels = calibrated_sample(n=300, classes=5, seed=3)
    logits = logits * np.where(np.arange(300) < 150, 1.0, 4.0)[:, None]  # two differently scaled halves
    repeats = np.where(np.arange(300) < 150, 1, 3)

    weighted = fit_temperature(logits, labels, weights=repeats.astype(float))
    repeated = fit_temperature(np.repeat(logits, repeats, axis=0), np.repeat(labels, repeats))

    assert weighted == pytest.approx(repeated, rel=1e-4)
    assert weighted != pytest.approx(fit_temperature(logits, labels), rel=0.05)


def test_traffic_weighted_fit_on_a_val_like_mix_matches_a_fit_on_the_target_mix() -> None:
    # Given in-scope traffic calibrated at T=1 and oos traffic that needs T=3, a "val" split with
    # 25 oos in 825 and a "test" split with the same examples but 7x the oos (~18 %),
    in_logits, in_labels = calibrated_sample(n=800, classes=6, seed=11)
    oos_logits, oos_labels = calibrated_sample(n=25, classes=6, seed=12)
    oos_logits = oos_logits * 3.0
    val_logits = np.vstack([in_logits, oos_logits])
    val_labels = np.concatenate([in_labels, oos_labels])
    is_oos = np.arange(825) >= 800
    test_logits = np.vstack([in_logits, np.tile(oos_logits, (7, 1))])
    test_labels = np.concatenate([in_labels, np.tile(oos_labels, 7)])

    # when val is re-weighted to the test mix
    weights = traffic_weights(is_oos, 175 / 975)
    on_val_mix = fit_temperature(val_logits, val_labels)
    reweighted = fit_temperature(val_logits, val_labels, weights=weights)

    # then it fits the temperature the test mix wants, which the raw val mix misses
    assert reweighted == pytest.approx(fit_temperature(test_logits, test_labels), rel=1e-4)
    assert abs(on_val_mix - reweighted) > 0.05


# ---------------------------------------------------------------------------------------------- ECE

HAND_PROBS = np.array([[0.9, 0.1], [0.7, 0.3], [0.95, 0.05], [0.35, 0.65]])
HAND_LABELS = np.array([0, 1, 1, 1])  # right, wrong, wrong, right


def test_ece_of_a_hand_made_example() -> None:
    # Bins of width 0.2: (0.6, 0.8] holds conf .7 (wrong) and .65 (right): |0.5 - 0.675| = 0.175;
    # (0.8, 1.0] holds .9 (right) and .95 (wrong): |0.5 - 0.925| = 0.425. ECE = (2*.175 + 2*.425)/4.
    assert ece(HAND_PROBS, HAND_LABELS, n_bins=5) == pytest.approx(0.3, abs=1e-12)


def test_weighted_ece_of_a_hand_made_example() -> None:
    # Weight 3 on the last example: bin (0.6, 0.8] has mass 4, confidence 2.65/4, accuracy 3/4.
    weights = np.array([1.0, 1.0, 1.0, 3.0])

    value = ece(HAND_PROBS, HAND_LABELS, n_bins=5, weights=weights)

    assert value == pytest.approx((4 * abs(0.75 - 0.6625) + 2 * 0.425) / 6, abs=1e-12)
    assert value == pytest.approx(0.2, abs=1e-12)


def test_reliability_bins_report_confidence_accuracy_and_count_per_bin() -> None:
    bins = reliability_bins(HAND_PROBS, HAND_LABELS, n_bins=5)

    np.testing.assert_allclose(bins.edges, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_array_equal(bins.count, [0, 0, 0, 2, 2])
    np.testing.assert_allclose(bins.confidence[3:], [0.675, 0.925])
    np.testing.assert_allclose(bins.accuracy[3:], [0.5, 0.5])
    assert np.all(np.isnan(bins.accuracy[:3]))
    assert bins.n_bins == 5


def test_a_confidence_on_a_bin_edge_belongs_to_the_bin_it_closes() -> None:
    probs = np.array([[0.8, 0.2], [1.0, 0.0]])

    bins = reliability_bins(probs, np.array([0, 0]), n_bins=5)

    np.testing.assert_array_equal(bins.count, [0, 0, 0, 1, 1])


def test_ece_of_a_perfectly_calibrated_model_is_near_zero_and_of_an_overconfident_one_large() -> None:
    # Given confidences c in (0.5, 1) whose predictions are right with probability exactly c,
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, size=20_000)
    correct = rng.random(20_000) < confidence
    probs = np.column_stack([confidence, 1.0 - confidence])
    labels = np.where(correct, 0, 1)
    logits = np.log(probs)

    calibrated = ece(probs, labels)
    overconfident = ece(softmax(logits * 4.0), labels)

    assert calibrated < 0.015
    assert overconfident > 0.15


def test_evaluate_calibration_improves_after_fitting_the_temperature() -> None:
    logits, labels = calibrated_sample(n=3000, classes=10, seed=21)
    overconfident = logits * 3.0

    before = evaluate_calibration(overconfident, labels)
    after = evaluate_calibration(overconfident, labels, fit_temperature(overconfident, labels))

    assert after.ece < 0.03 < 0.1 < before.ece
    assert after.nll < before.nll
    assert after.accuracy == before.accuracy  # a temperature never changes the argmax
    assert after.bins.ece == after.ece


def test_ece_counts_labels_outside_the_probability_columns_as_errors() -> None:
    # A 2-way in-scope model meeting the oos label (index 2) is wrong there, confidently.
    probs = np.array([[0.9, 0.1], [0.9, 0.1]])

    assert ece(probs, np.array([0, 2]), n_bins=10) == pytest.approx(0.4)


# ---------------------------------------------------------------------------------- traffic_weights


def test_traffic_weights_reproduce_the_requested_oos_share_and_average_to_one() -> None:
    is_oos = np.arange(3100) < 100  # the CLINC validation mix: ~3.2 % oos

    weights = traffic_weights(is_oos, 0.18)

    assert weights[is_oos].sum() / weights.sum() == pytest.approx(0.18, abs=1e-12)
    assert weights.sum() == pytest.approx(3100.0)
    assert np.unique(weights[is_oos]).size == 1 and np.unique(weights[~is_oos]).size == 1


def test_traffic_weights_none_keeps_the_split_as_is() -> None:
    np.testing.assert_array_equal(traffic_weights(np.array([True, False, False]), None), [1.0, 1.0, 1.0])


def test_traffic_weights_of_zero_oos_drop_the_oos_examples() -> None:
    weights = traffic_weights(np.array([True, False, False, False]), 0.0)

    np.testing.assert_allclose(weights, [0.0, 4 / 3, 4 / 3, 4 / 3])


@pytest.mark.parametrize(
    ("is_oos", "fraction", "message"),
    [
        (np.array([False, False]), 0.1, "no oos"),
        (np.array([True, True]), 0.5, "only oos"),
        (np.array([True, False]), 1.5, r"\[0, 1\]"),
        (np.array([1, 0]), 0.5, "boolean"),
    ],
)
def test_traffic_weights_refuse_a_mix_the_split_cannot_express(
    is_oos: np.ndarray, fraction: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        traffic_weights(is_oos, fraction)
