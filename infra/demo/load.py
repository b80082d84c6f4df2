"""The demo's traffic: the CLINC150 test split, replayed through the edge, and once straight to the cloud.

    samples = load_samples(data, limit=None)                        # shuffled with a fixed seed
    outcomes = asyncio.run(replay(edge_url, samples, concurrency=16, timeline=Timeline(), headers=...))
    labels, version = cloud_only_labels(cloud_url, api_key, [s.text for s in samples])
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from infra.demo.records import Outcome, Sample, Timeline
from infra.errors import StackError, refusal
from modelpack.cloud_api import InferReply, InferRequest

CLOUD_BATCH = 32  # the template's MaxTextsPerCall
SHUFFLE_SEED = 0


def load_samples(data: Path, *, limit: int | None) -> list[Sample]:
    """The test split (in-scope test + oos_test), shuffled with a fixed seed (the file is grouped by
    intent; a prefix of it would be a few intents only), then cut to `limit`."""
    from model_build.data.dataset import load_dataset

    dataset = load_dataset(data)
    split = dataset.test
    samples = [Sample(text, dataset.labels[int(i)]) for text, i in zip(split.texts, split.labels, strict=True)]
    random.Random(SHUFFLE_SEED).shuffle(samples)
    return samples[:limit] if limit else samples


async def replay(edge_url: str, samples: Sequence[Sample], *, concurrency: int, timeline: Timeline,
                 headers: Mapping[str, str] | None = None,
                 on_outcome: Callable[[Outcome], None] | None = None, timeout_s: float = 30.0) -> list[Outcome]:
    """Every sample once through `POST /v1/predict`, `concurrency` in flight at most, with `headers` (the
    client key and the JSON content type: `LocalStack.edge_headers`). No retries: a request that fails is
    counted as failed."""
    import httpx

    outcomes: list[Outcome | None] = [None] * len(samples)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(samples)):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(timeout_s, connect=5.0)
    client = httpx.AsyncClient(base_url=edge_url, headers=headers, limits=limits, timeout=timeout)
    async with client:

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                outcome = outcomes[i] = await _predict(client, i, samples[i].text, timeline)
                if on_outcome is not None:
                    on_outcome(outcome)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [o for o in outcomes if o is not None]


async def _predict(client: Any, i: int, text: str, timeline: Timeline) -> Outcome:
    import httpx

    at = timeline.now()
    started = time.perf_counter()
    try:
        response = await client.post("/v1/predict", json={"text": text, "request_id": f"demo-{i}"})
    except httpx.HTTPError as exc:
        return Outcome(i, False, at, (time.perf_counter() - started) * 1000, error=type(exc).__name__)
    latency = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        return Outcome(i, False, at, latency, status=response.status_code, error=response.text[:200])
    try:
        result = response.json()["results"][0]
        versions = result["model_versions"]
        return Outcome(i, True, at, latency, 200, None, result["label"], result["source"], result["reason"],
                       result["edge"]["label"], versions["edge"], versions["cloud"])
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        return Outcome(i, False, at, latency, status=200, error=f"bad response: {exc}")


def cloud_only_labels(cloud_url: str, api_key: str, texts: Sequence[str]) -> tuple[list[str], str]:
    """The cloud's answer for every text, in batches straight to the cloud API: the cloud-only baseline.
    Requests and replies are the cloud API's own wire types (`modelpack.cloud_api`)."""
    import httpx

    labels: list[str] = []
    version = ""
    with httpx.Client(base_url=cloud_url, timeout=httpx.Timeout(120.0, connect=5.0)) as client:
        for start in range(0, len(texts), CLOUD_BATCH):
            batch = texts[start:start + CLOUD_BATCH]
            response = client.post("/v1/infer", json=InferRequest(texts=tuple(batch)).to_json(),
                                   headers={"x-api-key": api_key})
            if response.status_code != 200:
                raise StackError(f"the cloud-only pass got {response.status_code}: {refusal(response)}")
            try:
                reply = InferReply.from_json(response.json(), n_texts=len(batch))
            except ValueError as exc:  # ContractViolation, or a body that is not JSON at all
                raise StackError(f"the cloud-only pass got a reply that breaks the contract: {exc}") from exc
            labels += [result.label for result in reply.results]
            version = reply.model_version
    return labels, version

