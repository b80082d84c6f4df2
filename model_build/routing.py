"""Edge→cloud routing: confidence scores, escalation curves and the thresholds the runtimes apply.

The runtime rule is one comparison: **escalate to the cloud iff ``score < threshold``**. Everything
here is built so that a threshold chosen offline realises exactly the escalation rate reported for
it under that rule, ties included: a threshold cannot split examples with equal scores, so the
curves only hold operating points a threshold can realise.

Thresholds are placed midway between the last escalated and the first kept score (robust to small
numeric differences between the build's numpy and the runtime); "escalate none" is ``-inf`` and
"escalate all" is ``+inf``. JSON has no infinities: whoever writes the manifest must encode them.

Metrics take optional per-example ``weights`` (see :func:`model_build.calibration.traffic_weights`) so
rates and accuracies describe the assumed traffic mix rather than the split's own oos share.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from model_build.calibration import BoolArray, FloatArray, IntArray
from modelpack.scores import SCORES, margin, max_prob, neg_entropy, predict_with_oos  # noqa: F401  (re-exported)

Score = Callable[[FloatArray], FloatArray]

DEFAULT_TARGET_RATIO = 0.99
TABLE_RATES: tuple[float, ...] = (0.0, 0.05, 0.10, 0.15, 0.20, 0.30, 0.50, 1.0)
# Accuracies are sums of weights divided by a total; two curves reaching the same set of examples
# can differ in the last bits, so comparisons against targets allow this much slack.
_EPS = 1e-12


# The score functions live in modelpack so the build and the edge runtime compute the very same thing.


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


@dataclass(frozen=True)
class RoutingChoice:
    """The cheapest operating point meeting ``joint_accuracy >= target_ratio * teacher_accuracy``.

    When no point meets it, ``reachable`` is False and the point is escalate-all (threshold +inf).
    """

    score_name: str
    threshold: float
    escalation_rate: float
    joint_accuracy: float
    joint_over_teacher: float
    teacher_accuracy: float
    target_ratio: float
    reachable: bool
    n_escalated: int

    @property
    def target_accuracy(self) -> float:
        return self.target_ratio * self.teacher_accuracy


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


@dataclass(frozen=True)
class OosChoice:
    """Cloud-side rule: answer ``oos`` when the calibrated max probability is below ``threshold``.

    Chosen as the largest OOS recall whose in-scope accuracy stays >= ``in_scope_floor``; among
    thresholds with that recall, the one flagging the least. ``feasible`` is False when even never
    flagging misses the floor (then threshold is -inf: the rule is off).
    """

    threshold: float
    oos_recall: float
    oos_precision: float
    in_scope_accuracy: float
    in_scope_floor: float
    base_oos_recall: float
    base_in_scope_accuracy: float
    flagged_rate: float
    feasible: bool


@dataclass(frozen=True, eq=False)
class ScoreComparison:
    """Per-score curves and choices on one split, with the score the build should ship."""

    curves: dict[str, Curve]
    choices: dict[str, RoutingChoice]
    best: str
    edge_only_accuracy: float
    cloud_only_accuracy: float

    @property
    def best_choice(self) -> RoutingChoice:
        return self.choices[self.best]


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
    y = _as_labels(labels)
    n = y.size
    edge = _as_labels(edge_pred, n, "edge_pred")
    teacher = _as_labels(teacher_pred, n, "teacher_pred")
    s = _as_scores(score, n)
    w = _as_weights(weights, n)

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

    ks = _realisable_cuts(s_sorted)
    return Curve(
        score_name=name,
        thresholds=_cut_thresholds(s_sorted, ks),
        escalation_rate=rate[ks],
        joint_accuracy=joint[ks],
        n_escalated=ks.astype(np.int64),
    )


def choose_threshold(
    curve: Curve,
    teacher_accuracy: float,
    target_ratio: float = DEFAULT_TARGET_RATIO,
) -> RoutingChoice:
    """The lowest escalation rate whose joint accuracy is >= ``target_ratio * teacher_accuracy``.

    ``teacher_accuracy`` should be measured on the same split and weights as the curve (it is
    ``curve.teacher_accuracy`` then). Joint accuracy is not monotone in the rate; this takes the
    first crossing, so on a small split it can ride a lucky bump: read it next to the curve.
    """
    if not 0.0 < teacher_accuracy <= 1.0:
        raise ValueError(f"teacher_accuracy must be in (0, 1], got {teacher_accuracy}")
    if not target_ratio > 0.0:
        raise ValueError(f"target_ratio must be positive, got {target_ratio}")
    meets = curve.joint_accuracy >= target_ratio * teacher_accuracy - _EPS
    reachable = bool(meets.any())
    index = int(np.argmax(meets)) if reachable else len(curve) - 1
    point = curve.point(index)
    return RoutingChoice(
        score_name=curve.score_name,
        threshold=point.threshold,
        escalation_rate=point.escalation_rate,
        joint_accuracy=point.joint_accuracy,
        joint_over_teacher=point.joint_accuracy / teacher_accuracy,
        teacher_accuracy=float(teacher_accuracy),
        target_ratio=float(target_ratio),
        reachable=reachable,
        n_escalated=point.n_escalated,
    )


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


def _routed(edge: IntArray, teacher: IntArray, y: IntArray, escalate: BoolArray, threshold: float,
            oos_index: int | None, w: FloatArray) -> RoutedMetrics:
    n = y.size
    joint = np.where(escalate, teacher, edge)
    is_oos = y == oos_index if oos_index is not None else np.zeros(n, dtype=np.bool_)
    everyone = np.ones(n, dtype=np.bool_)
    joint_accuracy = _mean(joint == y, w, everyone)
    teacher_accuracy = _mean(teacher == y, w, everyone)
    return RoutedMetrics(
        n=n,
        threshold=threshold,
        escalation_rate=_mean(escalate, w, everyone),
        joint_accuracy=joint_accuracy,
        edge_accuracy=_mean(edge == y, w, everyone),
        teacher_accuracy=teacher_accuracy,
        joint_over_teacher=joint_accuracy / teacher_accuracy if teacher_accuracy > 0 else float("nan"),
        joint_oos_recall=_mean(joint == y, w, is_oos),
        in_scope_accuracy=_mean(joint == y, w, ~is_oos),
        in_scope_escalation_rate=_mean(escalate, w, ~is_oos),
        oos_escalation_rate=_mean(escalate, w, is_oos),
    )


def choose_oos_threshold(
    probs: FloatArray,
    labels: npt.ArrayLike,
    oos_index: int,
    *,
    min_in_scope_accuracy: float | None = None,
    max_in_scope_drop: float = 0.01,
    weights: npt.ArrayLike | None = None,
) -> OosChoice:
    """Threshold on the calibrated max probability below which the cloud answers ``oos``.

    Maximises OOS recall subject to in-scope accuracy >= a floor. The floor is
    ``min_in_scope_accuracy`` when given, otherwise the in-scope accuracy without the rule minus
    ``max_in_scope_drop`` (a relative floor stays feasible whatever the teacher's accuracy).
    Raising the threshold can only add oos answers, so recall never falls and in-scope accuracy
    never rises: the answer is the cheapest threshold reaching the best feasible recall.
    ``probs`` may or may not carry an ``oos`` column; an argmax on it already counts as an oos answer.
    """
    p = _as_probs(probs)
    y = _as_labels(labels, p.shape[0])
    w = _as_weights(weights, p.shape[0])
    if oos_index < 0:
        raise ValueError(f"oos_index must be >= 0, got {oos_index}")
    is_oos = y == oos_index
    w_oos, w_in = float(w[is_oos].sum()), float(w[~is_oos].sum())
    if w_oos <= 0.0 or w_in <= 0.0:
        raise ValueError("choosing an oos threshold needs both oos and in-scope examples (with weight)")

    confidence = p.max(axis=1)
    base_pred = p.argmax(axis=1)
    order = np.argsort(confidence, kind="stable")
    c_sorted = confidence[order]
    w_sorted = w[order]
    oos_sorted = is_oos[order]
    base_oos = (base_pred == oos_index)[order]
    in_correct = (~oos_sorted) & (base_pred == y)[order]

    def cumulative(mask: BoolArray) -> FloatArray:
        return np.concatenate(([0.0], np.cumsum(w_sorted * mask)))

    # Flagging the k least-confident: in-scope hits among them are lost, oos among them are found.
    in_acc = (np.sum(w_sorted * in_correct) - cumulative(in_correct)) / w_in
    true_pos = np.sum(w_sorted * (oos_sorted & base_oos)) + cumulative(oos_sorted & ~base_oos)
    answered_oos = np.sum(w_sorted * base_oos) + cumulative(~base_oos)
    flagged = cumulative(~base_oos) / float(w.sum())

    ks = _realisable_cuts(c_sorted)
    base_in_acc = float(in_acc[0])
    floor = base_in_acc - max_in_scope_drop if min_in_scope_accuracy is None else min_in_scope_accuracy
    feasible = in_acc[ks] >= floor - _EPS
    recall = true_pos[ks] / w_oos
    if feasible.any():
        best_recall = recall[feasible].max()
        pick = int(np.argmax(feasible & (recall >= best_recall - _EPS)))
    else:
        pick = 0
    k = int(ks[pick])
    thresholds = _cut_thresholds(c_sorted, ks)
    return OosChoice(
        threshold=float(thresholds[pick]),
        oos_recall=float(true_pos[k] / w_oos),
        oos_precision=float(true_pos[k] / answered_oos[k]) if answered_oos[k] > 0 else float("nan"),
        in_scope_accuracy=float(in_acc[k]),
        in_scope_floor=float(floor),
        base_oos_recall=float(true_pos[0] / w_oos),
        base_in_scope_accuracy=base_in_acc,
        flagged_rate=float(flagged[k]),
        feasible=bool(feasible.any()),
    )


def compare_scores(
    edge_probs: FloatArray,
    edge_pred: npt.ArrayLike,
    teacher_pred: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    teacher_accuracy: float | None = None,
    target_ratio: float = DEFAULT_TARGET_RATIO,
    weights: npt.ArrayLike | None = None,
    scores: Mapping[str, Score] = SCORES,
) -> ScoreComparison:
    """Choose an operating point per score and name the one to ship.

    Best = reachable first, then lowest escalation rate, then higher joint accuracy, then the order
    of ``scores``. ``teacher_accuracy`` defaults to the teacher's (weighted) accuracy on this split.
    """
    if not scores:
        raise ValueError("scores is empty")
    curves: dict[str, Curve] = {}
    choices: dict[str, RoutingChoice] = {}
    for name, score_fn in scores.items():
        curve = escalation_curve(edge_pred, teacher_pred, labels, score_fn(edge_probs), weights, name=name)
        reference = curve.teacher_accuracy if teacher_accuracy is None else teacher_accuracy
        curves[name] = curve
        choices[name] = choose_threshold(curve, reference, target_ratio)

    def rank(name: str) -> tuple[bool, float, float]:
        choice = choices[name]
        # Rounded so that equal sets of examples summed in different orders compare equal.
        return (not choice.reachable, round(choice.escalation_rate, 9), -round(choice.joint_accuracy, 9))

    first = next(iter(curves.values()))
    return ScoreComparison(
        curves=curves,
        choices=choices,
        best=min(choices, key=rank),
        edge_only_accuracy=first.edge_accuracy,
        cloud_only_accuracy=first.teacher_accuracy,
    )


@dataclass(frozen=True)
class DeferralChoice:
    """The three-way rule: ``score < oos_threshold`` → the edge answers ``oos`` itself; ``score <
    threshold`` → the cloud; otherwise the edge's own answer. The cheapest pair (fewest escalations, then
    the higher joint accuracy) meeting ``joint_accuracy >= target_ratio * teacher_accuracy``.

    Out-of-scope texts are the ones the edge is least sure of, and paying the cloud to say ``oos`` about a
    text the edge already finds hopeless buys nothing: the lowest band is answered at the edge. With
    ``oos_threshold = -inf`` it is the two-way rule of :func:`choose_threshold`. When no pair meets the
    target, ``reachable`` is False and the pair is (-inf, +inf): escalate everything.
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
) -> DeferralChoice:
    """Fit both thresholds of the three-way rule. The band may be cut on a score of its own (`oos_score`,
    e.g. the best in-scope probability: a text the edge calls `oos` with some confidence has a high max
    probability but no plausible intent); by default on `score` itself. O(c * n) for c realisable cuts of
    the band score: for each band (the i least band-confident answered ``oos``), the cheapest upper cut
    on the remaining texts."""
    y = _as_labels(labels)
    n = y.size
    edge = _as_labels(edge_pred, n, "edge_pred")
    teacher = _as_labels(teacher_pred, n, "teacher_pred")
    s = _as_scores(score, n)
    b = s if oos_score is None else _as_scores(oos_score, n)
    w = _as_weights(weights, n)
    if oos_index < 0:
        raise ValueError(f"oos_index must be >= 0, got {oos_index}")
    if not target_ratio > 0.0:
        raise ValueError(f"target_ratio must be positive, got {target_ratio}")

    total = float(w.sum())
    teacher_ok, edge_ok, is_oos = (teacher == y), (edge == y), (y == oos_index)
    teacher_accuracy = float(np.sum(w * teacher_ok)) / total
    if not teacher_accuracy > 0.0:
        raise ValueError("the teacher is never right on this split: no target to meet")
    need = target_ratio * teacher_accuracy * total - _EPS * total

    band_order = np.argsort(b, kind="stable")
    band_cuts = _realisable_cuts(b[band_order])
    band_thresholds = _cut_thresholds(b[band_order], band_cuts)
    up_order = np.argsort(s, kind="stable")
    up_sorted = s[up_order]
    up_cuts = _realisable_cuts(up_sorted)
    up_thresholds = _cut_thresholds(up_sorted, up_cuts)
    w_up, gain_up, edge_up = w[up_order], (teacher_ok.astype(np.float64) - edge_ok)[up_order], edge_ok[up_order]

    best: tuple[float, float, int, int] | None = None  # (escalated weight, -joint, band cut, upper cut)
    two_way: float | None = None
    in_band, marked = np.zeros(n, dtype=np.bool_), 0
    for a, i in enumerate(band_cuts.tolist()):
        in_band[band_order[marked:i]] = True  # cuts only grow: mark the new ones
        marked = i
        rest = ~in_band[up_order]  # texts the edge does not answer `oos`, in upper-score order
        found = float(np.sum(w[in_band] * is_oos[in_band]))
        kept = float(np.sum(w_up * edge_up * rest))
        escalated = np.concatenate(([0.0], np.cumsum(w_up * rest)))[up_cuts]
        joint = found + kept + np.concatenate(([0.0], np.cumsum(w_up * gain_up * rest)))[up_cuts]
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
    if best is None:
        return DeferralChoice(name, -np.inf, np.inf, 1.0, 0.0, teacher_accuracy, 1.0, teacher_accuracy,
                              float(target_ratio), False, 1.0)
    cost, neg_joint, a, c = best
    joint_accuracy = -neg_joint / total
    return DeferralChoice(
        score_name=name,
        oos_threshold=float(band_thresholds[a]),
        threshold=float(up_thresholds[c]),
        escalation_rate=cost / total,
        edge_oos_rate=float(w[band_order[: band_cuts[a]]].sum()) / total,
        joint_accuracy=joint_accuracy,
        joint_over_teacher=joint_accuracy / teacher_accuracy,
        teacher_accuracy=teacher_accuracy,
        target_ratio=float(target_ratio),
        reachable=True,
        two_way_escalation_rate=(two_way if two_way is not None else total) / total,
    )


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
    y = _as_labels(labels)
    n = y.size
    edge = _as_labels(edge_pred, n, "edge_pred")
    teacher = _as_labels(teacher_pred, n, "teacher_pred")
    s = _as_scores(score, n)
    w = _as_weights(weights, n)
    if oos_threshold is None or oos_index is None:
        return _routed(edge, teacher, y, s < threshold, float(threshold), oos_index, w)
    answered_oos = (s if oos_score is None else _as_scores(oos_score, n)) < oos_threshold
    edge = np.where(answered_oos, oos_index, edge)
    return _routed(edge, teacher, y, ~answered_oos & (s < threshold), float(threshold), oos_index, w)


def curve_at_rates(curve: Curve, rates: Sequence[float] = TABLE_RATES) -> tuple[CurvePoint, ...]:
    """For each budget r, the operating point escalating the most while staying at or below r."""
    points = []
    for rate in rates:
        within = np.flatnonzero(curve.escalation_rate <= rate + _EPS)
        points.append(curve.point(int(within[-1])))
    return tuple(points)


def _realisable_cuts(sorted_scores: FloatArray) -> IntArray:
    """Numbers of escalated examples k that ``score < t`` can produce: 0, n, and every k between ties."""
    n = sorted_scores.size
    keep = np.ones(n + 1, dtype=np.bool_)
    keep[1:n] = sorted_scores[:-1] < sorted_scores[1:]
    cuts: IntArray = np.flatnonzero(keep).astype(np.int64)
    return cuts


def _cut_thresholds(sorted_scores: FloatArray, cuts: IntArray) -> FloatArray:
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


def _mean(values: BoolArray, w: FloatArray, mask: BoolArray) -> float:
    mass = float(w[mask].sum())
    return float(np.sum(w[mask] * values[mask]) / mass) if mass > 0.0 else float("nan")


def _as_probs(probs: npt.ArrayLike) -> FloatArray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2:
        raise ValueError(f"probs must have shape (n >= 1, classes >= 2), got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contains NaN or infinite values")
    return p


def _as_labels(values: npt.ArrayLike, n: int | None = None, name: str = "labels") -> IntArray:
    y = np.asarray(values)
    if y.ndim != 1 or y.size == 0 or (n is not None and y.size != n):
        expected = f"{n} entries" if n is not None else "at least one entry"
        raise ValueError(f"{name} must be 1-D with {expected}, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be integer class indices, got dtype {y.dtype}")
    return y.astype(np.int64)


def _as_scores(values: npt.ArrayLike, n: int) -> FloatArray:
    s = np.asarray(values, dtype=np.float64)
    if s.shape != (n,):
        raise ValueError(f"score must have shape ({n},), got {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("score contains NaN or infinite values")
    return s


def _as_weights(weights: npt.ArrayLike | None, n: int) -> FloatArray:
    if weights is None:
        return np.ones(n, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0.0) or not w.sum() > 0.0:
        raise ValueError(f"weights must be finite, non-negative, not all zero, with shape ({n},)")
    return w
