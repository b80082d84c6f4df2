"""classification_metrics: accuracy, oos recall and the AUROC of the score a rule refuses by."""

import numpy as np
import pytest

from model_build.evaluate.measure import classification_metrics, oos_auroc
from modelpack.scores import in_scope_max_prob

OOS = 2
# Two intents and oos. Rows 0-1 in scope; row 2 an oos text the model is sure of (argmax oos, high max
# probability); row 3 an oos text spread thin over the intents.
PROBS = np.array([[0.90, 0.05, 0.05],
                  [0.10, 0.80, 0.10],
                  [0.02, 0.03, 0.95],
                  [0.45, 0.45, 0.10]])
LABELS = np.array([0, 1, OOS, OOS])


def test_the_auroc_ranks_by_the_max_probability_by_default() -> None:
    m = classification_metrics(PROBS, LABELS, OOS)
    # The confident oos text outranks both in-scope ones on max probability: it looks in scope.
    assert m.oos_auroc == pytest.approx(0.5)
    assert m.accuracy == pytest.approx(0.75) and m.in_scope_accuracy == 1.0 and m.oos_recall == 0.5


def test_the_auroc_of_a_rule_ranks_by_the_score_it_refuses_by() -> None:
    band = in_scope_max_prob(PROBS, OOS)
    m = classification_metrics(PROBS, LABELS, OOS, oos_score=band)
    assert m.oos_auroc == 1.0  # both oos texts have the lowest best-intent probability
    assert m.oos_auroc == oos_auroc(band, LABELS == OOS)


def test_no_auroc_without_both_kinds_of_text() -> None:
    assert classification_metrics(PROBS[:2], LABELS[:2], OOS).oos_auroc is None
    assert classification_metrics(PROBS[:2], LABELS[:2], None, oos_score=PROBS[:2, 0]).oos_auroc is None


def test_the_clouds_rule_ranks_its_outright_oos_answers_first_then_by_its_score(tiny_artifact) -> None:
    import dataclasses

    from model_build.evaluate.measure import _refusal_order
    from modelpack.manifest import load_manifest
    from modelpack.scores import neg_energy, softmax

    manifest = load_manifest(tiny_artifact)  # five labels, oos last; the cloud cut on its max probability
    oos = manifest.oos_index
    logits = np.array([[4.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 5.0], [1.0, 1.2, 0.9, 0.0, 0.0]])
    probs = softmax(logits, manifest.cloud.temperature)
    order = _refusal_order(probs, manifest, logits)
    assert order[1] == -np.inf and order[0] == probs[0].max() and order[2] == probs[2].max()
    energy = dataclasses.replace(manifest, cloud=dataclasses.replace(manifest.cloud, oos_score="neg_energy"))
    assert np.array_equal(_refusal_order(probs, energy, logits)[[0, 2]], neg_energy(logits, oos)[[0, 2]])
    assert _refusal_order(probs, dataclasses.replace(manifest, oos_label=None), logits) is None
