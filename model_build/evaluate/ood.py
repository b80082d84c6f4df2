"""What an artifact does with texts known to be out of domain (`model_build evaluate DIR --ood FILE`).

Both tiers run through the real interpreter; the cascade's answers come from `modelpack.routing.cascade`,
the rule every runtime applies. Reported beside the data's own in-scope test texts, so the price of
refusing out-of-domain requests (in-scope texts refused) is read next to what it buys:

- per out-of-domain text: refused by the edge itself (its `oos` band, or `oos` as its own answer), escalated and refused by the
  cloud, escalated and answered with an intent (paid for, and wrong), answered with an intent by the edge;
- per in-scope test text: refused by the edge, refused by the cloud, escalated, joint accuracy and its
  ratio to the cloud alone;
- the rejection curve of the score each tier refuses by (in-scope texts refused vs out-of-domain texts
  caught) and its AUROC: what another threshold would give. The scores are the build's own rejection
  section's (`calibrate.rejection`): the edge's band score, the cloud's oos score.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_build.calibrate.rejection import (
    RejectionScore,
    cloud_rejection_score,
    edge_rejection_score,
    rejection_curve,
)
from model_build.data.dataset import Dataset, Split
from model_build.data.unlabeled import load_unlabeled
from model_build.errors import DataError
from model_build.evaluate.measure import built_from, oos_auroc
from model_build.tflite.run import classifier_logits
from modelpack.classifier import Classifier
from modelpack.manifest import ESCALATE_ALL, Manifest, load_manifest
from modelpack.routing import Route, cascade


@dataclass(frozen=True)
class OodReport:
    n_ood: int
    n_in_scope: int
    ood_refused_by_edge: float
    ood_escalated: float
    ood_refused_by_cloud: float  # of all out-of-domain texts: escalated, then refused
    ood_answered_in_scope: float  # by either tier: wrong whatever the intent
    in_scope_refused_by_edge: float
    in_scope_refused_by_cloud: float
    in_scope_refused: float
    in_scope_escalated: float
    in_scope_joint_accuracy: float
    in_scope_cloud_accuracy: float
    joint_over_cloud: float
    auroc: dict[str, float]  # per tier: the rejection score's, in-scope vs out-of-domain
    curves: dict[str, dict[str, float]]  # tier -> {false reject: out-of-domain caught}
    scores: dict[str, str]  # tier -> the score it refuses by (the curves' and AUROCs')

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        pct = lambda x: f"{100 * x:.1f} %"  # noqa: E731
        lines = [
            f"out-of-domain texts: {self.n_ood}",
            f"  refused by the edge (never escalated) {pct(self.ood_refused_by_edge)}",
            f"  escalated {pct(self.ood_escalated)} (cloud calls paid for: {1000 * self.ood_escalated:.0f} per 1,000), "
            f"refused there {pct(self.ood_refused_by_cloud)}",
            f"  answered with an intent (wrong) {pct(self.ood_answered_in_scope)}",
            f"in-scope test texts: {self.n_in_scope}",
            f"  refused: {pct(self.in_scope_refused)} (edge {pct(self.in_scope_refused_by_edge)}, cloud "
            f"{pct(self.in_scope_refused_by_cloud)}); escalated {pct(self.in_scope_escalated)} "
            f"({1000 * self.in_scope_escalated:.0f} cloud calls per 1,000)",
            f"  joint accuracy {pct(self.in_scope_joint_accuracy)}, cloud alone {pct(self.in_scope_cloud_accuracy)}"
            f" (ratio {self.joint_over_cloud:.4f})",
        ]
        for tier, curve in self.curves.items():
            shown = ", ".join(f"{pct(float(fr))} -> {pct(caught)}" for fr, caught in curve.items())
            lines.append(f"{tier} rejection curve on {self.scores[tier]} (in-scope refused -> out-of-domain "
                         f"caught; AUROC {self.auroc[tier]:.4f}): {shown}")
        return "\n".join(lines)


def auroc(in_scope: np.ndarray, ood: np.ndarray) -> float:
    """P(score of an in-scope text > score of an out-of-domain one), ties counted half."""
    flags = np.r_[np.zeros(in_scope.size, dtype=bool), np.ones(ood.size, dtype=bool)]
    return oos_auroc(np.concatenate([in_scope, ood]), flags)


def ood_report(manifest: Manifest, folder: Path, in_scope_texts: Sequence[str], in_scope_labels: np.ndarray,
               ood_texts: Sequence[str]) -> OodReport:
    """Both tiers of the artifact in `folder` on the in-scope test texts and the out-of-domain ones."""
    if not ood_texts:
        raise DataError("--ood: no texts in it")
    oos = manifest.oos_index
    logits: dict[str, dict[str, np.ndarray]] = {}
    probs: dict[str, dict[str, np.ndarray]] = {}
    for tier in ("edge", "cloud"):
        model = Classifier(manifest, folder, tier)  # type: ignore[arg-type]
        logits[tier] = {"in": _logits(model, in_scope_texts), "ood": _logits(model, ood_texts)}
        probs[tier] = {part: model.calibrate(z) for part, z in logits[tier].items()}

    def routed(part: str, m: Manifest) -> tuple[np.ndarray, Route]:
        return cascade(probs["edge"][part], probs["cloud"][part], m, cloud_logits=logits["cloud"][part])

    answers_in, route_in = routed("in", manifest)
    answers_ood, route_ood = routed("ood", manifest)
    refused_in = answers_in == oos if oos is not None else np.zeros(len(answers_in), dtype=bool)
    refused_ood = answers_ood == oos if oos is not None else np.zeros(len(answers_ood), dtype=bool)
    cloud_alone, _ = routed("in", _escalate_all(manifest))
    y = np.asarray(in_scope_labels)
    joint, cloud_acc = float((answers_in == y).mean()), float((cloud_alone == y).mean())
    # Each tier's curve on the score it refuses by, as the build's rejection section draws it
    scores: dict[str, dict[str, RejectionScore]] = {
        "edge": {part: edge_rejection_score(p, manifest.routing, oos) for part, p in probs["edge"].items()},
        "cloud": {part: cloud_rejection_score(p, logits["cloud"][part], manifest.cloud, oos)
                  for part, p in probs["cloud"].items()}}
    return OodReport(
        n_ood=len(ood_texts), n_in_scope=len(in_scope_texts),
        ood_refused_by_edge=float((~route_ood.escalate & refused_ood).mean()),
        ood_escalated=float(route_ood.escalate.mean()),
        ood_refused_by_cloud=float((route_ood.escalate & refused_ood).mean()),
        ood_answered_in_scope=float((~refused_ood).mean()),
        in_scope_refused_by_edge=float((~route_in.escalate & refused_in).mean()),
        in_scope_refused_by_cloud=float((route_in.escalate & refused_in).mean()),
        in_scope_refused=float(refused_in.mean()),
        in_scope_escalated=float(route_in.escalate.mean()),
        in_scope_joint_accuracy=joint, in_scope_cloud_accuracy=cloud_acc,
        joint_over_cloud=joint / cloud_acc if cloud_acc > 0 else float("nan"),
        auroc={tier: auroc(s["in"].values, s["ood"].values) for tier, s in scores.items()},
        curves={tier: rejection_curve(s["in"].values, s["ood"].values) for tier, s in scores.items()},
        scores={tier: s["in"].name for tier, s in scores.items()},
    )


def evaluate_ood(folder: Path | str, ood_path: Path | str, *, data_path: Path | str | None = None) -> OodReport:
    """What the artifact in `folder` does with the out-of-domain texts in `ood_path`, beside its in-scope
    test texts (`model_build evaluate DIR --ood FILE`)."""
    folder = Path(folder)
    manifest = load_manifest(folder)
    texts = load_unlabeled(ood_path)
    test = in_scope_test(built_from(folder, manifest, data_path))
    return ood_report(manifest, folder, test.texts, np.asarray(test.labels), texts)


def in_scope_test(dataset: Dataset) -> Split:
    """The test split's in-scope texts."""
    keep = dataset.in_scope_mask(dataset.test)
    return Split(tuple(t for t, k in zip(dataset.test.texts, keep) if k), dataset.test.labels[keep])


def _logits(model: Classifier, texts: Sequence[str]) -> np.ndarray:
    return classifier_logits(model, texts, desc=f"{model.tier} {len(texts)} texts")


def _escalate_all(manifest: Manifest) -> Manifest:
    routing = dataclasses.replace(manifest.routing, threshold=ESCALATE_ALL, oos_threshold=None)
    return dataclasses.replace(manifest, routing=routing)
