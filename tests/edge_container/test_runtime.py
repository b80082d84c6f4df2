import dataclasses
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from edge_container.runtime import EdgeModel
from modelpack.classifier import Classifier
from modelpack.errors import ArtifactError, ChecksumMismatch, ModelNotRunnable
from modelpack.litert import LiteRTModel
from modelpack.manifest import load_manifest, sha256_file, write_manifest
from tests.edge_container.conftest import CONFIDENT, UNSURE
from tests.edge_container.unrunnable import make_unrunnable

TEXTS = [CONFIDENT, UNSURE, "hello there", "set a timer for five minutes please and thank you very much"]


def test_calibrated_probabilities_match_the_shared_classifier(tiny_artifact: Path, artifact_v2: Path) -> None:
    for folder in (tiny_artifact, artifact_v2):  # v2 has temperature 3: calibration must be applied
        out = EdgeModel.load(folder, slots=1).run(TEXTS)
        expected = Classifier.from_folder(folder, "edge").probabilities(TEXTS)
        np.testing.assert_allclose(out.probs, expected, rtol=1e-6)
        np.testing.assert_allclose(out.probs.sum(axis=1), 1.0, rtol=1e-6)
        assert out.tokenize_s > 0 and out.infer_s > 0
    v1, v2 = EdgeModel.load(tiny_artifact, slots=1), EdgeModel.load(artifact_v2, slots=1)
    assert v1.version == "tiny-1" and v2.version == "tiny-2"
    assert v2.run([CONFIDENT]).probs.max() < v1.run([CONFIDENT]).probs.max()


def test_a_batch_answers_like_its_texts_one_by_one(tiny_artifact: Path) -> None:
    model = EdgeModel.load(tiny_artifact, slots=1)
    batch = model.run(TEXTS).probs  # padded to the longest text's bucket
    single = np.vstack([model.run([t]).probs for t in TEXTS])
    np.testing.assert_allclose(batch, single, atol=1e-6)


def test_threads_share_the_slots_safely(tiny_artifact: Path) -> None:
    model = EdgeModel.load(tiny_artifact, slots=2)
    expected = model.run(TEXTS).probs
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda _: model.run(TEXTS).probs, range(200)))
    for out in outs:
        np.testing.assert_allclose(out, expected, atol=1e-6)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_a_corrupt_model_file_is_refused(tiny_artifact: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_artifact, tmp_path / "a")
    data = bytearray((folder / "edge_int8.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "edge_int8.tflite").write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch):
        EdgeModel.load(folder, slots=1)


@pytest.mark.parametrize("file", ["edge_int8.tflite", "tokenizer.json"])
def test_garbage_with_a_matching_checksum_is_refused_at_load(tiny_artifact: Path, tmp_path: Path, file: str) -> None:
    folder = _copy(tiny_artifact, tmp_path / "b")
    (folder / file).write_bytes(b"not a model, not a tokenizer")
    manifest = load_manifest(folder, verify=False)
    sha = sha256_file(folder / file)
    if file == "tokenizer.json":
        manifest = dataclasses.replace(manifest, tokenizer=dataclasses.replace(manifest.tokenizer, sha256=sha))
    else:
        manifest = dataclasses.replace(manifest, edge=dataclasses.replace(manifest.edge, sha256=sha))
    write_manifest(manifest, folder)
    with pytest.raises(ArtifactError):
        EdgeModel.load(folder, slots=1)


def test_a_model_that_loads_but_cannot_run_is_refused_by_the_smoke_test(artifact_v2: Path, tmp_path: Path) -> None:
    folder = _copy(artifact_v2, tmp_path / "c")
    make_unrunnable(folder)
    manifest = load_manifest(folder)  # the checksums match: only running the model can tell
    model = LiteRTModel((folder / "edge_int8.tflite").read_bytes(), manifest.edge)  # and it loads
    with pytest.raises(RuntimeError, match="gather index out of bounds"):
        model.logits(np.ones((1, 8), dtype=np.int32))

    with pytest.raises(ModelNotRunnable, match=r"tiny-2: smoke inference .* failed: RuntimeError: gather index"):
        EdgeModel.load(folder, slots=1)
