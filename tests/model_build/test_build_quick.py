"""The quick preset end to end on real CLINC150: train -> convert -> LiteRT -> manifest -> evaluate.

One build per module (about a minute or two on 2 cores); every test reads the same artifact.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from model_build.config import preset
from model_build.evaluate.measure import evaluate_artifact
from model_build.pipeline import build
from modelpack.classifier import Classifier
from modelpack.errors import ChecksumMismatch
from modelpack.manifest import Manifest, load_manifest
from tests.conftest import CLINC, REPO

# One xdist worker for every quick CLINC150 build: they share the session's quick teacher (conftest)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("quick_clinc")]

REQUIRED = {
    "teacher": ("accuracy", "in_scope_accuracy", "oos_recall", "ece"),
    "student_float": ("accuracy",),
    "edge_int8": ("accuracy", "in_scope_accuracy", "oos_recall", "ece", "size_bytes", "latency_ms_b1",
                  "latency_ms_b32"),
    "edge_fp32": ("accuracy", "size_bytes", "latency_ms_b1", "latency_ms_b32"),
    "routing": ("threshold", "escalation_rate", "joint_accuracy", "joint_over_teacher", "joint_oos_recall"),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, quick_clinc_cache):
    if not CLINC.exists():
        pytest.fail(f"{CLINC} is missing: run `make data` (or .ci/run, which copies it)")
    root = tmp_path_factory.mktemp("quick")
    (root / "cache").symlink_to(quick_clinc_cache, target_is_directory=True)  # the session's quick teacher
    result = build(preset("quick"), data_path=CLINC, out_dir=root / "artifact", cache_dir=root / "cache")
    return result, root


def test_artifact_holds_the_promised_files(built):
    result, _ = built
    names = {p.name for p in result.out_dir.iterdir()}
    assert {"manifest.json", "metrics.json", "report.md", "tokenizer.json", "edge_int8.tflite",
            "cloud.tflite", "edge_fp32.tflite", "reliability_edge.png", "escalation_curve.png"} <= names
    assert not (result.out_dir.parent / ".artifact.partial").exists()


def test_manifest_round_trip_pins_the_contract(built):
    result, _ = built
    on_disk = json.loads((result.out_dir / "manifest.json").read_text())
    loaded = load_manifest(result.out_dir)  # validates and checks every checksum
    assert loaded == result.manifest
    assert Manifest.from_dict(loaded.to_dict()) == loaded
    assert json.loads(json.dumps(loaded.to_dict())) == on_disk
    assert loaded.labels[-1] == "oos" and len(loaded.labels) == 151
    assert loaded.edge.precision == "int8" and loaded.edge.output.dtype == "int8"
    assert loaded.edge.output.scale and loaded.edge.inputs[0].dtype == "int32"
    assert loaded.routing.traffic_oos_fraction == pytest.approx(1000 / 5500, abs=0.03)
    # The shift table (validation split): at the mix the build assumed it gives back the shipped threshold.
    table = loaded.routing.shift
    assert table is not None and table.split == "val" and table.oos_index == loaded.oos_index
    point = table.operating_point(loaded.routing.traffic_oos_fraction, loaded.routing.target_joint_over_teacher)
    assert point.threshold == loaded.routing.threshold
    assert point.escalation_rate == pytest.approx(loaded.routing.expected_escalation_rate, abs=1e-4)
    assert loaded.build["git_commit"] is None or len(loaded.build["git_commit"]) >= 40
    assert loaded.data["sha256"] == "36923c3705a59e08fe9c3883d8bc2dd966ef93e22cb78ac41171782a698d56e0"


def test_metrics_hold_the_required_keys_as_fractions(built):
    result, _ = built
    metrics = json.loads((result.out_dir / "metrics.json").read_text())
    for section, keys in REQUIRED.items():
        for key in keys:
            value = metrics[section][key]
            assert isinstance(value, (int, float)), f"{section}.{key}"
            if key in ("accuracy", "in_scope_accuracy", "oos_recall", "ece", "escalation_rate", "joint_accuracy"):
                assert 0.0 <= value <= 1.0, f"{section}.{key}={value}"
    assert metrics["edge_int8"]["size_bytes"] < metrics["edge_fp32"]["size_bytes"]
    assert metrics["int8_graph"]["float_ops"] == []
    # The int8 model stays within half a point of the float student it came from (a build gate).
    assert metrics["edge_int8"]["accuracy_drop_vs_fp32"] <= 0.005


def test_runtime_classifier_agrees_with_the_build(built):
    """The runtimes' reader (modelpack, no TensorFlow) runs the artifact and gets the build's answers."""
    result, _ = built
    edge = Classifier.from_folder(result.out_dir, "edge")
    cloud = Classifier.from_folder(result.out_dir, "cloud")
    texts = ["what is my bank balance", "set a timer for ten minutes", "how do i make pancakes"]
    probs = edge.probabilities(texts)
    assert probs.shape == (3, 151) and np.allclose(probs.sum(axis=1), 1.0)
    # Padding to a longer bucket must not change the answer (batches mix lengths).
    padded = edge.model.logits(edge.tokenizer.encode(texts, pad_to=32))
    assert np.array_equal(padded.argmax(1), edge.logits(texts).argmax(1))
    assert [p.label for p in cloud.predict(texts)][:2] != ["oos", "oos"]


def test_evaluate_recomputes_the_metrics_from_the_files(built):
    result, _ = built
    stored = json.loads((result.out_dir / "metrics.json").read_text())
    again = evaluate_artifact(result.out_dir, data_path=CLINC)
    for section, keys in REQUIRED.items():
        for key in keys:
            if not key.startswith("latency"):
                assert again[section][key] == pytest.approx(stored[section][key], abs=1e-9), f"{section}.{key}"


def test_second_build_reuses_cached_teacher_and_student(built):
    _, root = built
    again = build(preset("quick"), data_path=CLINC, out_dir=root / "again", cache_dir=root / "cache")
    assert set(again.metrics.cached_stages) == {"teacher", "student", "cloud_precision"}


def test_the_cloud_neighbour_offset_is_built_fitted_on_validation_and_served(built):
    """`--neighbours on`: the embedder stage, the bank and the fitted offset; the teacher and student come
    from the cache, and the runtimes' classifier serves the offset."""
    from model_build.evaluate.measure import built_from
    from modelpack.scores import neg_energy

    plain, root = built
    result = build(preset("quick", neighbours=True), data_path=CLINC, out_dir=root / "neighbours",
                   cache_dir=root / "cache")
    assert {"teacher", "student"} <= set(result.metrics.cached_stages)
    assert plain.manifest.cloud.neighbours is None and result.manifest.cloud.neighbours is not None
    assert {"embedder.tflite", "neighbours.npy"} <= {p.name for p in result.out_dir.iterdir()}
    served = Classifier.load(result.out_dir, "cloud")[0]  # every file checked against the manifest
    bare = Classifier.from_folder(plain.out_dir, "cloud")  # the same teacher file, no offset
    assert served.entry.sha256 == bare.entry.sha256
    data = built_from(result.out_dir, result.manifest, CLINC)
    val = [t for t, keep in zip(data.val.texts, data.in_scope_mask(data.val)) if keep]
    moved = served.logits(val) - bare.logits(val)
    assert np.allclose(moved, moved[:, :1], atol=1e-3)  # one constant per text: probabilities unchanged
    offsets = moved[:, 0]
    # Fitted on the in-scope validation texts: centred there, spread like the cloud's own energy.
    assert abs(offsets.mean()) < 0.02 * offsets.std()
    assert offsets.std() == pytest.approx(neg_energy(bare.logits(val), bare.oos_index).std(), rel=0.02)
    test_oos = [t for t, keep in zip(data.test.texts, data.in_scope_mask(data.test)) if not keep]
    far = served.neighbours.offsets(served.tokenizer.encode(test_oos[:200]))
    assert far.mean() < offsets.mean() - 0.5 * offsets.std()  # out-of-scope requests lie further from every intent


def test_both_teacher_precisions_are_measured_and_switching_retrains_nothing(built):
    """The build measures the fp32 teacher and its dynamic-range copy, ships the int8 one within the
    accuracy gate, and a forced fp32 build reuses every stage: the precision is chosen, not trained."""
    import dataclasses

    result, root = built
    metrics = json.loads((result.out_dir / "metrics.json").read_text())
    choice = metrics["teacher"]["precision_choice"]
    fp32, int8 = choice["fp32"], choice["dynamic_range"]
    assert int8["size_bytes"] < 0.3 * fp32["size_bytes"]
    assert choice["val_accuracy_drop"] == pytest.approx(fp32["val_accuracy"] - int8["val_accuracy"])
    expected = "dynamic_range" if choice["val_accuracy_drop"] <= 0.003 else "fp32"
    assert (choice["rule"], choice["chosen"], choice["max_accuracy_drop"]) == ("auto", expected, 0.003)
    assert result.manifest.cloud.precision == expected
    assert result.manifest.cloud.size_bytes == (int8 if expected == "dynamic_range" else fp32)["size_bytes"]

    forced = build(dataclasses.replace(preset("quick"), cloud_precision="fp32"), data_path=CLINC,
                   out_dir=root / "fp32", cache_dir=root / "cache")
    assert set(forced.metrics.cached_stages) == {"teacher", "student", "cloud_precision"}
    assert forced.manifest.cloud.precision == "fp32" and forced.manifest.cloud.size_bytes == fp32["size_bytes"]
    assert forced.metrics.test.teacher.accuracy == pytest.approx(fp32["test_accuracy"])
    assert forced.metrics.cloud_precision.reason == "forced by --cloud-precision fp32"


def test_a_tampered_artifact_is_refused(built, tmp_path):
    result, _ = built
    copy = shutil.copytree(result.out_dir, tmp_path / "copy")
    data = bytearray((copy / "edge_int8.tflite").read_bytes())
    data[-1] ^= 0xFF
    (copy / "edge_int8.tflite").write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch):
        evaluate_artifact(copy, data_path=CLINC)


def test_cli_reports_bad_input_in_one_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhello,greet\n,greet\n")
    proc = subprocess.run(
        [sys.executable, "-m", "model_build", "build", "--preset", "quick", "--data", str(bad),
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "error:" in proc.stderr and "line 3" in proc.stderr


def test_a_failed_gate_keeps_the_artifact_and_says_so(built, capsys):
    """A broken promise after training costs nothing: the artifact is written, its manifest, metrics and
    report name the failure, and the trained stages come from the cache."""
    import dataclasses

    from model_build.config import Gates

    _, root = built
    config = dataclasses.replace(preset("quick"), gates=Gates(max_int8_size_ratio=0.01))
    result = build(config, data_path=CLINC, out_dir=root / "gated", cache_dir=root / "cache")
    gates = result.metrics.gates
    assert gates.passed is False and "int8 weights are" in gates.failures[0]
    assert load_manifest(result.out_dir).build["gates"] == gates.to_dict()
    assert json.loads((result.out_dir / "metrics.json").read_text())["gates"] == gates.to_dict()
    assert result.metrics.cached_stages == ("teacher", "student", "cloud_precision")
    assert "gate failed" in capsys.readouterr().err
    report = (result.out_dir / "report.md").read_text()
    assert "**Gates failed**" in report and gates.failures[0] in report


def test_strict_stops_at_a_cheap_gate_right_after_training(built):
    import dataclasses

    from model_build.config import Gates
    from model_build.errors import GateError

    _, root = built
    config = dataclasses.replace(preset("quick"), gates=Gates(max_int8_size_ratio=0.01))
    with pytest.raises(GateError, match="int8 weights are .* nothing else was built"):
        build(config, data_path=CLINC, out_dir=root / "strict", cache_dir=root / "cache", strict=True)
    assert not (root / "strict").exists()


def test_the_size_gate_measures_the_weights_not_the_fixed_bytes(built):
    result, _ = built
    e = result.metrics.test.edge_int8
    # The toy student's file is mostly its id map: the file ratio says little, the weight ratio is ~1/4.
    assert e.size_ratio_vs_fp32 > e.weight_size_ratio_vs_fp32
    assert 0.2 < e.weight_size_ratio_vs_fp32 <= 0.35
    assert e.fixed_bytes > 60_000  # the 61 KB id map and the flatbuffer around the weights
