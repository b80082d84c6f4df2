"""The routing rule in the contract (modelpack.routing): what it decides, and that the build's evaluation
(calibrate.routing.apply_deferral, the vectorised rule its threshold search measures) and the edge's
policies decide exactly alike on the same rows."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edge_container.policies import EdgeOnlyPolicy, ThresholdPolicy
from model_build.calibrate.routing import apply_deferral
from modelpack.manifest import RoutingEntry
from modelpack.routing import CloudRule, cascade, cloud_answer, cloud_oos_score, decide
from modelpack.scores import SCORES, manifest_band_score, neg_energy

OOS = 3


def _routing(**changes) -> RoutingEntry:
    base = RoutingEntry(score="max_prob", threshold=0.6, target_joint_over_teacher=0.99,
                        traffic_oos_fraction=None, expected_escalation_rate=0.2,
                        oos_threshold=0.3, expected_edge_oos_rate=0.1, oos_score="in_scope_max_prob")
    return dataclasses.replace(base, **changes)


def _probs(n: int, seed: int = 0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(scale=2.0, size=(n, 4))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_a_hand_made_row_of_each_kind() -> None:
    probs = np.array([
        [0.90, 0.05, 0.03, 0.02],  # sure: the edge answers
        [0.50, 0.40, 0.05, 0.05],  # unsure: the cloud answers
        [0.20, 0.10, 0.05, 0.65],  # no plausible intent (best in-scope 0.2 < 0.3): the edge says oos
    ])
    route = decide(probs, _routing(), OOS)
    assert route.edge_oos.tolist() == [False, False, True]
    assert route.escalate.tolist() == [False, True, False]  # the hopeless one is never escalated
    assert route.edge_answers.tolist() == [True, False, False]


def test_without_a_band_nothing_is_refused_at_the_edge() -> None:
    route = decide(_probs(50), _routing(oos_threshold=None, oos_score=None), OOS)
    assert not route.edge_oos.any()
    np.testing.assert_array_equal(route.escalate, SCORES["max_prob"](_probs(50)) < 0.6)


@pytest.mark.parametrize("score,band", [("max_prob", None), ("margin", "in_scope_max_prob"),
                                        ("neg_entropy", None)])
def test_the_build_and_the_edge_decide_alike(score: str, band: str | None) -> None:
    probs = _probs(2000, seed=1)
    band_scores = manifest_band_score(probs, _routing(score=score, oos_score=band), OOS)
    routing = _routing(score=score, threshold=float(np.quantile(SCORES[score](probs), 0.3)),
                       oos_threshold=float(np.quantile(band_scores, 0.1)), oos_score=band)
    labels = np.random.default_rng(2).integers(0, 4, size=len(probs))
    route = decide(probs, routing, OOS)
    assert route.edge_oos.any() and route.escalate.any()

    # The build: its routed metrics of the same rows under the same thresholds.
    measured = apply_deferral(probs.argmax(axis=1), labels, labels, SCORES[score](probs), routing.threshold,
                              routing.oos_threshold, oos_index=OOS,
                              oos_score=manifest_band_score(probs, routing, OOS))
    assert measured.escalation_rate == pytest.approx(route.escalate.mean())
    # The edge: its default policy, as the service applies it (band first; the band is never escalated).
    policy = ThresholdPolicy()
    hopeless = policy.edge_oos(probs, routing, OOS)
    np.testing.assert_array_equal(hopeless, route.edge_oos)
    np.testing.assert_array_equal(policy.escalate(probs, routing) & ~hopeless, route.escalate)


def test_baseline_policies_skip_the_band() -> None:
    assert EdgeOnlyPolicy().edge_oos(_probs(10), _routing(), OOS) is None
    assert not decide(_probs(10), _routing(), OOS, band=False).edge_oos.any()


def test_cascade_answers_with_oos_from_either_tier() -> None:
    @dataclasses.dataclass
    class Manifest:
        routing: RoutingEntry
        cloud: CloudRule
        oos_index: int | None = OOS

    edge = np.array([[0.90, 0.05, 0.03, 0.02], [0.50, 0.40, 0.05, 0.05], [0.20, 0.10, 0.05, 0.65],
                     [0.50, 0.40, 0.05, 0.05]])
    cloud = np.array([[0.1, 0.8, 0.05, 0.05], [0.1, 0.8, 0.05, 0.05], [0.9, 0.05, 0.03, 0.02],
                      [0.4, 0.3, 0.2, 0.1]])
    answers, route = cascade(edge, cloud, Manifest(_routing(), CloudRule(oos_threshold=0.5)))
    # edge keeps row 0; the cloud answers row 1 (intent 1) and refuses row 3 (0.4 < 0.5); row 2 is the edge's oos
    assert answers.tolist() == [0, 1, OOS, OOS]
    assert route.escalate.tolist() == [False, True, False, True]


def test_the_clouds_energy_rule_reads_its_raw_logits() -> None:
    # Two rows with the same calibrated answer (softmax forgets a shift of every logit), one with strong
    # support for its intents and one with weak: only the energy tells them apart
    logits = np.array([[8.0, 6.0, 5.0, 0.0], [3.0, 1.0, 0.0, 0.0]])
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    energy = neg_energy(logits, OOS)
    np.testing.assert_allclose(energy, np.log(np.exp(logits[:, :OOS]).sum(1)))
    rule = CloudRule(oos_threshold=float(energy.mean()), oos_score="neg_energy")
    assert cloud_answer(probs, rule, OOS, logits=logits).tolist() == [0, OOS]
    assert cloud_answer(probs, CloudRule(0.5), OOS).tolist() == [0, 0]  # max_prob: 0.84 and 0.84
    np.testing.assert_allclose(cloud_oos_score(probs, rule, OOS, logits), energy)
    with pytest.raises(ValueError, match="raw logits"):
        cloud_answer(probs, rule, OOS)
