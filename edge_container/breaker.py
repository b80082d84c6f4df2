"""A circuit breaker: stop calling a cloud that keeps failing, and probe it once in a while.

closed --N consecutive failed calls--> open --reset_s later, one caller allowed--> half_open
half_open --probe succeeds--> closed;  half_open --probe fails--> open (the wait starts again).
While open, callers fail fast (no connection, no timeout to sit through) and the edge answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(self, *, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[State], None] | None = None) -> None:
        self.threshold, self.reset_s, self._clock, self._on_change = failures, reset_s, clock, on_change
        self._state: State = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> State:
        return self._state

    def allow(self) -> bool:
        """May a call go out now? In half_open only one (the probe) may, until it reports back."""
        if self._state == "closed":
            return True
        if self._state == "open":
            if self._clock() - self._opened_at < self.reset_s:
                return False
            self._set("half_open")
        if self._probing:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        self._failures, self._probing = 0, False
        self._set("closed")

    def failure(self) -> None:
        self._probing = False
        self._failures += 1
        if self._state == "half_open" or self._failures >= self.threshold:
            self._opened_at = self._clock()
            self._set("open")

    def release(self) -> None:
        """The call ended with neither verdict (cancelled): let another caller probe."""
        self._probing = False

    def _set(self, state: State) -> None:
        if state != self._state:
            self._state = state
            if self._on_change is not None:
                self._on_change(state)
