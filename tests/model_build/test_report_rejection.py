"""Each tier's out-of-scope rejection in metrics.json and report.md (model_build.calibrate.rejection): the curve
on validation and test, and the shipped point, which must be what the manifest's thresholds do.

The fit and the test-split measurement run for real on the tiny artifact (a real int8 edge and float cloud
model through LiteRT), on its hand-written intents and out-of-scope requests."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from model_build.artifact import ArtifactRunner
from model_build.calibrate.fit import CLOUD_ALONE_MAX_REFUSE, EDGE_BUDGET_SHARE, Fitted, fit_on_validation
from model_build.calibrate.rejection import CURVE_FALSE_REJECTS, REPORT_FALSE_REJECTS
from model_build.config import preset
from model_build.data.dataset import Dataset, Split
from model_build.evaluate import measure
from model_build.evaluate.metrics import BuildMetrics, GateResult, Int8Graph, SampledCurves
from model_build.evaluate.ood import ood_report
from model_build.report import view
from model_build.report.markdown import render_report_md
from model_build.report.view import report_view
from modelpack.classifier import Classifier
from modelpack.manifest import Manifest, load_manifest, write_manifest
from modelpack.scores import SCORES, in_scope_max_prob, neg_energy
from tests.fixtures.tiny_artifact import LABELS, TEXTS

OOS = LABELS.index("oos")
# Requests the tiny models never saw, beside the ones they were trained on
MORE = {
    "balance": ["what's left in my savings", "how much cash is in checking", "show my balance"],
    "greeting": ["hi there friend", "good evening", "hey hello"],
    "timer": ["set a two minute timer", "timer for ten minutes", "start a countdown"],
    "weather": ["is it raining in london", "what's the forecast", "will it snow today"],
    "oos": ["recommend a good book", "what is the capital of peru", "how do planes fly",
            "write me a poem", "who painted the mona lisa", "what time is sunset"],
}


def _split(by_label: dict[str, list[str]], labels: tuple[str, ...]) -> Split:
    pairs = [(text, LABELS.index(label)) for label in labels for text in by_label[label]]
    return Split(tuple(t for t, _ in pairs), np.array([y for _, y in pairs]))


def _dataset(background: bool) -> Dataset:
    everything = {label: TEXTS[label] + MORE[label] for label in LABELS}
    in_scope = LABELS[:OOS]
    # A background class (--negatives) validates on its negatives and leaves the test split without oos texts
    test = _split(MORE, in_scope if background else LABELS)
    return Dataset("tiny", LABELS, "oos", _split(TEXTS, LABELS), _split(everything, LABELS), test, "0" * 64,
                   "tiny.json", background=background)


def _metrics(fitted: Fitted, folder: Path, manifest: Manifest, dataset: Dataset) -> BuildMetrics:
    test, _ = measure.test_metrics(ArtifactRunner(folder, manifest), dataset, latency_repeats=2)
    return BuildMetrics(test=test, validation=fitted.validation, int8_graph=Int8Graph((), 0, ()), goals={},
                        gates=GateResult(()), curves=SampledCurves({}, None), timings_s={}, machine={},
                        cached_stages=())


@pytest.fixture(scope="module", params=["data's own oos", "negatives"])
def built(request: pytest.FixtureRequest, tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> dict[str, Any]:
    background = request.param == "negatives"
    dataset = _dataset(background)
    # A loose budget: the tiny validation split has 28 in-scope texts, 2 % of them is none
    config = dataclasses.replace(preset("quick"), max_false_reject=0.25 if background else None)
    draft = load_manifest(tiny_artifact)
    fitted = fit_on_validation(config, dataset, ArtifactRunner(tiny_artifact, draft))
    manifest = fitted.apply(draft)
    metrics = _metrics(fitted, tiny_artifact, manifest, dataset)
    folder = tmp_path_factory.mktemp("rejection")
    metrics.write(folder)
    report = render_report_md(report_view(metrics, manifest, dataset, config))
    return {"dataset": dataset, "fitted": fitted, "manifest": manifest, "background": background,
            "json": json.loads((folder / "metrics.json").read_text()), "report": report, "folder": tiny_artifact}


def _served(manifest: Manifest, folder: Path, split: Split) -> dict[str, np.ndarray]:
    """Per text of `split`, written out from the manifest's fields: refused by each tier's threshold alone,
    answered `oos` by each (its top label `oos` too), and escalated to the cloud."""
    edge, cloud = Classifier(manifest, folder, "edge"), Classifier(manifest, folder, "cloud")
    edge_probs = edge.probabilities(split.texts)
    cloud_logits = cloud.logits(split.texts)
    cloud_probs = cloud.calibrate(cloud_logits)
    r, c = manifest.routing, manifest.cloud
    if r.oos_threshold is None:
        edge_refused = np.zeros(len(split), dtype=bool)
    else:
        band = in_scope_max_prob(edge_probs, OOS) if r.oos_score == "in_scope_max_prob" else \
            SCORES[r.oos_score or r.score](edge_probs)
        edge_refused = band < r.oos_threshold
    cloud_refused = np.zeros(len(split), dtype=bool)
    if c.oos_threshold is not None:
        score = neg_energy(cloud_logits, OOS) if c.oos_score == "neg_energy" else cloud_probs.max(axis=1)
        cloud_refused = score < c.oos_threshold
    escalated = (SCORES[r.score](edge_probs) < r.threshold) & ~edge_refused
    return {"edge": edge_refused, "cloud": cloud_refused, "escalated": escalated,
            "edge oos": edge_refused | (edge_probs.argmax(axis=1) == OOS),
            "cloud oos": cloud_refused | (cloud_probs.argmax(axis=1) == OOS)}


def _assert_point(point: dict[str, Any], served: dict[str, np.ndarray], tier: str, is_oos: np.ndarray) -> None:
    assert point["in_scope_refused"] == pytest.approx(served[tier][~is_oos].mean())
    assert point["ood_caught"] == pytest.approx(served[tier][is_oos].mean())
    assert point["in_scope_answered_oos"] == pytest.approx(served[f"{tier} oos"][~is_oos].mean())
    assert point["ood_answered_oos"] == pytest.approx(served[f"{tier} oos"][is_oos].mean())


def test_the_shipped_points_are_what_the_manifests_thresholds_do_on_validation(built: dict[str, Any]) -> None:
    manifest, val = built["manifest"], built["dataset"].val
    rejection = built["fitted"].validation.rejection
    assert rejection is not None and rejection.split == "val"
    is_oos = val.labels == OOS
    assert (rejection.n_in_scope, rejection.n_oos) == (int((~is_oos).sum()), int(is_oos.sum()))
    served = _served(manifest, built["folder"], val)
    for tier, shipped in (("edge", rejection.edge), ("cloud", rejection.cloud)):
        _assert_point(dataclasses.asdict(shipped.chosen), served, tier, is_oos)
    assert rejection.edge.chosen.threshold == manifest.routing.oos_threshold
    assert rejection.cloud.chosen.threshold == manifest.cloud.oos_threshold
    assert rejection.cloud.asked is not None
    asked = {"cloud": served["cloud"] & served["escalated"], "cloud oos": served["cloud oos"] & served["escalated"]}
    _assert_point(dataclasses.asdict(rejection.cloud.asked), asked, "cloud", is_oos)
    # metrics.json carries the same figures
    assert built["json"]["validation"]["rejection"]["cloud"]["chosen"] == dataclasses.asdict(rejection.cloud.chosen)


def test_the_curves_are_on_the_score_each_tier_refuses_by(built: dict[str, Any]) -> None:
    manifest = built["manifest"]
    rejection = built["fitted"].validation.rejection
    assert rejection is not None
    edge_score = manifest.routing.oos_score or manifest.routing.score if manifest.routing.oos_threshold \
        is not None else "in_scope_max_prob"
    assert rejection.edge.score == edge_score
    assert rejection.cloud.score == (manifest.cloud.oos_score or "max_prob")
    for tier in (rejection.edge, rejection.cloud):
        caught = [tier.curve[f"{rate:g}"] for rate in REPORT_FALSE_REJECTS]
        assert caught == sorted(caught) and all(0.0 <= c <= 1.0 for c in caught)  # refusing more catches more


def test_a_background_class_spends_the_budget_as_the_fit_says(built: dict[str, Any]) -> None:
    rejection = built["fitted"].validation.rejection
    assert rejection is not None
    if not built["background"]:  # data's own oos rows: no cap unless asked for one, counted on every text
        assert rejection.edge.budget is None and rejection.cloud.budget is None
        assert rejection.cloud.counted_on == "all"
        return
    assert rejection.edge.budget == pytest.approx(0.25 * EDGE_BUDGET_SHARE)
    assert rejection.cloud.budget == pytest.approx(0.25 * (1 - EDGE_BUDGET_SHARE))
    assert rejection.cloud.counted_on == "escalated"
    # the edge's band by its threshold alone, the cloud's every `oos` answer among the escalated texts
    assert rejection.edge.chosen.in_scope_refused <= rejection.edge.budget + 1e-9
    assert rejection.cloud.asked is not None
    assert rejection.cloud.asked.in_scope_answered_oos <= rejection.cloud.budget + 1e-9


def test_the_cloud_never_refuses_everything_it_is_asked(built: dict[str, Any]) -> None:
    """The tiny edge escalates fewer in-scope validation texts than the cloud's share of the budget allows:
    counted on those alone, any threshold would do, and the fit once shipped "refuse everything" (1e9)."""
    rejection, manifest = built["fitted"].validation.rejection, built["manifest"]
    assert rejection is not None
    if not built["background"]:
        return
    assert manifest.cloud.oos_threshold is not None and manifest.cloud.oos_threshold < 1e6
    val = built["dataset"].val
    in_scope = val.labels != OOS
    served = _served(manifest, built["folder"], val)
    top_oos = (served["cloud oos"] & ~served["cloud"])[in_scope].mean()  # no threshold undoes these
    refused_alone = served["cloud oos"][in_scope].mean()
    cap = np.floor(CLOUD_ALONE_MAX_REFUSE * in_scope.sum() + 1e-9) / in_scope.sum()
    assert refused_alone <= max(cap, top_oos) + 1e-9
    assert rejection.cloud.chosen.in_scope_answered_oos == pytest.approx(refused_alone)


def test_the_test_split_has_its_rejection_when_it_holds_oos_texts(built: dict[str, Any]) -> None:
    manifest, test = built["manifest"], built["dataset"].test
    if built["background"]:  # no oos text on the test split: no curve
        assert "rejection" not in built["json"]
        return
    shipped = built["json"]["rejection"]
    assert shipped["split"] == "test"
    is_oos = test.labels == OOS
    served = _served(manifest, built["folder"], test)
    for tier in ("edge", "cloud"):
        _assert_point(shipped[tier]["chosen"], served, tier, is_oos)
        assert shipped[tier]["budget"] is None  # the fit's, known on validation only


def test_the_report_shows_each_split_and_the_shipped_rows_in_bold(built: dict[str, Any]) -> None:
    report = built["report"]
    section = report.split("## Out-of-scope rejection")[1].split("\n## ")[0]
    rejection = built["fitted"].validation.rejection
    assert rejection is not None
    assert f"Validation ({rejection.n_in_scope} in-scope, {rejection.n_oos} out-of-scope texts)" in section
    assert f"| in-scope refused | edge catches (`{rejection.edge.score}`) | cloud catches " \
           f"(`{rejection.cloud.score}`) |" in section
    assert f"| 0.5 % | {100 * rejection.edge.curve['0.005']:.2f} % | {100 * rejection.cloud.curve['0.005']:.2f} % |" \
        in section
    cloud = rejection.cloud.chosen
    assert f"**cloud, shipped (< {cloud.threshold:.4f}): {100 * cloud.in_scope_refused:.2f} %** |  | " \
           f"**{100 * cloud.ood_caught:.2f} %** |" in section
    assert ("Test (" in section) is not built["background"]
    if built["background"]:
        assert "overstates what real traffic gets" in section and "--ood FILE" in section
        assert "(the fit counts its budget there)" in section
    else:
        assert "the data's own `oos` rows" in section


def test_without_oos_texts_there_is_no_curve_and_the_report_says_how_to_get_one() -> None:
    from tests.model_build.test_fit import OOS as N_INTENTS
    from tests.model_build.test_fit import _dataset as fit_dataset
    from tests.model_build.test_fit import _Runner

    data = fit_dataset(with_oos=False)
    fitted = fit_on_validation(preset("quick"), data, _Runner(data.val.labels, N_INTENTS))
    assert fitted.validation.rejection is None and "rejection" not in fitted.validation.to_dict()

    # report_view's section for it (the rest of the view needs a whole build)
    shown = view._rejection(SimpleNamespace(validation=fitted.validation, test=SimpleNamespace(rejection=None)),
                            data)
    text = render_report_md({"rejection": shown})
    section = text.split("## Out-of-scope rejection\n\n")[1].split("\n\n")[0]
    assert "\n" not in section  # one line
    assert section.startswith("No out-of-scope rule: the data has no `oos` label")
    assert "`--negatives FILE`" in section and "docs/build.md" in section


def test_evaluate_ood_keeps_its_curve(tiny_artifact: Path) -> None:
    manifest = load_manifest(tiny_artifact)
    in_scope = [t for label in LABELS[:OOS] for t in MORE[label]]
    labels = np.array([LABELS.index(label) for label in LABELS[:OOS] for _ in MORE[label]])
    report = ood_report(manifest, tiny_artifact, in_scope, labels, MORE["oos"])
    for curve in report.curves.values():
        assert list(curve) == [f"{rate:g}" for rate in CURVE_FALSE_REJECTS]
        assert list(curve.values()) == sorted(curve.values())


# The tiny artifact's manifest with these changes (to its top, routing and models.cloud): tiers that refuse
# by scores other than the best intent's probability
REFUSING_BY = {
    "as built: no band, the cloud's threshold on max_prob over every column": ({}, {}, {}),
    "edge band on margin": ({}, {"oos_threshold": 0.2, "oos_score": "margin"}, {}),
    "edge band on its escalation score, cloud on neg_energy": (
        {}, {"oos_threshold": 0.3}, {"oos_score": "neg_energy", "oos_threshold": 1.0}),
    "no oos label: nothing refused": (
        {"oos_label": None}, {}, {"oos_score": "neg_energy", "oos_threshold": 1.0}),
}


def _refused_by(manifest: Manifest, folder: Path, texts: list[str]) -> dict[str, tuple[str, np.ndarray]]:
    """Per tier, the score its threshold cuts (written out from the manifest's fields) and its values."""
    oos, r, c = manifest.oos_index, manifest.routing, manifest.cloud
    edge_probs = Classifier(manifest, folder, "edge").probabilities(texts)
    cloud = Classifier(manifest, folder, "cloud")
    cloud_logits = cloud.logits(texts)
    cloud_max_prob = ("max_prob", cloud.calibrate(cloud_logits).max(axis=1))  # over every column
    if oos is None:  # neither tier refuses: both on their confidence
        return {"edge": ("max_prob", edge_probs.max(axis=1)), "cloud": cloud_max_prob}
    band = "in_scope_max_prob" if r.oos_threshold is None else r.oos_score or r.score
    edge = in_scope_max_prob(edge_probs, oos) if band == "in_scope_max_prob" else SCORES[band](edge_probs)
    if c.oos_score == "neg_energy":
        return {"edge": (band, edge), "cloud": ("neg_energy", neg_energy(cloud_logits, oos))}
    return {"edge": (band, edge), "cloud": cloud_max_prob}


@pytest.mark.parametrize("variant", list(REFUSING_BY))
def test_evaluate_ood_draws_each_tier_on_the_score_it_refuses_by(variant: str, tiny_artifact: Path,
                                                                 tmp_path: Path) -> None:
    # given the tiny artifact with a manifest whose tiers refuse by these scores
    top, routing, cloud = REFUSING_BY[variant]
    shipped = load_manifest(tiny_artifact)
    folder = shutil.copytree(tiny_artifact, tmp_path / "artifact")
    changed = dataclasses.replace(shipped, **top, routing=dataclasses.replace(shipped.routing, **routing),
                                  cloud=dataclasses.replace(shipped.cloud, **cloud))
    write_manifest(changed, folder)
    manifest = load_manifest(folder)  # a manifest the runtimes accept
    in_scope = [t for label in LABELS[:OOS] for t in MORE[label]]
    labels = np.array([LABELS.index(label) for label in LABELS[:OOS] for _ in MORE[label]])

    # when evaluate --ood measures it on out-of-domain texts
    report = ood_report(manifest, folder, in_scope, labels, MORE["oos"])

    # then each tier's curve and AUROC are on the score its threshold cuts
    inside, outside = _refused_by(manifest, folder, in_scope), _refused_by(manifest, folder, MORE["oos"])
    for tier in ("edge", "cloud"):
        (name, s_in), (_, s_ood) = inside[tier], outside[tier]
        assert report.scores[tier] == name
        assert report.curves[tier] == pytest.approx(
            {f"{rate:g}": float((s_ood < np.quantile(s_in, rate)).mean()) for rate in CURVE_FALSE_REJECTS})
        above = (s_in[:, None] > s_ood[None, :]).mean() + 0.5 * (s_in[:, None] == s_ood[None, :]).mean()
        assert report.auroc[tier] == pytest.approx(above)
        assert f"{tier} rejection curve on {name} " in report.summary()
