"""The Lambda entry point behind API Gateway (REST proxy integration; API keys or IAM, per AUTH_MODE).

    POST /v1/infer    {"texts": [...], "edge": [...]?, "request_id": "..."?}   header Idempotency-Key?
    GET  /v1/budget   the calling tenant's budget for today (UTC)

Routes only decode, call `service`, and return; errors are mapped to responses once, by type, below.
Nothing is built at import: settings, clients, the ledger and the model are made by the first invocation
(`runtime()`), or installed ready-made with `use_runtime()` by tests and the local API.

Idempotency: a request with an Idempotency-Key runs through Powertools' idempotency (DynamoDB records,
scoped to the tenant: the same key of another tenant is another request), so a retry gets the stored
response; the ledger's own charge record under the same key makes the charge happen once even after
that record expires. A request without the header is not cached, but its charge is still keyed, with
the Lambda request id.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.shared.json_encoder import Encoder
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyInconsistentStateError,
    IdempotencyPersistenceLayerError,
    IdempotencyValidationError,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from cloud_functions import clients
from cloud_functions.backends import InferenceBackend
from cloud_functions.budget import Clock, utc_now
from cloud_functions.errors import (
    CloudError,
    IdempotencyConflict,
    IdempotencyInProgress,
    IdempotencyStoreUnavailable,
    InvalidJson,
    NotFound,
)
from cloud_functions.service import InferenceService, idempotency_key_from, parse_infer_request, tenant_from
from cloud_functions.settings import InferenceSettings, Settings
from modelpack.cloud_api import MAX_REQUEST_ID, InferRequest

# Powertools objects are cheap to make (they read POWERTOOLS_* variables, open nothing) and their
# decorators need them at import.
logger = Logger()
metrics = Metrics()
tracer = Tracer()
# Sorted keys: Powertools stores idempotent responses with sorted keys, so a replay is byte-identical to
# the first answer only if the first answer is sorted too.
app = APIGatewayRestResolver(
    serializer=partial(json.dumps, separators=(",", ":"), sort_keys=True, cls=Encoder)
)

IDEMPOTENCY_EXPIRY_S = 3600  # shorter than the ledger's charge records (2 days): the ledger has the last word
# What a replay must repeat to be one: the texts and the edge's answers, read as [label, confidence] pairs.
# The record's payload is the request's wire form (`InferRequest.to_json`: answers as objects); records
# written before that held the answers as pairs, and this reading hashes both alike, so they still replay.
IDEMPOTENCY_PAYLOAD = "request.[texts, edge[*].[label, confidence]]"


# --------------------------------------------------------------------------- wiring


@dataclass(frozen=True)
class Runtime:
    service: InferenceService
    idempotency: IdempotencyConfig
    infer_once: Callable[..., dict[str, Any]]  # service.infer behind Powertools idempotency
    auth_mode: str = "apikey"  # which request-context field names the tenant (service.tenant_from)

    def tenant(self, event: Any) -> str:
        return tenant_from(event.get("requestContext"), self.auth_mode)


def build_runtime(
    settings: Settings | None = None,
    options: InferenceSettings | None = None,
    *,
    dynamodb_client: Any = None,
    s3_client: Any = None,
    bedrock_client: Any = None,
    backend: InferenceBackend | None = None,
    clock: Clock = utc_now,
) -> Runtime:
    """Everything the routes need. Clients are created only when none is injected."""
    settings = settings or Settings.from_env()
    options = options or InferenceSettings.from_env()
    if dynamodb_client is None:
        dynamodb_client = clients.dynamodb()
    service = InferenceService.from_settings(
        settings,
        options,
        dynamodb_client=dynamodb_client,
        s3_client=s3_client,
        bedrock_client=bedrock_client,
        backend=backend,
        clock=clock,
        metrics=_Metrics(),
    )
    config = IdempotencyConfig(
        event_key_jmespath="[tenant, key]",
        payload_validation_jmespath=IDEMPOTENCY_PAYLOAD,  # same key, other texts -> 409
        expires_after_seconds=IDEMPOTENCY_EXPIRY_S,
        use_local_cache=True,  # a retry landing on this warm container is answered without a read
        response_hook=_on_replay,
    )
    persistence = DynamoDBPersistenceLayer(
        table_name=settings.idempotency_table, boto3_client=dynamodb_client
    )

    def charge_and_infer(*, call: dict[str, Any], request: InferRequest, request_id: str) -> dict[str, Any]:
        """`call` is what Powertools keys the record by and checks a replay against; the rest passes through."""
        return service.infer(call["tenant"], request, charge_key=call["key"], request_id=request_id)

    infer_once = idempotent_function(
        charge_and_infer,
        data_keyword_argument="call",
        persistence_store=persistence,
        config=config,
        key_prefix="v1-infer",  # stable across refactors (the default is the function's module path)
    )
    return Runtime(service=service, idempotency=config, infer_once=infer_once, auth_mode=settings.auth_mode)


_runtime: Runtime | None = None


def runtime() -> Runtime:
    """The execution environment's runtime, built on first use. A failed build is retried next time."""
    global _runtime
    if _runtime is None:
        _runtime = build_runtime()
    return _runtime


def use_runtime(prepared: Runtime | None) -> None:
    """Install a prepared runtime (tests, the local API); None makes the next invocation build one."""
    global _runtime
    _runtime = prepared


class _Metrics:
    """The service's metrics sink, on Powertools EMF metrics."""

    def count(self, name: str, value: float = 1) -> None:
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)

    def milliseconds(self, name: str, value: float) -> None:
        metrics.add_metric(name=name, unit=MetricUnit.Milliseconds, value=value)


def _on_replay(response: Any, record: Any) -> Any:
    metrics.add_metric(name="IdempotentReplays", unit=MetricUnit.Count, value=1)
    return response


# --------------------------------------------------------------------------- routes


@app.post("/v1/infer")
@tracer.capture_method(capture_response=False)
def infer() -> dict[str, Any]:
    event = app.current_event
    current = runtime()
    tenant = current.tenant(event)
    logger.append_keys(tenant=tenant)
    request = parse_infer_request(_body(), current.service.limits)
    # The edge's id for this escalation (X-Request-Id, else the body's): its log and ours share one id.
    edge_request_id = (event.headers.get("X-Request-Id") or request.request_id or "")[:MAX_REQUEST_ID]
    if edge_request_id:
        logger.append_keys(edge_request_id=edge_request_id)
        tracer.put_annotation(key="edge_request_id", value=edge_request_id)
    logger.info("infer", extra={"texts": len(request.texts)})
    key = idempotency_key_from(event.headers)
    context = app.lambda_context
    request_id = event.request_context.request_id or context.aws_request_id
    if key is None:
        return current.service.infer(
            tenant, request, charge_key=context.aws_request_id, request_id=request_id
        )
    logger.append_keys(idempotency_key=key)
    current.idempotency.register_lambda_context(context)
    call = {"tenant": tenant, "key": key, "request": request.to_json()}
    return current.infer_once(call=call, request=request, request_id=request_id)


@app.get("/v1/budget")
@tracer.capture_method(capture_response=False)
def budget() -> dict[str, Any]:
    current = runtime()
    tenant = current.tenant(app.current_event)
    logger.append_keys(tenant=tenant)
    return current.service.budget(tenant)


def _body() -> str | None:
    try:
        return app.current_event.decoded_body
    except ValueError:  # isBase64Encoded with a body that is not base64
        raise InvalidJson("the request body is not valid base64") from None


# --------------------------------------------------------------------------- errors -> responses, once


@app.exception_handler(CloudError)
def _cloud_error(error: CloudError) -> Response:
    if error.status >= 500:
        logger.exception("request failed", extra={"code": error.code})
    else:
        logger.info("request refused", extra={"code": error.code, "status": error.status})
    return _error_response(error)


@app.exception_handler(IdempotencyAlreadyInProgressError)
def _in_progress(_error: Exception) -> Response:
    return _error_response(IdempotencyInProgress("a request with this idempotency key is still running"))


@app.exception_handler(IdempotencyValidationError)
def _key_reused(_error: Exception) -> Response:
    return _error_response(
        IdempotencyConflict("this idempotency key was already used for a different request")
    )


@app.exception_handler([IdempotencyPersistenceLayerError, IdempotencyInconsistentStateError])
def _idempotency_store(_error: Exception) -> Response:
    logger.exception("idempotency store failed")
    return _error_response(IdempotencyStoreUnavailable("the idempotency store could not be reached"))


@app.not_found
def _not_found(_error: NotFoundError) -> Response:
    event = app.current_event
    return _error_response(NotFound(f"no route for {event.http_method} {event.path}"))


@app.exception_handler(Exception)
def _unexpected(_error: Exception) -> Response:
    logger.exception("unexpected error")  # the stack goes to the log, never to the client
    return _error_response(CloudError("internal error"))


def _error_response(error: CloudError) -> Response:
    return Response(
        status_code=error.status,
        content_type=content_types.APPLICATION_JSON,
        body=error.body(),
        headers=error.headers(),
    )


# --------------------------------------------------------------------------- entry point


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    response = app.resolve(event, context)
    status = int(response.get("statusCode", 500))
    metrics.add_metric(name="Requests", unit=MetricUnit.Count, value=1)
    if status >= 400:
        metrics.add_metric(
            name="ServerErrors" if status >= 500 else "ClientErrors", unit=MetricUnit.Count, value=1
        )
    return response
