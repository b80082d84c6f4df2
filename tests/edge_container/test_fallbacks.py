"""Graceful degradation over real HTTP: whatever the cloud does, every request is answered (by the edge,
with `source=edge_fallback` and the reason), and nothing fails because the cloud did."""

import asyncio
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_container.wiring import EdgeStack
from tests.edge_container.conftest import CLIENT_KEY, CONFIDENT, UNSURE, FakeCloud, edge_settings, serve_edge


def burst(base_url: str, n: int, **body: Any) -> list[httpx.Response]:
    """`n` concurrent /v1/predict requests, each with two texts."""
    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base_url, timeout=30, headers={"x-api-key": CLIENT_KEY}) as client:
            return await asyncio.gather(*(
                client.post("/v1/predict", json={"texts": [CONFIDENT, f"{UNSURE} {i}"], **body}) for i in range(n)))
    return asyncio.run(main())


def outcomes(responses: list[httpx.Response]) -> set[tuple[str, str]]:
    assert [r.status_code for r in responses] == [200] * len(responses), [r.text for r in responses if r.is_error]
    return {(res["source"], res["reason"]) for r in responses for res in r.json()["results"]}


@pytest.fixture(scope="module")
def server(tiny_artifact: Path, fake_cloud: FakeCloud) -> Iterator[tuple[httpx.Client, EdgeStack]]:
    settings = edge_settings(tiny_artifact, policy="cloud_only", cloud_url=fake_cloud.url, cloud_api_key="key-1",
                             cloud_timeout_ms=500, cloud_retries=1, breaker_failures=10_000, queue_size=1000)
    with serve_edge(settings) as pair:
        yield pair


@pytest.fixture
def client(server: tuple[httpx.Client, EdgeStack], cloud: FakeCloud) -> httpx.Client:
    server[1].service.escalation.budget.blocked_until = None
    return server[0]


def test_a_healthy_cloud_answers_every_escalation(client: httpx.Client, cloud: FakeCloud) -> None:
    assert outcomes(burst(str(client.base_url), 32)) == {("cloud", "forced_cloud")}
    # One call per request, both its texts together. A retry (500 ms timeout, one retry: a loaded machine can
    # need it) repeats the call under the same idempotency key, so the keys count the calls.
    keys = [a.idempotency_key for a in cloud.attempts]
    assert len(set(keys)) == 32 and all(keys.count(k) <= 2 for k in keys)
    assert all(len(a.body["texts"]) == 2 for a in cloud.attempts)


@pytest.mark.parametrize(("mode", "settings", "reason"), [
    ("slow", {"delay_s": 2.0}, "cloud_timeout"),  # far past the 500 ms timeout, even on a starved loop
    ("error", {"status": 503}, "cloud_error"),
    ("error", {"status": 500}, "cloud_error"),
])
def test_a_failing_cloud_falls_back_to_the_edge(client: httpx.Client, cloud: FakeCloud, mode: str,
                                                settings: dict[str, Any], reason: str) -> None:
    cloud.reset(mode, **settings)
    responses = burst(str(client.base_url), 24)
    assert outcomes(responses) == {("edge_fallback", reason)}
    for result in responses[0].json()["results"]:
        assert result["label"] == result["edge"]["label"] and result["model_versions"]["cloud"] is None
    metrics = client.get("/metrics").text
    assert f'edge_fallbacks_total{{reason="{reason}"}}' in metrics


def test_retries_reuse_the_idempotency_key(client: httpx.Client, cloud: FakeCloud) -> None:
    cloud.reset("flaky", fail_first=1, status=503)
    r = client.post("/v1/predict", json={"text": UNSURE, "request_id": "retry-me"})
    assert r.json()["results"][0]["source"] == "cloud"
    keys = cloud.keys()
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0]
    cloud.reset("ok")  # the client's own retry of the same request is the same charge: same key again
    client.post("/v1/predict", json={"text": UNSURE, "request_id": "retry-me"})
    assert cloud.keys() == [keys[0]]


def test_the_request_deadline_caps_the_wait_for_the_cloud(client: httpx.Client, cloud: FakeCloud) -> None:
    cloud.reset("slow", delay_s=1.5)
    start = time.monotonic()
    results = client.post("/v1/predict", json={"text": UNSURE, "deadline_ms": 60}).json()["results"]
    assert time.monotonic() - start < 1.0
    assert [(r["source"], r["reason"]) for r in results] == [("edge_fallback", "deadline")]


def test_budget_exhausted_stops_escalation_until_the_reset(client: httpx.Client, cloud: FakeCloud) -> None:
    cloud.reset("budget", resets_at=datetime.now(UTC) + timedelta(seconds=2))
    assert outcomes(burst(str(client.base_url), 1)) == {("edge_fallback", "budget_exhausted")}
    assert len(cloud.attempts) == 1
    assert outcomes(burst(str(client.base_url), 16)) == {("edge_fallback", "budget_exhausted")}
    assert len(cloud.attempts) == 1  # no further calls while the budget is spent
    forced = client.post("/v1/predict", json={"text": CONFIDENT, "route": "cloud"}).json()["results"][0]
    assert (forced["source"], forced["reason"]) == ("edge_fallback", "budget_exhausted")
    time.sleep(max(0.0, (cloud.resets_at - datetime.now(UTC)).total_seconds()) + 0.05)
    cloud.reset("ok")
    assert outcomes(burst(str(client.base_url), 2)) == {("cloud", "forced_cloud")}


def test_a_reported_empty_budget_stops_escalation_before_a_refusal(client: httpx.Client, cloud: FakeCloud) -> None:
    cloud.reset("ok", remaining=2)  # this call spends the last 2 units
    assert outcomes(burst(str(client.base_url), 1)) == {("cloud", "forced_cloud")}
    assert outcomes(burst(str(client.base_url), 3)) == {("edge_fallback", "budget_exhausted")}
    assert len(cloud.attempts) == 1
    assert "edge_cloud_budget_remaining 0.0" in client.get("/metrics").text


def test_the_circuit_opens_then_recovers(tiny_artifact: Path, cloud: FakeCloud) -> None:
    settings = edge_settings(tiny_artifact, policy="cloud_only", cloud_url=cloud.url, cloud_api_key="k",
                             cloud_retries=0, breaker_failures=3, breaker_reset_s=1.5)
    # The reset time must outlast the burst below on a loaded CI machine: 0.3 s once let a probe through.
    cloud.reset("error", status=503)
    with serve_edge(settings) as (client, _):
        first = [client.post("/v1/predict", json={"text": UNSURE}).json()["results"][0]["reason"] for _ in range(3)]
        assert first == ["cloud_error"] * 3
        assert outcomes(burst(str(client.base_url), 16)) == {("edge_fallback", "circuit_open")}
        assert len(cloud.attempts) == 3  # an open circuit sends nothing
        assert 'edge_cloud_circuit_state{edge_cloud_circuit_state="open"} 1.0' in client.get("/metrics").text
        cloud.reset("ok")
        time.sleep(1.55)
        assert client.post("/v1/predict", json={"text": UNSURE}).json()["results"][0]["source"] == "cloud"
        assert outcomes(burst(str(client.base_url), 8)) == {("cloud", "forced_cloud")}


def test_an_unreachable_cloud_and_no_cloud_at_all(tiny_artifact: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    # The breaker stays shut for the burst (it is tested above): how many cloud calls 8 concurrent requests make
    # depends on the batcher's timing, and on a loaded machine enough failed once to open it mid-burst.
    settings = edge_settings(tiny_artifact, policy="cloud_only", cloud_url=closed, cloud_api_key="k",
                             breaker_failures=100)
    with serve_edge(settings) as (c, _):
        assert outcomes(burst(str(c.base_url), 8)) == {("edge_fallback", "cloud_error")}
        assert 'edge_cloud_errors_total{kind="connection"}' in c.get("/metrics").text
    with serve_edge(edge_settings(tiny_artifact, policy="cloud_only")) as (c, _):
        assert outcomes(burst(str(c.base_url), 4)) == {("edge_fallback", "cloud_disabled")}
