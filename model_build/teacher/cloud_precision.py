"""The cloud model's precision: the fp32 teacher or its dynamic-range int8 copy, from one trained teacher.

The teacher stage exports fp32 (`cloud.tflite`). The `cloud_precision` stage, cached and keyed on the teacher
stage, derives the dynamic-range model from that file (`tflite.dynamic_range`: the converter's
bytes without the Keras model, so no teacher is re-trained for it) and measures both through LiteRT on the
validation and test splits. The choice comes after, from those cached figures: int8 ships when its
validation accuracy is within `Gates.max_cloud_int8_accuracy_drop` of fp32's (or as `--cloud-precision`
forces). Changing the rule re-trains and re-measures nothing. The test split is reported, never used to
choose.

A teacher stage configured with `TeacherConfig.precision="dynamic_range"` exported int8 only (the
converter's, from Keras): there is nothing to compare, and that model ships.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_build.artifact import CLOUD_FILE, model_entry
from model_build.cache import StageCache, stage_key
from model_build.config import BuildConfig
from model_build.data.dataset import Dataset
from model_build.errors import BuildError
from model_build.progress import StageTimer
from model_build.teacher.minilm import build_tokenizer
from model_build.tflite.dynamic_range import dynamic_range_from_fp32
from model_build.tflite.run import model_logits
from modelpack.litert import LiteRTModel

CODE_VERSION = 1  # bump when the measurement or the derived file changes
CLOUD_DYNAMIC_FILE = "cloud_dynamic.tflite"
MEASURES_FILE = "precision.json"
RULES = ("auto", "fp32", "dynamic_range")


@dataclass(frozen=True, kw_only=True)
class CandidateMetrics:
    """One candidate cloud model, argmax over all labels (oos included), through LiteRT."""

    size_bytes: int
    val_accuracy: float
    val_in_scope_accuracy: float
    test_accuracy: float
    test_in_scope_accuracy: float


@dataclass(frozen=True, kw_only=True)
class PrecisionChoice:
    """Which teacher file ships, and the figures it was chosen on (metrics.json
    ``teacher.precision_choice``)."""

    chosen: str  # "fp32" | "dynamic_range": the manifest's cloud precision
    rule: str  # "auto" (the gate decides) or the precision --cloud-precision forced
    reason: str
    max_accuracy_drop: float  # Gates.max_cloud_int8_accuracy_drop, on validation
    val_accuracy_drop: float | None  # fp32 - int8 validation accuracy; None: nothing compared
    test_accuracy_drop: float | None
    val_agreement: float | None  # share of validation texts on which both give the same label
    fp32: CandidateMetrics | None
    dynamic_range: CandidateMetrics | None
    source: Path  # the file copied into the artifact as cloud.tflite
    teacher_stage: str  # "teacher/<key>": the teacher stage's cache entry (its cloud.tflite is the fp32 one)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("source")  # a path on the build machine; teacher_stage names the entry under any cache root
        return out


def measure_stage(config: BuildConfig, dataset: Dataset, teacher_dir: Path, teacher_key: str,
                  cache: StageCache, timer: StageTimer) -> Path | None:
    """The cached folder with the derived int8 file and both models' figures; None when the teacher stage
    exported int8 only."""
    if config.teacher.precision != "fp32":
        return None
    key = stage_key("cloud_precision", teacher=teacher_key, code=CODE_VERSION)
    with timer.stage("cloud_precision"):
        folder, hit = cache.cached("cloud_precision", key, lambda d: _measure(config, dataset, teacher_dir, d))
        timer.mark_cached("cloud_precision", hit)
    return folder


def _measure(config: BuildConfig, dataset: Dataset, teacher_dir: Path, folder: Path) -> None:
    (folder / CLOUD_DYNAMIC_FILE).write_bytes(dynamic_range_from_fp32((teacher_dir / CLOUD_FILE).read_bytes()))
    tokenizer = build_tokenizer(config)
    files = {"fp32": teacher_dir / CLOUD_FILE, "dynamic_range": folder / CLOUD_DYNAMIC_FILE}
    preds: dict[str, dict[str, np.ndarray]] = {}
    for precision, path in files.items():
        entry = model_entry(path.parent, path.name, precision, dataset.num_labels)
        model = LiteRTModel(path.read_bytes(), entry, num_threads=2)
        preds[precision] = {
            split: model_logits(model, tokenizer, dataset.split(split).texts, batch_size=64,
                                desc=f"teacher {precision} {split}").argmax(axis=1)
            for split in ("val", "test")
        }
    out: dict[str, Any] = {}
    for precision, path in files.items():
        out[precision] = {"size_bytes": path.stat().st_size}
        for split in ("val", "test"):
            out[precision].update(_accuracies(preds[precision][split], dataset, split))
    out["val_agreement"] = float((preds["fp32"]["val"] == preds["dynamic_range"]["val"]).mean())
    (folder / MEASURES_FILE).write_text(json.dumps(out, indent=2) + "\n")


def _accuracies(pred: np.ndarray, dataset: Dataset, split: str) -> dict[str, float]:
    labels = np.asarray(dataset.split(split).labels)
    correct = pred == labels
    in_scope = labels != dataset.oos_index if dataset.oos_index is not None else np.ones(len(labels), bool)
    return {f"{split}_accuracy": float(correct.mean()), f"{split}_in_scope_accuracy": float(correct[in_scope].mean())}


def choose(config: BuildConfig, teacher_dir: Path, measured: Path | None) -> PrecisionChoice:
    """The cloud file to ship, by `config.cloud_precision` ("auto": the accuracy gate on validation)."""
    rule, limit = config.cloud_precision, config.gates.max_cloud_int8_accuracy_drop
    if rule not in RULES:
        raise BuildError(f"cloud precision must be one of {', '.join(RULES)}, got {rule!r}")
    if measured is None:
        if rule == "fp32":
            raise BuildError("--cloud-precision fp32: the teacher stage exported dynamic_range only "
                             "(teacher.precision); build with teacher.precision fp32")
        return PrecisionChoice(
            chosen="dynamic_range", rule=rule, reason="the teacher stage exported dynamic_range only",
            max_accuracy_drop=limit, val_accuracy_drop=None, test_accuracy_drop=None, val_agreement=None,
            fp32=None, dynamic_range=None, source=teacher_dir / CLOUD_FILE,
            teacher_stage=f"teacher/{teacher_dir.name}",
        )
    raw = json.loads((measured / MEASURES_FILE).read_text())
    fp32, int8 = CandidateMetrics(**raw["fp32"]), CandidateMetrics(**raw["dynamic_range"])
    drop = fp32.val_accuracy - int8.val_accuracy
    if rule == "auto":
        # A tolerance of one float rounding: a drop of exactly the limit passes.
        chosen = "dynamic_range" if drop <= limit + 1e-12 else "fp32"
        reason = (f"validation accuracy drop {drop * 100:.2f} pt {'<=' if chosen != 'fp32' else '>'} "
                  f"{limit * 100:.2f} pt")
    else:
        chosen, reason = rule, f"forced by --cloud-precision {rule}"
    return PrecisionChoice(
        chosen=chosen, rule=rule, reason=reason, max_accuracy_drop=limit, val_accuracy_drop=drop,
        test_accuracy_drop=fp32.test_accuracy - int8.test_accuracy, val_agreement=raw["val_agreement"],
        fp32=fp32, dynamic_range=int8,
        source=measured / CLOUD_DYNAMIC_FILE if chosen == "dynamic_range" else teacher_dir / CLOUD_FILE,
        teacher_stage=f"teacher/{teacher_dir.name}",
    )
