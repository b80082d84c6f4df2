"""The label priors of recent traffic, estimated from the edge's calibrated outputs alone.

EM of Saerens, Latinne & Decaestecker (2002, "Adjusting the outputs of a classifier to new a priori
probabilities"): with posteriors p(y|x) calibrated where the priors were `source`, the priors `pi` of new
traffic are the fixed point of ``pi = mean_x normalise(p(y|x) * pi / source)``. The source priors are the
mean calibrated row on the build's validation split (the manifest's shift table), so on traffic like that
split the estimate stays where it started. No labels needed, so it runs on every device.

A `RowWindow` keeps the last `size` rows in a ring buffer: bounded memory (size x labels float32), no
allocation per batch. The estimate is refreshed every so many texts by the policy that owns it, never per
request, and EM's iterations are capped: ~0.2 ms per iteration at 2,000 x 151.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_ITERATIONS = 50
TOLERANCE = 1e-5  # largest change of any prior between two iterations
_FLOOR = 1e-12


@dataclass(frozen=True, eq=False)
class PriorEstimate:
    priors: np.ndarray  # [labels], sums to 1
    iterations: int
    converged: bool
    n: int  # rows it was estimated on


def em_priors(probs: np.ndarray, source: np.ndarray, *, start: np.ndarray | None = None,
              max_iterations: int = MAX_ITERATIONS, tolerance: float = TOLERANCE) -> PriorEstimate:
    """The priors of the traffic `probs` [n, labels] came from. `start` (default `source`) warm-starts EM
    from the last estimate: traffic drifts slowly, so a few iterations usually suffice."""
    p = np.asarray(probs)
    if p.dtype not in (np.float32, np.float64):
        p = p.astype(np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"probs must be a non-empty [n, labels] array, got shape {p.shape}")
    q = np.maximum(np.asarray(source, dtype=np.float64), _FLOOR)
    if q.shape != (p.shape[1],):
        raise ValueError(f"source has {q.size} priors for {p.shape[1]} labels")
    pi = (q if start is None else np.maximum(np.asarray(start, dtype=np.float64), _FLOOR)).copy()
    pi /= pi.sum()
    for i in range(1, max_iterations + 1):  # in the rows' own precision (the window's float32: half the work)
        adjusted = p * (pi / q).astype(p.dtype)
        adjusted /= np.maximum(adjusted.sum(axis=1, keepdims=True), _FLOOR)
        new = adjusted.mean(axis=0, dtype=np.float64)
        new /= new.sum()
        change = float(np.abs(new - pi).max())
        pi = new
        if change < tolerance:
            return PriorEstimate(pi, i, True, p.shape[0])
    return PriorEstimate(pi, max_iterations, False, p.shape[0])


class RowWindow:
    """The last `size` probability rows (fewer until that many were seen)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self._rows: np.ndarray | None = None
        self._next = self._count = 0

    def __len__(self) -> int:
        return self._count

    def clear(self) -> None:
        self._rows, self._next, self._count = None, 0, 0

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.float32)[-self.size:]
        if self._rows is None or self._rows.shape[1] != rows.shape[1]:  # a model with other labels: start over
            self._rows, self._next, self._count = np.empty((self.size, rows.shape[1]), np.float32), 0, 0
        n = rows.shape[0]
        head = min(n, self.size - self._next)
        self._rows[self._next: self._next + head] = rows[:head]
        self._rows[: n - head] = rows[head:]
        self._next = (self._next + n) % self.size
        self._count = min(self._count + n, self.size)

    def rows(self) -> np.ndarray:
        """The rows held, in ring order rather than arrival order (EM does not depend on it)."""
        if self._rows is None:
            return np.empty((0, 0), np.float32)
        return self._rows[: self._count] if self._count < self.size else self._rows
