"""calibrate.fit: the edge's oos logit bias, fitted with its temperature on re-weighted validation data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from model_build.calibrate.fit import OOS_BIAS_GRID, fit_on_validation
from model_build.config import preset
from model_build.data.dataset import Dataset, Split

K = 6  # five intents and oos (last)
OOS = K - 1


def _split(labels: np.ndarray) -> Split:
    return Split(tuple(f"text {i}" for i in range(len(labels))), labels)


def _dataset(with_oos: bool = True) -> Dataset:
    rng = np.random.default_rng(0)
    val = np.r_[rng.integers(0, OOS, 570), np.full(30 if with_oos else 0, OOS)]  # 5 % oos
    test = np.r_[rng.integers(0, OOS, 400), np.full(100 if with_oos else 0, OOS)]  # 20 % oos
    names = (*(f"intent{i}" for i in range(OOS)), "oos") if with_oos else tuple(f"intent{i}" for i in range(OOS))
    return Dataset("synthetic", names, "oos" if with_oos else None, _split(val[:10]), _split(val), _split(test),
                   "0" * 64, "synthetic.json")


class _Runner:
    """Logits of an edge that under-states oos (its oos texts look like a weak intent) and a good cloud."""

    def __init__(self, labels: np.ndarray, n_classes: int) -> None:
        rng = np.random.default_rng(1)
        n = len(labels)
        edge = rng.normal(0, 1, (n, n_classes))
        right = rng.random(n) < 0.97
        edge[np.arange(n), labels] += np.where(right, 6.0, 0.0)  # right answers confident, wrong ones not
        if n_classes > OOS:
            is_oos = labels == OOS
            m = int(is_oos.sum())
            edge[is_oos, rng.integers(0, OOS, m)] = rng.normal(3.0, 0.3, m)  # a weak intent wins, the oos
            edge[is_oos, OOS] = rng.normal(2.0, 0.3, m)  # column one logit below: under-stated
        cloud = rng.normal(0, 1, (n, n_classes))
        cloud[np.arange(n), labels] += 6.0
        self.logits_of = {"edge": edge, "cloud": cloud}

    def logits(self, tier: str, split: Split) -> np.ndarray:
        return self.logits_of[tier]


def test_the_bias_that_escalates_least_on_validation_ships() -> None:
    data = _dataset()
    fitted = fit_on_validation(preset("quick"), data, _Runner(data.val.labels, K))
    search = fitted.validation.oos_bias_search
    assert search is not None and set(search) == {0.0, *OOS_BIAS_GRID}
    assert fitted.edge_oos_bias > 0 and fitted.edge_oos_bias == fitted.validation.edge_oos_bias
    assert fitted.routing.expected_escalation_rate <= search[fitted.edge_oos_bias] <= min(search.values()) + 1e-12
    assert fitted.routing.expected_escalation_rate < search[0.0]  # the bias paid off on this edge
    assert fitted.validation.to_dict()["oos_bias_search"][str(fitted.edge_oos_bias)] == search[fitted.edge_oos_bias]


def test_the_bias_reaches_the_manifest(tiny_artifact) -> None:
    from modelpack.manifest import load_manifest

    data = _dataset()
    fitted = fit_on_validation(preset("quick"), data, _Runner(data.val.labels, K))
    manifest = fitted.apply(load_manifest(tiny_artifact))
    assert manifest.edge.oos_logit_bias == fitted.edge_oos_bias and manifest.cloud.oos_logit_bias == 0.0


@pytest.mark.parametrize("with_oos", [True, False])
def test_no_search_when_switched_off_or_without_oos(with_oos: bool) -> None:
    data = _dataset(with_oos)
    config = dataclasses.replace(preset("quick"), edge_oos_bias=not with_oos)  # off, or nothing to bias
    fitted = fit_on_validation(config, data, _Runner(data.val.labels, K if with_oos else OOS))
    assert fitted.edge_oos_bias == 0.0 and fitted.validation.oos_bias_search is None
    assert "oos_bias_search" not in fitted.validation.to_dict()


class _EnergyCloudRunner(_Runner):
    """A cloud whose oos texts are as sure of their answer as in-scope ones (one logit far above the rest,
    so the max probability cannot tell them apart) but whose logits are all lower: only its energy can."""

    def __init__(self, labels: np.ndarray, n_classes: int) -> None:
        super().__init__(labels, n_classes)
        rng = np.random.default_rng(2)
        n, is_oos = len(labels), labels == OOS
        cloud = rng.normal(0, 0.3, (n, n_classes))
        guess = np.where(is_oos, rng.integers(0, OOS, n), labels)
        cloud[np.arange(n), guess] += 8.0
        cloud[is_oos] -= 4.0  # every logit: the probabilities do not move, the energy does
        self.logits_of["cloud"] = cloud


def test_with_real_oos_texts_the_cloud_cuts_on_the_score_that_catches_more() -> None:
    from modelpack.routing import CloudRule, cloud_answer
    from modelpack.scores import softmax

    data = _dataset()
    runner = _EnergyCloudRunner(data.val.labels, K)
    fitted = fit_on_validation(preset("quick"), data, runner)
    choice = fitted.validation.cloud_oos
    assert choice is not None and choice.score == "neg_energy" and fitted.cloud_oos_score == "neg_energy"
    assert choice.oos_recall > 0.9 and choice.in_scope_accuracy >= choice.in_scope_floor
    assert fitted.cloud_oos_threshold == choice.threshold  # no budget: the chosen threshold ships as it is
    # What the manifest's rule does on validation is what the choice measured.
    logits = runner.logits_of["cloud"]
    answers = cloud_answer(softmax(logits, fitted.cloud_temperature),
                           CloudRule(fitted.cloud_oos_threshold, fitted.cloud_oos_score), OOS, logits=logits)
    assert np.mean(answers[data.val.labels == OOS] == OOS) == pytest.approx(choice.oos_recall)
    # The usual cloud (sure only of what it knows): the max probability catches as much, and a tie keeps it.
    usual = fit_on_validation(preset("quick"), data, _Runner(data.val.labels, K))
    assert usual.validation.cloud_oos is not None and usual.validation.cloud_oos.score == "max_prob"
    assert usual.cloud_oos_score is None


class _AppendedRunner(_Runner):
    """Five intents and the appended `oos` column a runtime adds (no model learns it)."""

    def __init__(self, labels: np.ndarray) -> None:
        from model_build.data.background import APPENDED_OOS_LOGIT

        super().__init__(labels, OOS)
        self.logits_of = {tier: np.c_[z, np.full(len(z), APPENDED_OOS_LOGIT)] for tier, z in self.logits_of.items()}


def test_without_oos_texts_the_escalation_bar_does_not_move_with_the_cloud_s_refusals() -> None:
    """The cloud's refusals of in-scope texts are spent from the false-reject budget: the escalation is fit for
    the cloud's answers without them, so a larger budget (a cloud that may refuse more) leaves it as it was.
    (Charged to the bar, the 20 % budget's refusals made this near-perfect cloud's accuracy ~95 %, below the
    edge's own ~97 %, and the edge escalated nothing.)"""
    from model_build.data.background import with_appended_oos

    data = with_appended_oos(_dataset(with_oos=False))
    runner = _AppendedRunner(data.val.labels)
    small, large = (fit_on_validation(dataclasses.replace(preset("quick"), max_false_reject=rate), data, runner)
                    for rate in (0.01, 0.2))
    assert small.routing.expected_escalation_rate > 0  # this edge needs the cloud for 0.995 of it
    assert small.routing.threshold == large.routing.threshold
