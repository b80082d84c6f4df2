"""The LiteRT backend over the real tiny teacher: calibrated top-k, the out-of-scope rule, load failures."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from cloud_functions.inference import BackendError
from cloud_functions.litert_backend import LiteRTBackend
from cloud_functions.model_store import ModelStore
from modelpack.classifier import Classifier
from modelpack.manifest import load_manifest

LABELS = ("balance", "greeting", "timer", "weather", "oos")
TEXTS = ["what is my account balance", "set a timer for five minutes", "hello there"]


def _classifier(folder: Path, *, oos_threshold: float | None = None) -> Classifier:
    manifest = load_manifest(folder)
    if oos_threshold is not None:
        manifest = dataclasses.replace(
            manifest, cloud=dataclasses.replace(manifest.cloud, oos_threshold=oos_threshold)
        )
    return Classifier(manifest, folder, "cloud")


def test_litert_answers_are_the_teachers_calibrated_top_k(tiny_artifact: Path) -> None:
    reference = Classifier.from_folder(tiny_artifact, "cloud").probabilities(TEXTS)
    backend = LiteRTBackend(_classifier(tiny_artifact), top_k=3)

    inference = backend.infer(TEXTS)

    assert backend.model_version == "tiny-1" and backend.labels == LABELS
    assert inference.usage is None
    for result, probs in zip(inference.results, reference, strict=True):
        order = np.argsort(-probs)[:3]
        assert [s.label for s in result.top_k] == [LABELS[i] for i in order]
        assert [s.confidence for s in result.top_k] == pytest.approx([probs[i] for i in order])
        assert (result.label, result.confidence) == (result.top_k[0].label, result.top_k[0].confidence)


def test_litert_answers_oos_below_the_calibrated_threshold(tiny_artifact: Path) -> None:
    confidences = Classifier.from_folder(tiny_artifact, "cloud").probabilities(TEXTS[:2]).max(axis=1)
    # A threshold between the two texts' confidences: the less sure one becomes out of scope.
    low, high = sorted(confidences)
    assert low < high
    backend = LiteRTBackend(_classifier(tiny_artifact, oos_threshold=(low + high) / 2), top_k=2)

    unsure, sure = sorted(backend.infer(TEXTS[:2]).results, key=lambda r: r.confidence)

    assert unsure.label == "oos" and unsure.confidence == pytest.approx(low)
    assert unsure.top_k[0].label != "oos"  # the distribution still shows what the model leaned to
    assert sure.label == sure.top_k[0].label and sure.label != "oos"


def test_litert_top_k_is_capped_by_the_label_count(tiny_artifact: Path) -> None:
    backend = LiteRTBackend(_classifier(tiny_artifact), top_k=50)

    (result,) = backend.infer(["hello"]).results

    assert sorted(s.label for s in result.top_k) == sorted(LABELS)
    assert sum(s.confidence for s in result.top_k) == pytest.approx(1.0)


def test_a_model_that_is_not_tflite_fails_to_load_as_a_backend_error(
    tiny_artifact: Path, tmp_path: Path
) -> None:
    model = ModelStore(str(tiny_artifact), cache_dir=tmp_path).fetch()
    folder = shutil.copytree(tiny_artifact, tmp_path / "broken")
    (folder / "cloud.tflite").write_bytes(b"not a flatbuffer")
    broken = dataclasses.replace(model, folder=folder)  # past the store's checksum, on purpose

    with pytest.raises(BackendError, match="cannot be loaded"):
        LiteRTBackend.load(broken)
