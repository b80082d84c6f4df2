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
from modelpack.scores import neg_energy
from tests.fixtures.tiny_artifact import with_appended_oos_label

LABELS = ("balance", "greeting", "timer", "weather", "oos")
TEXTS = ["what is my account balance", "set a timer for five minutes", "hello there"]


def _classifier(folder: Path, *, oos_threshold: float | None = None, oos_score: str | None = None) -> Classifier:
    manifest = load_manifest(folder)
    if oos_threshold is not None:
        manifest = dataclasses.replace(
            manifest, cloud=dataclasses.replace(manifest.cloud, oos_threshold=oos_threshold, oos_score=oos_score)
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


def test_litert_answers_oos_below_an_energy_threshold_on_its_raw_logits(tiny_artifact: Path) -> None:
    model = Classifier.from_folder(tiny_artifact, "cloud")
    oos = model.manifest.oos_index
    energy = neg_energy(model.logits(TEXTS), oos)
    order = np.argsort(energy)
    # Between the least and the next supported text: exactly the least supported one becomes oos
    threshold = float(energy[order[:2]].mean())
    backend = LiteRTBackend(_classifier(tiny_artifact, oos_threshold=threshold, oos_score="neg_energy"))

    labels = [r.label for r in backend.infer(TEXTS).results]

    assert [i for i, label in enumerate(labels) if label == "oos"] == [int(order[0])]


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


def test_a_dynamic_range_teacher_is_served_like_the_fp32_one(tiny_artifact: Path, tmp_path: Path) -> None:
    """Given the artifact's teacher re-stored as dynamic range (int8 weights, float activations: what the
    build ships when it keeps its accuracy), the Lambda's backend loads it from a verified folder, feeds it
    token ids (int32, or int64 cast to its int32 input) and gets float logits close to fp32's."""
    from model_build.artifact import with_cloud_model
    from model_build.tflite.dynamic_range import dynamic_range_from_fp32

    int8_file = tmp_path / "cloud_dynamic.tflite"
    int8_file.write_bytes(dynamic_range_from_fp32((tiny_artifact / "cloud.tflite").read_bytes()))
    manifest = load_manifest(tiny_artifact)
    cloud = with_cloud_model(tiny_artifact, int8_file, tmp_path / "int8").cloud
    model = ModelStore(str(tmp_path / "int8"), cache_dir=tmp_path / "cache").fetch()  # checks every checksum

    backend = LiteRTBackend.load(model)
    int8 = backend.infer(TEXTS).results
    fp32 = LiteRTBackend(_classifier(tiny_artifact)).infer(TEXTS).results

    assert model.manifest.cloud == cloud and cloud.precision == "dynamic_range"
    calibration = ("temperature", "oos_threshold", "oos_score", "oos_logit_bias", "appended_oos_logit", "neighbours")
    assert [getattr(cloud, f) for f in calibration] == [getattr(manifest.cloud, f) for f in calibration]
    # The toy teacher is mostly its id map and conv filters (which stay float): smaller, not 4x smaller.
    assert cloud.size_bytes < manifest.cloud.size_bytes
    assert [t.dtype for t in cloud.inputs] == ["int32"] and cloud.output.dtype == "float32"
    classifier = Classifier(model.manifest, model.folder, "cloud")
    ids = classifier.tokenizer.encode(TEXTS)
    logits = classifier.model.logits(ids)
    assert logits.dtype == np.float32 and logits.shape == (len(TEXTS), len(LABELS))
    np.testing.assert_array_equal(classifier.model.logits(ids.astype(np.int64)), logits)
    assert [r.label for r in int8] == [r.label for r in fp32]
    assert [r.confidence for r in int8] == pytest.approx([r.confidence for r in fp32], abs=0.05)


def test_an_appended_oos_label_is_refused_on_the_energy_of_the_models_own_outputs(tiny_artifact: Path,
                                                                                 tmp_path: Path) -> None:
    """A build on data without an oos label appends one the teacher has no output for: the Lambda reads the
    label from the manifest, its energy threshold is on the teacher's own logits, and it is never top-k."""
    own = Classifier.from_folder(tiny_artifact, "cloud").logits(TEXTS)  # the teacher's five outputs: intents
    energy = np.log(np.exp(own.astype(np.float64)).sum(axis=1))
    order = np.argsort(energy)
    folder = with_appended_oos_label(tiny_artifact, tmp_path / "appended", cloud={
        "oos_threshold": float(energy[order[:2]].mean()), "oos_score": "neg_energy"})
    backend = LiteRTBackend(Classifier.from_folder(folder, "cloud"), top_k=6)

    results = backend.infer(TEXTS).results

    assert [i for i, r in enumerate(results) if r.label == "none"] == [int(order[0])]
    assert all(s.label != "none" for r in results for s in r.top_k[:5])
