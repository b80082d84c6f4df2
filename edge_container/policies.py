"""Routing policies: which edge answers go to the cloud. A small strategy, one class per rule, chosen by name.

The rule itself is `modelpack.routing` (the edge's `oos` band, the escalation test), the same functions the build
used to choose the manifest's thresholds: a rule applied any other way would make those thresholds meaningless. Every policy sees calibrated
probabilities (the manifest's temperature is already applied) and the routing entry of the model version
that produced them, so a hot reload brings its own threshold.
"""

from __future__ import annotations

import logging
import random
from abc import ABC, abstractmethod
from collections import deque
from datetime import datetime
from statistics import NormalDist
from typing import ClassVar, Literal

import numpy as np

from edge_container.pacing import BudgetPacer, Priority, ScoreWindow, paced_mask
from edge_container.priors import PriorEstimate, RowWindow, em_priors
from edge_container.settings import Settings
from modelpack.manifest import RoutingEntry
from modelpack import routing as rule
from modelpack.scores import SCORES
from modelpack.shift import ShiftPoint

ShiftEstimator = Literal["em", "bbse"]
log = logging.getLogger("edge_container.policies")


class Policy(ABC):
    name: ClassVar[str]
    escalate_reason: ClassVar[str] = "low_confidence"
    keep_reason: ClassVar[str] = "confident"
    # Whether the manifest's edge-oos band applies (below routing.oos_threshold the edge answers `oos`
    # itself). Off for the baselines: they exist to show what the plain edge or cloud does.
    uses_oos_band: ClassVar[bool] = True

    @abstractmethod
    def escalate(self, probs: np.ndarray, routing: RoutingEntry) -> np.ndarray:
        """Boolean mask [n]: True sends that text to the cloud."""

    def edge_oos(self, probs: np.ndarray, routing: RoutingEntry, oos_index: int | None) -> np.ndarray | None:
        """Boolean mask [n] of texts the edge answers `oos` without the cloud, or None (no band). It wins
        over `escalate`: paying the cloud to say `oos` about a text the edge finds hopeless buys nothing."""
        return rule.edge_oos(probs, routing, oos_index) if self.uses_oos_band else None

    def pace(self, probs: np.ndarray, routing: RoutingEntry, escalate: np.ndarray,
             priority: Priority = "normal") -> np.ndarray:
        """Which of the texts `escalate` marks go up now; the others fall back with reason `paced`. Only
        `PacedPolicy` holds any back: every other policy spends greedily until the cloud says the budget
        is spent."""
        return escalate

    def observe_budget(self, remaining: int, resets_at: datetime | None, *, cost: int, n_texts: int) -> None:
        """A cloud reply's budget after the call (only a pacing policy uses it)."""

    def estimated_oos_share(self) -> float | None:
        """The out-of-scope share of recent traffic, where the policy estimates it (`shift_aware`)."""
        return None

    def describe(self) -> dict[str, object]:
        return {"name": self.name}


class ThresholdPolicy(Policy):
    """The build's rule: escalate when the manifest's score is below the manifest's threshold."""

    name = "threshold"

    def escalate(self, probs: np.ndarray, routing: RoutingEntry) -> np.ndarray:
        return rule.below(probs, routing.score, routing.threshold)


class _FixedScorePolicy(Policy):
    score: ClassVar[str]
    default_threshold: ClassVar[float]

    def __init__(self, threshold: float | None = None) -> None:
        self.threshold = threshold

    def threshold_for(self, routing: RoutingEntry) -> float:
        # The manifest's threshold was calibrated for its own score only: reuse it when the scores agree.
        if self.threshold is not None:
            return self.threshold
        return routing.threshold if routing.score == self.score else self.default_threshold

    def escalate(self, probs: np.ndarray, routing: RoutingEntry) -> np.ndarray:
        return rule.below(probs, self.score, self.threshold_for(routing))

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "score": self.score, "threshold": self.threshold}


class MarginPolicy(_FixedScorePolicy):
    """Top-1 minus top-2 probability: catches answers torn between two intents."""

    name = "margin"
    score = "margin"
    default_threshold = 0.2


class EntropyPolicy(_FixedScorePolicy):
    """1 - normalised entropy: catches answers spread over many intents."""

    name = "entropy"
    score = "neg_entropy"
    default_threshold = 0.5


class AdaptivePolicy(Policy):
    """Keeps the escalation rate near a target: escalate the scores below the target-quantile of the last
    `window` scores. Unlike a fixed fraction of the mean score, a quantile holds the rate whatever the
    shape of the score distribution, and it follows drift within one window. Until `min_samples` scores
    are seen it uses the manifest's threshold. It ignores calibration: it trades accuracy for a cost cap.
    """

    name = "adaptive"

    def __init__(self, target_rate: float | None = None, *, window: int = 1000, min_samples: int = 50) -> None:
        self.target_rate, self.min_samples = target_rate, min(min_samples, window)
        self._window: deque[float] = deque(maxlen=window)

    def rate_for(self, routing: RoutingEntry) -> float:
        return routing.expected_escalation_rate if self.target_rate is None else self.target_rate

    def current_threshold(self, routing: RoutingEntry) -> float:
        if len(self._window) < self.min_samples:
            return routing.threshold
        return float(np.quantile(np.fromiter(self._window, float, len(self._window)), self.rate_for(routing)))

    def escalate(self, probs: np.ndarray, routing: RoutingEntry) -> np.ndarray:
        scores = SCORES[routing.score](probs)
        threshold = self.current_threshold(routing)
        self._window.extend(scores.tolist())
        return scores < threshold

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "target_rate": self.target_rate, "window": self._window.maxlen,
                "seen": len(self._window)}


class PacedPolicy(ThresholdPolicy):
    """The manifest's threshold, paced so the budget lasts until its reset (`edge_container.pacing`): when
    the demand outruns what the budget affords, only the least confident of the would-be escalations go
    up; priority `high` ignores the pace, `low` goes up only while the pace has room for everything."""

    name = "paced"

    def __init__(self, pacer: BudgetPacer | None = None, *, window: int = 2000,
                 rng: np.random.Generator | None = None) -> None:
        self.pacer = pacer or BudgetPacer()
        self._window = ScoreWindow(window)
        self._rng = rng or np.random.default_rng()

    def pace(self, probs: np.ndarray, routing: RoutingEntry, escalate: np.ndarray,
             priority: Priority = "normal") -> np.ndarray:
        scores = SCORES[routing.score](probs)
        self.pacer.observe_demand(int(escalate.sum()))
        self._window.add(scores[escalate])
        fraction = self.pacer.affordable_fraction()
        if priority == "high" or fraction >= 1.0:  # nothing to hold back: skip the quantile
            return escalate
        return paced_mask(escalate, fraction, self._window.admit(scores, fraction, self._rng), priority)

    def observe_budget(self, remaining: int, resets_at: datetime | None, *, cost: int, n_texts: int) -> None:
        self.pacer.observe_budget(remaining, resets_at, cost=cost, n_texts=n_texts)

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "affordable_fraction": round(self.pacer.affordable_fraction(), 4),
                "demand_per_s": round(self.pacer.demand_per_s, 4), "budget_remaining": self.pacer.remaining}


class ShiftAwarePolicy(ThresholdPolicy):
    """The manifest's rule, its threshold re-derived for the traffic mix the edge sees. Every `every` texts,
    EM (`edge_container.priors`) estimates the label priors of the last `window` texts from their calibrated
    rows; the manifest's shift table (`modelpack.shift`) then gives the cheapest threshold meeting the
    manifest's target at the estimated oos share. The edge's `oos` band stays the manifest's. Without a table
    (an older manifest), and for a new model version until `min_samples` of its texts are seen: the manifest's
    threshold. The estimate lags a change of mix by up to about one window.

    `estimator="bbse"` estimates the share instead by soft black-box shift estimation (the window's mean
    `oos` probability de-mixed with the table's per-group means): no iterations, and unbiased under prior
    shift whatever the rows' calibration, where EM relies on it (`bench/results/shift.md` compares them).

    `confidence` above 0.5 takes the table's threshold at a one-sided upper confidence bound of the share
    instead of at the estimate: under-reading the share costs accuracy below the target, over-reading it only
    escalations, and the estimate is uncertain, mostly through the table's small oos group (`ShiftTable.
    share_standard_error`). The metric stays the estimate."""

    name = "shift_aware"

    def __init__(self, window: int = 2000, *, every: int | None = None, min_samples: int | None = None,
                 estimator: ShiftEstimator = "em", confidence: float = 0.5) -> None:
        if not 0.5 <= confidence < 1.0:
            raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
        self.estimator, self.confidence = estimator, confidence
        self._z = NormalDist().inv_cdf(confidence)
        self._rows = RowWindow(window)
        self.every = every or max(1, window // 10)
        self.min_samples = min(min_samples or max(1, window // 4), window)
        self._routing: RoutingEntry | None = None  # the version the window and the estimate belong to
        self._since = 0
        self._estimate: PriorEstimate | None = None
        self._share: float | None = None  # the estimate; the point is the table's at its upper bound
        self._point: ShiftPoint | None = None
        self._untabled: RoutingEntry | None = None  # the last version without a table, said once

    def escalate(self, probs: np.ndarray, routing: RoutingEntry) -> np.ndarray:
        self.observe(probs, routing)
        return rule.below(probs, routing.score, self.threshold_for(routing))

    def observe(self, probs: np.ndarray, routing: RoutingEntry) -> None:
        """Add a batch's rows to the window; refresh the estimate and the threshold when it is time."""
        table = routing.shift
        if table is None:
            if routing is not self._untabled:
                self._untabled = routing
                log.warning("EDGE_POLICY=shift_aware: this model carries no shift table (its build had no "
                            "out-of-scope texts to measure one on: an appended oos label, or --max-false-reject 0); "
                            "escalating at its fixed threshold %.4g", routing.threshold)
            return
        if routing is not self._routing:  # another version: its own calibration and table, a fresh window
            self._routing, self._estimate, self._point, self._share, self._since = routing, None, None, None, 0
            self._rows.clear()
        self._rows.add(probs)
        self._since += len(probs)
        if self._since < self.every or len(self._rows) < self.min_samples:
            return
        self._since = 0
        rows = self._rows.rows()
        p_oos = rows[:, table.oos_index]
        share = table.bbse_share(float(p_oos.mean())) if self.estimator == "bbse" else None
        if share is None:
            start = table.source_priors if self._estimate is None else self._estimate.priors
            self._estimate = em_priors(rows, np.asarray(table.em_source()), start=np.asarray(start))
            share = float(self._estimate.priors[table.oos_index])
        error = table.share_standard_error(share, float(p_oos.var(dtype=np.float64)), len(p_oos)) if self._z else 0.0
        self._share = share
        self._point = table.operating_point(min(1.0, share + self._z * error), routing.target_joint_over_teacher)

    def threshold_for(self, routing: RoutingEntry) -> float:
        point = self._point
        return point.threshold if point is not None and routing is self._routing else routing.threshold

    def estimated_oos_share(self) -> float | None:
        return self._share

    def describe(self) -> dict[str, object]:
        point, estimate, share = self._point, self._estimate, self._share
        return {"name": self.name, "estimator": self.estimator, "window": self._rows.size, "seen": len(self._rows),
                "confidence": self.confidence,
                "estimated_oos_share": None if share is None else round(share, 4),
                "oos_share_bound": None if point is None else round(point.oos_share, 4),
                "threshold": None if point is None else point.threshold,
                "expected_escalation_rate": None if point is None else round(point.escalation_rate, 4),
                "reachable": None if point is None else point.reachable,
                "em_iterations": None if estimate is None else estimate.iterations}


class RandomPolicy(Policy):
    """Escalates a random share of traffic, whatever the score: an A/B baseline and a way to sample
    cloud labels for monitoring the edge model."""

    name = "random"
    escalate_reason = "sampled"
    keep_reason = "not_sampled"
    uses_oos_band = False

    def __init__(self, rate: float | None = None, *, rng: random.Random | None = None) -> None:
        self.rate, self._rng = rate, rng or random.Random()

    def escalate(self, probs: np.ndarray, routing: RoutingEntry) -> np.ndarray:
        rate = routing.expected_escalation_rate if self.rate is None else self.rate
        return np.array([self._rng.random() < rate for _ in range(len(probs))], dtype=bool)


class EdgeOnlyPolicy(Policy):
    name = "edge_only"
    keep_reason = "forced_edge"
    uses_oos_band = False

    def escalate(self, probs: np.ndarray, routing: RoutingEntry) -> np.ndarray:
        return np.zeros(len(probs), dtype=bool)


class CloudOnlyPolicy(Policy):
    name = "cloud_only"
    escalate_reason = "forced_cloud"
    uses_oos_band = False

    def escalate(self, probs: np.ndarray, routing: RoutingEntry) -> np.ndarray:
        return np.ones(len(probs), dtype=bool)


POLICIES: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (ThresholdPolicy, MarginPolicy, EntropyPolicy, AdaptivePolicy, PacedPolicy, ShiftAwarePolicy,
                RandomPolicy, EdgeOnlyPolicy, CloudOnlyPolicy)
}


def make_policy(name: str, settings: Settings | None = None) -> Policy:
    s = settings or Settings()
    if name == "margin":
        return MarginPolicy(s.margin_threshold)
    if name == "entropy":
        return EntropyPolicy(s.entropy_threshold)
    if name == "adaptive":
        return AdaptivePolicy(s.target_escalation_rate, window=s.adaptive_window)
    if name == "random":
        return RandomPolicy(s.target_escalation_rate)
    if name == "paced":
        # Each of EDGE_PROCESSES sees about 1/N of the demand, and the whole budget in every cloud reply.
        return PacedPolicy(BudgetPacer(window_s=s.pace_window_s, reserve=s.pace_reserve, share=1.0 / s.processes))
    if name == "shift_aware":
        return ShiftAwarePolicy(s.shift_window, estimator=s.shift_estimator,  # type: ignore[arg-type]
                                confidence=s.shift_confidence)
    return POLICIES[name]()
