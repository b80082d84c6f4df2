"""An out-of-scope label no model predicts (`models.*.appended_oos_logit`, what a build on data without an oos
label ships): the real tiny artifact's five outputs read as five intents, `none` appended as the oos label."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from modelpack.classifier import Classifier
from modelpack.errors import ManifestError
from modelpack.manifest import Manifest, load_manifest
from modelpack.routing import decide
from modelpack.scores import in_scope_max_prob, neg_energy
from tests.fixtures.tiny_artifact import APPENDED_OOS_LOGIT, with_appended_oos_label

TEXTS = ["what is my balance", "set a timer for ten minutes", "how do i bake bread"]


def appended_raw(tiny_artifact: Path, tmp_path: Path) -> dict:
    folder = with_appended_oos_label(tiny_artifact, tmp_path / "raw")
    return json.loads((folder / "manifest.json").read_text())


@pytest.fixture
def appended(tiny_artifact: Path, tmp_path: Path) -> Path:
    return with_appended_oos_label(tiny_artifact, tmp_path / "appended")


def test_the_runtime_appends_the_labels_column_and_it_takes_no_probability(appended: Path,
                                                                          tiny_artifact: Path) -> None:
    for tier in ("edge", "cloud"):
        own = Classifier.from_folder(tiny_artifact, tier).logits(TEXTS)
        logits = Classifier.from_folder(appended, tier).logits(TEXTS)
        assert logits.shape == (3, 6) and np.array_equal(logits[:, :5], own) and np.all(logits[:, 5] == APPENDED_OOS_LOGIT)
        probs = Classifier.from_folder(appended, tier).calibrate(logits)
        assert np.all(probs[:, 5] == 0.0) and np.allclose(probs.sum(axis=1), 1.0)
        # every score reads the intents alone: the best intent is the max, the energy is the models' own
        assert np.array_equal(in_scope_max_prob(probs, 5), probs.max(axis=1))
        assert np.allclose(neg_energy(logits, 5), np.log(np.exp(own.astype(np.float64)).sum(axis=1)), atol=1e-5)


def test_the_edges_band_answers_the_appended_label(appended: Path) -> None:
    manifest = load_manifest(appended)
    edge = Classifier(manifest, appended, "edge")
    probs = edge.calibrate(edge.logits(TEXTS))
    cut = float(np.sort(probs.max(axis=1))[1])  # between the least sure text and the others
    raw = manifest.to_dict()
    raw["routing"].update(oos_threshold=cut, expected_edge_oos_rate=0.3, oos_score="in_scope_max_prob")
    route = decide(probs, Manifest.from_dict(raw).routing, manifest.oos_index)
    assert route.edge_oos.sum() == 1 and probs.max(axis=1)[route.edge_oos][0] < cut


def test_a_manifest_says_it_only_when_it_is_so(appended: Path, tiny_artifact: Path) -> None:
    assert load_manifest(appended).to_dict()["models"]["edge"]["appended_oos_logit"] == APPENDED_OOS_LOGIT
    assert "appended_oos_logit" not in load_manifest(tiny_artifact).to_dict()["models"]["edge"]


def test_a_width_that_does_not_add_up_or_an_oos_label_not_last_is_refused(tiny_artifact: Path,
                                                                              tmp_path: Path) -> None:
    raw = json.loads((tiny_artifact / "manifest.json").read_text())
    raw["models"]["edge"]["appended_oos_logit"] = APPENDED_OOS_LOGIT  # five outputs, five labels: no room
    with pytest.raises(ManifestError, match="appended_oos_logit"):
        Manifest.from_dict(raw)
    appended = appended_raw(tiny_artifact, tmp_path)
    raw = copy.deepcopy(appended)
    raw["labels"] = ["none", *raw["labels"][:-1]]
    with pytest.raises(ManifestError, match="must be the last label"):
        Manifest.from_dict(raw)
    raw = copy.deepcopy(appended)
    raw["models"]["cloud"]["appended_oos_logit"] = 3.0  # it would take probability
    with pytest.raises(ManifestError, match="appended_oos_logit"):
        Manifest.from_dict(raw)
