"""The Lambda handler served over HTTP on loopback, the way API Gateway (REST, proxy integration) calls it.

    LOCAL_API_KEYS=s3cr3t-acme=acme,s3cr3t-beta=beta python -m infra.local_api --port 8080 \\
        --model-dir artifacts/latest --dynamodb-endpoint http://127.0.0.1:5000 --create-tables

    python -m infra.local_api --api-keys-file keys.txt ...   # one KEY=TENANT a line; # comments
    python -m infra.local_api --concurrency 8 ...            # execution environments (default: one a core, <= 4)

The accepted keys come from the environment (`LOCAL_API_KEYS`, comma-separated KEY=TENANT) or a file
(`--api-keys-file`, best 0600), never from the command line: `ps` shows a command line to every user.

Like API Gateway with `ApiKeyRequired`: a request without an `x-api-key` header, or with a key not in the
map, gets 403 {"message": "Forbidden"} and never reaches the function. A known key becomes the event's
`requestContext.identity.apiKeyId` (the tenant, as in AWS), and the request a REST proxy event
(`infra.api_gateway`) handed to `cloud_functions.handler.lambda_handler` in one of `--concurrency`
execution environments (`infra.lambda_pool`: processes, each running one invocation at a time with a
runtime of its own, as Lambda runs them side by side; `$LOCAL_CLOUD_CONCURRENCY` sets the default).
Requests beyond them wait in arrival order. Its statusCode, headers and body go back unchanged.
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
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from infra.api_gateway import (
    API_KEYS_ENV,
    MAX_BODY_BYTES,
    ApiKey,
    gateway_response,
    load_api_keys,
    proxy_event,
)
from infra.budget_admin import non_negative_int
from infra.lambda_pool import EnvironmentPool
from infra.local_function import PRELOAD, FunctionSetup, powertools_environ, resolve_tables

PROG = "python -m infra.local_api"
READY_PREFIX = "READY "
CONCURRENCY_ENV = "LOCAL_CLOUD_CONCURRENCY"
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
) -> Any:
    """A Starlette app in front of the function. `environments` start with the app (each builds the
    handler's runtime: clients and settings; the model still loads on its first inference, as in Lambda)
    and stop with it."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    keys = {key.value: key for key in api_keys}

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
        return gateway_response(await environments.invoke(event), Response)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        await environments.start()
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            await environments.stop()

    return Starlette(routes=[Route("/{path:path}", proxy, methods=_METHODS)], lifespan=lifespan)


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        api_keys = load_api_keys(args.api_keys_file, os.environ)
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
    )
    # Idle connections outlive the edge client's pool (httpx drops its idle ones after 5 s): a server that
    # closed first (uvicorn's default is 5 s too) would race the client's next call on that connection.
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, lifespan="on", timeout_keep_alive=75))
    server.run(sockets=[sock])
    return 0


def _prepare_environ(args: argparse.Namespace) -> None:
    """The process environment the execution environments inherit, as Lambda sets it."""
    os.environ.pop(API_KEYS_ENV, None)  # the handler has no business with them
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
