"""The manifest reader: validation names the bad field, checksums are enforced."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest

from modelpack.errors import ChecksumMismatch, ManifestError
from modelpack.manifest import (
    Manifest,
    check_sha256,
    json_object,
    load_manifest,
    verify_file,
    verify_files,
    write_manifest,
)


def _entry(file: str, content: bytes, precision: str, dtype: str) -> dict:
    quantized = dtype == "int8"
    out = {"dtype": dtype, "shape": [-1, 3], "logits": True, "scale": 0.125 if quantized else None,
           "zero_point": -3 if quantized else None}
    return {
        "file": file,
        "sha256": hashlib.sha256(content).hexdigest(),
        "size_bytes": len(content),
        "precision": precision,
        "inputs": [{"name": "input_ids", "dtype": "int32", "shape": [-1, -1]}],
        "output": out,
        "temperature": 1.5,
        "oos_threshold": None,
    }


@pytest.fixture
def artifact(tmp_path: Path) -> tuple[Path, dict]:
    files = {"tokenizer.json": b'{"tok": 1}', "edge.tflite": b"edge-bytes", "cloud.tflite": b"cloud-bytes"}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    raw = {
        "format_version": 1,
        "model_version": "v1",
        "created_at": "2026-11-22T00:00:00Z",
        "labels": ["a", "b", "oos"],
        "oos_label": "oos",
        "tokenizer": {
            "file": "tokenizer.json",
            "sha256": hashlib.sha256(files["tokenizer.json"]).hexdigest(),
            "max_seq_len": 32,
            "length_buckets": [8, 16, 32],
            "pad_id": 0,
        },
        "models": {
            "edge": _entry("edge.tflite", files["edge.tflite"], "int8", "int8"),
            "cloud": _entry("cloud.tflite", files["cloud.tflite"], "fp32", "float32") | {"oos_threshold": 0.4},
        },
        "routing": {
            "score": "max_prob",
            "threshold": 0.7,
            "target_joint_over_teacher": 0.99,
            "traffic_oos_fraction": 0.18,
            "expected_escalation_rate": 0.12,
        },
        "data": {"name": "toy"},
        "build": {"git_commit": "abc"},
    }
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    return tmp_path, raw


def test_valid_manifest_loads_and_round_trips(artifact):
    folder, raw = artifact
    manifest = load_manifest(folder)
    assert manifest.labels == ("a", "b", "oos")
    assert manifest.oos_index == 2
    assert manifest.edge.output.scale == 0.125 and manifest.cloud.oos_threshold == 0.4
    assert Manifest.from_dict(manifest.to_dict()) == manifest
    assert json.loads(json.dumps(manifest.to_dict())) == json.loads(json.dumps(raw, sort_keys=True))


def test_write_then_load_is_identity(artifact, tmp_path):
    folder, _ = artifact
    manifest = load_manifest(folder)
    write_manifest(manifest, folder)
    assert load_manifest(folder) == manifest


def test_a_changed_file_is_refused(artifact):
    folder, _ = artifact
    (folder / "edge.tflite").write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatch, match="edge.tflite"):
        load_manifest(folder)


def test_a_missing_file_is_refused(artifact):
    folder, _ = artifact
    (folder / "cloud.tflite").unlink()
    with pytest.raises(ManifestError, match="cloud.tflite.*missing"):
        load_manifest(folder)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.pop("labels"), r"manifest\.labels is missing"),
        (lambda r: r.update(format_version=2), "format_version is 2"),
        (lambda r: r.update(oos_label="nope"), "oos_label 'nope' is not in"),
        (lambda r: r["models"]["edge"].update(precision="int4"), r"models\.edge\.precision must be one of"),
        (lambda r: r["models"]["edge"]["output"].pop("scale"), "quantized output needs scale"),
        (lambda r: r["models"]["cloud"]["output"].update(shape=[-1, 5]), "ends in 5, but there are 3 labels"),
        (lambda r: r["models"]["cloud"].update(sha256="XYZ"), r"cloud\.sha256 must be a lower-case hex"),
        (lambda r: r["models"]["cloud"].update(file="../etc/passwd"), "plain file name"),
        (lambda r: r["tokenizer"].update(length_buckets=[16, 8, 32]), "strictly increasing"),
        (lambda r: r["routing"].update(score="vibes"), r"routing\.score must be one of"),
        (lambda r: r["routing"].update(expected_escalation_rate=1.5), r"in \[0.0, 1.0\]"),
        (lambda r: r["models"]["edge"].update(temperature=True), "temperature must be a number"),
    ],
)
def test_invalid_fields_are_named(artifact, mutate, message):
    _, raw = artifact
    bad = copy.deepcopy(raw)
    mutate(bad)
    with pytest.raises(ManifestError, match=message):
        Manifest.from_dict(bad)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r["routing"].update(threshold=NAN), r"routing\.threshold must be a finite number, got nan"),
        (lambda r: r["routing"].update(threshold=-INF), r"routing\.threshold must be a finite number, got -inf"),
        (lambda r: r["routing"].update(threshold=1.2), r"routing\.threshold must be a number in \[0\.0, 1\.0\] "
                                                      r"for score 'max_prob'"),
        (lambda r: r["routing"].update(score="margin", threshold=-0.5), r"for score 'margin'"),
        (lambda r: r["routing"].update(expected_escalation_rate=NAN), r"expected_escalation_rate must be a finite"),
        (lambda r: r["routing"].update(target_joint_over_teacher=INF), r"target_joint_over_teacher must be a finite"),
        (lambda r: r["routing"].update(traffic_oos_fraction=NAN), r"traffic_oos_fraction must be a finite"),
        (lambda r: r["models"]["edge"].update(temperature=NAN), r"models\.edge\.temperature must be a finite"),
        (lambda r: r["models"]["cloud"].update(temperature=INF), r"models\.cloud\.temperature must be a finite"),
        (lambda r: r["models"]["edge"].update(temperature=0.0), r"edge\.temperature must be a finite number in"),
        (lambda r: r["models"]["cloud"].update(oos_threshold=NAN), r"cloud\.oos_threshold must be a finite"),
        (lambda r: r["models"]["edge"]["output"].update(scale=NAN), r"edge\.output\.scale must be a finite"),
        (lambda r: r["models"]["edge"]["output"].update(scale=0.0), r"edge\.output\.scale must be a finite "
                                                                   r"number > 0\.0"),
        (lambda r: r["build"].update(metrics={"ece": [0.1, NAN]}), r"manifest\.build\.metrics\.ece\[1\] must be"),
        (lambda r: r["data"].update(oos_share=INF), r"manifest\.data\.oos_share must be a finite number"),
    ],
)
def test_every_number_must_be_finite_and_in_range(artifact, mutate, message):
    _, raw = artifact
    bad = copy.deepcopy(raw)
    mutate(bad)
    with pytest.raises(ManifestError, match=message):
        Manifest.from_dict(json.loads(json.dumps(bad)))  # through JSON, which carries NaN and Infinity


@pytest.mark.parametrize("threshold", [0.0, 1.0, -1e9, 1e9])  # +-1e9: how the build writes escalate none / all
def test_thresholds_at_the_ends_of_the_range_and_the_builds_infinities_are_accepted(artifact, threshold):
    _, raw = artifact
    good = copy.deepcopy(raw)
    good["routing"]["threshold"] = threshold
    assert Manifest.from_dict(good).routing.threshold == threshold


def test_an_oos_band_on_the_routing_score_lies_below_its_threshold_unless_nothing_escalates(artifact):
    _, raw = artifact
    band = copy.deepcopy(raw)
    band["routing"].update(threshold=0.1, oos_threshold=0.15, expected_edge_oos_rate=0.01)
    with pytest.raises(ManifestError, match="at most the escalation threshold"):
        Manifest.from_dict(band)
    # The edge alone meets the target (escalate none, -1e9): it answers or refuses, the cloud is never asked
    band["routing"]["threshold"] = -1e9
    assert Manifest.from_dict(band).routing.oos_threshold == 0.15




def test_not_json_is_a_manifest_error(tmp_path):
    (tmp_path / "manifest.json").write_text("{nope")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path)


def test_missing_manifest_is_named(tmp_path):
    with pytest.raises(ManifestError, match="no manifest.json"):
        load_manifest(tmp_path)


def test_a_manifest_that_is_not_an_object_is_named(tmp_path):
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ManifestError, match=r"manifest\.json must hold a JSON object"):
        load_manifest(tmp_path)
    with pytest.raises(ManifestError, match="^s3://b/m.json is not valid JSON"):
        json_object(b"\xff{}", "s3://b/m.json")


def test_the_files_of_some_parts_only(artifact):
    folder, _ = artifact
    manifest = load_manifest(folder)
    assert list(manifest.files()) == ["tokenizer.json", "edge.tflite", "cloud.tflite"]
    assert list(manifest.files(("tokenizer", "cloud"))) == ["tokenizer.json", "cloud.tflite"]
    assert manifest.files(()) == {}


def test_verifying_some_parts_ignores_the_files_of_the_others(artifact):
    folder, _ = artifact
    manifest = load_manifest(folder)
    (folder / "edge.tflite").unlink()  # the cloud does not fetch the edge's model
    verify_files(manifest, folder, ("tokenizer", "cloud"))
    with pytest.raises(ManifestError, match=r"edge\.tflite is named in the manifest but missing"):
        verify_files(manifest, folder)
    (folder / "cloud.tflite").write_bytes(b"bit rot")
    with pytest.raises(ChecksumMismatch, match=r"cloud\.tflite: SHA-256 [0-9a-f]{64} does not match the manifest's"):
        verify_files(manifest, folder, ("cloud",))


def test_verify_file_hands_back_exactly_the_bytes_it_checked(artifact):
    folder, _ = artifact
    manifest = load_manifest(folder)
    assert verify_file(folder / "edge.tflite", manifest.edge.sha256) == b"edge-bytes"
    with pytest.raises(ChecksumMismatch, match=r"edge\.tflite: SHA-256"):
        verify_file(folder / "edge.tflite", manifest.cloud.sha256)
    with pytest.raises(ManifestError, match="gone.tflite is named in the manifest but missing"):
        verify_file(folder / "gone.tflite", manifest.edge.sha256)


def test_a_digest_computed_elsewhere_is_checked_in_the_same_words():
    expected = hashlib.sha256(b"model").hexdigest()
    check_sha256("s3://b/v1/cloud.tflite", expected, expected)
    with pytest.raises(ChecksumMismatch) as caught:
        check_sha256("s3://b/v1/cloud.tflite", "0" * 64, expected)
    assert str(caught.value) == f"s3://b/v1/cloud.tflite: SHA-256 {'0' * 64} does not match the manifest's {expected}"


def test_an_oos_logit_bias_round_trips_and_is_absent_when_there_is_none(artifact):
    _, raw = artifact
    assert Manifest.from_dict(raw).edge.oos_logit_bias == 0.0
    biased = copy.deepcopy(raw)
    biased["models"]["edge"]["oos_logit_bias"] = 1.75
    manifest = Manifest.from_dict(biased)
    assert manifest.edge.oos_logit_bias == 1.75 and manifest.cloud.oos_logit_bias == 0.0
    out = manifest.to_dict()
    assert out["models"]["edge"]["oos_logit_bias"] == 1.75 and "oos_logit_bias" not in out["models"]["cloud"]
    assert Manifest.from_dict(out) == manifest


@pytest.mark.parametrize(("bias", "message"), [
    (60.0, r"edge\.oos_logit_bias must be .*50"), ("high", r"edge\.oos_logit_bias must be a number"),
])
def test_a_bad_oos_logit_bias_is_named(artifact, bias, message):
    _, raw = artifact
    bad = copy.deepcopy(raw)
    bad["models"]["edge"]["oos_logit_bias"] = bias
    with pytest.raises(ManifestError, match=message):
        Manifest.from_dict(bad)


def test_an_oos_logit_bias_needs_an_oos_label(artifact):
    _, raw = artifact
    bad = copy.deepcopy(raw)
    bad["models"]["edge"]["oos_logit_bias"] = 1.0
    bad.pop("oos_label")
    with pytest.raises(ManifestError, match="oos_logit_bias is set, but there is no oos_label"):
        Manifest.from_dict(bad)


def test_the_clouds_oos_score_round_trips_and_is_absent_for_max_prob(artifact):
    _, raw = artifact
    assert Manifest.from_dict(raw).cloud.oos_score is None
    assert "oos_score" not in Manifest.from_dict(raw).to_dict()["models"]["cloud"]
    energy = copy.deepcopy(raw)
    energy["models"]["cloud"].update(oos_score="neg_energy", oos_threshold=7.25)  # logit units: above 1
    manifest = Manifest.from_dict(energy)
    assert (manifest.cloud.oos_score, manifest.cloud.oos_threshold) == ("neg_energy", 7.25)
    assert Manifest.from_dict(manifest.to_dict()) == manifest


@pytest.mark.parametrize(("tier", "change", "message"), [
    ("cloud", {"oos_score": "margin"}, r"cloud\.oos_score must be one of \['max_prob', 'neg_energy'\]"),
    ("cloud", {"oos_score": "max_prob", "oos_threshold": 7.25}, r"cloud\.oos_threshold must be .*1"),
    ("edge", {"oos_score": "neg_energy"}, r"edge\.oos_score is set, but only the cloud has an oos threshold"),
])
def test_a_bad_oos_score_is_named(artifact, tier, change, message):
    _, raw = artifact
    bad = copy.deepcopy(raw)
    bad["models"][tier].update(change)
    with pytest.raises(ManifestError, match=message):
        Manifest.from_dict(bad)
