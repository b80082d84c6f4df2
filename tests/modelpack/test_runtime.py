"""The runtime side of the contract: tokenizer buckets, the LiteRT model, the calibrated classifier."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys

import numpy as np
import pytest

from model_build.teacher.minilm import minilm_dir
from modelpack.classifier import Classifier
from modelpack.errors import ArtifactError, ChecksumMismatch, ManifestError
from modelpack.litert import LiteRTModel
from modelpack.manifest import load_manifest, sha256_file, write_manifest
from modelpack.scores import SCORES, softmax
from modelpack.tokenizer import TextTokenizer
from tests.conftest import REPO


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer(minilm_dir() / "tokenizer.json", max_seq_len=32, length_buckets=(8, 16, 32))


def test_batches_pad_to_the_smallest_bucket_that_fits(tokenizer):
    short = tokenizer.encode(["hello there"])
    assert short.shape == (1, 8) and short.dtype == np.int32
    assert short[0, 0] == 101 and 102 in short[0] and short[0, -1] == 0  # [CLS] ... [SEP] then pads
    mixed = tokenizer.encode(["hi", "please tell me how much money is left in my savings account today"])
    assert mixed.shape[1] == 16
    assert (mixed[0, 3:] == 0).all()


def test_long_texts_are_truncated_to_the_longest_bucket_keeping_sep(tokenizer):
    ids = tokenizer.encode(["word " * 100])
    assert ids.shape == (1, 32)
    assert ids[0, -1] == 102


def test_int8_model_output_is_dequantized_logits(tiny_artifact):
    manifest = load_manifest(tiny_artifact)
    model = LiteRTModel((tiny_artifact / manifest.edge.file).read_bytes(), manifest.edge)
    tok = manifest.tokenizer
    ids = TextTokenizer(tiny_artifact / tok.file, max_seq_len=tok.max_seq_len, length_buckets=tok.length_buckets
                        ).encode(["set a timer for five minutes"])
    logits = model.logits(ids)
    assert logits.dtype == np.float32 and logits.shape == (1, len(manifest.labels))
    # Dequantized values sit on the output's quantization grid.
    steps = (logits / manifest.edge.output.scale) + manifest.edge.output.zero_point
    assert np.allclose(steps, np.round(steps), atol=1e-3)
    # Resizing between batch shapes keeps answers stable.
    again = model.logits(np.repeat(ids, 5, axis=0))
    assert np.allclose(again, logits)


def test_classifier_probabilities_use_the_manifest_temperature(tiny_artifact):
    edge = Classifier.from_folder(tiny_artifact, "edge")
    texts = ["what's the weather today", "hello there"]
    assert np.allclose(edge.probabilities(texts), softmax(edge.logits(texts), edge.entry.temperature))
    assert [p.label for p in edge.predict(texts)] == ["weather", "greeting"]


def test_classifier_probabilities_add_the_manifest_oos_logit_bias(tiny_artifact):
    manifest = load_manifest(tiny_artifact)
    biased = dataclasses.replace(manifest, edge=dataclasses.replace(manifest.edge, oos_logit_bias=2.0))
    texts = ["set a timer", "what is the weather", "tell me about quantum chromodynamics"]
    plain = Classifier(manifest, tiny_artifact, "edge").probabilities(texts)
    shifted = Classifier(biased, tiny_artifact, "edge").probabilities(texts)
    oos = manifest.oos_index
    # log-odds of oos against every other label up by exactly the bias, the others' odds unchanged
    lift = np.log(shifted[:, oos:oos + 1] / shifted) - np.log(plain[:, oos:oos + 1] / plain)
    others = np.arange(plain.shape[1]) != oos
    np.testing.assert_allclose(lift[:, others], 2.0, atol=1e-9)
    np.testing.assert_allclose(np.log(shifted[:, 0] / shifted[:, 1]), np.log(plain[:, 0] / plain[:, 1]), atol=1e-9)
    assert (shifted[:, oos] > plain[:, oos]).all()


def test_load_gives_independent_copies_that_answer_like_the_folder(tiny_artifact):
    texts = ["what's the weather today", "hello there", "set a timer for five minutes"]
    expected = Classifier.from_folder(tiny_artifact, "cloud").probabilities(texts)

    copies = Classifier.load(tiny_artifact, "cloud", copies=2)

    assert len(copies) == 2 and copies[0].model is not copies[1].model  # an interpreter per thread
    for clf in copies:
        assert clf.tier == "cloud" and clf.entry == clf.manifest.cloud
        np.testing.assert_allclose(clf.probabilities(texts), expected, rtol=1e-6)
        np.testing.assert_allclose(clf.calibrate(clf.logits(texts)), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="copies"):
        Classifier.load(tiny_artifact, "edge", copies=0)


def test_load_refuses_an_artifact_whose_files_differ_from_the_manifest(tiny_artifact, tmp_path):
    folder = shutil.copytree(tiny_artifact, tmp_path / "a")
    (folder / "cloud.tflite").write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatch, match=r"cloud\.tflite: SHA-256"):
        Classifier.load(folder, "cloud")
    (folder / "edge_int8.tflite").write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatch, match=r"edge_int8\.tflite: SHA-256"):
        Classifier.load(folder, "edge")


def test_a_tier_loads_without_the_other_tiers_files(tiny_artifact, tmp_path):
    """A device fetches only the tokenizer and the edge model (edge_container.model_sources.EDGE_PARTS)."""
    folder = shutil.copytree(tiny_artifact, tmp_path / "edge_only")
    (folder / "cloud.tflite").unlink()
    (edge,) = Classifier.load(folder, "edge")
    assert edge.predict(["hello there"])[0].label in load_manifest(folder, verify=False).labels
    with pytest.raises(ManifestError, match=r"cloud\.tflite is named in the manifest but missing"):
        Classifier.load(folder, "cloud")


def test_a_tokenizer_file_that_is_not_one_is_an_artifact_error(tiny_artifact, tmp_path):
    folder = shutil.copytree(tiny_artifact, tmp_path / "b")
    (folder / "tokenizer.json").write_bytes(b"not a tokenizer")
    manifest = load_manifest(folder, verify=False)
    tokenizer = dataclasses.replace(manifest.tokenizer, sha256=sha256_file(folder / "tokenizer.json"))
    write_manifest(dataclasses.replace(manifest, tokenizer=tokenizer), folder)
    with pytest.raises(ArtifactError, match=r"tokenizer\.json: not a loadable tokenizer"):
        Classifier.load(folder, "edge")


def test_the_model_can_be_given_as_bytes_already_read(tiny_artifact):
    manifest = load_manifest(tiny_artifact)
    content = (tiny_artifact / manifest.edge.file).read_bytes()
    given = Classifier(manifest, tiny_artifact, "edge", model_content=content)
    texts = ["hello there"]
    np.testing.assert_allclose(given.logits(texts), Classifier.from_folder(tiny_artifact, "edge").logits(texts))
    with pytest.raises(ArtifactError, match="not a loadable TFLite model"):
        Classifier(manifest, tiny_artifact, "edge", model_content=b"not a flatbuffer")


def test_scores_rank_a_sure_answer_above_an_unsure_one():
    probs = np.array([[0.97, 0.02, 0.01], [0.4, 0.35, 0.25]])
    for name, score in SCORES.items():
        s = score(probs)
        assert s[0] > s[1], name
    assert SCORES["neg_entropy"](np.array([[1.0, 0.0, 0.0]]))[0] == pytest.approx(1.0)
    assert SCORES["neg_entropy"](np.full((1, 4), 0.25))[0] == pytest.approx(0.0)


def test_garbage_model_bytes_are_an_artifact_error(tiny_artifact):
    manifest = load_manifest(tiny_artifact)
    with pytest.raises(ArtifactError, match="not a loadable TFLite model"):
        LiteRTModel(b"definitely not a flatbuffer", manifest.edge)


def test_modelpack_imports_no_tensorflow():
    code = "import sys, modelpack.classifier, modelpack.manifest, modelpack.pointer; " \
           "bad = [m for m in ('tensorflow', 'torch', 'keras', 'model_build') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
