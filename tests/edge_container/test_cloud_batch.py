"""Escalations of several requests in one cloud call (EDGE_CLOUD_BATCH_WAIT_MS), against the fake cloud
on loopback: fewer calls, every answer back to its own text, a failure shared by the call's members."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.edge_container.conftest import CLIENT_KEY, CONFIDENT, UNSURE, FakeCloud, edge_settings, serve_edge


def concurrently(base_url: str, bodies: list[dict]) -> list[dict]:
    async def main() -> list[dict]:
        async with httpx.AsyncClient(base_url=base_url, timeout=30, headers={"x-api-key": CLIENT_KEY}) as client:
            responses = await asyncio.gather(*(client.post("/v1/predict", json=b) for b in bodies))
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        return [r.json() for r in responses]

    return asyncio.run(main())


def test_concurrent_escalations_share_calls_and_each_answer_finds_its_text(
        tiny_artifact: Path, cloud: FakeCloud) -> None:
    settings = edge_settings(tiny_artifact, cloud_url=cloud.url, cloud_api_key="k", cloud_batch_wait_ms=100)
    texts = [CONFIDENT if i % 2 else UNSURE for i in range(12)]  # the fake says "weather" for the first kind
    with serve_edge(settings) as (client, _):
        bodies = [{"text": t, "route": "cloud", "request_id": f"req-{i}"} for i, t in enumerate(texts)]
        answers = concurrently(str(client.base_url), bodies)
    for text, body in zip(texts, answers, strict=True):
        [result] = body["results"]
        assert result["source"] == "cloud"
        assert result["label"] == ("weather" if "weather" in text else "oos")
    assert len(cloud.attempts) < len(texts)  # shared calls
    assert sum(len(a.body["texts"]) for a in cloud.attempts) == len(texts)
    assert any(len(a.body["texts"]) > 1 and a.idempotency_key.startswith("edge-b-") for a in cloud.attempts)


def test_a_failed_shared_call_falls_back_every_member(tiny_artifact: Path, cloud: FakeCloud) -> None:
    cloud.reset("error", status=500)
    settings = edge_settings(tiny_artifact, cloud_url=cloud.url, cloud_api_key="k", cloud_batch_wait_ms=100,
                             cloud_retries=0)
    with serve_edge(settings) as (client, _):
        answers = concurrently(str(client.base_url), [{"text": UNSURE, "route": "cloud"} for _ in range(6)])
    assert {(r["source"], r["reason"]) for body in answers for r in body["results"]} == {
        ("edge_fallback", "cloud_error")}


def test_without_a_batch_wait_each_request_calls_alone_with_its_own_key(tiny_artifact: Path, cloud: FakeCloud) -> None:
    settings = edge_settings(tiny_artifact, cloud_url=cloud.url, cloud_api_key="k")
    with serve_edge(settings) as (client, _):
        concurrently(str(client.base_url), [{"text": UNSURE, "route": "cloud"} for _ in range(4)])
    assert len(cloud.attempts) == 4 and not any(a.idempotency_key.startswith("edge-b-") for a in cloud.attempts)
