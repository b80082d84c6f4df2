"""The Lambda handler served over HTTP on loopback, the way API Gateway (REST, proxy integration) calls it.

    LOCAL_API_KEYS=s3cr3t-acme=acme,s3cr3t-beta=beta python -m infra.local_api --port 8080 \\
        --model-dir artifacts/latest --dynamodb-endpoint http://127.0.0.1:5000 --create-tables

    python -m infra.local_api --api-keys-file keys.txt ...   # one KEY=TENANT a line; # comments
    python -m infra.local_api --concurrency 8 ...            # execution environments (default: one a core, <= 4)

    LOCAL_IAM_CREDENTIALS=AKIDLOCAL1:secret1:arn:aws:sts::123456789012:assumed-role/edge-acme/device-1 \
        python -m infra.local_api --auth iam ...     # template.yaml's AuthMode=Iam: SigV4-signed requests

The accepted keys come from the environment (`LOCAL_API_KEYS`, comma-separated KEY=TENANT) or a file
(`--api-keys-file`, best 0600), never from the command line: `ps` shows a command line to every user.
With `--auth iam`, the accepted credentials come from `LOCAL_IAM_CREDENTIALS` (comma-separated
ACCESS_KEY_ID:SECRET_ACCESS_KEY:PRINCIPAL_ARN; local stand-ins, the environment only).

Like API Gateway, in front of the function: a route the API does not have (template.yaml's paths) is
403 MISSING_AUTHENTICATION_TOKEN; with API keys, a request without an `x-api-key` header, or with a key
not in the map, is 403 INVALID_API_KEY; with IAM, an unsigned request is 403 MISSING_AUTHENTICATION_TOKEN
and one whose SigV4 signature does not verify (`infra.sigv4`: unknown key, wrong signature, more than 5
minutes off) 403 INVALID_SIGNATURE; a body over 10 MB is 413 REQUEST_TOO_LARGE. None reaches the function,
and each body is what template.yaml's GatewayResponses make of it (`infra.api_gateway.GatewayResponses`):
{"error": {"code", "message", "request_id"}}, the template read at start-up, so the two cannot drift. A
known key becomes the event's `requestContext.identity.apiKeyId`; a verified signature the identity's
`userArn`, `accessKey`, `accountId`, `caller` (the tenant follows AUTH_MODE, set from --auth, as in AWS),
and the request a REST proxy event (`infra.api_gateway`) handed to `cloud_functions.handler.lambda_handler`
in one of `--concurrency` execution environments (`infra.lambda_pool`: processes, each running one
invocation at a time with a runtime of its own, as Lambda runs them side by side; `$LOCAL_CLOUD_CONCURRENCY`
sets the default). Requests beyond them wait in arrival order. Its statusCode, headers and body go back unchanged.
Everything else comes from the environment, as in Lambda (COST_PER_TEXT, DEFAULT_DAILY_BUDGET, ...);
--budget-table/--idempotency-table default to what --create-tables makes.

Prints "READY http://host:port" once serving, every environment set up (--port 0 picks a free port). For
a DynamoDB stand-in, run `python -m infra.moto_server` (serialised, so budgets behave under concurrent
clients, however many environments call it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from infra.api_gateway import (
    API_KEYS_ENV,
    MAX_BODY_BYTES,
    ApiKey,
    GatewayResponses,
    Refusal,
    gateway_response,
    load_api_keys,
    proxy_event,
)
from infra.budget_admin import non_negative_int
from infra.lambda_pool import EnvironmentPool
from infra.local_function import PRELOAD, FunctionSetup, powertools_environ, resolve_tables
from infra.sigv4 import IAM_CREDENTIALS_ENV, IamCredential, load_iam_credentials, verify_sigv4

PROG = "python -m infra.local_api"
READY_PREFIX = "READY "
CONCURRENCY_ENV = "LOCAL_CLOUD_CONCURRENCY"
AUTH_MODES = ("apikey", "iam")
# One environment per core, at most 4: beyond the cores they only compete for CPU, and all of them queue at the
# one serialised moto (2 cores: 19.4 / 19.3 / 18.1 / 15.5 calls/s with 1 / 2 / 4 / 8 environments).
DEFAULT_CONCURRENCY = min(4, os.cpu_count() or 1)
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


# --------------------------------------------------------------------------- the ASGI app


def create_app(
    api_keys: Sequence[ApiKey],
    *,
    environments: EnvironmentPool,
    stage: str = "dev",
    on_ready: Callable[[], None] | None = None,
    auth_mode: str = "apikey",
    iam_credentials: Sequence[IamCredential] = (),
    region: str = "us-east-1",
    gateway: GatewayResponses | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Any:
    """A Starlette app in front of the function. `environments` start with the app (each builds the
    handler's runtime: clients and settings; the model still loads on its first inference, as in Lambda)
    and stop with it. `auth_mode` "apikey" checks `api_keys`; "iam" verifies SigV4 against
    `iam_credentials` (and the environments must run with AUTH_MODE=iam, as the template sets it)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    if auth_mode not in AUTH_MODES:
        raise ValueError(f"auth_mode must be one of {AUTH_MODES}")
    caller = _Caller(auth_mode, {key.value: key for key in api_keys},
                     {credential.access_key_id: credential for credential in iam_credentials}, region, clock)
    responses = gateway or GatewayResponses.from_template()

    async def proxy(request: Request) -> Response:
        request_id = str(uuid.uuid4())
        if (request.method, request.url.path) not in responses.routes:
            return responses.response(Refusal("MISSING_AUTHENTICATION_TOKEN", 403, "Missing Authentication Token"),
                                      request_id, Response)
        body = await request.body()
        try:
            api_key, credential = caller.identify(request, body)
            if len(body) > MAX_BODY_BYTES:
                raise Refusal("REQUEST_TOO_LARGE", 413, "Request Too Long")
        except Refusal as refusal:
            return responses.response(refusal, request_id, Response)
        event = _event(request, body, api_key, credential, stage=stage, request_id=request_id)
        return gateway_response(await environments.invoke(event), Response)

    return Starlette(routes=[Route("/{path:path}", proxy, methods=_METHODS)],
                     lifespan=_lifespan(environments, on_ready))


def _event(request: Any, body: bytes, api_key: ApiKey, credential: IamCredential | None, *, stage: str,
           request_id: str) -> dict[str, Any]:
    """The REST proxy event API Gateway hands the function for this (Starlette) request."""
    event = proxy_event(
        method=request.method,
        path=request.url.path,
        query=request.query_params.multi_items(),
        headers=request.headers.items(),
        body=body,
        api_key=api_key,
        source_ip=request.client.host if request.client else "127.0.0.1",
        stage=stage,
        request_id=request_id,
    )
    if credential is not None:
        event["requestContext"]["identity"].update(credential.identity())
    return event


def _lifespan(
    environments: EnvironmentPool, on_ready: Callable[[], None] | None
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """The app's lifespan: the execution environments start with it (then `on_ready`) and stop with it."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        await environments.start()
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            await environments.stop()

    return lifespan


class _Caller:
    """Who a request comes from, checked as API Gateway checks it before the function: its x-api-key
    (AuthMode=ApiKey) or its SigV4 signature (AuthMode=Iam); `Refusal` otherwise."""

    def __init__(self, auth_mode: str, keys: Mapping[str, ApiKey], principals: Mapping[str, IamCredential],
                 region: str, clock: Callable[[], datetime]) -> None:
        self._auth_mode, self._keys, self._principals, self._region, self._clock = (
            auth_mode, keys, principals, region, clock)

    def identify(self, request: Any, body: bytes) -> tuple[ApiKey, IamCredential | None]:
        if self._auth_mode == "iam":
            path = request.scope.get("raw_path", b"").decode("latin-1") or request.url.path
            credential = verify_sigv4(request.method, path, request.url.query, request.headers.items(), body,
                                      self._principals, region=self._region, now=self._clock())
            return ApiKey(value="", key_id=""), credential
        found = self._keys.get(request.headers.get("x-api-key", ""))
        if found is None:
            raise Refusal("INVALID_API_KEY", 403, "Forbidden")
        return found, None


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.auth == "iam":
            api_keys, credentials = [], load_iam_credentials(os.environ)
        else:
            api_keys, credentials = load_api_keys(args.api_keys_file, os.environ), []
    except ValueError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    _prepare_environ(args)

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
        environments=_environments(args),
        stage=args.stage,
        on_ready=lambda: print(f"{READY_PREFIX}http://{host}:{port}", flush=True),
        auth_mode=args.auth,
        iam_credentials=credentials,
        region=args.region,
    )
    # Idle connections outlive the edge client's pool (httpx drops its idle ones after 5 s): a server that
    # closed first (uvicorn's default is 5 s too) would race the client's next call on that connection.
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, lifespan="on", timeout_keep_alive=75))
    server.run(sockets=[sock])
    return 0


def _prepare_environ(args: argparse.Namespace) -> None:
    """The process environment the execution environments inherit, as Lambda sets it."""
    os.environ.pop(API_KEYS_ENV, None)  # the handler has no business with them
    os.environ.pop(IAM_CREDENTIALS_ENV, None)
    os.environ["AUTH_MODE"] = args.auth  # as template.yaml sets it from AuthMode
    for name, value in powertools_environ(emit_metrics=args.emit_metrics).items():
        os.environ.setdefault(name, value)
    for name, value in (("AWS_DEFAULT_REGION", args.region), ("AWS_REGION", args.region)):
        os.environ.setdefault(name, value)
    if args.dynamodb_endpoint:  # a local stand-in needs credentials, any will do
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")


def _environments(args: argparse.Namespace) -> EnvironmentPool:
    tables = resolve_tables(args.dynamodb_endpoint, create=args.create_tables, prefix=args.table_prefix,
                            budget=args.budget_table, idempotency=args.idempotency_table)
    cache = os.environ.get("MODEL_CACHE_DIR") or tempfile.mkdtemp(prefix="local-api-models-")
    setup = FunctionSetup(str(args.model_dir), args.dynamodb_endpoint, tables, cache)
    return EnvironmentPool(setup, size=args.concurrency, preload=PRELOAD)


def concurrency(text: str) -> int:
    """An argparse type: the number of execution environments, >= 1."""
    value = non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: at least one execution environment")
    return value


def default_concurrency(environ: Mapping[str, str]) -> int:
    """$LOCAL_CLOUD_CONCURRENCY, else DEFAULT_CONCURRENCY; SystemExit naming the variable if it is bad."""
    text = environ.get(CONCURRENCY_ENV)
    if not text:
        return DEFAULT_CONCURRENCY
    try:
        return concurrency(text)
    except argparse.ArgumentTypeError as exc:
        raise SystemExit(f"error: ${CONCURRENCY_ENV}: {exc}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port (default: %(default)s)")
    parser.add_argument("--model-dir", required=True, help="artifact folder, or an s3:// model URI")
    parser.add_argument("--api-keys-file", metavar="PATH",
                        help=f"accepted x-api-keys, one KEY=TENANT a line (default: ${API_KEYS_ENV}, "
                        "comma-separated); never on the command line, where ps shows them")
    parser.add_argument("--auth", choices=AUTH_MODES, default="apikey",
                        help="apikey: x-api-key (template AuthMode=ApiKey); iam: SigV4 (AuthMode=Iam)")
    parser.add_argument("--dynamodb-endpoint", help="e.g. http://127.0.0.1:5000 (default: AWS itself)")
    parser.add_argument("--create-tables", action="store_true", help="create the template's tables first")
    parser.add_argument("--table-prefix", default="local", help="names of created tables: PREFIX-<LogicalId>")
    parser.add_argument("--budget-table", help="default: <table-prefix>-BudgetTable")
    parser.add_argument("--idempotency-table", help="default: <table-prefix>-IdempotencyTable")
    parser.add_argument("--concurrency", type=concurrency, default=default_concurrency(os.environ),
                        help=f"execution environments, invocations side by side (default: ${CONCURRENCY_ENV} or "
                        f"{DEFAULT_CONCURRENCY}); more requests wait in arrival order")
    parser.add_argument("--stage", default="dev")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--emit-metrics", action="store_true", help="print EMF metric lines to stdout")
    parser.add_argument(
        "--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"]
    )
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
