"""The three-way rule's search: the pair of thresholds (the edge's own ``oos`` band, then the escalation
threshold) that meets the target with the fewest escalations."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from model_build.calibrate._checks import EPS, as_scores, routing_inputs
from model_build.calibrate.calibration import BoolArray, FloatArray, IntArray
from model_build.calibrate.curves import cut_thresholds, realisable_cuts
from model_build.calibrate.thresholds import DEFAULT_TARGET_RATIO


@dataclass(frozen=True)
class DeferralChoice:
    """The three-way rule: ``score < oos_threshold`` → the edge answers ``oos`` itself; ``score <
    threshold`` → the cloud; otherwise the edge's own answer. The cheapest pair (fewest escalations, then
    the higher joint accuracy) meeting ``joint_accuracy >= target_ratio * teacher_accuracy``.

    Out-of-scope texts are the ones the edge is least sure of, and paying the cloud to say ``oos`` about a
    text the edge already finds hopeless buys nothing: the lowest band is answered at the edge. With
    ``oos_threshold = -inf`` it is the two-way rule of :func:`calibrate.thresholds.choose_threshold`.
    When no pair meets the target, ``reachable`` is False and the pair is (-inf, +inf): escalate everything.
    """

    score_name: str
    oos_threshold: float
    threshold: float
    escalation_rate: float
    edge_oos_rate: float
    joint_accuracy: float
    joint_over_teacher: float
    teacher_accuracy: float
    target_ratio: float
    reachable: bool
    two_way_escalation_rate: float  # the best two-way rule on the same data, for comparison


@dataclass(frozen=True, eq=False)
class _UpperCuts:
    """The escalation score's realisable cuts, with the per-text figures in its sorted order."""

    order: IntArray
    cuts: IntArray
    thresholds: FloatArray
    weight: FloatArray
    gain: FloatArray  # teacher right minus edge right
    edge_ok: BoolArray

    @classmethod
    def of(cls, s: FloatArray, w: FloatArray, teacher_ok: BoolArray, edge_ok: BoolArray) -> _UpperCuts:
        order = np.argsort(s, kind="stable")
        cuts = realisable_cuts(s[order])
        return cls(order, cuts, cut_thresholds(s[order], cuts), w[order],
                   (teacher_ok.astype(np.float64) - edge_ok)[order], edge_ok[order])


_Key = tuple[float, float, int, int]  # (escalated weight, -joint weight, band cut, upper cut), rounded


def _cheapest_pair(band_order: IntArray, band_cuts: IntArray, up: _UpperCuts, w: FloatArray,
                   is_oos: BoolArray, need: float) -> tuple[_Key | None, float | None]:
    """For each band (the i least band-confident answered ``oos``), the cheapest upper cut on the remaining
    texts: the best (escalated weight, -joint, band cut, upper cut) and the best two-way cost."""
    best: _Key | None = None
    two_way: float | None = None
    in_band, marked = np.zeros(w.size, dtype=np.bool_), 0
    for a, i in enumerate(band_cuts.tolist()):
        in_band[band_order[marked:i]] = True  # cuts only grow: mark the new ones
        marked = i
        rest = ~in_band[up.order]  # texts the edge does not answer `oos`, in upper-score order
        found = float(np.sum(w[in_band] * is_oos[in_band]))
        kept = float(np.sum(up.weight * up.edge_ok * rest))
        escalated = np.concatenate(([0.0], np.cumsum(up.weight * rest)))[up.cuts]
        joint = found + kept + np.concatenate(([0.0], np.cumsum(up.weight * up.gain * rest)))[up.cuts]
        meets = np.flatnonzero(joint >= need)
        if meets.size == 0:
            continue
        # The escalated weight never falls as the upper cut rises: the first cut meeting the target is cheapest.
        c = int(meets[0])
        cost = float(escalated[c])
        if a == 0:
            two_way = cost
        key = (round(cost, 9), -round(float(joint[c]), 9), a, c)
        if best is None or key < best:
            best = key
    return best, two_way


def choose_deferral(
    score: npt.ArrayLike,
    edge_pred: npt.ArrayLike,
    teacher_pred: npt.ArrayLike,
    labels: npt.ArrayLike,
    oos_index: int,
    *,
    target_ratio: float = DEFAULT_TARGET_RATIO,
    weights: npt.ArrayLike | None = None,
    name: str = "",
    oos_score: npt.ArrayLike | None = None,
    max_false_reject: float | None = None,
) -> DeferralChoice:
    """Fit both thresholds of the three-way rule. With `max_false_reject`, the band holds at most that
    (weighted) share of the in-scope texts: the edge refuses no more of them than the user allows. The band may be cut on a score of its own (`oos_score`,
    e.g. the best in-scope probability: a text the edge calls `oos` with some confidence has a high max
    probability but no plausible intent); by default on `score` itself. O(c * n) for c realisable cuts of
    the band score: for each band (the i least band-confident answered ``oos``), the cheapest upper cut
    on the remaining texts."""
    y, edge, teacher, s, w = routing_inputs(labels, edge_pred, teacher_pred, score, weights)
    b = s if oos_score is None else as_scores(oos_score, y.size)
    if oos_index < 0:
        raise ValueError(f"oos_index must be >= 0, got {oos_index}")
    if not target_ratio > 0.0:
        raise ValueError(f"target_ratio must be positive, got {target_ratio}")

    total = float(w.sum())
    teacher_ok, edge_ok, is_oos = (teacher == y), (edge == y), (y == oos_index)
    teacher_accuracy = float(np.sum(w * teacher_ok)) / total
    if not teacher_accuracy > 0.0:
        raise ValueError("the teacher is never right on this split: no target to meet")
    need = target_ratio * teacher_accuracy * total - EPS * total

    band_order = np.argsort(b, kind="stable")
    band_cuts = realisable_cuts(b[band_order])
    if max_false_reject is not None:
        in_scope = ~is_oos[band_order]
        refused = np.concatenate([[0.0], np.cumsum(w[band_order] * in_scope)])[band_cuts]
        band_cuts = band_cuts[refused <= max_false_reject * float(np.sum(w * ~is_oos)) + EPS]
    up = _UpperCuts.of(s, w, teacher_ok, edge_ok)
    best, two_way = _cheapest_pair(band_order, band_cuts, up, w, is_oos, need)
    if best is None:
        return DeferralChoice(name, -np.inf, np.inf, 1.0, 0.0, teacher_accuracy, 1.0, teacher_accuracy,
                              float(target_ratio), False, 1.0)
    cost, neg_joint, a, c = best
    joint_accuracy = -neg_joint / total
    return DeferralChoice(
        score_name=name,
        oos_threshold=float(cut_thresholds(b[band_order], band_cuts)[a]),
        threshold=float(up.thresholds[c]),
        escalation_rate=cost / total,
        edge_oos_rate=float(w[band_order[: band_cuts[a]]].sum()) / total,
        joint_accuracy=joint_accuracy,
        joint_over_teacher=joint_accuracy / teacher_accuracy,
        teacher_accuracy=teacher_accuracy,
        target_ratio=float(target_ratio),
        reachable=True,
        two_way_escalation_rate=(two_way if two_way is not None else total) / total,
    )
