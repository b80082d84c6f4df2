"""Edge→cloud routing: the rule the runtimes apply, and what applying it does on a split.

The runtime rule is one comparison: **escalate to the cloud iff ``score < threshold``**, optionally with
the edge answering ``oos`` itself below a lower ``oos_threshold`` (the three-way rule). The build's
choices are made so that a threshold chosen offline realises exactly the escalation rate reported for it
under that rule, ties included: see :mod:`model_build.calibrate.curves` (operating points),
:mod:`calibrate.thresholds` (one-threshold choices) and :mod:`calibrate.deferral` (the pair).

Thresholds are placed midway between the last escalated and the first kept score (robust to small
numeric differences between the build's numpy and the runtime); "escalate none" is ``-inf`` and
"escalate all" is ``+inf``. JSON has no infinities: whoever writes the manifest must encode them.

Metrics take optional per-example ``weights`` (see :func:`calibrate.calibration.traffic_weights`) so
rates and accuracies describe the assumed traffic mix rather than the split's own oos share.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from model_build.calibrate._checks import as_scores, routing_inputs, weighted_mean
from model_build.calibrate.calibration import BoolArray, FloatArray, IntArray


@dataclass(frozen=True)
class RoutedMetrics:
    """What applying ``score < threshold → cloud`` does on one split (weighted when weights are given).

    ``joint_oos_recall`` and the oos rates are NaN when no ``oos_index`` is given or the split has no oos.
    """

    n: int
    threshold: float
    escalation_rate: float
    joint_accuracy: float
    edge_accuracy: float
    teacher_accuracy: float
    joint_over_teacher: float
    joint_oos_recall: float
    in_scope_accuracy: float
    in_scope_escalation_rate: float
    oos_escalation_rate: float


def apply_threshold(
    edge_pred: npt.ArrayLike,
    teacher_pred: npt.ArrayLike,
    labels: npt.ArrayLike,
    score: npt.ArrayLike,
    threshold: float,
    *,
    oos_index: int | None = None,
    weights: npt.ArrayLike | None = None,
) -> RoutedMetrics:
    """Evaluate ``score < threshold → teacher, else edge`` on a split (e.g. chosen on val, run on test)."""
    return apply_deferral(edge_pred, teacher_pred, labels, score, threshold, None, oos_index=oos_index,
                          weights=weights)


def apply_deferral(
    edge_pred: npt.ArrayLike,
    teacher_pred: npt.ArrayLike,
    labels: npt.ArrayLike,
    score: npt.ArrayLike,
    threshold: float,
    oos_threshold: float | None,
    *,
    oos_index: int | None,
    weights: npt.ArrayLike | None = None,
    oos_score: npt.ArrayLike | None = None,
) -> RoutedMetrics:
    """:func:`apply_threshold` with the edge's own ``oos`` answer below ``oos_threshold`` (None: none), on
    ``oos_score`` (default ``score``). A text the edge answers ``oos`` is never escalated; ``edge_accuracy``
    is then the edge's with its rule."""
    y, edge, teacher, s, w = routing_inputs(labels, edge_pred, teacher_pred, score, weights)
    if oos_threshold is None or oos_index is None:
        return _routed(edge, teacher, y, s < threshold, float(threshold), oos_index, w)
    answered_oos = (s if oos_score is None else as_scores(oos_score, y.size)) < oos_threshold
    edge = np.where(answered_oos, oos_index, edge)
    return _routed(edge, teacher, y, ~answered_oos & (s < threshold), float(threshold), oos_index, w)


def _routed(edge: IntArray, teacher: IntArray, y: IntArray, escalate: BoolArray, threshold: float,
            oos_index: int | None, w: FloatArray) -> RoutedMetrics:
    n = y.size
    joint = np.where(escalate, teacher, edge)
    is_oos = y == oos_index if oos_index is not None else np.zeros(n, dtype=np.bool_)
    everyone = np.ones(n, dtype=np.bool_)
    joint_accuracy = weighted_mean(joint == y, w, everyone)
    teacher_accuracy = weighted_mean(teacher == y, w, everyone)
    return RoutedMetrics(
        n=n,
        threshold=threshold,
        escalation_rate=weighted_mean(escalate, w, everyone),
        joint_accuracy=joint_accuracy,
        edge_accuracy=weighted_mean(edge == y, w, everyone),
        teacher_accuracy=teacher_accuracy,
        joint_over_teacher=joint_accuracy / teacher_accuracy if teacher_accuracy > 0 else float("nan"),
        joint_oos_recall=weighted_mean(joint == y, w, is_oos),
        in_scope_accuracy=weighted_mean(joint == y, w, ~is_oos),
        in_scope_escalation_rate=weighted_mean(escalate, w, ~is_oos),
        oos_escalation_rate=weighted_mean(escalate, w, is_oos),
    )
