"""Edge students compared at equal operating points: how much each must escalate to come as close to the
cloud as asked, on its artifact's labelled test split.

    python bench/student_compare.py --artifact cnn=DIR --artifact transformer=DIR [--data FILE] \
        [--targets 0.98 0.99 0.995] [--out bench/results/student_compare.json]

Each artifact's edge (calibrated probabilities, its raw logits too) and cloud (raw logits and calibrated
probabilities) run through LiteRT on the test split of the data the artifact was built from (its manifest's,
as `model_build evaluate` finds it; `--data` overrides it for every artifact). Per artifact:

  raw_in_scope_accuracy   the int8 edge's argmax over all labels on its raw logits (no temperature, no oos
                          bias), on the in-scope texts only (all texts when there is no oos label)
  metrics                 copied from the artifact's metrics.json (null where it has none): edge_int8
                          in_scope_accuracy / accuracy / oos_auroc / ece / size_bytes, edge_fp32
                          in_scope_accuracy, timings_s.student, validation.edge_oos_bias, routing
                          oos_threshold / escalation_rate / joint_over_teacher
  teacher_accuracy        the cloud alone: everything escalated, no `oos` band, the cloud's own oos rule
  shipped                 the manifest's own cascade: its escalation rate and joint accuracy / teacher's
  escalation_needed       per target of joint / teacher, the least escalation rate reaching it when the
                          routing threshold is swept over the quantiles 0 to 0.4 (step 0.0025) of the edge's
                          routing score, `with_band` (the shipped `oos` band kept) and `without_band`;
                          null when no swept threshold reaches it
  escalation_needed_by_oos_bias   (with --oos-bias B ...) the same without band, the edge recalibrated with
                          each bias B on its oos logit instead of the shipped one: students at equal settings

The sweep runs on the test split itself: an optimistic footing, but the same for every student. It compares
the students' ranking of their own errors, not the build's choice of threshold on validation (`shipped`
shows that one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._args import named  # noqa: E402
from bench._output import emit  # noqa: E402
from model_build.artifact import machine  # noqa: E402
from model_build.data.dataset import Dataset  # noqa: E402
from model_build.evaluate.measure import built_from  # noqa: E402
from model_build.tflite.run import classifier_logits  # noqa: E402
from modelpack.classifier import Classifier, calibrated  # noqa: E402
from modelpack.manifest import ESCALATE_ALL, ESCALATE_NONE, Manifest, load_manifest  # noqa: E402
from modelpack.routing import cascade  # noqa: E402
from modelpack.scores import SCORES  # noqa: E402

TARGETS = (0.98, 0.99, 0.995)
QUANTILES = np.linspace(0.0, 0.4, 161)  # escalate the least sure 0 % .. 40 % of the split, by 0.25 %
# What is copied from metrics.json: section -> its fields (null where the file or the field is missing).
COPIED = {
    "edge_int8": ("in_scope_accuracy", "accuracy", "oos_auroc", "ece", "size_bytes"),
    "edge_fp32": ("in_scope_accuracy",),
    "timings_s": ("student",),
    "validation": ("edge_oos_bias",),
    "routing": ("oos_threshold", "escalation_rate", "joint_over_teacher"),
}


@dataclass(frozen=True, eq=False)  # eq=False: arrays do not compare to one bool
class SplitOutputs:
    """Both tiers on one labelled split: raw logits and calibrated probabilities."""

    labels: np.ndarray
    edge_logits: np.ndarray
    edge_probs: np.ndarray
    cloud_logits: np.ndarray
    cloud_probs: np.ndarray

    @classmethod
    def run(cls, manifest: Manifest, folder: Path, dataset: Dataset) -> SplitOutputs:
        texts = list(dataset.test.texts)
        edge, cloud = Classifier(manifest, folder, "edge"), Classifier(manifest, folder, "cloud")
        edge_logits, cloud_logits = classifier_logits(edge, texts), classifier_logits(cloud, texts)
        return cls(np.asarray(dataset.test.labels), edge_logits, edge.calibrate(edge_logits), cloud_logits,
                   cloud.calibrate(cloud_logits))


def with_routing(manifest: Manifest, **changes: Any) -> Manifest:
    return dataclasses.replace(manifest, routing=dataclasses.replace(manifest.routing, **changes))


def operating_point(out: SplitOutputs, manifest: Manifest) -> tuple[float, float]:
    """The escalation rate and the joint accuracy of `manifest`'s cascade on the split."""
    answers, route = cascade(out.edge_probs, out.cloud_probs, manifest, cloud_logits=out.cloud_logits)
    return float(route.escalate.mean()), float((answers == out.labels).mean())


def over_teacher(joint: float, teacher: float) -> float | None:
    """Joint accuracy / the teacher's; None for a teacher that gets nothing right (no ratio to reach)."""
    return joint / teacher if teacher > 0 else None


def raw_in_scope_accuracy(out: SplitOutputs, oos_index: int | None) -> float:
    inside = out.labels != oos_index if oos_index is not None else np.ones(len(out.labels), dtype=bool)
    return float((out.edge_logits.argmax(axis=1) == out.labels)[inside].mean())


def escalation_needed(out: SplitOutputs, manifest: Manifest, teacher: float,
                      targets: tuple[float, ...]) -> dict[str, float | None]:
    """Per target of joint / teacher, the least escalation rate of the threshold sweep that reaches it."""
    score = SCORES[manifest.routing.score](out.edge_probs)
    points = []
    for q in QUANTILES:
        threshold = float(np.quantile(score, q)) if q > 0 else ESCALATE_NONE
        rate, joint = operating_point(out, with_routing(manifest, threshold=threshold))
        points.append((rate, over_teacher(joint, teacher)))
    needed: dict[str, float | None] = {}
    for target in targets:
        reached = [rate for rate, ratio in points if ratio is not None and ratio >= target]
        needed[f"{target:g}"] = round(min(reached), 4) if reached else None
    return needed


def by_oos_bias(out: SplitOutputs, manifest: Manifest, teacher: float, targets: tuple[float, ...],
                biases: tuple[float, ...]) -> dict[str, dict[str, float | None]]:
    """`escalation_needed` without band with each bias on the edge's oos logit instead of the shipped one: the
    students compared at equal calibration (a large bias answers `oos` to unsure texts, as a band does)."""
    rows = {}
    for bias in biases:
        biased = dataclasses.replace(manifest, edge=dataclasses.replace(manifest.edge, oos_logit_bias=bias))
        probs = calibrated(out.edge_logits, biased.edge, biased.oos_index)
        rows[f"{bias:g}"] = escalation_needed(dataclasses.replace(out, edge_probs=probs),
                                              with_routing(biased, oos_threshold=None), teacher, targets)
    return rows


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def copied_metrics(folder: Path) -> dict[str, dict[str, Any]]:
    path = folder / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    return {section: {name: (metrics.get(section) or {}).get(name) for name in names}
            for section, names in COPIED.items()}


def compare(folder: Path, manifest: Manifest, dataset: Dataset, targets: tuple[float, ...],
            biases: tuple[float, ...] = ()) -> dict[str, Any]:
    """One artifact's row: its figures on the split and what its metrics.json says."""
    out = SplitOutputs.run(manifest, folder, dataset)
    _, teacher = operating_point(out, with_routing(manifest, threshold=ESCALATE_ALL, oos_threshold=None))
    rate, joint = operating_point(out, manifest)
    no_band = with_routing(manifest, oos_threshold=None)
    row = {
        "folder": str(folder),
        "version": manifest.model_version,
        "architecture": (manifest.build or {}).get("config", {}).get("student", {}).get("architecture"),
        "data": dataset.source_path,
        "n": int(len(out.labels)),
        "raw_in_scope_accuracy": round(raw_in_scope_accuracy(out, manifest.oos_index), 4),
        "metrics": copied_metrics(folder),
        "teacher_accuracy": round(teacher, 4),
        "shipped": {"escalation_rate": round(rate, 4),
                    "joint_over_teacher": _rounded(over_teacher(joint, teacher))},
        "escalation_needed": {"with_band": escalation_needed(out, manifest, teacher, targets),
                              "without_band": escalation_needed(out, no_band, teacher, targets)},
    }
    if biases and manifest.oos_index is not None:
        row["escalation_needed_by_oos_bias"] = by_oos_bias(out, manifest, teacher, targets, biases)
    return row


def _found(folder: Path, data: Path | None) -> tuple[Path, Manifest, Dataset]:
    """The artifact's manifest and the data it is measured on."""
    manifest = load_manifest(folder)
    return folder, manifest, built_from(folder, manifest, data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--data", type=Path, help="the labelled data (default: each artifact's own)")
    parser.add_argument("--targets", type=float, nargs="+", default=list(TARGETS),
                        help="joint accuracy / teacher's to reach (default: %(default)s)")
    parser.add_argument("--oos-bias", type=float, nargs="+", default=[], metavar="B",
                        help="also sweep without band at each of these biases on the edge's oos logit")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    artifacts = named(parser, "--artifact", args.artifact, lambda folder: _found(folder, args.data))
    targets = tuple(args.targets)
    result = {"machine": machine() | {"python": platform.python_version()}, "split": "test",
              "targets": list(targets),
              "results": {name: compare(folder, manifest, dataset, targets, tuple(args.oos_bias))
                          for name, (folder, manifest, dataset) in artifacts.items()}}
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
