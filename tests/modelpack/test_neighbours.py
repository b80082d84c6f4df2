"""The cloud's neighbour offset (`models.cloud.neighbours`): a real tiny embedder (Keras -> TFLite) and a bank
beside the real tiny artifact's cloud model (tests/fixtures/tiny_artifact.add_neighbours), read through the
manifest and the classifier every runtime uses."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from modelpack.classifier import Classifier
from modelpack.errors import ArtifactError, ChecksumMismatch, ManifestError
from modelpack.manifest import Manifest, load_manifest
from modelpack.nearest import Embedder, nearest_similarity
from modelpack.scores import neg_energy

TEXTS = ["what is my account balance", "set a timer for five minutes", "who won the game last night",
         "tell me about dinosaurs", "will it rain tomorrow", "hello there"]


@pytest.fixture
def artifact(neighbours_artifact: Path) -> Path:
    return neighbours_artifact


def test_the_offset_moves_every_logit_of_a_text_alike_so_probabilities_stay_and_energy_moves_by_it(
        artifact: Path, tiny_artifact: Path) -> None:
    manifest = load_manifest(artifact)
    with_offset = Classifier.load(artifact, "cloud")[0]
    plain = Classifier.from_folder(tiny_artifact, "cloud")
    raw, shifted = plain.logits(TEXTS), with_offset.logits(TEXTS)
    ids = plain.tokenizer.encode(TEXTS)
    bank = np.load(artifact / "bank.npy").astype(np.float32)
    emb = Embedder((artifact / "embedder.tflite").read_bytes(), "embedder.tflite").embed(ids)
    expected = 3.0 * (emb @ bank.T).max(axis=1) - 1.5  # scale x nearest cosine similarity + shift
    np.testing.assert_allclose(shifted - raw, np.repeat(expected[:, None], raw.shape[1], axis=1), atol=1e-4)
    assert np.ptp(expected) > 0.1  # texts near the bank and far from it are moved differently
    np.testing.assert_allclose(with_offset.calibrate(shifted), plain.calibrate(raw), atol=1e-5)
    oos = manifest.oos_index
    np.testing.assert_allclose(neg_energy(shifted, oos) - neg_energy(raw, oos), expected, atol=1e-4)
    assert manifest.cloud.neighbours is not None and manifest.edge.neighbours is None


def test_the_manifest_names_and_checks_both_files(artifact: Path) -> None:
    manifest = load_manifest(artifact)
    assert {"embedder.tflite", "bank.npy"} <= set(manifest.files(("cloud",)))
    assert not {"embedder.tflite", "bank.npy"} & set(manifest.files(("tokenizer", "edge")))
    assert Manifest.from_dict(manifest.to_dict()) == manifest
    raw = manifest.to_dict()
    raw["models"]["edge"]["neighbours"] = raw["models"]["cloud"]["neighbours"]
    with pytest.raises(ManifestError, match="only the cloud"):
        Manifest.from_dict(raw)
    raw = manifest.to_dict()
    raw["models"]["cloud"]["neighbours"]["scale"] = -1.0
    with pytest.raises(ManifestError, match="scale"):
        Manifest.from_dict(raw)


def test_a_changed_bank_is_refused_and_a_bank_of_the_wrong_width_is_an_artifact_error(
        artifact: Path, tmp_path: Path) -> None:
    changed = tmp_path / "changed"
    shutil.copytree(artifact, changed)
    np.save(changed / "bank.npy", np.zeros((2, 8), dtype=np.float16))
    with pytest.raises(ChecksumMismatch, match="bank.npy"):
        Classifier.load(changed, "cloud")
    manifest = load_manifest(changed, verify=False)
    np.save(changed / "bank.npy", np.zeros((2, 5), dtype=np.float16))
    with pytest.raises(ArtifactError, match="5"):
        Classifier(manifest, changed, "cloud")


def test_nearest_similarity_is_the_largest_dot_product_in_chunks() -> None:
    rng = np.random.default_rng(0)
    emb, bank = rng.normal(size=(5000, 4)).astype(np.float32), rng.normal(size=(7, 4)).astype(np.float32)
    np.testing.assert_allclose(nearest_similarity(emb, bank.T), (emb @ bank.T).max(axis=1), rtol=1e-6)
