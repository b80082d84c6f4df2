"""The test split measured through the real LiteRT interpreter: accuracy, ECE, latency, routing.

`evaluate_artifact` recomputes the test-split metrics of an artifact folder from its files alone (manifest,
tokenizer, .tflite files and the data), so a report can always be checked against the artifact it describes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_build.artifact import EDGE_FP32_FILE, ArtifactRunner
from model_build.calibrate import calibration
from model_build.calibrate.curves import SplitCurves, escalation_curve
from model_build.calibrate.rejection import tier_rejection
from model_build.calibrate.routing import RoutedMetrics, apply_deferral
from model_build.data.dataset import Dataset, default_data_path, load_dataset, subset
from model_build.errors import DataError
from model_build.evaluate.metrics import InScopeRouting, ModelMetrics, RoutingSummary, TestMetrics
from model_build.tflite.graph import size_metrics
from model_build.tflite.run import latency_inputs, median_latency_ms
from modelpack.classifier import calibrated
from modelpack.manifest import Manifest, ModelEntry, load_manifest
from modelpack.routing import cloud_answer, cloud_oos_score
from modelpack.scores import SCORES, manifest_band_score, softmax

LATENCY_BATCHES = (1, 32)


def classification_metrics(
    probs: np.ndarray, labels: np.ndarray, oos_index: int | None, *, pred: np.ndarray | None = None,
    oos_score: np.ndarray | None = None,
) -> ModelMetrics:
    """`oos_auroc` ranks by `oos_score` (higher: more in scope) when given, else by the max probability."""
    pred = probs.argmax(axis=1) if pred is None else pred
    correct = pred == labels
    is_oos = labels == oos_index if oos_index is not None else np.zeros(len(labels), dtype=bool)
    recall = auroc = None
    if is_oos.any():
        recall = float(correct[is_oos].mean())
        if (~is_oos).any():
            auroc = oos_auroc(probs.max(axis=1) if oos_score is None else oos_score, is_oos)
    return ModelMetrics(accuracy=float(correct.mean()), in_scope_accuracy=float(correct[~is_oos].mean()),
                        oos_recall=recall, oos_auroc=auroc, ece=calibration.ece(probs, labels, n_bins=15))


def _refusal_order(probs: np.ndarray, m: Manifest, logits: np.ndarray) -> np.ndarray | None:
    """The cloud's rule as one score (lower: refused sooner): its oos score, and -inf where its argmax is the
    oos label (refused whatever the threshold). None without an oos label."""
    if m.oos_index is None:
        return None
    score = cloud_oos_score(probs, m.cloud, m.oos_index, logits)
    return np.where(probs.argmax(axis=1) == m.oos_index, -np.inf, score)


def oos_auroc(confidence: np.ndarray, is_oos: np.ndarray) -> float:
    """How well a confidence separates in-scope from out-of-scope texts: the probability that a random
    in-scope text scores above a random oos one (ties count half); 0.5 is chance, 1.0 perfect."""
    ranks = np.empty(len(confidence), dtype=np.float64)
    order = np.argsort(confidence, kind="stable")
    ranks[order] = np.arange(1, len(confidence) + 1)
    # Average ranks over ties.
    values, inverse, counts = np.unique(confidence, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]
    n_in, n_oos = int((~is_oos).sum()), int(is_oos.sum())
    return float((ranks[~is_oos].sum() - n_in * (n_in + 1) / 2) / (n_in * n_oos))


@dataclass(frozen=True, eq=False)
class DeployedAnswers:
    """A split's calibrated probabilities and both tiers' answers under the manifest's rules."""

    labels: np.ndarray
    edge_probs: np.ndarray
    edge_pred: np.ndarray  # the argmax: the edge's `oos` band is applied by the routing rule
    cloud_probs: np.ndarray
    cloud_pred: np.ndarray  # with the cloud's `oos` rule
    score: np.ndarray  # the routing score
    band: np.ndarray | None  # the score the edge's `oos` band is cut on; None: no band

    @classmethod
    def of(cls, logits: Mapping[str, np.ndarray], labels: np.ndarray, m: Manifest) -> DeployedAnswers:
        oos = m.oos_index
        cloud_probs = calibrated(logits["cloud"], m.cloud, m.oos_index)
        cloud_pred = cloud_answer(cloud_probs, m.cloud, oos, logits=logits["cloud"])  # argmax without a rule
        edge_probs = calibrated(logits["edge"], m.edge, m.oos_index)
        return cls(labels, edge_probs, edge_probs.argmax(axis=1), cloud_probs, cloud_pred,
                   SCORES[m.routing.score](edge_probs), manifest_band_score(edge_probs, m.routing, oos))

    def routed(self, m: Manifest, rows: np.ndarray | None = None) -> tuple[RoutedMetrics, float]:
        """The manifest's rule applied to these texts (or to ``rows`` of them), and the share the edge
        answers `oos` itself."""
        at = slice(None) if rows is None else rows
        band = None if self.band is None else self.band[at]
        r = m.routing
        routed = apply_deferral(self.edge_pred[at], self.cloud_pred[at], self.labels[at], self.score[at],
                                r.threshold, r.oos_threshold, oos_index=m.oos_index, oos_score=band)
        edge_oos_rate = float((band < r.oos_threshold).mean()) if band is not None else 0.0
        return routed, edge_oos_rate


def test_metrics(
    runner: ArtifactRunner, dataset: Dataset, *, latency_repeats: int = 200
) -> tuple[TestMetrics, dict[str, np.ndarray]]:
    """metrics.json's test part, using the manifest's temperatures and thresholds as is.

    Returns the metrics and the raw test logits (for the build's calibration figures and curves)."""
    m = runner.manifest
    test = dataset.test
    y = np.asarray(test.labels)
    oos = m.oos_index
    logits = {"edge": runner.logits("edge", test), "cloud": runner.logits("cloud", test)}
    if runner.edge_fp32 is not None:
        logits["edge_fp32"] = runner.logits("edge_fp32", test)
    a = DeployedAnswers.of(logits, y, m)
    latency = _latencies(runner, list(test.texts), latency_repeats)

    edge = dataclasses.replace(classification_metrics(a.edge_probs, y, oos), size_bytes=m.edge.size_bytes)
    edge_fp32 = None
    if runner.edge_fp32 is not None:
        edge_fp32 = dataclasses.replace(
            classification_metrics(calibrated(logits["edge_fp32"], m.edge, m.oos_index), y, oos),
            size_bytes=(runner.folder / EDGE_FP32_FILE).stat().st_size, **latency["edge_fp32"])
        edge = dataclasses.replace(
            edge, size_ratio_vs_fp32=m.edge.size_bytes / edge_fp32.size_bytes,
            **size_metrics(runner.folder / m.edge.file, runner.folder / EDGE_FP32_FILE),
            accuracy_drop_vs_fp32=edge_fp32.accuracy - edge.accuracy)
    edge_rule = None
    if a.band is not None:  # the edge alone, as deployed with its band: `oos` below routing.oos_threshold
        pred = np.where(a.band < m.routing.oos_threshold, oos, a.edge_pred)
        # Its AUROC on the score the band refuses by (the best intent's probability with a background or an
        # oos class): the max probability ranks a confident `oos` answer as in scope.
        edge_rule = classification_metrics(a.edge_probs, y, oos, pred=pred, oos_score=a.band)
    return TestMetrics(
        n=int(len(y)),
        oos_fraction=float((y == oos).mean()) if oos is not None else 0.0,
        teacher=dataclasses.replace(classification_metrics(a.cloud_probs, y, oos), **latency["teacher"]),
        teacher_with_oos_rule=classification_metrics(a.cloud_probs, y, oos, pred=a.cloud_pred,
                                                     oos_score=_refusal_order(a.cloud_probs, m, logits["cloud"])),
        edge_int8=dataclasses.replace(edge, **latency["edge_int8"]),
        edge_int8_with_oos_rule=edge_rule,
        edge_fp32=edge_fp32,
        routing=_routing_summary(a, m),
        routing_in_scope=_in_scope_routing(a, m) if oos is not None and (y == oos).any() else None,
        rejection=tier_rejection(a.edge_probs, a.cloud_probs, logits["cloud"], y, oos, m.routing, m.cloud,
                                 split="test"),
    ), logits


def _latencies(runner: ArtifactRunner, texts: list[str], repeats: int) -> dict[str, dict[str, float]]:
    """Median latency per timed model and batch size, as ModelMetrics fields."""
    out: dict[str, dict[str, float]] = {name: {} for name in runner.timed_models()}
    for batch in LATENCY_BATCHES:
        ids = latency_inputs(runner.tokenizer, texts, batch)
        times = median_latency_ms(runner.timed_models(), ids,
                                  repeats=repeats if batch == 1 else max(10, repeats // 4))
        for name, ms in times.items():
            out[name][f"latency_ms_b{batch}"] = round(ms, 4)
    return out


def _routing_summary(a: DeployedAnswers, m: Manifest) -> RoutingSummary:
    routed, edge_oos_rate = a.routed(m)
    r = m.routing
    return RoutingSummary(
        score=r.score, threshold=r.threshold, oos_threshold=r.oos_threshold, oos_score=r.oos_score,
        edge_oos_rate=edge_oos_rate, target_joint_over_teacher=r.target_joint_over_teacher,
        traffic_oos_fraction=r.traffic_oos_fraction, escalation_rate=routed.escalation_rate,
        joint_accuracy=routed.joint_accuracy, joint_over_teacher=routed.joint_over_teacher,
        joint_oos_recall=routed.joint_oos_recall, joint_in_scope_accuracy=routed.in_scope_accuracy,
        in_scope_escalation_rate=routed.in_scope_escalation_rate,
        oos_escalation_rate=routed.oos_escalation_rate, edge_only_accuracy=routed.edge_accuracy,
        cloud_only_accuracy=routed.teacher_accuracy,
    )


def _in_scope_routing(a: DeployedAnswers, m: Manifest) -> InScopeRouting:
    routed, edge_oos_rate = a.routed(m, a.labels != m.oos_index)  # the same rule on in-scope traffic alone
    return InScopeRouting(
        escalation_rate=routed.escalation_rate, joint_accuracy=routed.joint_accuracy,
        joint_over_teacher=routed.joint_over_teacher, edge_only_accuracy=routed.edge_accuracy,
        cloud_only_accuracy=routed.teacher_accuracy, edge_oos_rate=edge_oos_rate,
    )


def with_calibration(metrics: TestMetrics, logits: Mapping[str, np.ndarray], labels: np.ndarray,
                     m: Manifest) -> TestMetrics:
    """The build's additions to the test metrics: each model's ECE before temperature scaling, and its
    temperature."""
    def with_before(model: ModelMetrics, raw: np.ndarray, entry: ModelEntry) -> ModelMetrics:
        return dataclasses.replace(model, ece_before=calibration.ece(softmax(raw, 1.0), labels, n_bins=15),
                                   temperature=entry.temperature)

    return dataclasses.replace(metrics, edge_int8=with_before(metrics.edge_int8, logits["edge"], m.edge),
                               teacher=with_before(metrics.teacher, logits["cloud"], m.cloud))


@dataclass(frozen=True, eq=False)
class EdgeReliability:
    """The edge model's reliability bins on the test split, before and after its temperature."""

    before: calibration.ReliabilityBins
    after: calibration.ReliabilityBins


def edge_reliability(logits: Mapping[str, np.ndarray], labels: np.ndarray, m: Manifest) -> EdgeReliability:
    """The reliability plot's data."""
    raw = logits["edge"]
    return EdgeReliability(calibration.reliability_bins(softmax(raw, 1.0), labels, n_bins=15),
                           calibration.reliability_bins(calibrated(raw, m.edge, m.oos_index), labels, n_bins=15))


def routing_curves(logits: Mapping[str, np.ndarray], labels: np.ndarray, m: Manifest) -> SplitCurves:
    """The test split's escalation curves (the escalation plot's and the escalation tables' data)."""
    a = DeployedAnswers.of(logits, labels, m)
    curves = {name: escalation_curve(a.edge_pred, a.cloud_pred, labels, fn(a.edge_probs), name=name)
              for name, fn in SCORES.items()}
    if m.oos_index is None:
        return SplitCurves(curves, None)
    inside = labels != m.oos_index
    in_scope = escalation_curve(a.edge_pred[inside], a.cloud_pred[inside], labels[inside],
                                SCORES[m.routing.score](a.edge_probs[inside]), name="in-scope")
    return SplitCurves(curves, in_scope)


def evaluate_artifact(folder: Path | str, *, data_path: Path | str | None = None) -> dict[str, Any]:
    """The test metrics of an artifact folder, recomputed from its files and the data (`evaluate --json`)."""
    folder = Path(folder)
    manifest = load_manifest(folder)
    metrics, _ = test_metrics(ArtifactRunner(folder, manifest), built_from(folder, manifest, data_path))
    return metrics.to_dict()


def built_from(folder: Path, manifest: Manifest, data_path: Path | str | None) -> Dataset:
    """The data set the artifact was built from (its test split is what its metrics describe); a background
    class the build added (--negatives) is added to its labels again, its test split needs no texts of it."""
    path = data_path or manifest.data.get("path") or default_data_path()
    config = manifest.build.get("config", {})
    seed = int(config.get("seed", 0))
    dataset = subset(load_dataset(path, seed=seed), config.get("subset_per_class"), seed=seed)
    if dataset.oos_label is None and manifest.oos_label is not None \
            and manifest.labels == dataset.labels + (manifest.oos_label,):
        dataset = dataclasses.replace(dataset, labels=manifest.labels, oos_label=manifest.oos_label)
    if dataset.labels != manifest.labels:
        raise DataError(f"{path}: its labels differ from the artifact's ({len(dataset.labels)} vs "
                        f"{len(manifest.labels)}); evaluate on the data the model was built from")
    return dataset
