"""The Lambda handler end to end: API Gateway REST proxy events (tests/events/) -> lambda_handler, with the
template's tables in moto and the real tiny teacher. Budgets are read back from the table itself."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import logging
import math
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)

from cloud_functions.backends import BackendError, BedrockBackend, Inference, LiteRTBackend
from cloud_functions.budget import BudgetLedger
from cloud_functions.model_store import ModelStore
from cloud_functions.settings import Settings
from model_build.publish import publish
from modelpack.classifier import Classifier
from modelpack.cloud_api import InferReply, TextResult

from .conftest import Aws, FakeClock

EVENTS = Path(__file__).resolve().parents[1] / "events"
REPO = Path(__file__).resolve().parents[2]
TENANT = "k1acme0001"  # requestContext.identity.apiKeyId of the recorded events
KEY = "edge-7f3c2a10-0001"  # their Idempotency-Key
TEXTS = ["what is my account balance", "set a timer for five minutes"]  # the recorded infer body
LABELS = ("balance", "greeting", "timer", "weather", "oos")
LIMIT = 20


@dataclass
class FakeContext:
    """The parts of a LambdaContext that Powertools and the handler read."""

    aws_request_id: str = "8f5e1a9c-3b2d-4c1e-9f00-000000000001"
    function_name: str = "test-inference"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:test-inference"
    log_group_name: str = "/aws/lambda/test-inference"

    def get_remaining_time_in_millis(self) -> int:
        return 29_000


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: dict[str, Any]
    raw_body: str


def event(name: str, *, body: Any = ..., headers: dict[str, str | None] | None = None,
          api_key_id: Any = ...) -> dict[str, Any]:
    """A recorded event, changed where asked. `body` may be a JSON-able value or raw text (bytes: base64).
    `*_iam` events are signed by an assumed role (AuthMode=Iam), the others carry an API key."""
    recorded: dict[str, Any] = json.loads((EVENTS / f"{name}.json").read_text())
    changed = copy.deepcopy(recorded)
    if body is not ...:
        if isinstance(body, bytes):
            changed["body"], changed["isBase64Encoded"] = base64.b64encode(body).decode(), True
        else:
            changed["body"] = body if isinstance(body, str) or body is None else json.dumps(body)
    for header, value in (headers or {}).items():
        for table in (changed["headers"], changed["multiValueHeaders"]):
            table.pop(header, None)
            if value is not None:
                table[header] = value if table is changed["headers"] else [value]
    if api_key_id is None:
        del changed["requestContext"]["identity"]["apiKeyId"]
    elif api_key_id is not ...:
        changed["requestContext"]["identity"]["apiKeyId"] = api_key_id
    return changed


@pytest.fixture
def handler(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "EdgeCloudInferenceTest")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "inference")
    from cloud_functions import handler as module

    # Powertools reads the namespace when the module is first imported, maybe by another test module.
    monkeypatch.setattr(module.metrics.provider, "namespace", "EdgeCloudInferenceTest")
    module.use_runtime(None)
    yield module
    module.use_runtime(None)


@pytest.fixture
def env(aws: Aws, tiny_artifact: Path, tmp_path: Path) -> dict[str, str]:
    return {
        "BUDGET_TABLE": aws.budget_table,
        "IDEMPOTENCY_TABLE": aws.idempotency_table,
        "DEFAULT_DAILY_BUDGET": str(LIMIT),
        "COST_PER_REQUEST": "1",
        "COST_PER_TEXT": "1",
        "MAX_TEXTS_PER_CALL": "4",
        "MAX_CHARS_PER_TEXT": "64",
        "MODEL_URI": str(tiny_artifact),
        "MODEL_CACHE_DIR": str(tmp_path / "models"),
    }


@pytest.fixture(scope="session")
def teacher(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> LiteRTBackend:
    """The tiny teacher loaded once (a backend holds no state between calls)."""
    return LiteRTBackend.load(ModelStore(str(tiny_artifact), cache_dir=tmp_path_factory.mktemp("c")).fetch())


Install = Callable[..., None]


@pytest.fixture
def install(handler: ModuleType, aws: Aws, clock: FakeClock, env: dict[str, str]) -> Install:
    def install(*, backend: Any = None, **overrides: str) -> None:
        settings = Settings.from_env({**env, **overrides})
        handler.use_runtime(
            handler.build_runtime(
                settings, dynamodb_client=aws.dynamodb, s3_client=aws.s3, clock=clock, backend=backend
            )
        )

    return install


Invoke = Callable[..., Reply]


@pytest.fixture
def invoke(handler: ModuleType) -> Invoke:
    def invoke(request: dict[str, Any], *, request_id: str = FakeContext.aws_request_id) -> Reply:
        response = handler.lambda_handler(request, FakeContext(aws_request_id=request_id))
        headers = {name: values[-1] for name, values in (response.get("multiValueHeaders") or {}).items()}
        headers.update(response.get("headers") or {})
        return Reply(response["statusCode"], headers, json.loads(response["body"]), response["body"])

    return invoke


@pytest.fixture
def ledger(aws: Aws, clock: FakeClock) -> BudgetLedger:
    return BudgetLedger(aws.budget_table, dynamodb_client=aws.dynamodb, default_limit=LIMIT, clock=clock)


def _charge(aws: Aws, tenant: str, key: str) -> dict[str, str] | None:
    item = aws.dynamodb.get_item(
        TableName=aws.budget_table, Key={"tenant_id": {"S": tenant}, "sk": {"S": f"charge#{key}"}}
    ).get("Item")
    return None if item is None else {name: next(iter(value.values())) for name, value in item.items()}


# --------------------------------------------------------------------------- success


def test_an_inference_is_answered_by_the_teacher_charged_and_reported(
    install: Install, invoke: Invoke, ledger: BudgetLedger, tiny_artifact: Path, aws: Aws
) -> None:
    install()  # the model is loaded from MODEL_URI by the first request, as in Lambda

    reply = invoke(event("infer"))

    assert reply.status == 200, reply.body
    assert reply.headers["Content-Type"] == "application/json"
    expected = Classifier.from_folder(tiny_artifact, "cloud").predict(TEXTS)
    assert [r["label"] for r in reply.body["results"]] == [p.label for p in expected]
    assert [r["confidence"] for r in reply.body["results"]] == pytest.approx([p.confidence for p in expected])
    for result in reply.body["results"]:
        assert [t["confidence"] for t in result["top_k"]] == sorted(
            (t["confidence"] for t in result["top_k"]), reverse=True
        )
        assert len(result["top_k"]) == 3 and result["top_k"][0]["label"] == result["label"]
    assert reply.body["model_version"] == "tiny-1"
    assert reply.body["cost"] == 1 + 2  # per request + per text
    assert reply.body["budget"] == {
        "remaining": LIMIT - 3,
        "limit": LIMIT,
        "period": "2026-03-14",
        "resets_at": "2026-03-15T00:00:00+00:00",
    }
    assert reply.body["request_id"] == "edge-req-42"
    assert ledger.status(TENANT).spent == 3
    assert _charge(aws, TENANT, KEY) is not None  # charged under the client's key


def test_without_a_request_id_the_api_gateway_request_id_is_echoed(
    install: Install, invoke: Invoke, teacher: LiteRTBackend
) -> None:
    install(backend=teacher)

    reply = invoke(event("infer", body={"texts": ["hello there"]}))

    assert reply.status == 200
    assert reply.body["request_id"] == "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"
    assert "usage" not in reply.body  # the packaged model is not metered per call


def test_the_budget_route_reports_the_callers_budget(
    install: Install, invoke: Invoke, teacher: LiteRTBackend
) -> None:
    install(backend=teacher)
    assert invoke(event("infer")).status == 200

    reply = invoke(event("budget"))

    assert reply.status == 200
    assert reply.body == {
        "tenant": TENANT, "period": "2026-03-14", "limit": LIMIT, "remaining": LIMIT - 3, "spent": 3,
        "resets_at": "2026-03-15T00:00:00+00:00",
    }
    assert invoke(event("budget", api_key_id="k2other0002")).body["remaining"] == LIMIT


# --------------------------------------------------------------------------- bad input


LONG = "x" * 65


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ("{not json", "INVALID_JSON", None),
        ("", "INVALID_JSON", None),
        ([1, 2], "INVALID_JSON", None),
        ({}, "INVALID_REQUEST", "texts"),
        ({"texts": []}, "INVALID_REQUEST", "texts"),
        ({"texts": "hello"}, "INVALID_REQUEST", "texts"),
        ({"texts": ["ok", 7]}, "INVALID_REQUEST", "texts[1]"),
        ({"texts": ["ok", "   "]}, "INVALID_REQUEST", "texts[1]"),
        ({"texts": ["a", "b", "c", "d", "e"]}, "TOO_MANY_TEXTS", "texts"),
        ({"texts": ["ok", LONG]}, "TEXT_TOO_LONG", "texts[1]"),
        ({"texts": ["ok"], "edge": []}, "INVALID_REQUEST", "edge"),
        ({"texts": ["ok"], "edge": [{"label": "timer", "confidence": 1.5}]}, "INVALID_REQUEST", "edge[0]"),
        ({"texts": ["ok"], "edge": [{"label": "timer", "confidence": True}]}, "INVALID_REQUEST", "edge[0]"),
        ({"texts": ["ok"], "request_id": 42}, "INVALID_REQUEST", "request_id"),
        ({"texts": ["ok"], "tenant": "someone-else"}, "INVALID_REQUEST", "tenant"),
        (b"\xff\xfe not utf-8", "INVALID_JSON", None),
        ('{"texts": ["ok", "\\ud800"]}', "INVALID_TEXT", "texts[1]"),  # valid JSON, not valid Unicode
    ],
    ids=[
        "not-json", "empty-body", "not-an-object", "no-texts", "empty-texts", "texts-not-a-list",
        "text-not-a-string", "blank-text", "too-many-texts", "text-too-long", "edge-wrong-length",
        "edge-confidence-out-of-range", "edge-confidence-bool", "request-id-not-a-string",
        "tenant-in-the-body", "binary-body", "lone-surrogate",
    ],
)
def test_bad_requests_are_400_with_a_stable_code_and_cost_nothing(
    install: Install, invoke: Invoke, ledger: BudgetLedger, teacher: LiteRTBackend,
    body: Any, code: str, field: str | None,
) -> None:
    install(backend=teacher)

    reply = invoke(event("infer", body=body))

    assert reply.status == 400
    assert reply.body["error"]["code"] == code
    assert reply.body["error"].get("field") == field
    assert "Traceback" not in reply.raw_body
    assert ledger.status(TENANT).spent == 0


@pytest.mark.parametrize("idempotency_key", [KEY, None], ids=["keyed", "unkeyed"])
def test_a_text_with_a_lone_surrogate_is_refused_naming_its_index(
    install: Install, invoke: Invoke, ledger: BudgetLedger, teacher: LiteRTBackend, aws: Aws,
    idempotency_key: str | None,
) -> None:
    """Issue 9 #2: "\\ud800" is valid JSON but no Unicode text; the tokenizer raised: a 500."""
    install(backend=teacher)
    body = '{"texts": ["what is my account balance", "set a timer \\ud800 now"]}'

    reply = invoke(event("infer", body=body, headers={"Idempotency-Key": idempotency_key}))

    assert reply.status == 400, reply.body
    assert reply.body["error"]["code"] == "INVALID_TEXT"
    assert (reply.body["error"]["field"], reply.body["error"]["index"]) == ("texts[1]", 1)
    assert "U+D800" in reply.body["error"]["message"]
    assert ledger.status(TENANT).spent == 0
    assert aws.dynamodb.scan(TableName=aws.idempotency_table)["Items"] == []


def test_a_bad_idempotency_key_is_400(install: Install, invoke: Invoke, teacher: LiteRTBackend) -> None:
    install(backend=teacher)

    reply = invoke(event("infer", headers={"Idempotency-Key": "has spaces in it"}))

    assert (reply.status, reply.body["error"]["code"]) == (400, "INVALID_IDEMPOTENCY_KEY")


def test_an_unknown_route_is_a_json_404(install: Install, invoke: Invoke, teacher: LiteRTBackend) -> None:
    install(backend=teacher)
    request = event("budget")
    request["path"] = request["resource"] = "/v1/models"

    reply = invoke(request)

    assert (reply.status, reply.body["error"]["code"]) == (404, "NOT_FOUND")


# --------------------------------------------------------------------------- tenants and budgets


def test_a_request_without_an_api_key_identity_is_an_unknown_tenant(
    install: Install, invoke: Invoke, teacher: LiteRTBackend
) -> None:
    install(backend=teacher)

    for name in ("infer", "budget"):
        reply = invoke(event(name, api_key_id=None))
        assert (reply.status, reply.body["error"]["code"]) == (403, "UNKNOWN_TENANT")


ROLE_TENANT = "arn:aws:iam::123456789012:role/edge-acme"  # the role of the *_iam events' session


def test_in_iam_mode_the_tenant_is_the_signing_role(
    install: Install, invoke: Invoke, ledger: BudgetLedger, teacher: LiteRTBackend
) -> None:
    """Issue 24 #1: the handler took the tenant only from apiKeyId, so every SigV4 call was 403."""
    install(backend=teacher, AUTH_MODE="iam")

    reply = invoke(event("infer_iam"))

    assert reply.status == 200, reply.body
    assert reply.body["cost"] == 3
    assert ledger.status(ROLE_TENANT).spent == 3
    budget = invoke(event("budget_iam"))
    assert (budget.status, budget.body["tenant"], budget.body["spent"]) == (200, ROLE_TENANT, 3)


def test_in_iam_mode_a_new_session_name_does_not_buy_a_new_budget(
    install: Install, invoke: Invoke, ledger: BudgetLedger, teacher: LiteRTBackend
) -> None:
    """The session name is the caller's choice: a tenant per session would reset the budget at will."""
    install(backend=teacher, AUTH_MODE="iam", DEFAULT_DAILY_BUDGET="4")
    assert invoke(event("infer_iam")).status == 200  # 3 of 4 units
    other_session = event("infer_iam", headers={"Idempotency-Key": "edge-7f3c2a10-0002"})
    other_session["requestContext"]["identity"]["userArn"] = (
        "arn:aws:sts::123456789012:assumed-role/edge-acme/a-fresh-session-name")

    reply = invoke(other_session)

    assert (reply.status, reply.body["error"]["code"]) == (429, "BUDGET_EXHAUSTED")
    assert ledger.status(ROLE_TENANT).spent == 3


@pytest.mark.parametrize(("auth_mode", "recorded"), [("iam", "infer"), ("apikey", "infer_iam")],
                         ids=["iam-mode-api-key-event", "api-key-mode-iam-event"])
def test_only_the_identity_the_configured_authorizer_vouches_for_names_the_tenant(
    install: Install, invoke: Invoke, ledger: BudgetLedger, teacher: LiteRTBackend, auth_mode: str, recorded: str
) -> None:
    install(backend=teacher, AUTH_MODE=auth_mode)

    reply = invoke(event(recorded))

    assert (reply.status, reply.body["error"]["code"]) == (403, "UNKNOWN_TENANT")
    assert ledger.status(TENANT).spent == 0 and ledger.status(ROLE_TENANT).spent == 0


def test_an_exhausted_budget_refuses_a_whole_batch_it_cannot_cover(
    install: Install, invoke: Invoke, ledger: BudgetLedger, teacher: LiteRTBackend
) -> None:
    install(backend=teacher, DEFAULT_DAILY_BUDGET="5")
    assert invoke(event("infer", headers={"Idempotency-Key": "first"})).status == 200  # 3 units, 2 left

    # Mid-batch: 3 texts cost 4 > 2 left. Nothing is taken, no text is answered.
    refused = invoke(event("infer", body={"texts": ["a", "b", "c"]}, headers={"Idempotency-Key": "second"}))

    assert refused.status == 429
    assert refused.body["error"]["code"] == "BUDGET_EXHAUSTED"
    assert refused.body["error"]["resets_at"] == "2026-03-15T00:00:00+00:00"
    assert refused.body["error"]["requested"] == 4
    assert refused.headers["Retry-After"] == str(12 * 3600)  # noon -> midnight UTC
    assert ledger.status(TENANT).remaining == 2

    # What is left still buys a smaller call, to the last unit.
    last = invoke(event("infer", body={"texts": ["hello"]}, headers={"Idempotency-Key": "third"}))
    assert (last.status, last.body["budget"]["remaining"]) == (200, 0)


def test_tenants_spend_their_own_budgets(
    install: Install, invoke: Invoke, ledger: BudgetLedger, teacher: LiteRTBackend
) -> None:
    install(backend=teacher)
    ledger.set_limit("k2other0002", 3)

    assert invoke(event("infer", api_key_id="k2other0002")).status == 200
    assert invoke(event("infer", api_key_id="k2other0002", headers={"Idempotency-Key": "k2"})).status == 429

    assert ledger.status(TENANT).spent == 0 and ledger.status("k2other0002").spent == 3


# --------------------------------------------------------------------------- idempotency


def test_a_replayed_key_gets_the_same_response_and_is_charged_once(
    install: Install, invoke: Invoke, ledger: BudgetLedger, teacher: LiteRTBackend, aws: Aws
) -> None:
    install(backend=teacher)

    first = invoke(event("infer"), request_id="lambda-1")
    again = invoke(event("infer"), request_id="lambda-2")

    assert (first.status, again.status) == (200, 200)
    assert again.raw_body == first.raw_body
    assert ledger.status(TENANT).spent == 3
    records = aws.dynamodb.scan(TableName=aws.idempotency_table)["Items"]
    assert [r["status"]["S"] for r in records] == ["COMPLETED"]


def test_a_replay_from_a_cold_container_is_served_from_the_table(
    install: Install, invoke: Invoke, ledger: BudgetLedger, teacher: LiteRTBackend
) -> None:
    install(backend=teacher)
    first = invoke(event("infer"))
    install(backend=teacher)  # a new execution environment: empty local cache

    again = invoke(event("infer"))

    assert again.raw_body == first.raw_body and ledger.status(TENANT).spent == 3


def test_a_key_reused_for_other_texts_is_a_conflict_and_costs_nothing(
    install: Install, invoke: Invoke, ledger: BudgetLedger, teacher: LiteRTBackend
) -> None:
    install(backend=teacher)
    assert invoke(event("infer")).status == 200

    reply = invoke(event("infer", body={"texts": ["something else entirely"]}))

    assert (reply.status, reply.body["error"]["code"]) == (409, "IDEMPOTENCY_KEY_REUSED")
    assert ledger.status(TENANT).spent == 3


def test_the_same_key_from_another_tenant_is_another_request(
    install: Install, invoke: Invoke, ledger: BudgetLedger, teacher: LiteRTBackend
) -> None:
    install(backend=teacher)

    mine = invoke(event("infer"))
    theirs = invoke(event("infer", api_key_id="k2other0002"))

    assert (mine.status, theirs.status) == (200, 200)
    assert ledger.status(TENANT).spent == 3 and ledger.status("k2other0002").spent == 3


def test_without_the_header_each_invocation_is_charged_under_its_lambda_request_id(
    install: Install, invoke: Invoke, ledger: BudgetLedger, teacher: LiteRTBackend, aws: Aws
) -> None:
    install(backend=teacher)
    request = event("infer", headers={"Idempotency-Key": None})

    assert invoke(request, request_id="lambda-1").status == 200
    assert invoke(request, request_id="lambda-1").status == 200  # the same invocation retried
    assert invoke(request, request_id="lambda-2").status == 200  # a new call

    assert ledger.status(TENANT).spent == 6
    assert _charge(aws, TENANT, "lambda-1") is not None and _charge(aws, TENANT, "lambda-2") is not None
    assert aws.dynamodb.scan(TableName=aws.idempotency_table)["Items"] == []  # nothing cached


def test_a_request_arriving_while_its_key_is_in_flight_is_told_to_retry(
    install: Install, invoke: Invoke, ledger: BudgetLedger, teacher: LiteRTBackend
) -> None:
    inner: list[Reply] = []

    class _RetriedMidFlight:
        """Answers like the teacher, but first lets the same request (same key) arrive again."""

        model_version, labels = teacher.model_version, teacher.labels
        max_cost_usd = teacher.max_cost_usd

        def infer(self, texts: Any) -> Inference:
            inner.append(invoke(event("infer"), request_id="lambda-retry"))
            return teacher.infer(texts)

    install(backend=_RetriedMidFlight())

    outer = invoke(event("infer"), request_id="lambda-first")

    assert outer.status == 200
    (retry,) = inner
    assert (retry.status, retry.body["error"]["code"]) == (409, "IDEMPOTENCY_IN_PROGRESS")
    assert retry.headers["Retry-After"] == "1"
    assert ledger.status(TENANT).spent == 3


def test_after_the_idempotency_record_expires_the_ledger_still_charges_a_key_once(
    install: Install, invoke: Invoke, ledger: BudgetLedger, teacher: LiteRTBackend, aws: Aws
) -> None:
    install(backend=teacher)
    first = invoke(event("infer"))
    for record in aws.dynamodb.scan(TableName=aws.idempotency_table)["Items"]:  # as if its TTL had passed
        aws.dynamodb.delete_item(TableName=aws.idempotency_table, Key={"id": record["id"]})
    install(backend=teacher)

    again = invoke(event("infer"))

    assert again.status == 200 and again.body["results"] == first.body["results"]
    assert ledger.status(TENANT).spent == 3  # the charge record under the key was found: no second charge


def test_after_the_idempotency_record_expires_a_key_reused_for_other_texts_is_still_a_conflict(
    install: Install, invoke: Invoke, ledger: BudgetLedger, teacher: LiteRTBackend, aws: Aws
) -> None:
    """Issue 9 #3: the ledger's charge record took the same unit count as a replay and ran it for free."""
    install(backend=teacher)
    assert invoke(event("infer")).status == 200
    for record in aws.dynamodb.scan(TableName=aws.idempotency_table)["Items"]:  # as if its TTL had passed
        aws.dynamodb.delete_item(TableName=aws.idempotency_table, Key={"id": record["id"]})
    install(backend=teacher)  # a cold container: nothing in Powertools' local cache either
    other = ["what is the weather like", "hello there"]  # as many texts as TEXTS: the same cost

    reply = invoke(event("infer", body={"texts": other, "request_id": "edge-req-43"}))

    assert (reply.status, reply.body["error"]["code"]) == (409, "IDEMPOTENCY_KEY_REUSED"), reply.body
    assert "results" not in reply.body
    assert ledger.status(TENANT).spent == 3
    assert _charge(aws, TENANT, KEY)["state"] == "charged"  # type: ignore[index]
    # The original payload under the same key is still a free replay.
    assert invoke(event("infer")).status == 200 and ledger.status(TENANT).spent == 3


def _record_as_before_issue_23(aws: Aws, body: dict[str, Any], response: dict[str, Any]) -> None:
    """The idempotency record the handler wrote before issue 23 for `body` under the recorded key: its
    payload held the edge's answers as [label, confidence] pairs, validated as `request.[texts, edge]`.
    Written through Powertools with that handler's configuration, into the same table."""
    config = IdempotencyConfig(event_key_jmespath="[tenant, key]", payload_validation_jmespath="request.[texts, edge]",
                               expires_after_seconds=3600)
    config.register_lambda_context(FakeContext(aws_request_id="lambda-before"))
    store = DynamoDBPersistenceLayer(table_name=aws.idempotency_table, boto3_client=aws.dynamodb)
    edge = body.get("edge")
    payload = {"texts": body["texts"], "edge": None if edge is None else [[a["label"], a["confidence"]] for a in edge],
               "request_id": body.get("request_id")}
    before = idempotent_function(lambda *, call: response, data_keyword_argument="call", persistence_store=store,
                                 config=config, key_prefix="v1-infer")
    before(call={"tenant": TENANT, "key": KEY, "request": payload, "request_id": "lambda-before"})


RECORDED = json.loads(json.loads((EVENTS / "infer.json").read_text())["body"])


@pytest.mark.parametrize("body", [RECORDED, {"texts": RECORDED["texts"]}], ids=["with-edge-answers", "texts-only"])
def test_a_record_stored_before_the_payload_became_the_wire_form_still_replays(
    install: Install, invoke: Invoke, ledger: BudgetLedger, teacher: LiteRTBackend, aws: Aws, body: dict[str, Any]
) -> None:
    """Issue 23: the record's payload changed shape (edge answers as objects, not pairs); a retry of a call
    answered by the handler before the deployment is replayed from its record, not refused or charged."""
    stored = InferReply((TextResult("balance", 0.9), TextResult("timer", 0.8)), "before-23", 3).to_json()
    _record_as_before_issue_23(aws, body, stored)
    install(backend=teacher)

    again = invoke(event("infer", body=body))
    other = invoke(event("infer", body={**body, "texts": ["what is the weather like", "hello there"]}))

    assert again.status == 200 and again.body == stored
    assert ledger.status(TENANT).spent == 0  # replayed from the record: the teacher never ran, nothing charged
    assert (other.status, other.body["error"]["code"]) == (409, "IDEMPOTENCY_KEY_REUSED")


def test_free_calls_write_nothing_to_the_budget(
    install: Install, invoke: Invoke, ledger: BudgetLedger, teacher: LiteRTBackend, aws: Aws
) -> None:
    install(backend=teacher, COST_PER_REQUEST="0", COST_PER_TEXT="0")

    reply = invoke(event("infer"))

    assert reply.status == 200 and reply.body["cost"] == 0
    assert reply.body["budget"]["remaining"] == LIMIT
    assert _charge(aws, TENANT, KEY) is None


def test_a_bedrock_call_is_charged_what_its_tokens_cost(
    install: Install, invoke: Invoke, ledger: BudgetLedger, aws: Aws
) -> None:
    """Issue 24 #2: the budget charged the fixed fee whatever an LLM call cost."""
    import boto3
    from botocore.stub import ANY, Stubber

    client = boto3.client("bedrock-runtime", region_name="us-east-1")
    backend = BedrockBackend(client, model_id="amazon.nova-micro-v1:0", labels=LABELS, oos_label="oos",
                             input_usd_per_mtok=Decimal("0.035"), output_usd_per_mtok=Decimal("0.14"))
    answer = {"answers": [{"label": "balance", "confidence": 0.95}, {"label": "timer", "confidence": 0.9}]}
    with Stubber(client) as stubber:
        stubber.add_response(
            "converse",
            {"output": {"message": {"role": "assistant", "content": [{"text": json.dumps(answer)}]}},
             "stopReason": "end_turn", "usage": {"inputTokens": 200, "outputTokens": 30, "totalTokens": 230},
             "metrics": {"latencyMs": 300}},
            {"modelId": "amazon.nova-micro-v1:0", "system": ANY, "messages": ANY, "inferenceConfig": ANY},
        )
        # One unit = one micro-dollar, so the token cost shows: 200 x $0.035/M + 30 x $0.14/M = $0.0000112.
        install(backend=backend, BUDGET_UNIT_USD="0.000001", DEFAULT_DAILY_BUDGET="1000")

        reply = invoke(event("infer"))

    assert reply.status == 200, reply.body
    assert [r["label"] for r in reply.body["results"]] == ["balance", "timer"]
    assert reply.body["model_version"] == "bedrock:amazon.nova-micro-v1:0"
    assert reply.body["usage"] == {"input_tokens": 200, "output_tokens": 30, "cost_usd": "0.0000112"}
    assert reply.body["cost"] == 3 + 12  # the fee, plus the tokens' 11.2 micro-dollars rounded up
    assert ledger.status(TENANT).spent == 15
    record = _charge(aws, TENANT, KEY)
    assert record is not None and record["settled_units"] == "15"
    assert int(record["units"]) > 15  # reserved at the call's upper bound, the rest given back
    assert reply.body["budget"]["remaining"] == 1000 - 15


def test_an_llm_call_the_budget_cannot_cover_at_its_bound_is_refused_before_it_is_made(
    install: Install, invoke: Invoke, ledger: BudgetLedger
) -> None:
    calls: list[Any] = []

    class _Costly:
        model_version, labels = "llm-1", LABELS

        def max_cost_usd(self, texts: Any) -> Decimal:
            return Decimal("0.01")  # 100 units at the default $0.0001 a unit

        def infer(self, texts: Any) -> Inference:
            calls.append(texts)
            raise AssertionError("never called")

    install(backend=_Costly())

    reply = invoke(event("infer"))

    assert (reply.status, reply.body["error"]["code"]) == (429, "BUDGET_EXHAUSTED")
    assert reply.body["error"]["requested"] == 3 + 100
    assert calls == [] and ledger.status(TENANT).spent == 0


def test_an_openai_compatible_llm_answers_through_the_handler_and_is_charged_its_tokens(
    install: Install, invoke: Invoke, ledger: BudgetLedger
) -> None:
    from cloud_functions.http_transport import HttpTransport
    from cloud_functions.openai_backend import OpenAIBackend
    from cloud_functions.pricing import TokenPrices
    from cloud_functions.secrets import CachedSecret

    from .chat_server import ChatServer

    def decide(text: str) -> tuple[str, float, float]:
        return ("balance", 0.9, 0.8) if "balance" in text else ("timer", 0.9, 0.6)

    with ChatServer(decide, api_key="sk-handler") as server:
        transport = HttpTransport(server.base_url)
        backend = OpenAIBackend(transport, model="gpt-4o-mini", labels=LABELS, oos_label="oos",
                                prices=TokenPrices(Decimal("0.15"), Decimal("0.60")),
                                api_key=CachedSecret(lambda: "sk-handler", ttl_s=300))
        install(backend=backend, BUDGET_UNIT_USD="0.000001", DEFAULT_DAILY_BUDGET="1000")

        reply = invoke(event("infer"))
        transport.close()

    assert reply.status == 200, reply.body
    assert [(r["label"], round(r["confidence"], 6)) for r in reply.body["results"]] == [
        ("balance", 0.8), ("timer", 0.6)]
    usage = reply.body["usage"]
    tokens_usd = (usage["input_tokens"] * Decimal("0.15") + usage["output_tokens"] * Decimal("0.60")) / 10**6
    assert Decimal(usage["cost_usd"]) == tokens_usd
    assert reply.body["cost"] == 3 + math.ceil(tokens_usd / Decimal("0.000001"))
    assert ledger.status(TENANT).spent == reply.body["cost"]


# --------------------------------------------------------------------------- failures


class _BrokenBackend:
    model_version = "broken-1"
    labels = ("balance", "oos")

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    def max_cost_usd(self, texts: Any) -> Decimal:
        return Decimal(0)

    def infer(self, texts: Any) -> Inference:
        self.calls += 1
        raise self.error


def test_a_model_failure_refunds_the_charge(
    install: Install, invoke: Invoke, ledger: BudgetLedger, aws: Aws, teacher: LiteRTBackend
) -> None:
    broken = _BrokenBackend(BackendError("interpreter exploded"))
    install(backend=broken)

    reply = invoke(event("infer"))

    assert (reply.status, reply.body["error"]["code"]) == (503, "MODEL_UNAVAILABLE")
    assert "exploded" not in reply.raw_body
    assert broken.calls == 1
    assert ledger.status(TENANT).spent == 0 and ledger.status(TENANT).remaining == LIMIT
    assert _charge(aws, TENANT, KEY)["state"] == "refunded"  # type: ignore[index]

    # The failed call was not cached: a retry with the same key runs, and is charged, once.
    install(backend=teacher)
    assert invoke(event("infer")).status == 200
    assert ledger.status(TENANT).spent == 3


def test_an_unexpected_error_is_a_bare_500_and_still_refunds(
    install: Install, invoke: Invoke, ledger: BudgetLedger
) -> None:
    install(backend=_BrokenBackend(KeyError("secret internals")))

    reply = invoke(event("infer"))

    assert reply.status == 500
    assert reply.body == {"error": {"code": "INTERNAL_ERROR", "message": "internal error"}}
    assert ledger.status(TENANT).spent == 0


def test_a_model_that_cannot_load_costs_nothing(
    install: Install, invoke: Invoke, ledger: BudgetLedger, tmp_path: Path
) -> None:
    install(MODEL_URI=str(tmp_path / "no-model-here"))

    reply = invoke(event("infer"))

    assert (reply.status, reply.body["error"]["code"]) == (503, "MODEL_UNAVAILABLE")
    assert str(tmp_path) not in reply.raw_body
    assert ledger.status(TENANT).spent == 0
    assert invoke(event("budget")).status == 200  # the budget route needs no model


# --------------------------------------------------------------------------- last good model


def _put_latest(aws: Aws, manifest_key: str, manifest: bytes | None = None) -> None:
    pointer: dict[str, str] = {"model_version": manifest_key.split("/")[-2], "manifest_key": manifest_key}
    if manifest is not None:
        pointer["manifest_sha256"] = hashlib.sha256(manifest).hexdigest()
    aws.s3.put_object(Bucket=aws.model_bucket, Key="models/latest.json", Body=json.dumps(pointer).encode())


def _publish_bad_version(aws: Aws, damage: str, good_v2: Path) -> None:
    """Point models/latest.json at a version the cloud cannot use, the ways a publish can go wrong."""
    if damage == "corrupt":  # an object changed after publish: its SHA-256 no longer matches
        publish(good_v2, bucket=aws.model_bucket, prefix="models", s3_client=aws.s3)
        aws.s3.put_object(Bucket=aws.model_bucket, Key="models/tiny-2/cloud.tflite", Body=b"bit rot")
    elif damage == "missing":  # latest.json written before (or without) the version's objects
        _put_latest(aws, "models/tiny-9/manifest.json")
    else:  # "unloadable": every hash matches, but the cloud model is no model at all
        garbage = b"verified, but not a flatbuffer"
        manifest = json.loads((good_v2 / "manifest.json").read_text())
        manifest["model_version"] = "tiny-3"
        cloud = manifest["models"]["cloud"]
        cloud.update(sha256=hashlib.sha256(garbage).hexdigest(), size_bytes=len(garbage))
        data = json.dumps(manifest).encode()
        for key, body in [("tokenizer.json", (good_v2 / "tokenizer.json").read_bytes()),
                          ("cloud.tflite", garbage), ("manifest.json", data)]:
            aws.s3.put_object(Bucket=aws.model_bucket, Key=f"models/tiny-3/{key}", Body=body)
        _put_latest(aws, "models/tiny-3/manifest.json", data)


def _metrics(out: str) -> dict[str, Any]:
    blobs = [json.loads(line) for line in out.splitlines() if line.startswith('{"_aws"')]
    return {name: blob[name] for blob in blobs for name in blob if not name.startswith("_")}


@pytest.mark.parametrize("damage", ["corrupt", "missing", "unloadable"])
def test_a_cold_start_while_latest_names_a_bad_version_serves_the_last_verified_one(
    install: Install, invoke: Invoke, ledger: BudgetLedger, aws: Aws, tiny_artifact: Path,
    tiny_artifact_v2: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
    damage: str,
) -> None:
    """Issue 9 #10: such a cold start answered 503 on every call until a good publish."""
    uri = f"s3://{aws.model_bucket}/models/"
    publish(tiny_artifact, bucket=aws.model_bucket, prefix="models", s3_client=aws.s3)
    install(MODEL_URI=uri)
    good = invoke(event("infer"))
    assert (good.status, good.body["model_version"]) == (200, "tiny-1"), good.body
    _publish_bad_version(aws, damage, tiny_artifact_v2)
    install(MODEL_URI=uri)  # a new runtime in the same execution environment: /tmp still holds tiny-1
    capsys.readouterr()

    with caplog.at_level(logging.WARNING, logger="cloud_functions"):
        reply = invoke(event("infer", headers={"Idempotency-Key": "after-the-bad-publish"}))

    assert reply.status == 200, reply.body
    assert (reply.body["model_version"], reply.body["model_status"]) == ("tiny-1", "stale")
    assert reply.body["degraded"] == {"reason": "latest_model_unavailable"}
    assert reply.body["results"] == good.body["results"]
    assert aws.model_bucket not in reply.raw_body
    assert _metrics(capsys.readouterr().out)["StaleModelResponses"] == [1.0]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("tiny-1" in r.getMessage() for r in warnings), [r.getMessage() for r in warnings]
    assert ledger.status(TENANT).spent == 6  # a stale answer is still an answer: charged like any other
    assert good.body["model_status"] == "current" and "degraded" not in good.body  # the additive field


def test_without_a_verified_version_cached_a_bad_latest_is_503_and_costs_nothing(
    install: Install, invoke: Invoke, ledger: BudgetLedger, aws: Aws, tiny_artifact_v2: Path
) -> None:
    _publish_bad_version(aws, "corrupt", tiny_artifact_v2)
    install(MODEL_URI=f"s3://{aws.model_bucket}/models/")

    reply = invoke(event("infer"))

    assert (reply.status, reply.body["error"]["code"]) == (503, "MODEL_UNAVAILABLE")
    assert ledger.status(TENANT).spent == 0


# --------------------------------------------------------------------------- wiring and observability


def test_the_first_invocation_builds_everything_from_the_environment(
    handler: ModuleType, invoke: Invoke, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    handler.use_runtime(None)

    reply = invoke(event("infer"))

    assert reply.status == 200 and reply.body["model_version"] == "tiny-1"
    assert reply.body["budget"]["remaining"] == LIMIT - 3  # today by the real clock, in the moto table
    assert handler.runtime().service.ledger.status(TENANT).spent == 3


def test_a_misconfigured_deployment_answers_500_naming_no_secrets(
    handler: ModuleType, invoke: Invoke, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("BUDGET_TABLE")

    reply = invoke(event("infer"))

    assert (reply.status, reply.body["error"]["code"]) == (500, "CONFIGURATION_ERROR")
    assert reply.body["error"]["key"] == "BUDGET_TABLE"


def test_importing_the_handler_reads_no_settings_and_loads_nothing() -> None:
    code = (
        "import sys, cloud_functions.handler as h; "
        "assert h._runtime is None; "
        "assert 'modelpack.classifier' not in sys.modules and 'ai_edge_litert' not in sys.modules"
    )
    clean_env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "AWS_DEFAULT_REGION": "us-east-1"}

    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=clean_env, check=True, timeout=60)


def test_metrics_go_out_as_embedded_metric_format(
    install: Install, invoke: Invoke, teacher: LiteRTBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    install(backend=teacher)
    capsys.readouterr()

    invoke(event("infer"))

    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    metrics = {name: blob[name] for blob in blobs for name in blob if not name.startswith("_")}
    namespaces = {blob["_aws"]["CloudWatchMetrics"][0]["Namespace"] for blob in blobs}
    assert namespaces == {"EdgeCloudInferenceTest"}
    assert metrics["UnitsCharged"] == [3.0] and metrics["TextsInferred"] == [2.0]
    assert metrics["EdgeCompared"] == [2.0] and metrics["Requests"] == [1.0]


def test_a_handled_5xx_is_counted_where_the_template_alarms(
    install: Install, invoke: Invoke, capsys: pytest.CaptureFixture[str], handler: ModuleType
) -> None:
    """Issue 24 #3: a handled 5xx never reaches AWS/Lambda Errors. It is counted as ServerErrors in the
    function's namespace with the service as its one dimension: exactly what
    InferenceFunctionServerErrorsAlarm watches (tests/infra/test_template.py pins the alarm's side)."""
    install(backend=_BrokenBackend(BackendError("the model is down")))
    capsys.readouterr()

    reply = invoke(event("infer"))

    assert reply.status == 503
    (blob,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()
               if line.startswith('{"_aws"') and "ServerErrors" in line]
    (directive,) = blob["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "EdgeCloudInferenceTest"  # POWERTOOLS_METRICS_NAMESPACE
    assert directive["Dimensions"] == [["service"]]
    assert blob["service"] == handler.metrics.service == "inference"  # POWERTOOLS_SERVICE_NAME
    assert blob["ServerErrors"] == [1.0]
