"""The same build on data of another shape: a CSV of 6 intents, no `oos` label, its own small vocabulary,
no split column, and an unlabelled file. Nothing CLINC150-specific may be needed for it to work."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model_build.data.background import APPENDED_OOS_LOGIT
from modelpack.classifier import Classifier
from modelpack.manifest import load_manifest
from tests.conftest import REPO

# One worker builds the module's artifacts once (its fixtures are module-scoped): split across two, both would.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("other_data")]

TEMPLATES = {
    "set_alarm": ["wake me up at {t}", "set an alarm for {t}", "alarm at {t} please", "i need an alarm at {t}"],
    "play_music": ["play some {g}", "put on {g} music", "i want to hear {g}", "start a {g} playlist"],
    "weather": ["will it rain in {c}", "what is the weather in {c}", "is it cold in {c} today", "forecast for {c}"],
    "order_food": ["order a {f}", "i would like a {f} delivered", "get me a {f}", "can you order {f} for dinner"],
    "call": ["call {p}", "phone {p} now", "ring {p} for me", "start a call with {p}"],
    "lights": ["turn off the {r} lights", "dim the lights in the {r}", "switch on the {r} lamp", "lights on in the {r}"],
}
SLOTS = {"t": ["six", "seven thirty", "noon", "five am", "eight"], "g": ["jazz", "rock", "classical", "pop", "folk"],
         "c": ["paris", "oslo", "lima", "cairo", "tokyo"], "f": ["pizza", "curry", "salad", "burger", "noodles"],
         "p": ["mom", "alex", "the office", "sam", "my sister"], "r": ["kitchen", "bedroom", "hall", "garage", "den"]}


@pytest.fixture(scope="module")
def other_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(7)
    root = tmp_path_factory.mktemp("other_data")
    rows, seen = [], set()
    for label, templates in TEMPLATES.items():
        # Every template with every value of its slot: 4 x 5 = 20 distinct texts per intent.
        for template in templates:
            slot = template[template.index("{") + 1]
            for value in SLOTS[slot]:
                text = template.format(**{slot: value})
                if text not in seen:
                    seen.add(text)
                    rows.append((text, label))
    rng.shuffle(rows)
    with (root / "intents.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "label"])
        writer.writerows((i, text, label) for i, (text, label) in enumerate(rows))
    (root / "traffic.txt").write_text("\n".join(["tell me a joke", "who won the match", "translate hello"] * 3))
    out = root / "artifact"
    done = subprocess.run(
        [sys.executable, "-m", "model_build", "build", "--preset", "quick", "--data", str(root / "intents.csv"),
         "--unlabeled", str(root / "traffic.txt"), "--augment", "3", "--out", str(out),
         "--cache-dir", str(root / "cache")],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (root / "build.log").write_text(done.stderr)
    return out


def test_a_csv_without_oos_builds_an_artifact_the_runtimes_load(other_build: Path) -> None:
    manifest = load_manifest(other_build)
    # No oos label, no negatives: an `oos` label is appended that no model predicts; each tier refuses its
    # least sure in-scope share (the default false-reject budget) below a threshold fit on validation.
    assert manifest.labels[:-1] == tuple(sorted(TEMPLATES)) and manifest.labels[-1] == manifest.oos_label == "oos"
    for tier in ("edge", "cloud"):
        entry = manifest.model(tier)
        assert entry.appended_oos_logit == APPENDED_OOS_LOGIT and entry.output.shape[-1] == len(TEMPLATES)
    # 12 validation texts cannot hold a 2 % false-reject rate (a conformal count needs 66): no threshold yet,
    # and the build said so
    assert manifest.routing.oos_threshold is None and manifest.cloud.oos_threshold is None
    assert "too few to refuse" in (other_build.parent / "build.log").read_text()
    edge = Classifier.from_folder(other_build, "edge")
    got = edge.predict(["what is the weather in paris", "play some jazz"])
    assert [p.label for p in got] == ["weather", "play_music"]
    probs = edge.probabilities(["what is the weather in paris", "tell me about the roman empire"])
    assert probs.shape == (2, len(TEMPLATES) + 1) and np.all(probs[:, -1] == 0.0)  # its column, never its mass


def test_a_zero_false_reject_budget_keeps_every_answer_an_intent(other_build: Path, tmp_path: Path) -> None:
    data = other_build.parent / "intents.csv"
    done = subprocess.run(
        [sys.executable, "-m", "model_build", "build", "--preset", "quick", "--data", str(data),
         "--unlabeled", str(other_build.parent / "traffic.txt"), "--augment", "3", "--max-false-reject", "0",
         "--out", str(tmp_path / "closed"), "--cache-dir", str(other_build.parent / "cache")],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[build] student done in 0.0 s (cached)" in done.stderr  # the same models, another rule
    manifest = load_manifest(tmp_path / "closed")
    assert manifest.labels == tuple(sorted(TEMPLATES)) and manifest.oos_label is None
    assert manifest.routing.oos_threshold is None and manifest.cloud.oos_threshold is None
    assert manifest.edge.appended_oos_logit is None and manifest.cloud.appended_oos_logit is None


def test_its_metrics_are_measured_and_its_gates_recorded(other_build: Path) -> None:
    metrics = json.loads((other_build / "metrics.json").read_text())
    assert "oos_recall" not in metrics["edge_int8"]
    assert metrics["edge_int8"]["in_scope_accuracy"] > 0.5  # 6 intents: chance is 1/6
    assert metrics["teacher"]["in_scope_accuracy"] > 0.5
    assert "passed" in metrics["gates"]
    assert metrics["timings_s"]["transfer"] >= 0 and metrics["timings_s"]["total_s"] > 0
    report = (other_build / "report.md").read_text()
    assert "Routing" in report and "Gates" in report


def test_too_few_texts_for_int8_calibration_fail_before_the_student_naming_the_remedy(
        other_build: Path, tmp_path: Path) -> None:
    data = other_build.parent / "intents.csv"
    done = subprocess.run(
        [sys.executable, "-m", "model_build", "build", "--preset", "quick", "--data", str(data),
         "--out", str(tmp_path / "out"), "--cache-dir", str(other_build.parent / "cache")],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    assert "int8 calibration needs at least 200 real inputs" in done.stderr and "--augment" in done.stderr
    assert "[build] student" not in done.stderr  # nothing was trained for nothing
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


# The toy data's 12 validation texts hold no 2 % rate: the builds that must refuse allow 35 % (a conformal
# count of 3 at the edge, 1 at the cloud).
TOY_BUDGET = "0.35"

# Generic sentences outside every intent above (what --negatives is for), and out-of-domain requests the
# build never sees: other topics, phrased as a user would ask them.
NEGATIVE_TEMPLATES = ["the {x} was built in the {c} century", "{x} is a river in northern europe",
                      "the history of {x} is long and varied", "{x} won the election by a narrow margin",
                      "scientists discovered {x} in the {c} century", "the novel describes {x} in detail"]
NEGATIVE_SLOTS = {"x": ["the cathedral", "the bridge", "copper", "the treaty", "a comet", "the museum",
                        "the railway", "the empire", "a fossil", "the harbour"],
                  "c": ["tenth", "twelfth", "fifteenth", "eighteenth", "nineteenth"]}
OUT_OF_DOMAIN = ["what is the capital of peru", "how tall is mount everest", "who wrote hamlet",
                 "translate good morning into french", "how many calories in an apple", "tell me a fun fact",
                 "what year did the war end", "how do i reset my password", "what is my credit score",
                 "book a table for two"]


@pytest.fixture(scope="module")
def open_set_build(other_build: Path) -> Path:
    root = other_build.parent
    negatives = {t.format(x=x, c=c) for t in NEGATIVE_TEMPLATES for x in NEGATIVE_SLOTS["x"]
                 for c in NEGATIVE_SLOTS["c"]}
    (root / "negatives.txt").write_text("\n".join(sorted(negatives)))
    out = root / "open_set"
    done = subprocess.run(
        # The fast preset (about 40 s here): the quick one's 60 teacher steps learn no background class
        [sys.executable, "-m", "model_build", "build", "--preset", "fast", "--data", str(root / "intents.csv"),
         "--unlabeled", str(root / "traffic.txt"), "--negatives", str(root / "negatives.txt"), "--augment", "3",
         "--max-false-reject", TOY_BUDGET, "--out", str(out), "--cache-dir", str(root / "cache")],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_negatives_give_data_without_oos_an_oos_answer_on_both_tiers(open_set_build: Path) -> None:
    manifest = load_manifest(open_set_build)
    assert manifest.labels[-1] == manifest.oos_label == "oos" and set(manifest.labels[:-1]) == set(TEMPLATES)
    # The edge's band on its best intent's probability; the cloud answers `oos` where it is its argmax (its
    # energy threshold's ceiling, 5 % of in-scope texts for the cloud alone, needs 19 validation texts)
    assert manifest.routing.oos_threshold is not None and manifest.routing.oos_score == "in_scope_max_prob"
    assert manifest.cloud.oos_threshold is None
    assert manifest.build["config"]["negatives"].endswith("negatives.txt")
    # A background class may make the student over-state oos: the fit tries negative biases on it too
    searched = json.loads((open_set_build / "metrics.json").read_text())["validation"]["oos_bias_search"]
    assert min(float(b) for b in searched) == -5.0 and max(float(b) for b in searched) == 5.0


def test_out_of_domain_requests_are_refused_and_in_scope_ones_answered(open_set_build: Path, tmp_path: Path) -> None:
    (tmp_path / "ood.txt").write_text("\n".join(OUT_OF_DOMAIN))
    done = subprocess.run(
        [sys.executable, "-m", "model_build", "evaluate", str(open_set_build), "--ood", str(tmp_path / "ood.txt"),
         "--json"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)

    assert report["n_ood"] == len(OUT_OF_DOMAIN)
    # Without --negatives every one of them got an intent (the manifest had no oos answer at all).
    assert report["ood_answered_in_scope"] <= 0.5
    assert report["in_scope_refused"] <= 0.5  # the toy budget (35 % on 12 validation texts): far from refusing all
    assert report["in_scope_joint_accuracy"] > 0.5
    assert set(report["curves"]) == {"edge", "cloud"} and 0.0 <= report["auroc"]["cloud"] <= 1.0
    # the edge's curve is on the score it refuses by: its best intent's probability
    assert report["scores"]["edge"] == "in_scope_max_prob"


def test_without_negatives_out_of_domain_requests_are_refused_too(other_build: Path, tmp_path: Path) -> None:
    """The build as a new user runs it (no oos label, no --negatives; the toy data's budget): the appended
    label's thresholds refuse what is least like the intents."""
    built = subprocess.run(
        [sys.executable, "-m", "model_build", "build", "--preset", "quick", "--data",
         str(other_build.parent / "intents.csv"), "--unlabeled", str(other_build.parent / "traffic.txt"),
         "--augment", "3", "--max-false-reject", TOY_BUDGET, "--out", str(tmp_path / "open"),
         "--cache-dir", str(other_build.parent / "cache")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    assert "[build] student done in 0.0 s (cached)" in built.stderr  # the same models, another rule
    manifest = load_manifest(tmp_path / "open")
    assert manifest.routing.oos_threshold is not None and manifest.routing.oos_score == "in_scope_max_prob"
    assert "appended one that no model learns" in (tmp_path / "open" / "report.md").read_text()
    (tmp_path / "ood.txt").write_text("\n".join(OUT_OF_DOMAIN))
    done = subprocess.run(
        [sys.executable, "-m", "model_build", "evaluate", str(tmp_path / "open"), "--ood", str(tmp_path / "ood.txt"),
         "--json"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["ood_answered_in_scope"] < 1.0  # without a rule every one of them got an intent
    assert report["ood_refused_by_edge"] > 0.0 and report["in_scope_refused"] <= 0.5
