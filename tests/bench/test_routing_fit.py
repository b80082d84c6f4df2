"""bench/routing_fit.py on the real tiny artifact, its routing fitted by today's fit_on_validation on a
labelled CSV of its own intents and the fitted manifest written as model_build writes it (build config, data
path): the bench must rebuild what that build fit on, reproduce its rule, and measure it on test as the
runtime's cascade answers."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import routing_fit
from model_build.artifact import ArtifactRunner
from model_build.calibrate import calibration, fit
from model_build.calibrate.fit import fit_on_validation
from model_build.config import preset
from model_build.data.background import with_background
from model_build.data.dataset import load_dataset, subset
from model_build.data.unlabeled import load_unlabeled
from model_build.jsonable import jsonable
from modelpack.classifier import Classifier
from modelpack.manifest import ESCALATE_ALL, Manifest, load_manifest, write_manifest
from modelpack.routing import cascade
from modelpack.scores import softmax
from tests.fixtures.tiny_artifact import LABELS, TEXTS

FOLDS = 3
# Requests the tiny models never saw: validation (what the fit reads) and test (what the bench measures on)
VALIDATION = {
    "balance": ["what's left in my savings", "how much cash is in checking", "show my balance",
                "what do i have in the bank", "balance of my account", "how much money is left"],
    "greeting": ["hi there friend", "good evening", "hey hello", "morning to you", "hello hello",
                 "hi good to see you"],
    "timer": ["set a two minute timer", "timer for ten minutes", "start a countdown", "time me for a minute",
              "a timer for thirty seconds", "countdown from five minutes"],
    "weather": ["is it raining in london", "what's the forecast", "will it snow today", "is it windy out",
                "how hot will it be", "weather in tokyo please"],
    "oos": ["recommend a good book", "what is the capital of peru", "how do planes fly", "write me a poem",
            "who painted the mona lisa", "what time is sunset"],
}
TEST = {
    "balance": ["how much do i have saved", "what is in my checking account", "my bank balance please",
                "tell me how much money i have"],
    "greeting": ["hello friend", "hey there", "good afternoon", "hi"],
    "timer": ["set a one hour timer", "start a timer for five minutes", "countdown ten minutes",
              "set a timer please"],
    "weather": ["will it be sunny tomorrow", "what's the weather in berlin", "is it cold today",
                "rain forecast for tomorrow"],
    "oos": ["how do magnets work", "tell me a joke", "what is the tallest building", "play some jazz",
            "how old is the universe"],
}


def _write_data(path: Path, labels: tuple[str, ...]) -> Path:
    """The data as a CSV with its splits given: the fixture's own texts to train, the unseen ones to
    validate and test."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label", "split"])
        for label in labels:
            writer.writerows([text, label, "train"] for text in TEXTS[label])
            writer.writerows([text, label, "val"] for text in VALIDATION[label])
            writer.writerows([text, label, "test"] for text in TEST[label])
    return path


def _fitted_artifact(tiny: Path, folder: Path, data: Path, **overrides: Any) -> Path:
    """A copy of the tiny artifact calibrated as model_build's pipeline calibrates a build: today's
    fit_on_validation on the data's validation split, the manifest recording the config and the data."""
    shutil.copytree(tiny, folder)
    config = preset("quick", **overrides)
    dataset = subset(load_dataset(data, seed=config.seed), config.subset_per_class, seed=config.seed)
    if config.negatives:
        dataset = with_background(dataset, load_unlabeled(config.negatives), seed=config.seed)
    draft = dataclasses.replace(load_manifest(folder), data={"name": dataset.name, "path": str(data)},
                                build={"preset": "quick", "config": jsonable(config.to_dict())})
    write_manifest(fit_on_validation(config, dataset, ArtifactRunner(folder, draft)).apply(draft), folder)
    return folder


def _run(*argv: str) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = routing_fit.main(list(argv))
    return code, stdout.getvalue()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("routing_fit")


@pytest.fixture(scope="module")
def fitted(tiny_artifact: Path, work: Path) -> Path:
    return _fitted_artifact(tiny_artifact, work / "fitted", _write_data(work / "tiny.csv", LABELS))


@pytest.fixture(scope="module")
def run(fitted: Path, work: Path) -> dict[str, Any]:
    """One real run of the bench, its stdout and the file it wrote."""
    out = work / "routing_fit.json"
    code, stdout = _run("--artifact", f"tiny={fitted}", "--folds", str(FOLDS), "--seed", "3",
                        "--out", str(out))
    return {"code": code, "stdout": stdout, "report": json.loads(out.read_text())}


@pytest.fixture(scope="module")
def case(fitted: Path) -> routing_fit.Case:
    manifest = load_manifest(fitted)
    return routing_fit.Case.run(fitted, manifest, *routing_fit.rebuild(fitted, manifest))


def _rates(block: dict[str, Any]) -> list[float]:
    keys = ("escalation_rate", "in_scope_accuracy", "oos_recall")
    return [block[key] for key in keys if block[key] is not None]


def test_the_json_printed_is_the_json_written(run: dict[str, Any], fitted: Path, work: Path) -> None:
    assert run["code"] == 0
    assert json.loads(run["stdout"]) == run["report"]
    report = run["report"]
    assert set(report) == {"machine", "split", "folds", "seed", "results"}
    assert (report["split"], report["folds"], report["seed"]) == ("test", FOLDS, 3)
    row = report["results"]["tiny"]
    assert set(row) == {"folder", "version", "data", "n", "routing_target", "shipped", "validation_expected",
                        "reproduced", "cross_fit", "corrected", "mle_bias"}
    assert (row["folder"], row["version"], row["data"]) == (str(fitted), "tiny-1", str(work / "tiny.csv"))
    assert row["n"] == {"validation": sum(map(len, VALIDATION.values())),
                        "test": sum(map(len, TEST.values()))}


def test_an_artifact_fitted_by_todays_code_is_reproduced(run: dict[str, Any], fitted: Path) -> None:
    row = run["report"]["results"]["tiny"]
    assert row["reproduced"] is True
    manifest = load_manifest(fitted)
    expected = manifest.routing.expected_escalation_rate
    assert row["validation_expected"] == {"escalation_rate": round(expected, 4), "target": 0.995}
    assert row["routing_target"] == 0.995  # the quick preset's


def test_same_rule_sees_a_moved_threshold_and_a_changed_bias(fitted: Path) -> None:
    shipped = load_manifest(fitted)
    threshold, bias = shipped.routing.threshold, shipped.edge.oos_logit_bias
    moved = dataclasses.replace(shipped, routing=dataclasses.replace(
        shipped.routing, threshold=threshold + max(1e-6, abs(threshold) * 1e-6)))
    biased = dataclasses.replace(shipped, edge=dataclasses.replace(shipped.edge, oos_logit_bias=bias + 0.25))
    band = shipped.routing.oos_threshold
    banded = dataclasses.replace(shipped, routing=dataclasses.replace(
        shipped.routing, oos_threshold=0.3 if band is None else band + 1e-3))
    assert routing_fit.same_rule(shipped, shipped)
    assert not any(routing_fit.same_rule(shipped, other) for other in (moved, biased, banded))


def test_the_shipped_figures_are_the_runtimes_cascade(run: dict[str, Any], fitted: Path) -> None:
    """Recomputed with the Classifiers, one call each: the bench's test split and figures are the
    runtime's."""
    texts = [text for label in LABELS for text in TEST[label]]
    y = np.array([LABELS.index(label) for label in LABELS for _ in TEST[label]])
    m = load_manifest(fitted)
    edge, cloud = Classifier(m, fitted, "edge"), Classifier(m, fitted, "cloud")
    cloud_logits = cloud.logits(texts)
    edge_probs, cloud_probs = edge.calibrate(edge.logits(texts)), cloud.calibrate(cloud_logits)
    joint, route = cascade(edge_probs, cloud_probs, m, cloud_logits=cloud_logits)
    everything = dataclasses.replace(m, routing=dataclasses.replace(m.routing, threshold=ESCALATE_ALL,
                                                                    oos_threshold=None))
    teacher, _ = cascade(edge_probs, cloud_probs, everything, cloud_logits=cloud_logits)
    inside, oos = y != LABELS.index("oos"), LABELS.index("oos")
    shipped = run["report"]["results"]["tiny"]["shipped"]
    assert shipped == {
        "escalation_rate": round(float(route.escalate.mean()), 4),
        "joint_over_teacher": round(float((joint == y).mean() / (teacher == y).mean()), 4),
        "in_scope_accuracy": round(float((joint == y)[inside].mean()), 4),
        "oos_recall": round(float((joint[~inside] == oos).mean()), 4),
        "rule": {"score": m.routing.score,
                 "band": None if m.routing.oos_threshold is None else m.routing.oos_score or m.routing.score,
                 "edge_oos_bias": m.edge.oos_logit_bias,
                 "expected_escalation_rate": round(m.routing.expected_escalation_rate, 4)}}


def test_cross_fit_honours_the_folds_and_the_correction_never_lowers_the_target(run: dict[str, Any]) -> None:
    row = run["report"]["results"]["tiny"]
    cross, fixed = row["cross_fit"], row["corrected"]
    assert len(cross["folds"]) == FOLDS and sum(cross["folds"]) == row["n"]["validation"]
    assert max(cross["folds"]) - min(cross["folds"]) <= len(LABELS)  # each label dealt round the folds
    ratio = cross["joint_over_teacher"]
    assert isinstance(ratio, float) and math.isfinite(ratio) and ratio > 0
    target = row["routing_target"]
    assert fixed["routing_target"] >= target
    assert fixed["routing_target"] == pytest.approx(min(1.0, target + max(0.0, target - ratio)), abs=1e-4)
    if fixed["routing_target"] == target:  # no shortfall: the same fit as the shipped one
        assert {k: v for k, v in fixed.items() if k != "routing_target"} == row["shipped"]
    for block in (row["shipped"], fixed, row["mle_bias"]["forced_fit"]):
        assert all(0.0 <= rate <= 1.0 for rate in _rates(block))
    assert 0.0 <= cross["escalation_rate"] <= 1.0


def test_folds_are_stratified_and_seeded() -> None:
    labels = np.repeat(np.arange(4), [7, 5, 9, 3])
    fold = routing_fit.fold_ids(labels, 3, seed=0)
    for label in range(4):
        sizes = np.bincount(fold[labels == label], minlength=3)
        assert sizes.max() - sizes.min() <= 1
    assert np.array_equal(fold, routing_fit.fold_ids(labels, 3, seed=0))
    assert not np.array_equal(fold, routing_fit.fold_ids(labels, 3, seed=1))


def _nll_at(case: routing_fit.Case, bias: float) -> tuple[float, float]:
    """The temperature fitted at `bias` on the oos logit and the weighted validation NLL there, computed
    here from calibration's own pieces (not through the fit's helper)."""
    y, oos = case.val.labels, LABELS.index("oos")
    # the quick preset fits for the test split's oos share (traffic_oos_fraction "test")
    w = calibration.traffic_weights(y == oos, len(TEST["oos"]) / sum(map(len, TEST.values())))
    offset = np.zeros(len(LABELS))
    offset[oos] = bias
    t = calibration.fit_temperature(case.val.edge, y, weights=w, offset=offset if bias else None)
    probs = softmax(case.val.edge, t, oos_bias=bias, oos_index=oos)
    return t, float(-np.sum(w * np.log(probs[np.arange(len(y)), y])) / np.sum(w))


def test_the_mle_bias_is_the_nll_best_on_the_fits_grid(run: dict[str, Any], case: routing_fit.Case) -> None:
    row = run["report"]["results"]["tiny"]
    mle = row["mle_bias"]
    grid = (0.0, *fit.OOS_BIAS_GRID)  # no background class: the positive grid
    nll = {bias: _nll_at(case, bias)[1] for bias in grid}
    assert routing_fit.bias_grid(case) == grid
    assert mle["bias"] == min(grid, key=lambda b: (nll[b], abs(b)))
    assert mle["validation_nll"] == pytest.approx(nll[mle["bias"]], abs=1e-6)
    assert mle["shipped_bias"] == case.manifest.edge.oos_logit_bias
    assert mle["shipped_validation_nll"] == pytest.approx(_nll_at(case, mle["shipped_bias"])[1], abs=1e-6)
    assert mle["forced_fit"]["rule"]["edge_oos_bias"] == mle["bias"]
    if mle["bias"] == mle["shipped_bias"]:  # the fit's own choice: the shipped rule
        assert mle["forced_fit"] == row["shipped"]


@pytest.mark.parametrize("bias", [0.0, 2.5, 5.0])
def test_the_forced_fit_ships_the_bias_it_is_given(case: routing_fit.Case, bias: float) -> None:
    forced = routing_fit.forced_fit(case, bias)
    assert forced.edge_oos_bias == bias
    assert forced.edge_temperature == pytest.approx(_nll_at(case, bias)[0])  # calibrated at that bias


def test_a_shortfall_raises_the_target_by_itself(case: routing_fit.Case) -> None:
    """Out of fold 0.05 below a target of 0.9, the fit reruns at 0.95; above it, at 0.9; never past 1."""
    at_90 = dataclasses.replace(case, config=dataclasses.replace(case.config, routing_target=0.9))
    raised, kept = routing_fit.corrected(at_90, 0.85), routing_fit.corrected(at_90, 0.97)
    assert raised is not None and kept is not None
    assert (raised["routing_target"], kept["routing_target"]) == (0.95, 0.9)
    capped = routing_fit.corrected(case, 0.5)
    assert capped is not None and capped["routing_target"] == 1.0
    assert routing_fit.corrected(case, None) is None


def test_a_background_class_build_is_rebuilt_with_its_negatives(tiny_artifact: Path, work: Path) -> None:
    """Data without an oos label, the build given --negatives: the bench adds the same background class,
    fits on the same validation split (reproduced), searches the background grid, and finds no oos text to
    recall on test."""
    intents = tuple(label for label in LABELS if label != "oos")
    negatives = work / "negatives.txt"
    negatives.write_text("\n".join(TEXTS["oos"] + VALIDATION["oos"] + TEST["oos"]) + "\n")
    data = _write_data(work / "intents.csv", intents)
    folder = _fitted_artifact(tiny_artifact, work / "background", data, negatives=str(negatives))
    code, stdout = _run("--artifact", f"bg={folder}", "--folds", "2")
    row = json.loads(stdout)["results"]["bg"]
    assert code == 0 and row["reproduced"] is True
    assert row["shipped"]["oos_recall"] is None and row["corrected"]["oos_recall"] is None
    assert row["n"]["validation"] > sum(len(VALIDATION[label]) for label in intents)  # negatives added
    assert row["mle_bias"]["bias"] in (0.0, *fit.BACKGROUND_BIAS_GRID)
    manifest = load_manifest(folder)
    case = routing_fit.Case.run(folder, manifest, *routing_fit.rebuild(folder, manifest))
    assert case.dataset.background and case.dataset.labels == manifest.labels
    assert routing_fit.bias_grid(case) == (0.0, *fit.BACKGROUND_BIAS_GRID)  # the negative biases too


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as refused:
        routing_fit.main(argv)
    assert refused.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_a_bad_spec_or_folder_is_refused_in_one_line(tmp_path: Path, tiny_artifact: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert "expected NAME=DIR" in _refused(["--artifact", str(tmp_path)], capsys)
    assert "manifest.json" in _refused(["--artifact", f"nothing={tmp_path}"], capsys)
    assert "at least 2" in _refused(["--artifact", f"tiny={tiny_artifact}", "--folds", "1"], capsys)
    # the fixture as made: its manifest says nothing of a build
    assert "no build config" in _refused(["--artifact", f"tiny={tiny_artifact}"], capsys)


def test_a_missing_data_file_is_refused_naming_it_under_the_repo_root(
        fitted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = shutil.copytree(fitted, tmp_path / "moved")
    manifest: Manifest = load_manifest(folder)
    write_manifest(dataclasses.replace(manifest, data={**manifest.data, "path": "no/such/data.csv"}), folder)
    line = _refused(["--artifact", f"moved={folder}"], capsys)
    assert f"{routing_fit.REPO / 'no/such/data.csv'}: no such file" in line
