"""The cloud client against a real HTTP server on loopback (the fake cloud), failure by failure."""

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from botocore.credentials import Credentials

from edge_container.breaker import CircuitBreaker
from edge_container.cloud import CloudClient, SigV4Signer
from edge_container.errors import (
    CircuitOpen,
    CloudBudgetExhausted,
    CloudCallFailed,
    CloudTimeout,
    DeadlineExceeded,
)
from modelpack.cloud_api import Answer
from tests.edge_container.conftest import FakeCloud


def run(cloud_url: str, body: Callable[[CloudClient], Awaitable[Any]], **kwargs: Any) -> Any:
    options: dict[str, Any] = {"api_key": "key-1", "timeout_s": 1.0, "retries": 2, "backoff_s": 0.005,
                               "breaker": CircuitBreaker(failures=5, reset_s=30)}
    options.update(kwargs)

    async def main() -> Any:
        async with httpx.AsyncClient() as http:
            return await body(CloudClient(http, url=cloud_url + "/v1/infer", **options))

    return asyncio.run(main())


def soon(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


def test_a_good_answer_is_parsed_and_the_request_carries_key_and_context(cloud: FakeCloud) -> None:
    reply = run(cloud.url, lambda c: c.infer(["weather in rome", "sing"], idempotency_key="k-1", deadline=soon(),
                                             request_id="r-1", edge=[Answer("weather", 0.5), Answer("oos", 0.4)]))
    assert [r.label for r in reply.results] == ["weather", "oos"]
    assert reply.model_version == "cloud-7" and reply.cost == 2
    assert reply.budget.remaining == 998 and reply.budget.resets_at == cloud.resets_at
    [attempt] = cloud.attempts
    assert attempt.api_key == "key-1" and attempt.idempotency_key == "k-1"
    assert attempt.body == {"texts": ["weather in rome", "sing"], "request_id": "r-1",
                            "edge": [{"label": "weather", "confidence": 0.5}, {"label": "oos", "confidence": 0.4}]}


@pytest.mark.parametrize("status", [502, 503, 504])
def test_retryable_failures_are_retried_with_the_same_idempotency_key(cloud: FakeCloud, status: int) -> None:
    cloud.reset("flaky", fail_first=2, status=status)
    reply = run(cloud.url, lambda c: c.infer(["x"], idempotency_key="same-key", deadline=soon()))
    assert [r.label for r in reply.results] == ["oos"]
    assert cloud.keys() == ["same-key"] * 3  # three attempts, one key


def test_backoff_is_exponential_with_full_jitter() -> None:
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    def refused_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    with pytest.raises(CloudCallFailed):
        run(f"http://127.0.0.1:{refused_port()}", lambda c: c.infer(["x"], idempotency_key="k", deadline=soon()),
            retries=3, backoff_s=0.1, rng=lambda: 0.5, sleep=sleep)
    assert delays == pytest.approx([0.05, 0.1, 0.2])


@pytest.mark.parametrize(("mode", "status"), [("bad_request", 400), ("error", 500)])
def test_client_errors_and_500_are_not_retried(cloud: FakeCloud, mode: str, status: int) -> None:
    cloud.reset(mode, status=status)
    breaker = CircuitBreaker(failures=1, reset_s=30)
    with pytest.raises(CloudCallFailed, match=str(status)):
        run(cloud.url, lambda c: c.infer(["x"], idempotency_key="k", deadline=soon()), breaker=breaker)
    assert len(cloud.attempts) == 1
    assert breaker.state == ("closed" if status == 400 else "open")  # a 400 is our fault, not the cloud's


def test_budget_exhausted_is_reported_with_its_reset_time_and_not_retried(cloud: FakeCloud) -> None:
    cloud.reset("budget")
    with pytest.raises(CloudBudgetExhausted) as info:
        run(cloud.url, lambda c: c.infer(["x"], idempotency_key="k", deadline=soon()))
    assert info.value.resets_at == cloud.resets_at and info.value.reason == "budget_exhausted"
    assert len(cloud.attempts) == 1


def test_a_slow_cloud_times_out_per_attempt(cloud: FakeCloud) -> None:
    cloud.reset("slow", delay_s=1.0)
    start = time.monotonic()
    with pytest.raises(CloudTimeout):
        run(cloud.url, lambda c: c.infer(["x"], idempotency_key="k", deadline=soon()), timeout_s=0.05, retries=1)
    assert time.monotonic() - start < 0.8
    assert cloud.keys() == ["k", "k"]


def test_the_request_deadline_bounds_the_call(cloud: FakeCloud) -> None:
    # A cloud far slower than the per-attempt timeout, itself far longer than the deadline: the margins
    # let a loaded 2-core machine through, and only the deadline can end the call before 2.5 s
    cloud.reset("slow", delay_s=6.0)
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        run(cloud.url, lambda c: c.infer(["x"], idempotency_key="k", deadline=soon(0.1)), timeout_s=5.0)
    assert time.monotonic() - start < 2.5
    cloud.reset()
    with pytest.raises(DeadlineExceeded):  # no time left at all: no attempt is made
        run(cloud.url, lambda c: c.infer(["x"], idempotency_key="k", deadline=time.monotonic()))
    assert cloud.attempts == []


def test_the_circuit_opens_fails_fast_and_recovers_through_a_probe(cloud: FakeCloud) -> None:
    cloud.reset("error", status=503)
    breaker = CircuitBreaker(failures=2, reset_s=0.2)

    async def scenario(client: CloudClient) -> list[str]:
        outcomes = []
        for _ in range(3):
            try:
                await client.infer(["x"], idempotency_key="k", deadline=soon())
                outcomes.append("ok")
            except (CloudCallFailed, CircuitOpen) as exc:
                outcomes.append(exc.reason)
        attempts_while_open = len(cloud.attempts)
        cloud.reset("ok")
        await asyncio.sleep(0.25)
        await client.infer(["x"], idempotency_key="k2", deadline=soon())
        outcomes.append(breaker.state)
        assert attempts_while_open == 2  # the third call never left the edge
        return outcomes

    assert run(cloud.url, scenario, retries=0, breaker=breaker) == ["cloud_error", "cloud_error", "circuit_open",
                                                                    "closed"]


def test_sigv4_signs_every_attempt_including_the_idempotency_key(cloud: FakeCloud) -> None:
    cloud.reset("flaky", fail_first=1, status=503)
    signer = SigV4Signer(Credentials("AKIDEXAMPLE", "secret"), region="eu-west-1")
    run(cloud.url, lambda c: c.infer(["x"], idempotency_key="k", deadline=soon()), signer=signer, api_key=None)
    assert len(cloud.attempts) == 2
    for attempt in cloud.attempts:
        auth = attempt.headers["authorization"]
        assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
        assert "/eu-west-1/execute-api/aws4_request" in auth and "idempotency-key" in auth
        assert attempt.headers["x-amz-date"] and attempt.idempotency_key == "k" and attempt.api_key is None


def test_a_signing_failure_is_a_cloud_error_not_a_crash(cloud: FakeCloud) -> None:
    def broken_signer(url: str, headers: Any, body: bytes) -> Any:
        raise RuntimeError("credentials expired")

    with pytest.raises(CloudCallFailed, match="cannot sign"):
        run(cloud.url, lambda c: c.infer(["x"], idempotency_key="k", deadline=soon()), signer=broken_signer)
    assert cloud.attempts == []


def test_the_client_never_sends_what_the_cloud_refuses(cloud: FakeCloud) -> None:
    with pytest.raises(ValueError, match="1-32 per call"):  # chunking is the caller's job; sending 33 is a bug
        run(cloud.url, lambda c: c.infer(["x"] * 33, idempotency_key="k", deadline=soon()))
    assert cloud.attempts == []
    long = "  " + "weather " * 100  # 802 characters; a blank lead is not worth the cloud's limit
    reply = run(cloud.url, lambda c: c.infer([long], idempotency_key="k", deadline=soon()))
    assert reply.results[0].label == "weather"
    assert cloud.attempts[0].body["texts"] == [long.strip()[:512]]
    cloud.reset(max_chars=100)  # a cloud deployed with another limit: the client is told it
    run(cloud.url, lambda c: c.infer([long], idempotency_key="k", deadline=soon()), max_text_chars=100)
    assert cloud.attempts[0].body["texts"] == [long.strip()[:100]]
