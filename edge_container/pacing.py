"""Budget pacing: spend what is left of the cloud budget evenly over what is left of its period.

The cloud's ledger refuses whatever the budget cannot cover, so the edge can never overspend; without
pacing it spends greedily and, on a day whose demand exceeds the budget, runs out at noon: every
escalation after that is an edge fallback, however unsure. `BudgetPacer` turns the budget's state (from
every cloud reply: units left, when it resets, what a text costs) and the recent demand (how many texts the
manifest's threshold would escalate per second) into the fraction of that demand the budget can afford
until the reset. `PacedPolicy` then escalates only that fraction, and the least confident texts first:
below the manifest's threshold *and* below the matching quantile of recent would-be escalations' scores.

Priorities (`/v1/predict` `priority`): `high` ignores the pace (it may use the budget first), `normal` is
paced, `low` escalates only while the pace has room for all of the demand.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

import numpy as np

Priority = Literal["high", "normal", "low"]
PRIORITIES: tuple[Priority, ...] = ("high", "normal", "low")


class BudgetPacer:
    """What fraction of the would-be escalations the budget affords from now to its reset.

    Demand is an exponentially weighted rate of would-be escalated texts per second (time constant
    `window_s`); the affordable rate is units left ÷ seconds to the reset ÷ units per text. Until the cloud
    has said anything about the budget, everything is affordable (the threshold policy's behaviour).
    `reserve` keeps a share of the budget back for `high` priority traffic and the estimate's error.
    """

    def __init__(self, *, window_s: float = 300.0, reserve: float = 0.05, share: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        if window_s <= 0 or not 0 <= reserve < 1 or not 0 < share <= 1:
            raise ValueError("window_s must be > 0, reserve in [0, 1) and share in (0, 1]")
        self.window_s, self.reserve, self._clock = window_s, reserve, clock
        self.share = share  # of the budget this pacer may plan for: 1/N for each of N server processes
        self.remaining: int | None = None
        self.resets_at: float | None = None  # epoch seconds
        self.cost_per_text = 1.0
        self._demand = 0.0  # texts/s the threshold would escalate
        self._last: float | None = None

    def observe_budget(self, remaining: int, resets_at: datetime | None, *, cost: int, n_texts: int) -> None:
        """A cloud reply's budget after the call, and what the call cost for how many texts."""
        self.remaining = max(0, remaining)
        self.resets_at = None if resets_at is None else resets_at.astimezone(UTC).timestamp()
        if n_texts > 0 and cost > 0:
            # Per text, the per-request part spread over the call: a moving estimate, as batches vary.
            self.cost_per_text = 0.8 * self.cost_per_text + 0.2 * (cost / n_texts)

    def observe_demand(self, would_escalate: int) -> None:
        now = self._clock()
        if self._last is None:
            self._last = now
            self._demand = 0.0
        dt = max(0.0, now - self._last)
        decay = math.exp(-dt / self.window_s)
        # An event-rate EWMA: the count arrives now; its rate contribution is count / time constant.
        self._demand = self._demand * decay + would_escalate / self.window_s
        self._last = now

    @property
    def demand_per_s(self) -> float:
        return self._demand

    def affordable_fraction(self) -> float:
        """In [0, 1]: 1 while the budget covers the demand until the reset (or nothing is known yet)."""
        if self.remaining is None or self.resets_at is None:
            return 1.0
        left_s = max(1.0, self.resets_at - self._clock())
        affordable_per_s = (self.remaining * self.share * (1.0 - self.reserve) / left_s
                            / max(self.cost_per_text, 1e-9))
        if self._demand <= 0.0:
            return 1.0 if self.remaining > 0 else 0.0
        return float(min(1.0, affordable_per_s / self._demand))


class ScoreWindow:
    """The scores of the last `size` would-be escalations: the pace's quantile is taken over them."""

    def __init__(self, size: int = 2000) -> None:
        self._scores: deque[float] = deque(maxlen=size)

    def add(self, scores: np.ndarray) -> None:
        self._scores.extend(scores.tolist())

    def admit(self, scores: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
        """Which of `scores` lie within the lowest `fraction` of recent scores (all of them before any was
        seen). Ties at the cut are admitted at random in the proportion that keeps the fraction: many texts
        can share one score (a repeated text, a saturated softmax), and a hard cut would admit all or none."""
        if not self._scores:
            return np.ones(len(scores), dtype=bool)
        recent = np.fromiter(self._scores, float, len(self._scores))
        cut = float(np.quantile(recent, fraction))
        below, tied = float((recent < cut).mean()), float((recent == cut).mean())
        share = 0.0 if tied == 0.0 else min(1.0, max(0.0, (fraction - below) / tied))
        return (scores < cut) | ((scores == cut) & (rng.random(len(scores)) < share))

    def __len__(self) -> int:
        return len(self._scores)


def paced_mask(base: np.ndarray, fraction: float, admitted: np.ndarray, priority: Priority) -> np.ndarray:
    """Which of the texts the threshold would escalate (`base`) go up at this pace and priority; `admitted`
    marks the texts within the pace's share of recent would-be escalations (`ScoreWindow.admit`)."""
    if priority == "high" or fraction >= 1.0:
        return base
    if priority == "low" or fraction <= 0.0:
        return np.zeros_like(base)
    return base & admitted
