"""The routing rule, in one place: what the edge answers, what goes to the cloud, what the cloud answers.

Given a manifest's calibrated probabilities (`modelpack.classifier.calibrated`):

1. **the edge answers `oos` itself** where the band score (`routing.oos_score`, else `routing.score`) is
   below `routing.oos_threshold` (no band: never). Such a text is never escalated: paying the cloud to
   say `oos` about a text the edge finds hopeless buys nothing;
2. otherwise **the cloud answers** where `routing.score` is below `routing.threshold`;
3. otherwise the edge answers its argmax.

The cloud answers its argmax, or `oos` where its oos score (`models.cloud.oos_score`: its max probability,
or `neg_energy` of its raw logits) is below `models.cloud.oos_threshold` (`cloud_answer`). The build fits
the thresholds with these functions, its evaluation and the shift table measure them, and the edge's
policies, the Lambda and the benches apply them: a threshold means the same thing everywhere because only
this module reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from modelpack.scores import SCORES, manifest_band_score, neg_energy


@dataclass(frozen=True, eq=False)  # eq=False: arrays do not compare to one bool
class Route:
    """Per text: `edge_oos` (the edge answers `oos`) and `escalate` (the cloud answers); never both."""

    edge_oos: np.ndarray
    escalate: np.ndarray

    @property
    def edge_answers(self) -> np.ndarray:
        """The texts the edge answers with an intent of its own."""
        return ~self.edge_oos & ~self.escalate


def edge_oos(probs: np.ndarray, routing: Any, oos_index: int | None) -> np.ndarray | None:
    """Mask of the texts in the edge's own `oos` band, or None when the manifest has no band."""
    band = manifest_band_score(probs, routing, oos_index)
    return None if band is None else band < routing.oos_threshold


def below(probs: np.ndarray, score: str, threshold: float) -> np.ndarray:
    """Mask of the texts whose `score` is below `threshold`: the escalation test of every policy."""
    return SCORES[score](probs) < threshold


def decide(probs: np.ndarray, routing: Any, oos_index: int | None, *, band: bool = True) -> Route:
    """The manifest's rule on calibrated edge probabilities [n, labels]; `band=False` leaves the `oos` band
    out (the baseline policies)."""
    escalate = below(probs, routing.score, routing.threshold)
    hopeless = edge_oos(probs, routing, oos_index) if band else None
    if hopeless is None:
        return Route(np.zeros(len(escalate), dtype=np.bool_), escalate)
    return Route(hopeless, escalate & ~hopeless)


@dataclass(frozen=True)
class CloudRule:
    """The cloud's oos rule as the build fits it, before there is a manifest entry: the same two fields as
    `models.cloud` (a `ModelEntry`), which `cloud_answer` reads."""

    oos_threshold: float | None
    oos_score: str | None = None


def cloud_oos_score(probs: np.ndarray, rule: Any, oos_index: int | None,
                    logits: np.ndarray | None = None) -> np.ndarray:
    """The score the cloud's oos threshold is cut on (`rule.oos_score`): its calibrated max probability, or
    `neg_energy` of its raw `logits` (required then)."""
    if rule.oos_score in (None, "max_prob"):
        return np.asarray(probs, dtype=np.float64).max(axis=-1)
    if rule.oos_score == "neg_energy":
        if logits is None:
            raise ValueError("models.cloud.oos_score is neg_energy: the cloud's answers need its raw logits")
        return neg_energy(logits, oos_index)
    raise ValueError(f"unknown cloud oos score {rule.oos_score!r}")


def cloud_answer(probs: np.ndarray, rule: Any, oos_index: int | None, *,
                 logits: np.ndarray | None = None) -> np.ndarray:
    """The cloud's answers: its argmax, replaced by `oos_index` where its oos score is below
    `rule.oos_threshold` (`rule`: the manifest's `models.cloud`, or a `CloudRule`; no replacement when the
    threshold or `oos_index` is None). `logits`: its raw logits, needed by a `neg_energy` rule. The Lambda
    serves it, the build fits and evaluates the cloud's threshold with it."""
    p = np.asarray(probs, dtype=np.float64)
    pred = p.argmax(axis=-1).astype(np.int64)
    if rule.oos_threshold is None or oos_index is None:
        return pred
    score = cloud_oos_score(p, rule, oos_index, logits)
    return np.where(score < rule.oos_threshold, oos_index, pred).astype(np.int64)


def cascade(edge_probs: np.ndarray, cloud_probs: np.ndarray, manifest: Any, *,
            cloud_logits: np.ndarray | None = None) -> tuple[np.ndarray, Route]:
    """What the whole cascade answers for each text (label indices), and the route each took: the edge's
    rule on `edge_probs`, the cloud's on `cloud_probs` (computed for every text; used where escalated; its
    raw `cloud_logits` too when its rule reads them)."""
    oos = manifest.oos_index
    route = decide(edge_probs, manifest.routing, oos)
    answers = edge_probs.argmax(axis=-1).astype(np.int64)
    if oos is not None:
        answers[route.edge_oos] = oos
    cloud = cloud_answer(cloud_probs, manifest.cloud, oos, logits=cloud_logits)
    answers[route.escalate] = cloud[route.escalate]
    return answers, route
