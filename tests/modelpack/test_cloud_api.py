"""modelpack.cloud_api: every wire type round-trips, and every malformed field is refused by name."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from modelpack.cloud_api import (
    Answer,
    BudgetInfo,
    BudgetStatus,
    ContractViolation,
    ErrorBody,
    ErrorCode,
    InferReply,
    InferRequest,
    RequestRefused,
    TextResult,
    Usage,
    decode_json,
)

RESETS = datetime(2026, 12, 3, tzinfo=UTC)
REPLY = InferReply(
    results=(TextResult("balance", 0.91, (Answer("balance", 0.91), Answer("oos", 0.05))),
             TextResult("oos", 0.32, (Answer("timer", 0.32),))),
    model_version="v7", cost=3, budget=BudgetInfo(97, 100, "2026-12-02", RESETS), request_id="r-1",
)


def through_json(value: Any) -> Any:
    """What the other side decodes: the bytes on the wire, parsed back."""
    return json.loads(json.dumps(value))


def test_a_request_round_trips_and_writes_only_what_it_holds() -> None:
    full = InferRequest(("hi", "set a timer"), (Answer("greeting", 0.4), Answer("timer", 0.2)), "req-9")
    assert InferRequest.from_json(through_json(full.to_json())) == full
    assert json.loads(full.encode()) == full.to_json()
    assert InferRequest(("hi",)).to_json() == {"texts": ["hi"]}


def test_a_reply_round_trips_with_its_optional_parts() -> None:
    assert InferReply.from_json(through_json(REPLY.to_json()), n_texts=2) == REPLY
    stale = InferReply(REPLY.results, "v6", 2, None, None, "stale", "latest_model_unavailable",
                       Usage(120, 8, Decimal("0.000321")))
    body = stale.to_json()
    assert body["degraded"] == {"reason": "latest_model_unavailable"} and body["budget"] is None
    assert InferReply.from_json(through_json(body)) == stale


def test_a_reply_without_optional_fields_reads_with_defaults_and_unknown_fields_are_ignored() -> None:
    minimal = {"results": [{"label": "timer", "confidence": 1}], "model_version": "v1", "added_later": {"x": 1}}
    reply = InferReply.from_json(minimal)
    assert reply == InferReply((TextResult("timer", 1.0),), "v1", 0)


@pytest.mark.parametrize(("mutate", "where"), [
    (lambda b: b.update(results="x"), "results is the string 'x', not a list"),
    (lambda b: b["results"].pop(), "1 results for 2 texts"),
    (lambda b: b["results"][1].update(confidence=float("nan")), "results[1].confidence is nan"),
    (lambda b: b["results"][0].update(confidence=True), "results[0].confidence is true"),
    (lambda b: b["results"][0].update(label=""), "results[0].label is the empty string"),
    (lambda b: b["results"][0]["top_k"][1].update(confidence=1.5), "results[0].top_k[1].confidence is 1.5"),
    (lambda b: b["results"][0].update(top_k={}), "results[0].top_k is an object, not a list"),
    (lambda b: b.update(cost=-1), "cost is -1"),
    (lambda b: b.update(cost=2**54), "cost is 18014398509481984, not a whole number in"),
    (lambda b: b.update(cost=10**30), "cost is a huge integer"),
    (lambda b: b["budget"].update(remaining=1.5), "budget.remaining is 1.5"),
    (lambda b: b["budget"].update(resets_at="2026-12-03T00:00:00"), "has no timezone offset"),
    (lambda b: b["budget"].update(resets_at="tomorrow"), "budget.resets_at is the string 'tomorrow'"),
    (lambda b: b.update(request_id=7), "request_id is 7"),
    (lambda b: b.update(degraded={"reason": 3}), "degraded.reason is 3"),
    (lambda b: b.update(usage={"input_tokens": 1, "output_tokens": 1, "cost_usd": 0.5}), "usage.cost_usd is 0.5"),
    (lambda b: b.update(usage={"input_tokens": 1, "output_tokens": 1, "cost_usd": "cheap"}),
     "usage.cost_usd is the string 'cheap', not a decimal"),
    (lambda b: b.update(usage={"input_tokens": 1, "output_tokens": 1, "cost_usd": "NaN"}), "usage.cost_usd is"),
    (lambda b: b.update(usage={"input_tokens": 1, "output_tokens": 1, "cost_usd": "-0.1"}), "usage.cost_usd is"),
])
def test_a_reply_that_breaks_the_contract_is_refused_naming_where(mutate: Any, where: str) -> None:
    body = through_json(REPLY.to_json())
    mutate(body)
    with pytest.raises(ContractViolation, match=where.replace("[", r"\[").replace("]", r"\]")):
        InferReply.from_json(body, n_texts=2)


def test_a_reply_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ContractViolation, match="the body is a list, not an object"):
        InferReply.from_json([])


@pytest.mark.parametrize(("body", "code", "details"), [
    ({"texts": []}, ErrorCode.INVALID_REQUEST, {"field": "texts"}),
    ({"texts": ["a"], "model": "big"}, ErrorCode.INVALID_REQUEST, {"field": "model"}),
    ({"texts": ["a"] * 5}, ErrorCode.TOO_MANY_TEXTS, {"field": "texts", "limit": 4}),
    ({"texts": ["ok", "   "]}, ErrorCode.INVALID_REQUEST, {"field": "texts[1]"}),
    ({"texts": ["ok", 3]}, ErrorCode.INVALID_REQUEST, {"field": "texts[1]"}),
    ({"texts": ["x" * 11]}, ErrorCode.TEXT_TOO_LONG, {"field": "texts[0]", "limit": 10}),
    ({"texts": ["ok", "bad \ud800"]}, ErrorCode.INVALID_TEXT, {"field": "texts[1]", "index": 1}),
    ({"texts": ["a"], "edge": [{"label": "x", "confidence": 0.5}] * 2}, ErrorCode.INVALID_REQUEST, {"field": "edge"}),
    ({"texts": ["a"], "edge": [{"label": "x", "confidence": 2}]}, ErrorCode.INVALID_REQUEST, {"field": "edge[0]"}),
    ({"texts": ["a"], "request_id": "r" * 129}, ErrorCode.INVALID_REQUEST, {"field": "request_id"}),
    ([1, 2], ErrorCode.INVALID_JSON, {}),
])
def test_a_request_the_cloud_refuses_names_its_code_and_field(body: Any, code: str, details: dict[str, Any]) -> None:
    with pytest.raises(RequestRefused) as refused:
        InferRequest.from_json(body, max_texts=4, max_chars=10)
    assert (refused.value.code, refused.value.details) == (code, details)


@pytest.mark.parametrize("body", [None, b"", b"{", b"\xff\xfe", b"[" * 100_000])
def test_an_undecodable_body_is_invalid_json(body: bytes | None) -> None:
    with pytest.raises(RequestRefused) as refused:
        decode_json(body)
    assert refused.value.code == ErrorCode.INVALID_JSON


def test_the_budget_status_round_trips_and_needs_its_reset_time() -> None:
    status = BudgetStatus("acme", "2026-12-02", 100, 40, 60, datetime(2026, 12, 3, 1, tzinfo=timezone(timedelta(hours=1))))
    assert BudgetStatus.from_json(through_json(status.to_json())) == status
    body = status.to_json()
    del body["resets_at"]
    with pytest.raises(ContractViolation, match="resets_at is missing"):
        BudgetStatus.from_json(body)


def test_an_error_body_round_trips_and_an_unreadable_one_is_empty_not_an_exception() -> None:
    error = ErrorBody(ErrorCode.BUDGET_EXHAUSTED, "spent", {"resets_at": RESETS.isoformat(), "requested": 2})
    again = ErrorBody.from_json(through_json(error.to_json()))
    assert again == error and again.resets_at() == RESETS
    for junk in (None, "<html>502</html>", {"error": "boom"}, {"error": {"code": 5, "message": None}}):
        assert (ErrorBody.from_json(junk).code, ErrorBody.from_json(junk).message) == ("", "")
    with pytest.raises(ContractViolation, match="error.resets_at"):
        ErrorBody("BUDGET_EXHAUSTED", "spent", {"resets_at": 12}).resets_at()
