"""bench/student_compare.py on the real tiny artifact and a labelled split of its own intents: the figures it
prints are the runtime's (modelpack's cascade, the edge's argmax), recomputed here from the Classifiers."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import student_compare
from modelpack.classifier import Classifier
from modelpack.manifest import ESCALATE_ALL, load_manifest
from modelpack.routing import cascade
from tests.fixtures.tiny_artifact import LABELS, TEXTS

TARGETS = ["0.5", "0.9", "0.98", "0.99", "0.995", "1"]
# Requests the tiny models never saw: the validation and test splits (the training texts are the fixture's)
UNSEEN = {
    "balance": ["what's left in my savings", "how much cash is in checking", "show my balance",
                "what do i have in the bank"],
    "greeting": ["hi there friend", "good evening", "hey hello", "morning to you"],
    "timer": ["set a two minute timer", "timer for ten minutes", "start a countdown", "time me for a minute"],
    "weather": ["is it raining in london", "what's the forecast", "will it snow today", "is it windy out"],
    "oos": ["recommend a good book", "what is the capital of peru", "how do planes fly", "write me a poem",
            "who painted the mona lisa", "what time is sunset"],
}


def _write_data(path: Path) -> Path:
    """The tiny artifact's data as a CSV with its splits given: the fixture's texts to train, unseen ones
    split between validation (the first) and test (the rest)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label", "split"])
        for label in LABELS:
            writer.writerows([text, label, "train"] for text in TEXTS[label])
            writer.writerow([UNSEEN[label][0], label, "val"])
            writer.writerows([text, label, "test"] for text in UNSEEN[label][1:])
    return path


def _shipped_bias(folder: Path) -> float:
    return load_manifest(folder).edge.oos_logit_bias


@pytest.fixture(scope="module")
def run(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real run of the bench, its stdout and the file it wrote."""
    work = tmp_path_factory.mktemp("student_compare")
    data, out = _write_data(work / "tiny.csv"), work / "compare.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = student_compare.main(["--artifact", f"tiny={tiny_artifact}", "--data", str(data),
                                     "--targets", *TARGETS, "--out", str(out),
                                     "--oos-bias", "0", "2.5", f"{_shipped_bias(tiny_artifact):g}"])
    return {"code": code, "stdout": stdout.getvalue(), "report": json.loads(out.read_text()), "data": data}


@pytest.fixture(scope="module")
def split(tiny_artifact: Path) -> dict[str, Any]:
    """Both tiers on the test texts, straight from the Classifiers (one call each, no batching)."""
    texts = [text for label in LABELS for text in UNSEEN[label][1:]]
    manifest = load_manifest(tiny_artifact)
    edge, cloud = Classifier(manifest, tiny_artifact, "edge"), Classifier(manifest, tiny_artifact, "cloud")
    edge_logits, cloud_logits = edge.logits(texts), cloud.logits(texts)
    return {"manifest": manifest, "edge_logits": edge_logits, "edge_probs": edge.calibrate(edge_logits),
            "cloud_logits": cloud_logits, "cloud_probs": cloud.calibrate(cloud_logits),
            "labels": np.array([LABELS.index(label) for label in LABELS for _ in UNSEEN[label][1:]])}


def test_the_json_printed_is_the_json_written(run: dict[str, Any]) -> None:
    assert run["code"] == 0
    assert json.loads(run["stdout"]) == run["report"]
    report = run["report"]
    assert set(report) == {"machine", "split", "targets", "results"}
    assert report["split"] == "test" and report["targets"] == [float(t) for t in TARGETS]
    row = report["results"]["tiny"]
    assert row["n"] == sum(len(texts) - 1 for texts in UNSEEN.values())
    assert row["data"] == str(run["data"])


def test_escalation_needed_grows_with_the_target_and_every_rate_is_a_share(run: dict[str, Any]) -> None:
    row = run["report"]["results"]["tiny"]
    rates = [row["shipped"]["escalation_rate"]]
    for curve in row["escalation_needed"].values():
        needed = [curve[t] for t in TARGETS]
        reached = [rate for rate in needed if rate is not None]
        assert reached == sorted(reached)
        assert needed[:len(reached)] == reached  # once a target is out of reach, every higher one is too
        rates += reached
    assert all(0.0 <= rate <= 1.0 for rate in rates)
    assert row["escalation_needed"]["with_band"]["0.5"] is not None  # escalating 40 % gets half the cloud's


def test_the_shipped_point_is_the_runtimes_cascade(run: dict[str, Any], split: dict[str, Any]) -> None:
    m, y = split["manifest"], split["labels"]
    answers, route = cascade(split["edge_probs"], split["cloud_probs"], m, cloud_logits=split["cloud_logits"])
    cloud_only = dataclasses.replace(m, routing=dataclasses.replace(m.routing, threshold=ESCALATE_ALL,
                                                                    oos_threshold=None))
    teacher, everything = cascade(split["edge_probs"], split["cloud_probs"], cloud_only,
                                  cloud_logits=split["cloud_logits"])
    assert everything.escalate.all()
    row = run["report"]["results"]["tiny"]
    assert row["teacher_accuracy"] == round(float((teacher == y).mean()), 4)
    assert row["shipped"] == {
        "escalation_rate": round(float(route.escalate.mean()), 4),
        "joint_over_teacher": round(float((answers == y).mean() / (teacher == y).mean()), 4)}
    if m.routing.oos_threshold is None:  # no band to keep or leave out: one curve
        assert row["escalation_needed"]["with_band"] == row["escalation_needed"]["without_band"]


def test_raw_accuracy_is_the_int8_edges_argmax_on_in_scope_texts(run: dict[str, Any],
                                                                  split: dict[str, Any]) -> None:
    y, inside = split["labels"], split["labels"] != LABELS.index("oos")
    expected = float((split["edge_logits"].argmax(axis=1) == y)[inside].mean())
    assert run["report"]["results"]["tiny"]["raw_in_scope_accuracy"] == round(expected, 4)


def test_the_sweep_escalates_just_the_edges_least_sure_errors(tiny_artifact: Path) -> None:
    """Given an edge wrong on exactly its 20 least sure texts of 100 and a cloud right on all, when the sweep
    escalates the least sure first, then joint / teacher reaches 0.98 at 18 % escalated, 0.99 at 19 %,
    0.995 and 1 at 20 %, and never 1.01."""
    manifest = load_manifest(tiny_artifact)  # routing on max_prob, no band
    labels = np.arange(100) % 4
    sure = np.r_[np.linspace(0.30, 0.49, 20), np.linspace(0.60, 0.99, 80)]  # distinct: no ties at a cut
    answered = np.where(np.arange(100) < 20, (labels + 1) % 4, labels)
    edge = np.repeat(((1.0 - sure) / (len(LABELS) - 1))[:, None], len(LABELS), axis=1)  # the rest spread
    edge[np.arange(100), answered] = sure
    cloud_logits = np.eye(len(LABELS))[labels] * 10.0
    out = student_compare.SplitOutputs(labels, np.log(edge + 1e-9), edge, cloud_logits,
                                       np.exp(cloud_logits) / np.exp(cloud_logits).sum(axis=1, keepdims=True))
    needed = student_compare.escalation_needed(out, manifest, 1.0, (0.98, 0.99, 0.995, 1.0, 1.01))
    assert needed == {"0.98": 0.18, "0.99": 0.19, "0.995": 0.2, "1": 0.2, "1.01": None}


def test_metrics_are_copied_where_metrics_json_has_them_and_null_elsewhere(run: dict[str, Any],
                                                                           tmp_path: Path) -> None:
    copied = run["report"]["results"]["tiny"]["metrics"]  # the tiny artifact has no metrics.json
    assert all(value is None for section in copied.values() for value in section.values())
    (tmp_path / "metrics.json").write_text(json.dumps(
        {"edge_int8": {"in_scope_accuracy": 0.9, "ece": 0.02, "latency_ms_b1": 0.1}, "edge_fp32": None,
         "routing": {"oos_threshold": None, "escalation_rate": 0.08}}))
    metrics = student_compare.copied_metrics(tmp_path)
    assert metrics["edge_int8"] == {"in_scope_accuracy": 0.9, "accuracy": None, "oos_auroc": None,
                                    "ece": 0.02, "size_bytes": None}
    assert metrics["routing"] == {"oos_threshold": None, "escalation_rate": 0.08, "joint_over_teacher": None}
    assert metrics["edge_fp32"] == {"in_scope_accuracy": None} and metrics["timings_s"] == {"student": None}


def test_at_the_shipped_oos_bias_the_bias_sweep_is_the_sweep_without_band(run: dict[str, Any],
                                                                         tiny_artifact: Path) -> None:
    row = run["report"]["results"]["tiny"]
    by_bias = row["escalation_needed_by_oos_bias"]
    assert set(by_bias) == {"0", "2.5", f"{_shipped_bias(tiny_artifact):g}"}
    assert by_bias[f"{_shipped_bias(tiny_artifact):g}"] == row["escalation_needed"]["without_band"]
    for needed in by_bias.values():
        assert set(needed) == set(TARGETS)
        assert all(rate is None or 0.0 <= rate <= 1.0 for rate in needed.values())


def test_a_folder_without_a_manifest_is_refused_in_one_line(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        student_compare.main(["--artifact", f"nothing={tmp_path}"])
    assert refused.value.code == 2
    assert "manifest.json" in capsys.readouterr().err.strip().splitlines()[-1]
