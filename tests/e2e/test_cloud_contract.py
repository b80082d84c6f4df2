"""The cloud API contract end to end: the edge's real `CloudClient` against the real Lambda handler (behind
the local API Gateway stand-in, moto for DynamoDB, real HTTP on loopback), one wire type after another.

Both sides use `modelpack.cloud_api`; these tests pin that what one writes the other reads, field by field:
`InferRequest` (texts, the edge's answers, request_id), `InferReply` (results, top_k, model version, cost,
budget), `BudgetStatus` (GET /v1/budget), and `ErrorBody` (a refusal's code and details, the budget's reset
time that decides how long the edge stops escalating).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from edge_container.breaker import CircuitBreaker
from edge_container.cloud import CloudClient
from edge_container.errors import CloudBudgetExhausted, CloudCallFailed
from infra.stack import LocalStack
from modelpack.cloud_api import Answer, BudgetStatus, ErrorBody, ErrorCode, InferReply, InferRequest
from modelpack.limits import CLOUD_MAX_TEXTS
from modelpack.routing import cloud_answer
from tests.e2e.conftest import Reference
from tests.fixtures.tiny_artifact import TEXTS

ASKED = [TEXTS["balance"][0], TEXTS["timer"][1], "is it going to rain in paris tomorrow"]


def call(stack: LocalStack, body: Callable[[CloudClient], Awaitable[Any]], **options: Any) -> Any:
    async def main() -> Any:
        async with httpx.AsyncClient() as http:
            client = CloudClient(http, url=f"{stack.cloud_url}/v1/infer", api_key=stack.api_key,
                                 breaker=CircuitBreaker(failures=100, reset_s=1), timeout_s=20.0, retries=0,
                                 **options)
            return await body(client)

    return asyncio.run(main())


def infer(stack: LocalStack, texts: list[str], key: str, **kwargs: Any) -> InferReply:
    return call(stack, lambda c: c.infer(texts, idempotency_key=key, deadline=time.monotonic() + 30, **kwargs))


def budget_status(stack: LocalStack) -> BudgetStatus:
    response = httpx.get(f"{stack.cloud_url}/v1/budget", headers={"x-api-key": stack.api_key}, timeout=30)
    assert response.status_code == 200, response.text
    return BudgetStatus.from_json(response.json())


@pytest.fixture
def restored_budget(stack: LocalStack) -> Iterator[None]:
    before = budget_status(stack).limit
    yield
    stack.set_budget(before)


def test_an_escalation_round_trips_every_field_of_request_and_reply(
        stack: LocalStack, references: dict[str, Reference]) -> None:
    before = budget_status(stack)
    edge = [Answer("greeting", 0.31), Answer("timer", 0.42), Answer("balance", 0.12)]
    reply = infer(stack, ASKED, "contract-roundtrip-1", request_id="contract-req-1", edge=edge)

    reference = references[reply.model_version]  # the version the cloud says answered, loaded directly
    logits = reference.cloud.logits(ASKED)
    probs = reference.cloud.calibrate(logits)
    manifest = reference.manifest
    expected = cloud_answer(probs, manifest.cloud, manifest.oos_index, logits=logits)
    assert [r.label for r in reply.results] == [manifest.labels[i] for i in expected]
    assert [r.confidence for r in reply.results] == pytest.approx(probs.max(axis=1).tolist(), abs=1e-6)
    for result, row in zip(reply.results, probs, strict=True):
        order = np.argsort(-row)[: len(result.top_k)]
        assert [a.label for a in result.top_k] == [manifest.labels[i] for i in order]
        assert result.top_k[0].confidence == pytest.approx(result.confidence)
    assert reply.request_id == "contract-req-1" and reply.model_status == "current"
    assert reply.cost == 1 + len(ASKED)  # the stack's prices: 1 per request + 1 per text
    after = budget_status(stack)
    assert reply.budget is not None
    assert (reply.budget.remaining, reply.budget.limit, reply.budget.period) == (
        after.remaining, after.limit, after.period)
    assert reply.budget.resets_at == after.resets_at and after.spent == before.spent + reply.cost


def test_a_replay_of_the_same_key_is_the_same_reply_and_charges_nothing(stack: LocalStack) -> None:
    first = infer(stack, ASKED[:2], "contract-replay-1")
    spent = budget_status(stack).spent
    again = infer(stack, ASKED[:2], "contract-replay-1")
    assert again == first and budget_status(stack).spent == spent


def test_a_spent_budget_reaches_the_edge_as_budget_exhausted_with_the_ledgers_reset_time(
        stack: LocalStack, restored_budget: None) -> None:
    stack.set_budget(0)
    with pytest.raises(CloudBudgetExhausted) as refused:
        infer(stack, ASKED[:1], "contract-budget-1")
    assert refused.value.resets_at == budget_status(stack).resets_at


def test_a_refusal_is_an_error_body_with_its_code_and_details(stack: LocalStack) -> None:
    too_many = [f"text {i}" for i in range(CLOUD_MAX_TEXTS + 1)]
    response = httpx.post(f"{stack.cloud_url}/v1/infer", json=InferRequest(tuple(too_many)).to_json(),
                          headers={"x-api-key": stack.api_key}, timeout=30)
    error = ErrorBody.from_json(response.json())
    assert (response.status_code, error.code) == (400, ErrorCode.TOO_MANY_TEXTS)
    assert error.details == {"field": "texts", "limit": CLOUD_MAX_TEXTS}
    # An edge configured above the cloud's limit sends it anyway: the 400 is a failed call, not a crash.
    with pytest.raises(CloudCallFailed, match="400 TOO_MANY_TEXTS"):
        call(stack, lambda c: c.infer(too_many, idempotency_key="contract-too-many",
                                      deadline=time.monotonic() + 30), max_texts=CLOUD_MAX_TEXTS + 1)
