"""What a demo run records: the texts it sends, how each request was answered, and what happened when."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

SOURCES = ("edge", "cloud", "edge_fallback")


@dataclass(frozen=True, slots=True)
class Sample:
    text: str
    gold: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """One replayed request. `ok` is False for anything but a 200 with one well-formed result."""

    index: int
    ok: bool
    at_s: float  # when the request was sent, seconds since the replay started
    latency_ms: float  # measured by the client
    status: int | None = None
    error: str | None = None
    label: str | None = None
    source: str | None = None
    reason: str | None = None
    edge_label: str | None = None
    edge_version: str | None = None
    cloud_version: str | None = None


def kind_of(outcome: Outcome) -> str:
    """`edge`, `cloud`, `edge_fallback/<reason>` or `failed`."""
    if not outcome.ok:
        return "failed"
    return f"edge_fallback/{outcome.reason}" if outcome.source == "edge_fallback" else str(outcome.source)


@dataclass(frozen=True, slots=True)
class Event:
    at_s: float
    what: str
    detail: str = ""


@dataclass
class Timeline:
    started: float = field(default_factory=time.monotonic)
    events: list[Event] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.started

    def add(self, what: str, detail: str = "") -> None:
        self.events.append(Event(round(self.now(), 3), what, detail))
        print(f"  [{self.now():7.2f} s] {what}{': ' + detail if detail else ''}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Run:
    """What one replay produced, before any arithmetic."""

    outcomes: list[Outcome]
    cloud_labels: list[str]
    cloud_version: str
    events: list[Event]
    wall_s: float
    spent: int  # units charged to the tenant during the replay
    budget: dict[str, Any]  # the tenant's status afterwards
    pricing: tuple[int, int]
    tenant: str
