"""Each tier's out-of-scope rejection on a labelled split: its rejection curve (in-scope texts refused vs
out-of-scope texts caught, at every threshold on the score it refuses by) and where its shipped threshold
sits. The build records it for validation (the fit's split, `calibrate.fit`) and for the test split
(`evaluate.measure`); `evaluate --ood` draws the same curve for a user's out-of-domain file.

`edge_rejection_score` and `cloud_rejection_score` decide which score each tier refuses by, for both. The
scores and the refusals are the runtime's own (`modelpack.routing`, `modelpack.scores`): the edge's band
score and `oos` band, the cloud's oos score and `cloud_answer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from modelpack.routing import cloud_answer, cloud_oos_score, decide
from modelpack.scores import in_scope_max_prob, manifest_band_score, max_prob

CURVE_FALSE_REJECTS = (0.01, 0.02, 0.05, 0.10)  # evaluate --ood's curve
REPORT_FALSE_REJECTS = (0.005, 0.01, 0.02, 0.05)  # the build's: around its default budget (2 %)


def rejection_curve(in_scope: np.ndarray, ood: np.ndarray,
                    rates: Sequence[float] = CURVE_FALSE_REJECTS) -> dict[str, float]:
    """Out-of-domain texts caught by the threshold that refuses each share of in-scope texts."""
    return {f"{fr:g}": float((ood < np.quantile(in_scope, fr)).mean()) for fr in rates}


@dataclass(frozen=True, eq=False)
class RejectionScore:
    """The score a tier refuses by (higher: more surely in scope), per text, and its name."""

    name: str  # as the manifest spells it: a band score, a cloud oos score, or in_scope_max_prob / max_prob
    values: np.ndarray


def best_intent_score(probs: np.ndarray, oos_index: int | None) -> np.ndarray:
    """The best intent's probability: `in_scope_max_prob` (the oos column left out), or `max_prob` when
    there is no oos label."""
    return max_prob(probs) if oos_index is None else in_scope_max_prob(probs, oos_index)


def edge_rejection_score(probs: np.ndarray, routing: Any, oos_index: int | None) -> RejectionScore:
    """The score the edge refuses by under `routing` (a manifest routing entry): its band score when a band
    is shipped; else the best intent's probability, where a band would be cut if the fit shipped one."""
    band = manifest_band_score(probs, routing, oos_index)
    if band is not None:
        return RejectionScore(routing.oos_score or routing.score, band)
    return RejectionScore("max_prob" if oos_index is None else "in_scope_max_prob",
                          best_intent_score(probs, oos_index))


def cloud_rejection_score(probs: np.ndarray, logits: np.ndarray, rule: Any,
                          oos_index: int | None) -> RejectionScore:
    """The score the cloud refuses by under `rule` (`models.cloud` or a `CloudRule`): the one `cloud_answer`
    cuts its oos threshold on (max_prob over every column, oos included, or neg_energy of its `logits`);
    `max_prob` without an oos label."""
    if oos_index is None:  # it refuses nothing then, whatever its rule names
        return RejectionScore("max_prob", max_prob(probs))
    return RejectionScore(rule.oos_score or "max_prob", cloud_oos_score(probs, rule, oos_index, logits))


@dataclass(frozen=True)
class RejectionPoint:
    """What a tier's shipped rule refuses, as shares of the split's in-scope and out-of-scope texts: by its
    threshold alone (a point of its curve), and with its answers of `oos` as top label, which no threshold
    undoes (everything it answers `oos`). The fit caps the edge's band by the first, the cloud by the
    second."""

    threshold: float | None  # None: the tier has no threshold (the edge without a band)
    in_scope_refused: float
    ood_caught: float
    in_scope_answered_oos: float
    ood_answered_oos: float


@dataclass(frozen=True)
class TierRejection:
    """One tier's curve on the score its threshold cuts, and its shipped point."""

    score: str
    curve: dict[str, float]  # in-scope refused -> out-of-scope caught
    chosen: RejectionPoint  # asked about every text
    asked: RejectionPoint | None = None  # the cloud: refusals of the texts the edge escalates only
    budget: float | None = None  # validation: the share of in-scope texts the fit let it refuse; None: no cap
    counted_on: str = "all"  # what the fit counts its budget on: "all" texts or the "escalated" ones


@dataclass(frozen=True)
class Rejection:
    """Both tiers' rejection on one split (metrics.json ``validation.rejection``, ``rejection``)."""

    split: str
    n_in_scope: int
    n_oos: int
    edge: TierRejection
    cloud: TierRejection

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_budgets(self, edge: float | None, cloud: float | None, cloud_counted_on: str = "all"
                     ) -> Rejection:
        """These figures with the budget the fit gave each tier (and what it counted the cloud's on)."""
        return replace(self, edge=replace(self.edge, budget=edge),
                       cloud=replace(self.cloud, budget=cloud, counted_on=cloud_counted_on))


def tier_rejection(edge_probs: np.ndarray, cloud_probs: np.ndarray, cloud_logits: np.ndarray,
                   labels: np.ndarray, oos_index: int | None, routing: Any, cloud_rule: Any, *,
                   split: str) -> Rejection | None:
    """Both tiers' rejection on a split of calibrated probabilities (and the cloud's raw logits), under the
    edge's `routing` (a manifest routing entry) and the cloud's `cloud_rule` (`models.cloud` or a
    `CloudRule`). None when the split lacks out-of-scope or in-scope texts: there is no curve to draw."""
    y = np.asarray(labels)
    is_oos = y == oos_index if oos_index is not None else np.zeros(len(y), dtype=bool)
    if not is_oos.any() or is_oos.all():
        return None
    assert oos_index is not None
    edge_score = edge_rejection_score(edge_probs, routing, oos_index)
    route = decide(edge_probs, routing, oos_index)  # the edge's band (none: no text in it), what it escalates
    edge_refused, asked = route.edge_oos, route.escalate
    edge_cut = None if routing.oos_threshold is None else float(routing.oos_threshold)
    cloud_score = cloud_rejection_score(cloud_probs, cloud_logits, cloud_rule, oos_index)
    cloud_cut = None if cloud_rule.oos_threshold is None else float(cloud_rule.oos_threshold)
    cloud_refused = cloud_score.values < cloud_cut if cloud_cut is not None else np.zeros(len(y), dtype=bool)
    # Everything each answers `oos` when asked alone: the edge's band or top label, the cloud's answers
    edge_oos_answers = edge_refused | (edge_probs.argmax(axis=-1) == oos_index)
    cloud_oos_answers = cloud_answer(cloud_probs, cloud_rule, oos_index, logits=cloud_logits) == oos_index
    edge = TierRejection(edge_score.name, _curve(edge_score.values, is_oos),
                         _point(edge_cut, edge_refused, edge_oos_answers, is_oos))
    cloud = TierRejection(cloud_score.name, _curve(cloud_score.values, is_oos),
                          _point(cloud_cut, cloud_refused, cloud_oos_answers, is_oos),
                          asked=_point(cloud_cut, cloud_refused & asked, cloud_oos_answers & asked, is_oos))
    return Rejection(split, int((~is_oos).sum()), int(is_oos.sum()), edge, cloud)


def _curve(score: np.ndarray, is_oos: np.ndarray) -> dict[str, float]:
    return rejection_curve(score[~is_oos], score[is_oos], REPORT_FALSE_REJECTS)


def _point(threshold: float | None, refused: np.ndarray, answered_oos: np.ndarray,
           is_oos: np.ndarray) -> RejectionPoint:
    """Refusals as shares of every in-scope and every out-of-scope text of the split."""
    return RejectionPoint(threshold, float(refused[~is_oos].mean()), float(refused[is_oos].mean()),
                          float(answered_oos[~is_oos].mean()), float(answered_oos[is_oos].mean()))
