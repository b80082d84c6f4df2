"""Escalations against the cloud's real contract, over real HTTP: the edge chunks and cuts what it sends to
the cloud's per-call limits (the fake cloud refuses more, as the real one does), keys each chunk, shares
calls between requests when asked to (EDGE_CLOUD_BATCH_WAIT_MS), and any reply it cannot parse is an
`edge_fallback` with reason `cloud_error`, never a 500."""

import asyncio
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_container.errors import ConfigurationError
from edge_container.escalation import chunk_key, shared_key, split
from edge_container.settings import Settings
from edge_container.wiring import EdgeStack
from modelpack.cloud_api import Answer, BudgetInfo, InferReply, TextResult, is_idempotency_key
from modelpack.limits import CLOUD_MAX_TEXT_CHARS, CLOUD_MAX_TEXTS
from tests.edge_container.conftest import CLIENT_KEY, CONFIDENT, UNSURE, FakeCloud, edge_settings, serve_edge


@pytest.fixture(scope="module")
def server(tiny_artifact: Path, fake_cloud: FakeCloud) -> Iterator[tuple[httpx.Client, EdgeStack]]:
    settings = edge_settings(tiny_artifact, policy="cloud_only", cloud_url=fake_cloud.url, cloud_api_key="key-1",
                             breaker_failures=10_000, client_escalations_per_s=0.0)
    with serve_edge(settings) as pair:
        yield pair


@pytest.fixture
def client(server: tuple[httpx.Client, EdgeStack], cloud: FakeCloud) -> httpx.Client:
    server[1].service.escalation.budget.blocked_until = None
    return server[0]


def predict(client: httpx.Client, texts: list[str], **body: Any) -> list[dict[str, Any]]:
    response = client.post("/v1/predict", json={"texts": texts, **body})
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def sources(results: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(r["source"], r["reason"]) for r in results]


# --------------------------------------------------------------------------- #8: the cloud's limits


def test_more_texts_than_the_cloud_takes_per_call_go_up_in_chunks(client: httpx.Client, cloud: FakeCloud) -> None:
    texts = [f"{UNSURE} {i}" for i in range(CLOUD_MAX_TEXTS + 1)]
    assert sources(predict(client, texts)) == [("cloud", "forced_cloud")] * len(texts)
    assert sorted(len(a.body["texts"]) for a in cloud.attempts) == [1, CLOUD_MAX_TEXTS]
    assert sorted(t for a in cloud.attempts for t in a.body["texts"]) == sorted(texts)
    assert len(set(cloud.keys())) == 2  # each chunk is its own charge


def test_a_text_longer_than_the_cloud_takes_is_cut_to_its_limit(client: httpx.Client, cloud: FakeCloud) -> None:
    text = "weather " * 75  # 600 characters; the models read the first 128 tokens at most
    [result] = predict(client, [text])
    assert (result["source"], result["label"]) == ("cloud", "weather")
    [attempt] = cloud.attempts
    assert attempt.body["texts"] == [text.strip()[:CLOUD_MAX_TEXT_CHARS]]


def test_a_failing_chunk_falls_back_alone_with_its_reason(client: httpx.Client, cloud: FakeCloud) -> None:
    texts = [f"{UNSURE} {i}" for i in range(40)]
    texts[35] = "poison"
    cloud.reset(fail_marker="poison", status=500)
    results = predict(client, texts)
    assert sources(results) == [("cloud", "forced_cloud")] * 32 + [("edge_fallback", "cloud_error")] * 8
    assert all(r["label"] == r["edge"]["label"] for r in results[32:])


def test_each_chunk_has_a_deterministic_idempotency_key_of_its_own(client: httpx.Client, cloud: FakeCloud) -> None:
    texts = [UNSURE] * (2 * CLOUD_MAX_TEXTS)  # two identical chunks must still be two charges
    predict(client, texts, request_id="chunked-1")
    first = sorted(k for k in cloud.keys() if k)
    assert len(set(first)) == 2
    cloud.reset()  # the client's retry of the same request is the same work: the same keys
    predict(client, texts, request_id="chunked-1")
    assert sorted(k for k in cloud.keys() if k) == first
    cloud.reset()
    predict(client, texts, request_id="chunked-2")
    assert not set(cloud.keys()) & set(first)


# Pinned: a key that changed between versions would charge again a retry that spans an upgrade.
KEYS = {("req-1", 0): "edge-ea192dbc48a7207d665183493209df75892ff561a03c5775",
        ("req-1", 32): "edge-b8f8eaccfe5d25a3a303346d2b8168a858a49f70c29bb8c0"}


def test_a_chunk_key_is_derived_from_the_request_its_position_and_its_texts() -> None:
    texts = ["hello", "set a timer"]
    assert {(r, start): chunk_key(r, texts, start=start) for r, start in KEYS} == KEYS
    assert chunk_key("req-1", ["hello", "set a timer "]) != KEYS[("req-1", 0)]
    assert shared_key(KEYS.values()) == "edge-b-e3a807ae1db079c04315f15c0e9880ccd3fecf3723187635"
    odd = chunk_key("r-\ud800", ["bad \ud800"])  # a lone surrogate must not crash a key
    assert all(is_idempotency_key(k) for k in (*KEYS.values(), shared_key(KEYS.values()), odd))


def test_a_shared_reply_is_split_back_by_position_with_the_calls_cost_and_budget_on_each_part() -> None:
    budget = BudgetInfo(7, 10, "2026-11-22", datetime(2026, 11, 23, tzinfo=UTC))
    results = tuple(TextResult(label, 0.9, (Answer(label, 0.9),)) for label in ("a", "b", "c"))
    reply = InferReply(results, "cloud-7", 4, budget, "req-1", "stale", "latest_model_unavailable")
    first, second = split(reply, [1, 2])
    assert (first.results, second.results) == (results[:1], results[1:])
    for part in (first, second):
        assert (part.model_version, part.cost, part.budget, part.request_id, part.model_status,
                part.degraded_reason) == ("cloud-7", 4, budget, "req-1", "stale", "latest_model_unavailable")


def test_a_deployment_with_other_cloud_limits_sets_them_on_the_edge(tiny_artifact: Path, cloud: FakeCloud) -> None:
    settings = edge_settings(tiny_artifact, policy="cloud_only", cloud_url=cloud.url, cloud_api_key="key-1",
                             cloud_max_texts=4, cloud_max_text_chars=40, client_escalations_per_s=0.0)
    cloud.reset("slow", delay_s=0.1, max_texts=4, max_chars=40)
    texts = [f"{UNSURE} {i}" for i in range(19)] + ["weather " * 10]
    with serve_edge(settings) as (c, _):
        results = predict(c, texts)
    assert sources(results) == [("cloud", "forced_cloud")] * 20
    assert sorted(len(a.body["texts"]) for a in cloud.attempts) == [4] * 5
    assert max(len(t) for a in cloud.attempts for t in a.body["texts"]) == 40
    assert 1 < cloud.max_in_flight <= 4  # concurrent, but bounded: five chunks, four at a time


def test_the_cloud_limits_settings_default_to_the_shared_constants() -> None:
    assert (Settings.from_env({}).cloud_max_texts, Settings.from_env({}).cloud_max_text_chars) == (
        CLOUD_MAX_TEXTS, CLOUD_MAX_TEXT_CHARS)
    custom = Settings.from_env({"EDGE_CLOUD_MAX_TEXTS": "8", "EDGE_CLOUD_MAX_TEXT_CHARS": "2048"})
    assert (custom.cloud_max_texts, custom.cloud_max_text_chars) == (8, 2048)
    for key in ("EDGE_CLOUD_MAX_TEXTS", "EDGE_CLOUD_MAX_TEXT_CHARS"):
        with pytest.raises(ConfigurationError) as info:
            Settings.from_env({key: "0"})
        assert info.value.key == key


# --------------------------------------------------------------------------- #9: odd replies

_RESULT = '{"label": "weather", "confidence": 0.9, "top_k": [{"label": "weather", "confidence": 0.9}]}'
_BUDGET = '{"remaining": 5, "limit": 10, "period": "2026-11-22", "resets_at": "2026-11-23T00:00:00+00:00"}'


def reply(*, result: str = _RESULT, results: str | None = None, cost: str = "1", budget: str = _BUDGET) -> bytes:
    return (f'{{"results": {results if results is not None else f"[{result}]"}, "model_version": "cloud-7", '
            f'"cost": {cost}, "budget": {budget}}}').encode()


_DEEP = "[" * 100_000 + "]" * 100_000
_NAIVE_429 = b'{"error": {"code": "BUDGET_EXHAUSTED", "message": "spent", "resets_at": "2026-11-23T00:00:00"}}'
ODD_REPLIES = {  # (status, body, what the logged reason names)
    "infinite remaining": (200, reply(budget=_BUDGET.replace('"remaining": 5', '"remaining": 1e999')),
                           "budget.remaining is inf"),
    "NaN confidence": (200, reply(result=_RESULT.replace('"confidence": 0.9,', '"confidence": NaN,')),
                       "results[0].confidence is nan"),
    "NaN in top_k": (200, reply(result=_RESULT.replace('"confidence": 0.9}', '"confidence": NaN}')),
                     "results[0].top_k[0].confidence is nan"),
    "confidence above 1": (200, reply(result=_RESULT.replace("0.9,", "1.5,")), "results[0].confidence is 1.5"),
    "label not a string": (200, reply(result=_RESULT.replace('"weather",', "7,", 1)), "results[0].label is 7"),
    "no results": (200, reply(results="[]"), "0 results for 1 texts"),
    "two results for one text": (200, reply(results=f"[{_RESULT}, {_RESULT}]"), "2 results for 1 texts"),
    "infinite cost": (200, reply(cost="1e999"), "cost is inf"),
    "negative cost": (200, reply(cost="-1"), "cost is -1"),
    "naive resets_at in the budget": (200, reply(budget=_BUDGET.replace("+00:00", "")), "no timezone"),
    "naive resets_at in a 429": (429, _NAIVE_429, "error.resets_at '2026-11-23T00:00:00' has no timezone"),
    "a list, not an object": (200, b"[]", "the body is a list"),
    "not JSON": (200, b"<html>gateway</html>", "not usable JSON"),
    "deeply nested 200": (200, f'{{"results": {_DEEP}}}'.encode(), "not usable JSON (RecursionError)"),
    "deeply nested 429": (429, f'{{"error": {_DEEP}}}'.encode(), "answered 429"),
    "deeply nested 500": (500, f'{{"error": {_DEEP}}}'.encode(), "answered 500"),
}


@pytest.mark.parametrize(("status", "body", "logged"), ODD_REPLIES.values(), ids=ODD_REPLIES.keys())
def test_a_reply_the_edge_cannot_parse_is_a_cloud_error_fallback(
        client: httpx.Client, cloud: FakeCloud, caplog: pytest.LogCaptureFixture, status: int, body: bytes,
        logged: str) -> None:
    cloud.reset("raw", raw_status=status, raw_body=body)
    with caplog.at_level(logging.WARNING, logger="edge_container.cloud"):
        [result] = predict(client, [UNSURE])
    assert (result["source"], result["reason"]) == ("edge_fallback", "cloud_error")
    assert result["label"] == result["edge"]["label"] and result["model_versions"]["cloud"] is None
    warnings = [r.getMessage() for r in caplog.records if r.name == "edge_container.cloud"]
    assert any(logged in w for w in warnings), warnings
    assert client.get("/healthz").status_code == 200


def test_a_good_reply_after_odd_ones_is_used(client: httpx.Client, cloud: FakeCloud) -> None:
    cloud.reset("raw", raw_body=ODD_REPLIES["NaN confidence"][1])
    assert sources(predict(client, [UNSURE])) == [("edge_fallback", "cloud_error")]
    cloud.reset()
    assert sources(predict(client, [UNSURE])) == [("cloud", "forced_cloud")]


# --------------------------------------------------------------------------- cloud batching


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
    # breaker_failures: on a loaded machine the six may make five failing calls, which would open the breaker
    settings = edge_settings(tiny_artifact, cloud_url=cloud.url, cloud_api_key="k", cloud_batch_wait_ms=100,
                             cloud_retries=0, breaker_failures=100)
    with serve_edge(settings) as (client, _):
        answers = concurrently(str(client.base_url), [{"text": UNSURE, "route": "cloud"} for _ in range(6)])
    assert {(r["source"], r["reason"]) for body in answers for r in body["results"]} == {
        ("edge_fallback", "cloud_error")}


def test_without_a_batch_wait_each_request_calls_alone_with_its_own_key(tiny_artifact: Path, cloud: FakeCloud) -> None:
    settings = edge_settings(tiny_artifact, cloud_url=cloud.url, cloud_api_key="k")
    with serve_edge(settings) as (client, _):
        concurrently(str(client.base_url), [{"text": UNSURE, "route": "cloud"} for _ in range(4)])
    assert len(cloud.attempts) == 4 and not any(a.idempotency_key.startswith("edge-b-") for a in cloud.attempts)
