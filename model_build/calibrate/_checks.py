"""Input checks shared by the routing modules (curves, thresholds, deferral, routing): each returns the
array the routing math expects, or raises a ValueError naming the argument."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from model_build.calibrate.calibration import BoolArray, FloatArray, IntArray

# Accuracies are sums of weights divided by a total; two curves reaching the same set of examples
# can differ in the last bits, so comparisons against targets allow this much slack.
EPS = 1e-12


def as_probs(probs: npt.ArrayLike) -> FloatArray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2:
        raise ValueError(f"probs must have shape (n >= 1, classes >= 2), got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contains NaN or infinite values")
    return p


def as_labels(values: npt.ArrayLike, n: int | None = None, name: str = "labels") -> IntArray:
    y = np.asarray(values)
    if y.ndim != 1 or y.size == 0 or (n is not None and y.size != n):
        expected = f"{n} entries" if n is not None else "at least one entry"
        raise ValueError(f"{name} must be 1-D with {expected}, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be integer class indices, got dtype {y.dtype}")
    return y.astype(np.int64)


def as_scores(values: npt.ArrayLike, n: int) -> FloatArray:
    s = np.asarray(values, dtype=np.float64)
    if s.shape != (n,):
        raise ValueError(f"score must have shape ({n},), got {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("score contains NaN or infinite values")
    return s


def as_weights(weights: npt.ArrayLike | None, n: int) -> FloatArray:
    if weights is None:
        return np.ones(n, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0.0) or not w.sum() > 0.0:
        raise ValueError(f"weights must be finite, non-negative, not all zero, with shape ({n},)")
    return w


def routing_inputs(
    labels: npt.ArrayLike, edge_pred: npt.ArrayLike, teacher_pred: npt.ArrayLike, score: npt.ArrayLike,
    weights: npt.ArrayLike | None,
) -> tuple[IntArray, IntArray, IntArray, FloatArray, FloatArray]:
    """Labels, edge and teacher answers, score and weights of one split, checked against each other."""
    y = as_labels(labels)
    n = y.size
    return (y, as_labels(edge_pred, n, "edge_pred"), as_labels(teacher_pred, n, "teacher_pred"),
            as_scores(score, n), as_weights(weights, n))


def weighted_mean(values: BoolArray, w: FloatArray, mask: BoolArray) -> float:
    """The weighted mean of ``values`` over ``mask``; NaN when the mask holds no weight."""
    mass = float(w[mask].sum())
    return float(np.sum(w[mask] * values[mask]) / mass) if mass > 0.0 else float("nan")
