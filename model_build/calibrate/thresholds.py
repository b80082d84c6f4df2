"""One-threshold choices: the routing threshold per score (and which score to ship), and the cloud's
``oos`` confidence threshold. Both take the cheapest threshold that meets their target, on a split
re-weighted to the assumed traffic mix when ``weights`` are given."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from model_build.calibrate._checks import EPS, as_labels, as_probs, as_weights
from model_build.calibrate.calibration import BoolArray, FloatArray
from model_build.calibrate.curves import Curve, cut_thresholds, escalation_curve, realisable_cuts
from modelpack.scores import SCORES

Score = Callable[[FloatArray], FloatArray]

DEFAULT_TARGET_RATIO = 0.99


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


@dataclass(frozen=True)
class OosChoice:
    """Cloud-side rule: answer ``oos`` when its ``score`` (the calibrated max probability, or the energy of
    its raw logits: ``modelpack.routing.cloud_oos_score``) is below ``threshold``.

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
    score: str = "max_prob"


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
    meets = curve.joint_accuracy >= target_ratio * teacher_accuracy - EPS
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


@dataclass(frozen=True, eq=False)
class _OosSweep:
    """Flagging the k least-confident texts as ``oos``, for every k: what each k keeps and finds."""

    confidence: FloatArray  # sorted
    in_scope_accuracy: FloatArray
    true_positives: FloatArray  # weight of oos texts answered `oos`
    answered_oos: FloatArray
    flagged: FloatArray  # share of all weight newly flagged
    oos_weight: float


def _oos_sweep(p: FloatArray, y: npt.NDArray[np.int64], w: FloatArray, oos_index: int,
               score: FloatArray | None = None) -> _OosSweep:
    is_oos = y == oos_index
    w_oos, w_in = float(w[is_oos].sum()), float(w[~is_oos].sum())
    if w_oos <= 0.0 or w_in <= 0.0:
        raise ValueError("choosing an oos threshold needs both oos and in-scope examples (with weight)")
    confidence = p.max(axis=1) if score is None else np.asarray(score, dtype=np.float64)
    base_pred = p.argmax(axis=1)
    order = np.argsort(confidence, kind="stable")
    w_sorted = w[order]
    oos_sorted = is_oos[order]
    base_oos = (base_pred == oos_index)[order]
    in_correct = (~oos_sorted) & (base_pred == y)[order]

    def cumulative(mask: BoolArray) -> FloatArray:
        return np.concatenate(([0.0], np.cumsum(w_sorted * mask)))

    # Flagging the k least-confident: in-scope hits among them are lost, oos among them are found.
    return _OosSweep(
        confidence=confidence[order],
        in_scope_accuracy=(np.sum(w_sorted * in_correct) - cumulative(in_correct)) / w_in,
        true_positives=np.sum(w_sorted * (oos_sorted & base_oos)) + cumulative(oos_sorted & ~base_oos),
        answered_oos=np.sum(w_sorted * base_oos) + cumulative(~base_oos),
        flagged=cumulative(~base_oos) / float(w.sum()),
        oos_weight=w_oos,
    )


def choose_oos_threshold(
    probs: FloatArray,
    labels: npt.ArrayLike,
    oos_index: int,
    *,
    min_in_scope_accuracy: float | None = None,
    max_in_scope_drop: float = 0.01,
    weights: npt.ArrayLike | None = None,
    score: tuple[str, FloatArray] | None = None,
) -> OosChoice:
    """Threshold on the calibrated max probability (or on ``score``, a name and one value per row: higher
    means more in scope) below which the cloud answers ``oos``.

    Maximises OOS recall subject to in-scope accuracy >= a floor. The floor is
    ``min_in_scope_accuracy`` when given, otherwise the in-scope accuracy without the rule minus
    ``max_in_scope_drop`` (a relative floor stays feasible whatever the teacher's accuracy).
    Raising the threshold can only add oos answers, so recall never falls and in-scope accuracy
    never rises: the answer is the cheapest threshold reaching the best feasible recall.
    ``probs`` may or may not carry an ``oos`` column; an argmax on it already counts as an oos answer.
    """
    p = as_probs(probs)
    y = as_labels(labels, p.shape[0])
    w = as_weights(weights, p.shape[0])
    if oos_index < 0:
        raise ValueError(f"oos_index must be >= 0, got {oos_index}")
    if score is not None and np.shape(score[1]) != (p.shape[0],):
        raise ValueError(f"score {score[0]!r} has shape {np.shape(score[1])}, want ({p.shape[0]},)")
    sweep = _oos_sweep(p, y, w, oos_index, None if score is None else score[1])
    in_acc, true_pos, w_oos = sweep.in_scope_accuracy, sweep.true_positives, sweep.oos_weight

    ks = realisable_cuts(sweep.confidence)
    base_in_acc = float(in_acc[0])
    floor = base_in_acc - max_in_scope_drop if min_in_scope_accuracy is None else min_in_scope_accuracy
    feasible = in_acc[ks] >= floor - EPS
    recall = true_pos[ks] / w_oos
    if feasible.any():
        best_recall = recall[feasible].max()
        pick = int(np.argmax(feasible & (recall >= best_recall - EPS)))
    else:
        pick = 0
    k = int(ks[pick])
    answered = sweep.answered_oos[k]
    return OosChoice(
        threshold=float(cut_thresholds(sweep.confidence, ks)[pick]),
        oos_recall=float(true_pos[k] / w_oos),
        oos_precision=float(true_pos[k] / answered) if answered > 0 else float("nan"),
        in_scope_accuracy=float(in_acc[k]),
        in_scope_floor=float(floor),
        base_oos_recall=float(true_pos[0] / w_oos),
        base_in_scope_accuracy=base_in_acc,
        flagged_rate=float(sweep.flagged[k]),
        feasible=bool(feasible.any()),
        score="max_prob" if score is None else score[0],
    )


def cap_false_reject(probs: np.ndarray, labels: np.ndarray, oos_index: int, threshold: float,
                     max_false_reject: float, *, among: np.ndarray | None = None,
                     score: np.ndarray | None = None) -> float | None:
    """`threshold` (the cloud's: its oos score below it → `oos`), lowered so that the cloud refuses at
    most `max_false_reject` of the in-scope texts (`labels` != `oos_index`, a conformal count): an argmax on
    `oos` counts as a refusal that no threshold undoes. `among`: the texts the cloud is asked about (the
    escalated ones; default all): the share still counts every in-scope text, as the cascade's refusals do.
    `score`: the per-text oos score (default: the max probability). Placed midway between neighbouring
    scores, as every threshold is. None when no threshold refuses few enough (too few texts for the rate,
    or the outright refusals use it up): then none should refuse."""
    p = np.asarray(probs, dtype=np.float64)
    in_scope = np.asarray(labels) != oos_index
    asked = in_scope if among is None else in_scope & among
    top = (p.max(axis=1) if score is None else np.asarray(score, dtype=np.float64))[asked]
    argmax_oos = p[asked].argmax(axis=1) == oos_index
    allowed = conformal_count(max_false_reject, int(in_scope.sum())) - int(argmax_oos.sum())
    scores = np.sort(top[~argmax_oos])
    if allowed >= scores.size or (scores < threshold).sum() <= allowed:
        return threshold
    if not scores.size:
        return threshold
    if allowed <= 0:
        return None
    return min(threshold, threshold_below(scores, allowed))


def conformal_count(rate: float, n: int) -> int:
    """How many of `n` validation texts a threshold may put below it for a new text of the same kind to fall
    below with probability at most `rate`: floor(rate * (n + 1)) (split conformal; ranks are uniform over
    n + 1 places). 0 when the split is too small to refuse any at that rate."""
    return int(np.floor(rate * (n + 1) + 1e-9))


def threshold_below(sorted_scores: np.ndarray, k: int) -> float:
    """A threshold with the `k` (1 <= k < n) lowest of `sorted_scores` below it, placed as every threshold
    is (`cut_thresholds`). (k = 0 has none: too few texts for the rate; callers refuse nothing then.)"""
    if not 1 <= k < len(sorted_scores):
        raise ValueError(f"k = {k} needs 1 <= k < {len(sorted_scores)}")
    return float(cut_thresholds(sorted_scores, np.array([k]))[0])
