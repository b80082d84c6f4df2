"""Everything measured through the real LiteRT interpreter: logits, accuracy, ECE, latency, routing.

`evaluate_artifact` recomputes the test-split metrics of an artifact folder from its files alone (manifest,
tokenizer, .tflite files and the data), so a report can always be checked against the artifact it describes.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from model_build import calibration, routing
from model_build.data import Dataset, Split, default_data_path, load_dataset, subset
from modelpack.litert import LiteRTModel
from modelpack.manifest import Manifest, ModelEntry, load_manifest
from modelpack.scores import SCORES, manifest_band_score, softmax
from modelpack.tokenizer import TextTokenizer

EDGE_FP32_FILE = "edge_fp32.tflite"  # the float student, kept beside the int8 one for comparison


def model_logits(
    model: LiteRTModel, tokenizer: TextTokenizer, texts: Sequence[str], *, batch_size: int = 64, desc: str = ""
) -> np.ndarray:
    """Logits for all texts, batched the way serving batches: sorted by length, padded to a bucket."""
    lengths = np.asarray(tokenizer.lengths(texts))
    order = np.argsort(lengths, kind="stable")
    out: np.ndarray | None = None
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc=desc or "infer", unit="batch", leave=False, disable=not desc):
        rows = order[start : start + batch_size]
        logits = model.logits(tokenizer.encode([texts[i] for i in rows]))
        if out is None:
            out = np.empty((len(texts), logits.shape[1]), dtype=np.float32)
        out[rows] = logits
    assert out is not None, "no texts"
    return out


def median_latency_ms(models: dict[str, LiteRTModel], ids: np.ndarray, *, repeats: int) -> dict[str, float]:
    """Median wall time of one invoke per model, interleaved so machine noise hits all models alike."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():  # warm-up: first invoke plans the graph
        model.logits(ids)
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model.logits(ids)
            times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: statistics.median(values) for name, values in times.items()}


def latency_inputs(tokenizer: TextTokenizer, texts: Sequence[str], batch: int) -> np.ndarray:
    """A real batch of `batch` texts at the bucket of the longest: what serving would invoke."""
    return tokenizer.encode(list(texts[:batch]))


def classification_metrics(
    probs: np.ndarray, labels: np.ndarray, oos_index: int | None, *, pred: np.ndarray | None = None
) -> dict[str, float]:
    pred = probs.argmax(axis=1) if pred is None else pred
    correct = pred == labels
    is_oos = labels == oos_index if oos_index is not None else np.zeros(len(labels), dtype=bool)
    out = {"accuracy": float(correct.mean())}
    out["in_scope_accuracy"] = float(correct[~is_oos].mean())
    if is_oos.any():
        out["oos_recall"] = float(correct[is_oos].mean())
        if (~is_oos).any():
            out["oos_auroc"] = oos_auroc(probs.max(axis=1), is_oos)
    out["ece"] = calibration.ece(probs, labels, n_bins=15)
    return out


def size_metrics(int8_file: Path, fp32_file: Path) -> dict[str, float]:
    """The int8 gate's figure, the quantized weights against the float ones, and the fixed bytes beside it."""
    from model_build.convert import size_breakdown, weight_size_ratio

    int8, fp32 = size_breakdown(int8_file.read_bytes()), size_breakdown(fp32_file.read_bytes())
    return {"weight_size_ratio_vs_fp32": weight_size_ratio(int8, fp32),
            "weight_bytes": int8.quantized_weight_bytes + int8.float_weight_bytes,
            "fixed_bytes": int8.other_constant_bytes + int8.overhead_bytes}


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


class ArtifactRunner:
    """The models of one artifact folder, ready to run on a data set."""

    def __init__(self, folder: Path, manifest: Manifest):
        tok = manifest.tokenizer
        self.folder, self.manifest = folder, manifest
        self.tokenizer = TextTokenizer(
            folder / tok.file, max_seq_len=tok.max_seq_len, length_buckets=tok.length_buckets, pad_id=tok.pad_id
        )
        self.edge = self._load(manifest.edge)
        self.cloud = self._load(manifest.cloud)
        fp32 = folder / EDGE_FP32_FILE
        self.edge_fp32 = self._load_fp32(fp32, manifest.edge) if fp32.exists() else None

    def _load(self, entry: ModelEntry) -> LiteRTModel:
        return LiteRTModel((self.folder / entry.file).read_bytes(), entry)

    @staticmethod
    def _load_fp32(path: Path, int8_entry: ModelEntry) -> LiteRTModel:
        from dataclasses import replace

        entry = replace(
            int8_entry,
            file=path.name,
            precision="fp32",
            output=replace(int8_entry.output, dtype="float32", scale=None, zero_point=None),
        )
        return LiteRTModel(path.read_bytes(), entry)

    def logits(self, which: str, split: Split) -> np.ndarray:
        model = {"edge": self.edge, "cloud": self.cloud, "edge_fp32": self.edge_fp32}[which]
        assert model is not None, f"no {which} model in {self.folder}"
        return model_logits(model, self.tokenizer, split.texts, desc=f"{which} {len(split)} texts")


def test_metrics(
    runner: ArtifactRunner, dataset: Dataset, *, latency_repeats: int = 200
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """metrics.json's content on the test split, using the manifest's temperatures and thresholds as is.

    Returns the metrics and the raw test logits (for plots)."""
    m = runner.manifest
    test = dataset.test
    y = np.asarray(test.labels)
    oos = m.oos_index
    logits = {"edge": runner.logits("edge", test), "cloud": runner.logits("cloud", test)}
    if runner.edge_fp32 is not None:
        logits["edge_fp32"] = runner.logits("edge_fp32", test)

    cloud_probs = softmax(logits["cloud"], m.cloud.temperature)
    cloud_pred = cloud_probs.argmax(axis=1)
    if oos is not None and m.cloud.oos_threshold is not None:
        cloud_pred = routing.predict_with_oos(cloud_probs, m.cloud.oos_threshold, oos)
    edge_probs = softmax(logits["edge"], m.edge.temperature)
    edge_pred = edge_probs.argmax(axis=1)

    metrics: dict[str, Any] = {
        "split": "test",
        "n": int(len(y)),
        "oos_fraction": float((y == oos).mean()) if oos is not None else 0.0,
    }
    # The teacher as a classifier (argmax), and as deployed: answering `oos` below its calibrated confidence.
    metrics["teacher"] = classification_metrics(cloud_probs, y, oos)
    metrics["teacher_with_oos_rule"] = classification_metrics(cloud_probs, y, oos, pred=cloud_pred)
    metrics["edge_int8"] = classification_metrics(edge_probs, y, oos)
    metrics["edge_int8"]["size_bytes"] = m.edge.size_bytes
    score = SCORES[m.routing.score](edge_probs)
    band = m.routing.oos_threshold
    band_on = manifest_band_score(edge_probs, m.routing, oos)
    if band_on is None:
        band_on = score  # no band: nothing is below it (band is None)
    else:
        # The edge alone, as deployed with its band: `oos` below routing.oos_threshold.
        edge_rule = np.where(band_on < band, oos, edge_pred)
        metrics["edge_int8_with_oos_rule"] = classification_metrics(edge_probs, y, oos, pred=edge_rule)

    texts = list(test.texts)
    timed = {"edge_int8": runner.edge}
    if runner.edge_fp32 is not None:
        fp32_probs = softmax(logits["edge_fp32"], m.edge.temperature)
        metrics["edge_fp32"] = classification_metrics(fp32_probs, y, oos)
        metrics["edge_fp32"]["size_bytes"] = (runner.folder / EDGE_FP32_FILE).stat().st_size
        metrics["student_float"] = {"accuracy": metrics["edge_fp32"]["accuracy"]}
        metrics["edge_int8"]["size_ratio_vs_fp32"] = m.edge.size_bytes / metrics["edge_fp32"]["size_bytes"]
        metrics["edge_int8"].update(size_metrics(runner.folder / m.edge.file, runner.folder / EDGE_FP32_FILE))
        metrics["edge_int8"]["accuracy_drop_vs_fp32"] = (
            metrics["edge_fp32"]["accuracy"] - metrics["edge_int8"]["accuracy"]
        )
        timed["edge_fp32"] = runner.edge_fp32
    timed["teacher"] = runner.cloud
    for batch in (1, 32):
        ids = latency_inputs(runner.tokenizer, texts, batch)
        repeats = latency_repeats if batch == 1 else max(10, latency_repeats // 4)
        for name, ms in median_latency_ms(timed, ids, repeats=repeats).items():
            metrics[name][f"latency_ms_b{batch}"] = round(ms, 4)

    routed = routing.apply_deferral(edge_pred, cloud_pred, y, score, m.routing.threshold, band, oos_index=oos,
                                    oos_score=band_on)
    metrics["routing"] = {
        "score": m.routing.score,
        "threshold": m.routing.threshold,
        "oos_threshold": band,
        "oos_score": m.routing.oos_score,
        "edge_oos_rate": float((band_on < band).mean()) if band is not None else 0.0,
        "target_joint_over_teacher": m.routing.target_joint_over_teacher,
        "traffic_oos_fraction": m.routing.traffic_oos_fraction,
        "escalation_rate": routed.escalation_rate,
        "joint_accuracy": routed.joint_accuracy,
        "joint_over_teacher": routed.joint_over_teacher,
        "joint_oos_recall": routed.joint_oos_recall,
        "joint_in_scope_accuracy": routed.in_scope_accuracy,
        "in_scope_escalation_rate": routed.in_scope_escalation_rate,
        "oos_escalation_rate": routed.oos_escalation_rate,
        "edge_only_accuracy": routed.edge_accuracy,
        "cloud_only_accuracy": routed.teacher_accuracy,
    }
    if oos is not None and (y == oos).any():
        inside = y != oos  # the same rule on in-scope traffic alone
        r_in = routing.apply_deferral(edge_pred[inside], cloud_pred[inside], y[inside], score[inside],
                                      m.routing.threshold, band, oos_index=oos, oos_score=band_on[inside])
        metrics["routing_in_scope"] = {
            "escalation_rate": r_in.escalation_rate, "joint_accuracy": r_in.joint_accuracy,
            "joint_over_teacher": r_in.joint_over_teacher, "edge_only_accuracy": r_in.edge_accuracy,
            "cloud_only_accuracy": r_in.teacher_accuracy,
            "edge_oos_rate": float((band_on[inside] < band).mean()) if band is not None else 0.0,
        }
    return metrics, logits


def evaluate_artifact(folder: Path | str, *, data_path: Path | str | None = None) -> dict[str, Any]:
    folder = Path(folder)
    manifest = load_manifest(folder)
    path = data_path or manifest.data.get("path") or default_data_path()
    config = manifest.build.get("config", {})
    seed = int(config.get("seed", 0))
    dataset = subset(load_dataset(path, seed=seed), config.get("subset_per_class"), seed=seed)
    if dataset.labels != manifest.labels:
        from model_build.errors import DataError

        raise DataError(f"{path}: its labels differ from the artifact's ({len(dataset.labels)} vs "
                        f"{len(manifest.labels)}); evaluate on the data the model was built from")
    metrics, _ = test_metrics(ArtifactRunner(folder, manifest), dataset)
    return metrics
