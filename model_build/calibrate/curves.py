"""Escalation curves: joint accuracy against escalation rate, at every operating point a threshold realises.

A threshold cannot split examples with equal scores, so a curve only holds the cuts ``score < t`` can make
(see :mod:`calibrate.routing` for the rule). Thresholds sit midway between the last escalated and the
first kept score; "escalate none" is ``-inf`` and "escalate all" is ``+inf``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from model_build.calibrate._checks import EPS, routing_inputs
from model_build.calibrate.calibration import FloatArray, IntArray

TABLE_RATES: tuple[float, ...] = (0.0, 0.05, 0.10, 0.15, 0.20, 0.30, 0.50, 1.0)


@dataclass(frozen=True, eq=False)
class Curve:
    """Realisable operating points of one score, in increasing escalation order.

    Point i escalates the ``n_escalated[i]`` least-confident examples, which is exactly the set with
    ``score < thresholds[i]``. Without ties in the score that is every k = 0..n; a group of tied
    scores is escalated whole or not at all. Point 0 is edge-only, the last point is cloud-only.
    """

    score_name: str
    thresholds: FloatArray
    escalation_rate: FloatArray
    joint_accuracy: FloatArray
    n_escalated: IntArray

    def __post_init__(self) -> None:
        for array in (self.thresholds, self.escalation_rate, self.joint_accuracy, self.n_escalated):
            array.flags.writeable = False

    def __len__(self) -> int:
        return int(self.thresholds.size)

    @property
    def edge_accuracy(self) -> float:
        return float(self.joint_accuracy[0])

    @property
    def teacher_accuracy(self) -> float:
        return float(self.joint_accuracy[-1])

    def point(self, index: int) -> CurvePoint:
        return CurvePoint(
            threshold=float(self.thresholds[index]),
            escalation_rate=float(self.escalation_rate[index]),
            joint_accuracy=float(self.joint_accuracy[index]),
            n_escalated=int(self.n_escalated[index]),
        )


@dataclass(frozen=True)
class CurvePoint:
    threshold: float
    escalation_rate: float
    joint_accuracy: float
    n_escalated: int


@dataclass(frozen=True, eq=False)
class SplitCurves:
    """A split's escalation curve per score, and the shipped score's on its in-scope texts alone (None
    without an oos label)."""

    by_score: dict[str, Curve]
    in_scope: Curve | None


def escalation_curve(
    edge_pred: npt.ArrayLike,
    teacher_pred: npt.ArrayLike,
    labels: npt.ArrayLike,
    score: npt.ArrayLike,
    weights: npt.ArrayLike | None = None,
    *,
    name: str = "",
) -> Curve:
    """Joint accuracy and escalation rate for every threshold-realisable number of escalations.

    Escalating the k lowest-score examples gives the teacher's answer for them and the edge's for
    the rest. O(n log n): one stable sort, then cumulative sums.
    """
    y, edge, teacher, s, w = routing_inputs(labels, edge_pred, teacher_pred, score, weights)

    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    w_sorted = w[order]
    edge_ok = (edge == y)[order]
    teacher_ok = (teacher == y)[order]

    cum_w = np.concatenate(([0.0], np.cumsum(w_sorted)))
    total = cum_w[-1]
    gain = np.concatenate(([0.0], np.cumsum(w_sorted * (teacher_ok.astype(np.float64) - edge_ok))))
    joint = (np.sum(w_sorted * edge_ok) + gain) / total
    rate = cum_w / total

    ks = realisable_cuts(s_sorted)
    return Curve(
        score_name=name,
        thresholds=cut_thresholds(s_sorted, ks),
        escalation_rate=rate[ks],
        joint_accuracy=joint[ks],
        n_escalated=ks.astype(np.int64),
    )


def curve_at_rates(curve: Curve, rates: Sequence[float] = TABLE_RATES) -> tuple[CurvePoint, ...]:
    """For each budget r, the operating point escalating the most while staying at or below r."""
    points = []
    for rate in rates:
        within = np.flatnonzero(curve.escalation_rate <= rate + EPS)
        points.append(curve.point(int(within[-1])))
    return tuple(points)


def escalation_table_rows(curve: Curve, rates: Sequence[float] = TABLE_RATES) -> list[dict[str, float]]:
    """Rows of the report's escalation table: the best point within each escalation budget."""
    return [
        {
            "budget": float(rate),
            "escalation_rate": point.escalation_rate,
            "joint_accuracy": point.joint_accuracy,
            "threshold": point.threshold,
        }
        for rate, point in zip(rates, curve_at_rates(curve, rates), strict=True)
    ]


def realisable_cuts(sorted_scores: FloatArray) -> IntArray:
    """Numbers of escalated examples k that ``score < t`` can produce: 0, n, and every k between ties."""
    n = sorted_scores.size
    keep = np.ones(n + 1, dtype=np.bool_)
    keep[1:n] = sorted_scores[:-1] < sorted_scores[1:]
    cuts: IntArray = np.flatnonzero(keep).astype(np.int64)
    return cuts


def cut_thresholds(sorted_scores: FloatArray, cuts: IntArray) -> FloatArray:
    """A threshold t per cut k with sorted[k-1] < t <= sorted[k]; -inf for k = 0, +inf for k = n."""
    n = sorted_scores.size
    out = np.empty(cuts.size, dtype=np.float64)
    inner = (cuts > 0) & (cuts < n)
    below = sorted_scores[cuts[inner] - 1]
    above = sorted_scores[cuts[inner]]
    mid = below + (above - below) / 2.0
    # Adjacent floats have no midpoint; the upper score itself still keeps its example.
    out[inner] = np.where(mid > below, mid, above)
    out[cuts == 0] = -np.inf
    out[cuts == n] = np.inf
    return out
