"""calibrate.shift_table: mixing its two groups at a share pi gives exactly what the shipped rule does on the
split re-weighted to pi (the build's own `apply_deferral` with `traffic_weights`), for every threshold."""

from __future__ import annotations

import numpy as np
import pytest

from model_build.calibrate.calibration import traffic_weights
from model_build.calibrate.routing import apply_deferral
from model_build.calibrate.shift_table import oos_log_bias, shift_table, threshold_grid
from modelpack.manifest import ESCALATE_ALL, ESCALATE_NONE, RoutingEntry
from modelpack.scores import SCORES, band_score
from modelpack.shift import ShiftTable

OOS = 4


def _split(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.choice(5, size=n, p=[0.22, 0.22, 0.22, 0.22, 0.12])
    logits = rng.normal(size=(n, 5)) * 1.5
    logits[np.arange(n), labels] += rng.uniform(0.0, 4.0, size=n)  # right more often than not, unevenly sure
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    cloud = np.where(rng.random(n) < 0.9, labels, rng.integers(0, 5, size=n))
    return probs, cloud, labels


ROUTING = RoutingEntry(score="margin", threshold=0.4, target_joint_over_teacher=0.99, traffic_oos_fraction=None,
                       expected_escalation_rate=0.2, oos_threshold=0.3, oos_score="in_scope_max_prob")


@pytest.mark.parametrize("share", [0.03, 0.12, 0.3])
def test_the_mixed_groups_equal_the_reweighted_split(share: float) -> None:
    probs, cloud, labels = _split()
    table = shift_table(probs, cloud, labels, OOS, ROUTING)
    w = traffic_weights(labels == OOS, share)
    score, band = SCORES["margin"](probs), band_score("in_scope_max_prob", probs, OOS)
    for k, threshold in enumerate(table.thresholds):
        routed = apply_deferral(probs.argmax(axis=1), cloud, labels, score, threshold, ROUTING.oos_threshold,
                                oos_index=OOS, weights=w, oos_score=band)
        escalation, joint, cloud_accuracy = table.mix(share, k)
        assert escalation == pytest.approx(routed.escalation_rate, abs=2e-6)
        assert joint == pytest.approx(routed.joint_accuracy, abs=2e-6)
        assert cloud_accuracy == pytest.approx(routed.teacher_accuracy, abs=2e-6)


def test_the_grid_spans_escalate_none_to_all_and_holds_the_shipped_threshold() -> None:
    probs, cloud, labels = _split()
    table = shift_table(probs, cloud, labels, OOS, ROUTING, points=50)
    assert table.thresholds[0] == ESCALATE_NONE and table.thresholds[-1] == ESCALATE_ALL
    assert ROUTING.threshold in table.thresholds and 40 <= len(table.thresholds) <= 53
    assert table.in_scope.escalation_rate[0] == 0.0
    assert table.oos.escalation_rate[-1] == pytest.approx(1.0 - table.oos.edge_oos_rate, abs=2e-6)
    assert sum(table.source_priors) == pytest.approx(1.0) and len(table.source_priors) == 5
    assert table.split_oos_fraction == pytest.approx(float((labels == OOS).mean()), abs=1e-6)
    assert isinstance(table, ShiftTable) and table.oos_index == OOS


def test_a_split_without_oos_texts_has_no_table() -> None:
    probs, cloud, labels = _split()
    keep = labels != OOS
    with pytest.raises(ValueError, match="both in-scope and out-of-scope"):
        shift_table(probs[keep], cloud[keep], labels[keep], OOS, ROUTING)
    assert threshold_grid(np.array([0.5, 0.5]), ROUTING) == (ESCALATE_NONE, 0.4, ESCALATE_ALL)


def test_the_oos_bias_undoes_an_understated_oos_probability() -> None:
    probs, cloud, labels = _split(4000, seed=3)
    honest = oos_log_bias(probs, labels, OOS)
    shy = probs.copy()
    shy[:, OOS] *= 0.25  # the edge says `oos` four times too softly
    shy /= shy.sum(axis=1, keepdims=True)
    bias = oos_log_bias(shy, labels, OOS)
    assert bias - honest == pytest.approx(np.log(4.0), abs=0.05)
    corrected = shy.copy()
    corrected[:, OOS] *= np.exp(bias)
    corrected /= corrected.sum(axis=1, keepdims=True)
    assert corrected[:, OOS].mean() == pytest.approx(float((labels == OOS).mean()), abs=1e-3)
    table = shift_table(shy, cloud, labels, OOS, ROUTING)
    assert table.oos_log_bias == pytest.approx(bias, abs=1e-5)
    assert table.em_source()[OOS] == pytest.approx(table.source_priors[OOS] * np.exp(-bias))


def test_each_group_records_the_mean_and_spread_of_its_oos_probability() -> None:
    probs, cloud, labels = _split()
    table = shift_table(probs, cloud, labels, OOS, ROUTING)
    for group, mask in ((table.oos, labels == OOS), (table.in_scope, labels != OOS)):
        assert group.n == int(mask.sum())
        assert group.mean_oos_probability == pytest.approx(probs[mask, OOS].mean(), abs=1e-8)
        assert group.sd_oos_probability == pytest.approx(probs[mask, OOS].std(), abs=1e-8)
        assert group.sd_oos_probability > 0.0
