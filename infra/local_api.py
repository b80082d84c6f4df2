"""The Lambda handler served over HTTP on loopback, the way API Gateway (REST, proxy integration) calls it.

    LOCAL_API_KEYS=s3cr3t-acme=acme,s3cr3t-beta=beta python -m infra.local_api --port 8080 \\
        --model-dir artifacts/latest --dynamodb-endpoint http://127.0.0.1:5000 --create-tables

    python -m infra.local_api --api-keys-file keys.txt ...   # one KEY=TENANT a line; # comments

The accepted keys come from the environment (`LOCAL_API_KEYS`, comma-separated KEY=TENANT) or a file
(`--api-keys-file`, best 0600), never from the command line: `ps` shows a command line to every user.

Like API Gateway with `ApiKeyRequired`: a request without an `x-api-key` header, or with a key not in the
map, gets 403 {"message": "Forbidden"} and never reaches the function. A known key becomes the event's
`requestContext.identity.apiKeyId` (the tenant, as in AWS), and the request a REST proxy event (path,
method, headers, query, body, a fresh requestId) handed to `cloud_functions.handler.lambda_handler`
in-process, one invocation at a time (one Lambda execution environment). Its statusCode, headers and
body go back unchanged. Everything else comes from the environment, as in Lambda (COST_PER_TEXT,
DEFAULT_DAILY_BUDGET, ...); --budget-table/--idempotency-table default to what --create-tables makes.

Prints "READY http://host:port" once serving (--port 0 picks a free port). For a DynamoDB stand-in,
run `python -m infra.moto_server` (serialised, so budgets behave under concurrent clients).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import logging
import os
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

PROG = "python -m infra.local_api"
API_KEYS_ENV = "LOCAL_API_KEYS"
READY_PREFIX = "READY "
MAX_BODY_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit
FUNCTION_TIMEOUT_S = 30.0  # template.yaml Globals.Function.Timeout
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


@dataclass(frozen=True, slots=True)
class ApiKey:
    value: str  # what the client sends in x-api-key
    key_id: str  # what API Gateway puts in requestContext.identity.apiKeyId: the tenant


def parse_api_key(text: str) -> ApiKey:
    value, sep, key_id = (part.strip() for part in text.rpartition("="))  # a key may end in base64's "="
    if not sep or not value or not key_id:
        # Never echo the entry: it is (or holds) a secret, and this message ends up in a log.
        raise ValueError("an API key entry is not KEY=TENANT")
    return ApiKey(value, key_id)


def parse_api_keys(entries: Sequence[str]) -> list[ApiKey]:
    """KEY=TENANT entries; blank ones and `#` comments skipped. ValueError names an entry by position only."""
    keys = []
    for n, entry in enumerate((e.strip() for e in entries), start=1):
        if not entry or entry.startswith("#"):
            continue
        try:
            keys.append(parse_api_key(entry))
        except ValueError as exc:
            raise ValueError(f"entry {n}: {exc}") from None
    return keys


def load_api_keys(keys_file: str | None, environ: Mapping[str, str]) -> list[ApiKey]:
    """The accepted keys: from `keys_file` (one KEY=TENANT a line) if given, else $LOCAL_API_KEYS
    (comma-separated). ValueError if that gives none, or an entry is malformed."""
    if keys_file is not None:
        try:
            with open(keys_file, encoding="utf-8") as handle:
                entries, where = handle.read().splitlines(), f"--api-keys-file {keys_file}"
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--api-keys-file {keys_file}: cannot be read: {exc}") from None
    else:
        entries, where = environ.get(API_KEYS_ENV, "").split(","), f"${API_KEYS_ENV}"
    try:
        keys = parse_api_keys(entries)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if not keys:
        raise ValueError(f"{where}: no API key (KEY=TENANT); set {API_KEYS_ENV} or pass --api-keys-file")
    return keys


# --------------------------------------------------------------------------- the event API Gateway sends


def proxy_event(
    *,
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: Sequence[tuple[str, str]],
    body: bytes,
    api_key: ApiKey,
    source_ip: str,
    stage: str = "dev",
    request_id: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """An API Gateway REST proxy event (payload format 1.0) for one HTTP request."""
    now = now or datetime.now(UTC)
    request_id = request_id or str(uuid.uuid4())
    single_headers: dict[str, str] = {}
    multi_headers: dict[str, list[str]] = {}
    for name, value in headers:
        single_headers[name] = value  # API Gateway keeps the last value of a repeated header
        multi_headers.setdefault(name, []).append(value)
    single_query: dict[str, str] = {}
    multi_query: dict[str, list[str]] = {}
    for name, value in query:
        single_query[name] = value
        multi_query.setdefault(name, []).append(value)
    try:
        text: str | None = body.decode("utf-8") if body else None
        is_base64 = False
    except UnicodeDecodeError:  # API Gateway passes binary bodies base64-encoded
        text, is_base64 = base64.b64encode(body).decode("ascii"), True
    host = single_headers.get("host", "localhost")
    return {
        "resource": path,
        "path": path,
        "httpMethod": method,
        "headers": single_headers or None,
        "multiValueHeaders": multi_headers or None,
        "queryStringParameters": single_query or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": path,
            "httpMethod": method,
            "path": f"/{stage}{path}",
            "stage": stage,
            "requestId": request_id,
            "extendedRequestId": request_id,
            "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "requestTimeEpoch": int(now.timestamp() * 1000),
            "accountId": "123456789012",
            "apiId": "local",
            "domainName": host,
            "protocol": "HTTP/1.1",
            "identity": {
                "apiKey": api_key.value,
                "apiKeyId": api_key.key_id,
                "sourceIp": source_ip,
                "userAgent": single_headers.get("user-agent"),
                "accountId": None,
                "caller": None,
                "user": None,
                "userArn": None,
                "accessKey": None,
                "cognitoIdentityId": None,
                "cognitoIdentityPoolId": None,
                "cognitoAuthenticationType": None,
                "cognitoAuthenticationProvider": None,
            },
        },
        "body": text,
        "isBase64Encoded": is_base64,
    }


class LocalContext:
    """The LambdaContext of one local invocation: the template's timeout counts down from its start."""

    function_name = "local-inference"
    function_version = "$LATEST"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:local-inference"
    log_group_name = "/aws/lambda/local-inference"
    log_stream_name = "local"

    def __init__(self) -> None:
        self.aws_request_id = str(uuid.uuid4())
        self._deadline = time.monotonic() + FUNCTION_TIMEOUT_S

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


# --------------------------------------------------------------------------- the ASGI app


def create_app(
    api_keys: Sequence[ApiKey],
    *,
    build_runtime: Callable[[], Any],
    stage: str = "dev",
    on_ready: Callable[[], None] | None = None,
) -> Any:
    """A Starlette app in front of the handler. `build_runtime` makes the handler's runtime at start-up
    (clients and settings; the model still loads on the first inference, as in Lambda)."""
    import anyio.to_thread
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from cloud_functions import handler

    keys = {key.value: key for key in api_keys}
    one_at_a_time = threading.Lock()  # one execution environment runs one event at a time

    def invoke(event: dict[str, Any]) -> dict[str, Any]:
        with one_at_a_time:
            try:
                result: dict[str, Any] = handler.lambda_handler(event, LocalContext())
            except Exception:  # the function crashed: what API Gateway answers then
                logging.getLogger(__name__).exception("the handler raised")
                return {"statusCode": 502, "headers": {"Content-Type": "application/json"},
                        "body": '{"message": "Internal server error"}'}
            return result

    async def proxy(request: Request) -> Response:
        api_key = keys.get(request.headers.get("x-api-key", ""))
        if api_key is None:
            return JSONResponse(
                {"message": "Forbidden"}, status_code=403, headers={"x-amzn-ErrorType": "ForbiddenException"}
            )
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return JSONResponse({"message": "Request Too Long"}, status_code=413)
        event = proxy_event(
            method=request.method,
            path=request.url.path,
            query=request.query_params.multi_items(),
            headers=request.headers.items(),
            body=body,
            api_key=api_key,
            source_ip=request.client.host if request.client else "127.0.0.1",
            stage=stage,
        )
        result = await anyio.to_thread.run_sync(invoke, event)
        return _response(result, Response)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        handler.use_runtime(build_runtime())
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            handler.use_runtime(None)

    return Starlette(routes=[Route("/{path:path}", proxy, methods=_METHODS)], lifespan=lifespan)


def _response(result: Mapping[str, Any], response_class: Any) -> Any:
    raw = result.get("body") or ""
    content = base64.b64decode(raw) if result.get("isBase64Encoded") else raw.encode("utf-8")
    headers: list[tuple[str, str]] = [(k, str(v)) for k, v in (result.get("headers") or {}).items()]
    single = {name.lower() for name, _ in headers}
    for name, values in (result.get("multiValueHeaders") or {}).items():
        if name.lower() not in single:  # API Gateway merges both; a name in `headers` wins
            headers += [(name, str(value)) for value in values]
    response = response_class(content=content, status_code=int(result.get("statusCode", 502)))
    response.raw_headers = [(b"content-length", str(len(content)).encode())] + [
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers
    ]
    return response


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        api_keys = load_api_keys(args.api_keys_file, os.environ)
    except ValueError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    os.environ.pop(API_KEYS_ENV, None)  # the handler has no business with them
    # Powertools reads these when the handler module is imported, which happens below.
    os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "inference")
    os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "EdgeCloudInferenceLocal")
    if not args.emit_metrics:
        os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    for name, value in (("AWS_DEFAULT_REGION", args.region), ("AWS_REGION", args.region)):
        os.environ.setdefault(name, value)
    if args.dynamodb_endpoint:  # a local stand-in needs credentials, any will do
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # protocol TCP: asyncio then sets TCP_NODELAY (else +40 ms per reused connection)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        reason = exc.strerror or exc
        print(f"{PROG}: error: cannot listen on {args.host}:{args.port}: {reason}", file=sys.stderr)
        return 1
    host, port = sock.getsockname()[:2]
    app = create_app(
        api_keys,
        build_runtime=lambda: _build_runtime(args),
        stage=args.stage,
        on_ready=lambda: print(f"{READY_PREFIX}http://{host}:{port}", flush=True),
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, lifespan="on"))
    server.run(sockets=[sock])
    return 0


def _build_runtime(args: argparse.Namespace) -> Any:
    import boto3
    from botocore.config import Config

    from cloud_functions import handler
    from cloud_functions.settings import Settings
    from infra.moto_server import create_template_resources, load_template

    config = Config(connect_timeout=2, read_timeout=10, retries={"mode": "standard", "total_max_attempts": 3})
    dynamodb = boto3.client("dynamodb", endpoint_url=args.dynamodb_endpoint, config=config)
    budget_table, idempotency_table = args.budget_table, args.idempotency_table
    if args.create_tables:
        template = load_template()
        tables_only = {"Resources": {name: r for name, r in template["Resources"].items()
                                     if r["Type"] == "AWS::DynamoDB::Table"}}
        created = create_template_resources(dynamodb_client=dynamodb, s3_client=None, template=tables_only,
                                            prefix=args.table_prefix)
        budget_table = budget_table or created.tables["BudgetTable"]
        idempotency_table = idempotency_table or created.tables["IdempotencyTable"]
    environ = {
        **os.environ,
        "BUDGET_TABLE": budget_table or f"{args.table_prefix}-BudgetTable",
        "IDEMPOTENCY_TABLE": idempotency_table or f"{args.table_prefix}-IdempotencyTable",
        "MODEL_URI": str(args.model_dir),
        "MODEL_CACHE_DIR": os.environ.get("MODEL_CACHE_DIR") or tempfile.mkdtemp(prefix="local-api-models-"),
    }
    return handler.build_runtime(Settings.from_env(environ), dynamodb_client=dynamodb)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port (default: %(default)s)")
    parser.add_argument("--model-dir", required=True, help="artifact folder, or an s3:// model URI")
    parser.add_argument("--api-keys-file", metavar="PATH",
                        help=f"accepted x-api-keys, one KEY=TENANT a line (default: ${API_KEYS_ENV}, "
                        "comma-separated); never on the command line, where ps shows them")
    parser.add_argument("--dynamodb-endpoint", help="e.g. http://127.0.0.1:5000 (default: AWS itself)")
    parser.add_argument("--create-tables", action="store_true", help="create the template's tables first")
    parser.add_argument("--table-prefix", default="local", help="names of created tables: PREFIX-<LogicalId>")
    parser.add_argument("--budget-table", help="default: <table-prefix>-BudgetTable")
    parser.add_argument("--idempotency-table", help="default: <table-prefix>-IdempotencyTable")
    parser.add_argument("--stage", default="dev")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--emit-metrics", action="store_true", help="print EMF metric lines to stdout")
    parser.add_argument(
        "--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"]
    )
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
