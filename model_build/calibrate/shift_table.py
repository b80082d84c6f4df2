"""The manifest's shift table (`modelpack.shift`), measured on the validation split: the shipped rule's
per-group rates for a grid of escalation thresholds, the edge's `oos` band as shipped.

The groups are measured as they are (unweighted): whatever mix the build assumed, a runtime re-mixes them
at the oos share it estimates. The grid is the routing score's quantiles among the texts the band leaves
(midpoints between neighbouring scores, so a threshold realises its rate exactly), plus escalate-none, the
shipped threshold itself and escalate-all: about one grid step per percent of escalation.
"""

from __future__ import annotations

import numpy as np

from model_build.calibrate.calibration import BoolArray, FloatArray, IntArray
from modelpack.manifest import ESCALATE_ALL, ESCALATE_NONE, RoutingEntry
from modelpack.routing import edge_oos
from modelpack.scores import SCORES
from modelpack.shift import ShiftGroup, ShiftTable

DEFAULT_POINTS = 100
_DIGITS = 6  # rates are measured on a few thousand texts: more digits say nothing


def threshold_grid(score: FloatArray, routing: RoutingEntry, points: int = DEFAULT_POINTS) -> tuple[float, ...]:
    """Escalation thresholds at `points` quantiles of `score` (midpoints between distinct scores), with
    escalate-none, the shipped threshold and escalate-all: strictly increasing."""
    distinct = np.unique(score)
    cuts: list[float] = [ESCALATE_NONE, ESCALATE_ALL]
    if routing.threshold not in (ESCALATE_NONE, ESCALATE_ALL):
        cuts.append(float(routing.threshold))
    if distinct.size > 1:
        mids = (distinct[:-1] + distinct[1:]) / 2.0
        pick = np.unique(np.linspace(0, mids.size - 1, min(points, mids.size)).round().astype(np.int64))
        cuts.extend(float(m) for m in mids[pick])
    return tuple(sorted(set(cuts)))


def _group(mask: BoolArray, escalated: BoolArray, right: BoolArray, cloud_ok: BoolArray,
           band: BoolArray, p_oos: FloatArray) -> ShiftGroup:
    """`escalated` and `right` are [thresholds, texts]."""
    def mean(values: np.ndarray) -> np.ndarray:
        return np.round(values[..., mask].mean(axis=-1), _DIGITS)

    return ShiftGroup(n=int(mask.sum()), cloud_accuracy=float(mean(cloud_ok)), edge_oos_rate=float(mean(band)),
                      escalation_rate=tuple(mean(escalated).tolist()), joint_accuracy=tuple(mean(right).tolist()),
                      mean_oos_probability=round(float(p_oos[mask].mean()), 8),
                      sd_oos_probability=round(float(p_oos[mask].std()), 8))


def shift_table(edge_probs: FloatArray, cloud_pred: IntArray, labels: IntArray, oos_index: int,
                routing: RoutingEntry, *, split: str = "val", points: int = DEFAULT_POINTS) -> ShiftTable:
    """The table of `routing`'s rule on one split: calibrated edge probabilities, the cloud's answers (its
    oos rule applied), the gold labels. Both groups must be present."""
    p = np.asarray(edge_probs, dtype=np.float64)
    y, cloud = np.asarray(labels, dtype=np.int64), np.asarray(cloud_pred, dtype=np.int64)
    is_oos = y == oos_index
    if not is_oos.any() or is_oos.all():
        raise ValueError("a shift table needs both in-scope and out-of-scope texts")
    score = SCORES[routing.score](p)
    in_band = edge_oos(p, routing, oos_index)  # the contract's band, as every runtime applies it
    band = np.zeros(y.size, dtype=np.bool_) if in_band is None else in_band
    base = np.where(band, oos_index, p.argmax(axis=1))
    thresholds = threshold_grid(score[~band], routing, points)
    # The contract's escalation test (`score < threshold`) at every grid threshold at once
    escalated = ~band[None, :] & (score[None, :] < np.asarray(thresholds)[:, None])
    right = np.where(escalated, cloud[None, :], base[None, :]) == y[None, :]
    cloud_ok = cloud == y
    return ShiftTable(
        split=split, oos_index=int(oos_index), split_oos_fraction=round(float(is_oos.mean()), _DIGITS),
        thresholds=thresholds,
        in_scope=_group(~is_oos, escalated, right, cloud_ok, band, p[:, oos_index]),
        oos=_group(is_oos, escalated, right, cloud_ok, band, p[:, oos_index]),
        source_priors=tuple(_shares(y, p.shape[1]).tolist()),
        oos_log_bias=round(oos_log_bias(p, y, oos_index), _DIGITS),
    )


def _shares(y: IntArray, n_labels: int) -> FloatArray:
    """Each label's share of the split, half a text added to every count: a label the split lacks would
    otherwise get a zero source prior, which EM's re-weighting by 1/prior turns into a runaway."""
    counts = np.bincount(y, minlength=n_labels) + 0.5
    return np.round(counts / counts.sum(), 8)


def oos_log_bias(probs: FloatArray, labels: IntArray, oos_index: int, *, low: float = -10.0, high: float = 10.0,
                 tol: float = 1e-6) -> float:
    """The bias on the oos logit that maximises the likelihood of the calibrated rows `probs` (a 1-D convex
    problem, golden-section search). At the optimum the corrected rows' mean oos probability equals the
    split's oos share: EM started from the split's priors stays there on traffic like it."""
    p_oos = np.clip(probs[:, oos_index], 1e-12, 1.0)
    p_true = np.clip(probs[np.arange(labels.size), labels], 1e-12, 1.0)
    is_oos = labels == oos_index

    def nll(b: float) -> float:
        return float(np.mean(np.log1p(p_oos * np.expm1(b)) - np.log(p_true) - b * is_oos))

    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, c = low, high
    while c - a > tol:
        x1, x2 = c - ratio * (c - a), a + ratio * (c - a)
        if nll(x1) < nll(x2):
            c = x2
        else:
            a = x1
    return (a + c) / 2.0
