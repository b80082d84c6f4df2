"""Temperature scaling and calibration metrics, in plain numpy (no TensorFlow, no scipy).

Every metric takes optional per-example ``weights`` so that a split can be re-weighted to the traffic
mix the build assumes (see :func:`traffic_weights`). CLINC150's validation split is ~3 % out-of-scope
and its test split ~18 %: a temperature, an ECE or a routing threshold fitted on one mix drifts on the
other, so the build states the mix it assumes instead of inheriting whatever the split happens to hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from modelpack.scores import softmax as _softmax

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

TEMPERATURE_BOUNDS: tuple[float, float] = (0.05, 20.0)
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # 1/phi


@dataclass(frozen=True, eq=False)
class ReliabilityBins:
    """Equal-width confidence bins on the max probability; bin i covers (edges[i], edges[i+1]].

    ``count`` is the (weighted) mass in each bin: plain counts when no weights are given. Empty bins
    have ``count == 0`` and NaN confidence/accuracy, so a plot can skip them.
    """

    edges: FloatArray
    confidence: FloatArray
    accuracy: FloatArray
    count: FloatArray

    def __post_init__(self) -> None:
        for array in (self.edges, self.confidence, self.accuracy, self.count):
            array.flags.writeable = False

    @property
    def n_bins(self) -> int:
        return int(self.count.size)

    @property
    def ece(self) -> float:
        total = float(self.count.sum())
        filled = self.count > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float(np.sum(self.count[filled] * gaps) / total)


@dataclass(frozen=True, eq=False)
class CalibrationMetrics:
    """How well ``softmax(logits / temperature)`` is calibrated on one split."""

    temperature: float
    nll: float
    ece: float
    accuracy: float
    bins: ReliabilityBins


def softmax(logits: npt.ArrayLike, temperature: float = 1.0) -> FloatArray:
    """Softmax over the last axis of ``logits / temperature``; stable for large logits."""
    _check_temperature(temperature)
    probs: FloatArray = _softmax(logits, temperature)
    return probs


def log_softmax(logits: npt.ArrayLike, temperature: float = 1.0) -> FloatArray:
    _check_temperature(temperature)
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    shifted = scaled - scaled.max(axis=-1, keepdims=True)
    out: FloatArray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out


def nll(
    logits: npt.ArrayLike,
    labels: npt.ArrayLike,
    temperature: float = 1.0,
    *,
    weights: npt.ArrayLike | None = None,
) -> float:
    """(Weighted) mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    z = _as_matrix(logits, "logits")
    y = _as_labels(labels, z.shape[0], n_classes=z.shape[1])
    w = _as_weights(weights, z.shape[0])
    return _nll(z, y, w, temperature)


def fit_temperature(
    logits: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    weights: npt.ArrayLike | None = None,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
    tol: float = 1e-6,
    offset: npt.ArrayLike | None = None,
) -> float:
    """The temperature T in ``bounds`` minimising the (weighted) NLL of ``softmax(logits / T + offset)``
    (``offset``: a per-class vector added after the temperature, e.g. an oos logit bias; default none).

    Golden-section search on log T. The NLL is convex in 1/T (log-sum-exp of a linear function
    minus a linear term), hence unimodal in log T, so the search finds the global minimum in the
    bracket; it is deterministic and needs no gradients. If the optimum lies outside ``bounds`` the
    nearer bound is returned (a model that wants T < 0.05 or T > 20 has a problem calibration hides).
    """
    lo, hi = bounds
    if not 0.0 < lo < hi or not math.isfinite(hi):
        raise ValueError(f"bounds must satisfy 0 < low < high < inf, got {bounds}")
    z = _as_matrix(logits, "logits")
    y = _as_labels(labels, z.shape[0], n_classes=z.shape[1])
    w = _as_weights(weights, z.shape[0])
    shift = np.zeros(z.shape[1]) if offset is None else np.asarray(offset, dtype=np.float64).reshape(-1)
    if shift.shape != (z.shape[1],) or not np.isfinite(shift).all():
        raise ValueError(f"offset must be {z.shape[1]} finite numbers, one per class")
    z_true, shift_true = z[np.arange(z.shape[0]), y], shift[y]

    def objective(log_t: float) -> float:
        t = math.exp(log_t)
        scaled = z / t + shift
        top = scaled.max(axis=1)
        lse = top + np.log(np.exp(scaled - top[:, None]).sum(axis=1))
        return float(np.sum(w * (lse - z_true / t - shift_true)) / np.sum(w))

    a, b = math.log(lo), math.log(hi)
    c = b - _GOLDEN * (b - a)
    d = a + _GOLDEN * (b - a)
    fc, fd = objective(c), objective(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = objective(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = objective(d)
    # The search never evaluates the bracket ends; compare them so a boundary optimum is returned exactly
    # (listed first: on a flat objective, e.g. separable data, the bound wins the tie).
    inner = min(max(math.exp((a + b) / 2.0), lo), hi)
    candidates = [(objective(math.log(t)), t) for t in (lo, hi, inner)]
    return min(candidates, key=lambda pair: pair[0])[1]


def reliability_bins(
    probs: npt.ArrayLike,
    labels: npt.ArrayLike,
    n_bins: int = 15,
    weights: npt.ArrayLike | None = None,
) -> ReliabilityBins:
    """Per-bin mean confidence, accuracy and (weighted) count of the max-probability prediction.

    Labels outside the probability columns are allowed (e.g. ``oos`` for a 150-way in-scope model):
    they simply count as errors.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    p = _as_matrix(probs, "probs")
    y = _as_labels(labels, p.shape[0])
    w = _as_weights(weights, p.shape[0])
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # side="left": a confidence equal to an edge belongs to the bin that edge closes, (lo, hi].
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    mass = np.bincount(index, weights=w, minlength=n_bins)
    conf_sum = np.bincount(index, weights=w * confidence, minlength=n_bins)
    hit_sum = np.bincount(index, weights=w * correct, minlength=n_bins)
    filled = mass > 0
    mean_conf = np.full(n_bins, np.nan)
    mean_acc = np.full(n_bins, np.nan)
    mean_conf[filled] = conf_sum[filled] / mass[filled]
    mean_acc[filled] = hit_sum[filled] / mass[filled]
    return ReliabilityBins(edges=edges, confidence=mean_conf, accuracy=mean_acc, count=mass)


def ece(
    probs: npt.ArrayLike,
    labels: npt.ArrayLike,
    n_bins: int = 15,
    weights: npt.ArrayLike | None = None,
) -> float:
    """Expected calibration error: sum over bins of (bin mass / total) * |accuracy - confidence|."""
    return reliability_bins(probs, labels, n_bins=n_bins, weights=weights).ece


def evaluate_calibration(
    logits: npt.ArrayLike,
    labels: npt.ArrayLike,
    temperature: float = 1.0,
    *,
    weights: npt.ArrayLike | None = None,
    n_bins: int = 15,
) -> CalibrationMetrics:
    """NLL, ECE, accuracy and reliability bins of ``softmax(logits / temperature)`` on one split."""
    z = _as_matrix(logits, "logits")
    y = _as_labels(labels, z.shape[0], n_classes=z.shape[1])
    w = _as_weights(weights, z.shape[0])
    probs = softmax(z, temperature)
    bins = reliability_bins(probs, y, n_bins=n_bins, weights=w)
    accuracy = float(np.sum(w * (probs.argmax(axis=1) == y)) / np.sum(w))
    return CalibrationMetrics(
        temperature=float(temperature),
        nll=_nll(z, y, w, temperature),
        ece=bins.ece,
        accuracy=accuracy,
        bins=bins,
    )


def traffic_weights(is_oos: npt.ArrayLike, oos_fraction: float | None) -> FloatArray:
    """Per-example weights re-weighting a split to ``oos_fraction`` out-of-scope traffic.

    Out-of-scope examples get ``oos_fraction / observed`` and in-scope ones
    ``(1 - oos_fraction) / (1 - observed)``, so the weights average to 1 (they sum to n) and the
    weighted oos share is exactly ``oos_fraction``. ``None`` keeps the split's own mix (all ones).
    """
    flags = np.asarray(is_oos)
    if flags.ndim != 1 or flags.dtype != np.bool_:
        raise ValueError(f"is_oos must be a 1-D boolean array, got dtype {flags.dtype} shape {flags.shape}")
    n = flags.size
    if n == 0:
        raise ValueError("is_oos is empty")
    if oos_fraction is None:
        return np.ones(n, dtype=np.float64)
    if not 0.0 <= oos_fraction <= 1.0:
        raise ValueError(f"oos_fraction must be in [0, 1], got {oos_fraction}")
    observed = float(flags.mean())
    if oos_fraction > 0.0 and observed == 0.0:
        raise ValueError(f"cannot re-weight to {oos_fraction:.3f} oos: the split has no oos examples")
    if oos_fraction < 1.0 and observed == 1.0:
        raise ValueError(f"cannot re-weight to {oos_fraction:.3f} oos: the split has only oos examples")
    w_oos = oos_fraction / observed if observed > 0.0 else 0.0
    w_in = (1.0 - oos_fraction) / (1.0 - observed) if observed < 1.0 else 0.0
    return np.where(flags, w_oos, w_in).astype(np.float64)


def _nll(z: FloatArray, y: IntArray, w: FloatArray, temperature: float) -> float:
    log_p = log_softmax(z, temperature)
    return float(-np.sum(w * log_p[np.arange(z.shape[0]), y]) / np.sum(w))


def _check_temperature(temperature: float) -> None:
    if not (math.isfinite(temperature) and temperature > 0.0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")


def _as_matrix(values: npt.ArrayLike, name: str) -> FloatArray:
    matrix = np.asarray(values, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] < 2:
        raise ValueError(f"{name} must have shape (n >= 1, classes >= 2), got {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return matrix


def _as_labels(labels: npt.ArrayLike, n: int, *, n_classes: int | None = None) -> IntArray:
    y = np.asarray(labels)
    if y.ndim != 1 or y.size != n:
        raise ValueError(f"labels must be 1-D with {n} entries, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
    if y.size and (y.min() < 0 or (n_classes is not None and y.max() >= n_classes)):
        limit = f"[0, {n_classes})" if n_classes is not None else ">= 0"
        raise ValueError(f"labels must be in {limit}, got range [{y.min()}, {y.max()}]")
    return y.astype(np.int64)


def _as_weights(weights: npt.ArrayLike | None, n: int) -> FloatArray:
    if weights is None:
        return np.ones(n, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0.0) or not w.sum() > 0.0:
        raise ValueError("weights must be finite, non-negative and not all zero")
    return w
