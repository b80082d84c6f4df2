"""The fault scenario: kill the cloud, start it again, empty the budget, restore it, all under load; and the
replay cut at those events.

    progress = Progress(len(samples))                   # the replay's on_outcome: what has been answered
    asyncio.create_task(inject_faults(stack, timeline, progress, budget))
    phases(outcomes, timeline.events, end_s)            # how the requests sent between two events were answered
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from infra.demo.records import Event, Outcome, Timeline, kind_of
from infra.stack import LocalStack


class Progress:
    """What the replay has answered so far: a count, and per kind of answer the latest send time."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.latest: dict[str, float] = {}

    def __call__(self, outcome: Outcome) -> None:
        self.done += 1
        kind = kind_of(outcome)
        self.latest[kind] = max(self.latest.get(kind, 0.0), outcome.at_s)
        if self.done % 500 == 0 or self.done == self.total:
            print(f"  {self.done}/{self.total}", file=sys.stderr, flush=True)

    def seen_since(self, kind: str, since_s: float) -> bool:
        return self.latest.get(kind, -1.0) >= since_s


async def inject_faults(stack: LocalStack, timeline: Timeline, progress: Progress, budget: int,
                        *, wait_s: float = 60.0) -> None:
    """Kill the cloud at 15 % of the replay; start it again once the edge's circuit is open; wait for the
    edge to get cloud answers again; empty the budget at 55 % (or after the recovery); restore it at 80 %.
    Steps wait for the state they follow (seen in the answers), so the timeline shows each one under load;
    the caller cancels whatever is left when the replay ends."""

    async def reach(fraction: float) -> None:
        while progress.done < fraction * progress.total:
            await asyncio.sleep(0.02)

    async def observe(kind: str, since_s: float, what: str) -> None:
        deadline = time.monotonic() + wait_s
        while not progress.seen_since(kind, since_s):
            if time.monotonic() > deadline:
                timeline.add(f"no {kind} answer within {wait_s:.0f} s")
                return
            await asyncio.sleep(0.02)
        timeline.add(what, f"first {kind} answer to a request sent at >= {since_s:.2f} s")

    await reach(0.15)
    stack.kill_cloud()
    killed = timeline.now()
    timeline.add("cloud killed", "SIGKILL to the local API process")
    await observe("edge_fallback/circuit_open", killed, "edge circuit open")
    await asyncio.sleep(1.0)  # a moment of the open circuit under load
    timeline.add("cloud restarting")
    await asyncio.to_thread(stack.start_cloud)
    back = timeline.now()
    timeline.add("cloud back", "ready and warm; the edge's breaker probes it after its reset time")
    await observe("cloud", back, "edge recovered")
    await reach(0.55)
    await asyncio.to_thread(stack.set_budget, 0)
    emptied = timeline.now()
    timeline.add("budget exhausted", f"tenant {stack.tenant!r}: daily limit set to 0")
    await observe("edge_fallback/budget_exhausted", emptied, "edge stops escalating")
    await reach(0.80)
    status = await asyncio.to_thread(stack.set_budget, budget)
    timeline.add("budget restored", f"daily limit {budget}, {status['remaining']} units left")


def phases(outcomes: Sequence[Outcome], events: Sequence[Event], end_s: float) -> list[dict[str, Any]]:
    """The replay cut at each event: how the requests sent in each stretch were answered."""
    marks = [Event(0.0, "start"), *events]
    out = []
    for i, event in enumerate(marks):
        stop = marks[i + 1].at_s if i + 1 < len(marks) else end_s
        inside = [o for o in outcomes if event.at_s <= o.at_s < stop]
        out.append({"from_s": event.at_s, "to_s": round(stop, 3), "after": event.what, "requests": len(inside),
                    "answers": dict(Counter(kind_of(o) for o in inside).most_common())})
    return out
