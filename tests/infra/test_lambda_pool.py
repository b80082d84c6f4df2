"""infra.lambda_pool: execution environments as real processes (from a fork server), each running one
invocation at a time; a bounded pool, taken in arrival order, replacing an environment that dies."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from infra.lambda_pool import CRASHED, TIMED_OUT, EnvironmentFailed, EnvironmentPool


@dataclass(frozen=True)
class SleepingFunction:
    """A handler that sleeps `sleep_s` per event and says when, where and in which environment it ran.
    Module-level and frozen: it is pickled to each environment."""

    sleep_s: float

    def __call__(self, index: int) -> Any:
        invocations = 0  # per environment: Lambda keeps module state between invocations

        def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
            nonlocal invocations
            invocations += 1
            if event.get("crash"):
                os._exit(1)
            started = time.monotonic()
            time.sleep(event.get("sleep_s", self.sleep_s))
            body = {"id": event["id"], "environment": index, "pid": os.getpid(), "started": started,
                    "ended": time.monotonic(), "invocations": invocations,
                    "remaining_ms": context.get_remaining_time_in_millis()}
            return {"statusCode": 200, "body": json.dumps(body)}

        return handler


def failing_setup(index: int) -> Any:
    raise RuntimeError(f"no runtime for environment {index}")


def run(pool: EnvironmentPool, events: Sequence[dict[str, Any]], *, stagger_s: float = 0.0
        ) -> tuple[list[dict[str, Any]], float]:
    """Start the pool, send `events` (the i-th after i × `stagger_s`), stop it: the bodies (or results
    other than 200) in event order, and the seconds from the first event to the last answer."""

    async def main() -> tuple[list[dict[str, Any]], float]:
        await pool.start()
        try:
            async def one(i: int, event: dict[str, Any]) -> dict[str, Any]:
                await asyncio.sleep(i * stagger_s)
                return await pool.invoke(event)

            started = time.monotonic()
            results = await asyncio.gather(*(one(i, e) for i, e in enumerate(events)))
            return results, time.monotonic() - started
        finally:
            await pool.stop()

    results, wall_s = asyncio.run(main())
    return [json.loads(r["body"]) if r["statusCode"] == 200 else r for r in results], wall_s


def test_invocations_run_side_by_side_in_environments_of_their_own() -> None:
    # Given 4 environments and a function that takes 0.5 s
    pool = EnvironmentPool(SleepingFunction(0.5), size=4)

    # When 4 events arrive at once
    bodies, wall_s = run(pool, [{"id": i} for i in range(4)])

    # Then they ran at the same time, one per environment, each in a process of its own
    assert len({b["pid"] for b in bodies}) == 4 and {b["environment"] for b in bodies} == {0, 1, 2, 3}
    assert os.getpid() not in {b["pid"] for b in bodies}
    assert max(b["started"] for b in bodies) < min(b["ended"] for b in bodies), bodies  # all overlapped
    assert wall_s < 2 * 0.5, wall_s  # ~1x the call, not 4x
    assert all(25_000 < b["remaining_ms"] <= 30_000 for b in bodies)  # the template's 30 s, counting down


def test_the_pool_is_bounded_and_waiting_events_go_first_come_first_served() -> None:
    # Given 2 environments, and 8 events arriving 20 ms apart, each taking 0.15 s
    pool = EnvironmentPool(SleepingFunction(0.15), size=2)

    bodies, _ = run(pool, [{"id": i} for i in range(8)], stagger_s=0.02)

    # Then never more than 2 ran at once
    for body in bodies:
        running = [b for b in bodies if b["started"] <= body["started"] < b["ended"]]
        assert len(running) <= 2, running
    # And they started in the order they arrived
    by_start = sorted(bodies, key=lambda b: b["started"])
    assert [b["id"] for b in by_start] == list(range(8))
    # And an environment keeps its state from one invocation to the next
    for environment in (0, 1):
        counts = sorted(b["invocations"] for b in bodies if b["environment"] == environment)
        assert counts == list(range(1, len(counts) + 1)), bodies


def test_an_environment_that_dies_answers_502_and_a_fresh_one_takes_its_place() -> None:
    pool = EnvironmentPool(SleepingFunction(0.0), size=1)

    async def main() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[int]]:
        await pool.start()
        try:
            first = await pool.invoke({"id": 0})
            crashed = await pool.invoke({"id": 1, "crash": True})
            after = await pool.invoke({"id": 2})
            return first, crashed, after, pool.pids
        finally:
            await pool.stop()

    first, crashed, after, pids = asyncio.run(main())

    assert crashed == CRASHED
    assert after["statusCode"] == 200
    before_pid, after_body = json.loads(first["body"])["pid"], json.loads(after["body"])
    assert after_body["pid"] != before_pid and after_body["invocations"] == 1  # a cold start
    assert pids == [after_body["pid"]]  # still one environment


def test_an_invocation_past_the_function_timeout_answers_504_and_is_replaced() -> None:
    pool = EnvironmentPool(SleepingFunction(0.0), size=1, timeout_s=0.3)

    bodies, _ = run(pool, [{"id": 0, "sleep_s": 5.0}, {"id": 1}])

    assert bodies[0] == TIMED_OUT
    assert bodies[1]["invocations"] == 1


def test_a_setup_that_fails_fails_the_start_and_leaves_no_environment() -> None:
    pool = EnvironmentPool(failing_setup, size=2)

    async def main() -> None:
        await pool.start()

    with pytest.raises(EnvironmentFailed, match="no runtime for environment 0"):
        asyncio.run(main())
    assert pool.pids == []


def test_an_event_that_stops_waiting_gives_its_place_to_the_next() -> None:
    # Given one environment, busy for 0.3 s, and two events waiting for it
    pool = EnvironmentPool(SleepingFunction(0.3), size=1)

    async def main() -> list[Any]:
        await pool.start()
        try:
            busy = asyncio.create_task(pool.invoke({"id": 0}))
            await asyncio.sleep(0.05)
            gone = asyncio.create_task(pool.invoke({"id": 1}))
            waiting = asyncio.create_task(pool.invoke({"id": 2}))
            await asyncio.sleep(0.05)
            assert pool.waiting == 2
            # When the first waiter gives up (its client went away)
            gone.cancel()
            return [json.loads((await t)["body"])["id"] for t in (busy, waiting)]
        finally:
            await pool.stop()

    # Then the other one gets the environment, and nothing is left waiting
    assert asyncio.run(main()) == [0, 2]

