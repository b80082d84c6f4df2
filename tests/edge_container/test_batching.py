"""Dynamic batching and routing policies end to end: concurrent HTTP requests, the real model, the fake cloud."""

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelpack.limits import CLOUD_MAX_TEXTS
from modelpack.policy_names import POLICY_NAMES
from tests.edge_container.conftest import CLIENT_KEY, CONFIDENT, UNSURE, FakeCloud, edge_settings, serve_edge

WORDS = ["weather", "timer", "balance", "hello", "rain", "minutes", "money", "morning", "music", "bread"]


def concurrently(base_url: str, path: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    async def main() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(bodies))
        async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits,
                                     headers={"x-api-key": CLIENT_KEY}) as client:
            return await asyncio.gather(*(client.post(path, json=b) for b in bodies))
    return asyncio.run(main())


@pytest.mark.parametrize("workers", [1, 0], ids=["worker-thread", "inline"])
def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(tiny_artifact: Path, workers: int) -> None:
    """Also inline (EDGE_WORKERS=0, the batch runs on the event loop): requests that arrive while a batch
    runs wait in their sockets, and the next batch takes them together."""
    texts = [f"{WORDS[i % 10]} {WORDS[(i * 7) % 10]} " + "please " * (i % 12) for i in range(96)]
    with serve_edge(edge_settings(tiny_artifact, max_batch_size=16, workers=workers)) as (client, _):
        alone = [client.post("/predict", json={"text": t}).json()["confidence"] for t in texts]
        responses = concurrently(str(client.base_url), "/predict", [{"text": t} for t in texts])
        assert [r.status_code for r in responses] == [200] * len(texts)
        together = [r.json()["confidence"] for r in responses]
        np.testing.assert_allclose(together, alone, atol=1e-5)  # padding to a batch's bucket changes nothing
        metrics = client.get("/metrics").text
    counts = {line.split("le=")[1].split("}")[0].strip('"'): float(line.rsplit(" ", 1)[1])
              for line in metrics.splitlines() if line.startswith("edge_batch_size_bucket")}
    assert counts["+Inf"] - counts["1.0"] > 0, "no batch ever held more than one text"
    assert counts["16.0"] == counts["+Inf"], "a batch exceeded max_batch_size"


def test_a_full_queue_answers_503_with_retry_after_and_never_500(tiny_artifact: Path) -> None:
    settings = edge_settings(tiny_artifact, queue_size=1, workers=1, max_batch_size=64, max_texts=64)
    with serve_edge(settings) as (client, _):
        long_text = f"{CONFIDENT} and will it rain on the way to the office tomorrow morning"  # slow to tokenize
        bodies = [{"texts": [f"{long_text} {i}"] * 64} for i in range(48)]
        responses = concurrently(str(client.base_url), "/v1/predict", bodies)
        statuses = {r.status_code for r in responses}
        assert statuses == {200, 503}, statuses
        refused = next(r for r in responses if r.status_code == 503)
        assert refused.headers["retry-after"] == "1" and refused.json()["error"]["code"] == "OVERLOADED"
        assert client.post("/v1/predict", json={"text": CONFIDENT}).status_code == 200  # and it recovers


EXPECTED_REASONS = {
    "threshold": {("edge", "confident"), ("cloud", "low_confidence")},
    "margin": {("edge", "confident"), ("cloud", "low_confidence")},
    "entropy": {("edge", "confident"), ("cloud", "low_confidence")},
    "adaptive": {("edge", "confident"), ("cloud", "low_confidence")},
    "paced": {("edge", "confident"), ("cloud", "low_confidence")},  # a budget that lasts: no text held back
    "shift_aware": {("edge", "confident"), ("cloud", "low_confidence")},  # no table: the manifest's threshold
    "random": {("edge", "not_sampled"), ("cloud", "sampled")},
    "edge_only": {("edge", "forced_edge")},
    "cloud_only": {("cloud", "forced_cloud")},
}


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_every_policy_serves_and_explains_its_routing(tiny_artifact: Path, cloud: FakeCloud, policy: str) -> None:
    settings = edge_settings(tiny_artifact, policy=policy, cloud_url=cloud.url, cloud_api_key="k",
                             target_escalation_rate=0.5, margin_threshold=0.5, entropy_threshold=0.5)
    with serve_edge(settings) as (client, _):
        texts = [CONFIDENT, UNSURE] * 30
        body = client.post("/v1/predict", json={"texts": texts}).json()
        assert body["policy"] == policy
        seen = {(r["source"], r["reason"]) for r in body["results"]}
        assert seen == EXPECTED_REASONS[policy], seen
        if policy in ("threshold", "margin", "entropy", "paced", "shift_aware"):  # the unsure text and only it goes to the cloud
            assert [r["source"] for r in body["results"]] == ["edge", "cloud"] * 30
        escalated = sum(r["source"] == "cloud" for r in body["results"])
        # A request's escalations go up in as few calls as the cloud's per-call limit allows.
        assert len(cloud.attempts) == -(-escalated // CLOUD_MAX_TEXTS)
