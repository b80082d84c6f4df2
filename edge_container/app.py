"""The HTTP API (Starlette). Handlers only decode, call the service, encode. `Api.endpoint` times each one
and maps every `EdgeError` it raises, and the app's handlers map 404/405/500; all through `_error_response`,
the one place an error becomes a `{"error": {"code", "message"}}` body."""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from time import perf_counter
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from edge_container import oip
from edge_container.auth import Client, ClientAuth
from edge_container.debug import debug_listener, debug_port
from edge_container.errors import (
    AdminDisabled,
    BadRequest,
    CloudRouteForbidden,
    EdgeError,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    NotReady,
    PriorityForbidden,
    ProcessesDiverged,
    Unauthorized,
)
from edge_container.openapi import openapi_document
from edge_container.peers import LOCAL_HEADER, PeerReply, merged_metrics
from edge_container.schemas import json_object, one_or_many, parse_predict, prediction_json, read_json
from edge_container.settings import Settings
from edge_container.wiring import EdgeStack
from modelpack.version import package_version

log = logging.getLogger("edge_container.app")
Handler = Callable[[Request], Awaitable[tuple[Response, str]]]
Endpoint = Callable[[Request], Awaitable[Response]]
_TEXT = frozenset({"text"})
_TEXTS = frozenset({"texts"})


class JsonResponse(JSONResponse):
    """Starlette's JSON response encoded by orjson (UTF-8, compact, as Starlette's): about ten times faster than
    the standard library's encoder on a prediction. One difference: orjson writes a non-finite float as null
    where Starlette's encoder would raise (a model's probabilities are checked finite at load)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _error_response(exc: EdgeError) -> JsonResponse:
    return JsonResponse(exc.body(), status_code=exc.status, headers=exc.headers())


class Api:
    def __init__(self, stack: EdgeStack) -> None:
        self.stack, self.settings, self.service = stack, stack.settings, stack.service
        self.metrics = stack.metrics
        self.auth = ClientAuth(stack.settings.client_keys)

    def endpoint(self, name: str, handler: Handler, *, client_auth: bool = False) -> Endpoint:
        """`client_auth`: an inference route, which needs a client key when EDGE_CLIENT_KEYS is set; the
        caller is then `request.state.client`."""
        errors, family = self.metrics.errors, self.metrics.request_seconds
        latency: dict[str, Any] = {}  # children bound once per source: .labels() takes a lock per call

        async def run(request: Request) -> Response:
            start = perf_counter()
            try:
                if client_auth:
                    request.state.client = self.auth.identify(request.headers, _address(request))
                response, source = await handler(request)
            except EdgeError as exc:
                errors.labels(name, exc.code).inc()
                return _error_response(exc)
            except ClientDisconnect:  # the client left mid-body (or its body deadline closed it): not a bug, and
                # a flood of slow clients must not flood the log; nobody reads the answer
                errors.labels(name, "CLIENT_DISCONNECTED").inc()
                log.debug("client left during %s", name)
                return Response(status_code=499)
            except Exception:  # a bug: logged with its traceback; the client gets a bare 500, the connection lives
                log.exception("unhandled error in %s", name)
                errors.labels(name, EdgeError.code).inc()
                return _error_response(EdgeError("internal error"))
            child = latency.get(source) or latency.setdefault(source, family.labels(name, source))
            child.observe(perf_counter() - start)
            return response

        return run

    # --- native API -------------------------------------------------------------------------------------
    async def predict(self, request: Request) -> tuple[Response, str]:
        req = parse_predict(await read_json(request, self.settings.max_body_bytes), self.settings)
        client: Client = request.state.client
        if req.route == "cloud" and not client.authenticated:
            raise CloudRouteForbidden('route "cloud" spends the cloud budget on the caller\'s say-so: it needs a '
                                      "client key (EDGE_CLIENT_KEYS); without one the edge decides what to escalate")
        if req.priority == "high" and not client.authenticated:
            raise PriorityForbidden('priority "high" may spend the cloud budget ahead of the pace: it needs a '
                                    "client key (EDGE_CLIENT_KEYS)")
        prediction = await self.service.predict(req.texts, route=req.route, deadline_ms=req.deadline_ms,
                                                request_id=req.request_id, client=client.bucket,
                                                priority=req.priority)
        sources = {r.source for r in prediction.results}
        return (JsonResponse(prediction_json(prediction, self.service.policy.name),
                             headers={"x-request-id": prediction.request_id}),
                sources.pop() if len(sources) == 1 else "mixed")

    # --- compatibility with the Flask edge/cloud tutorial --------------------------------------------------
    async def health(self, request: Request) -> tuple[Response, str]:
        return JsonResponse({"status": "healthy"}), "none"

    async def compat_predict(self, request: Request) -> tuple[Response, str]:
        body = json_object(await read_json(request, self.settings.max_body_bytes), _TEXT)
        rows = await self.service.edge(one_or_many(body, self.settings))
        probs = rows.probs[0]
        return JsonResponse({"confidence": probs.tolist(), "label": rows.model.labels[int(probs.argmax())]}), "edge"

    async def compat_joint(self, request: Request) -> tuple[Response, str]:
        body = json_object(await read_json(request, self.settings.max_body_bytes), _TEXT)
        client: Client = request.state.client
        result = (await self.service.predict(one_or_many(body, self.settings), client=client.bucket)).results[0]
        source = "cloud" if result.source == "cloud" else "edge"
        return JsonResponse({"source": source, "label": result.label, "confidence": result.confidence,
                             "reason": result.reason}), result.source

    async def compat_batch(self, request: Request) -> tuple[Response, str]:
        body = json_object(await read_json(request, self.settings.max_body_bytes), _TEXTS)
        rows = await self.service.edge(one_or_many(body, self.settings))
        return JsonResponse({"confidences": rows.probs.tolist(),
                             "labels": [rows.model.labels[i] for i in rows.probs.argmax(axis=1).tolist()]}), "edge"

    # --- Open Inference Protocol v2 -------------------------------------------------------------------------
    async def v2_server(self, request: Request) -> tuple[Response, str]:
        return JsonResponse({"name": "edge_container", "version": package_version(), "extensions": []}), "none"

    async def v2_live(self, request: Request) -> tuple[Response, str]:
        return JsonResponse({"live": True}), "none"

    async def v2_ready(self, request: Request) -> tuple[Response, str]:
        with oip.protocol_errors():
            return await self._oip_ready(request, {"ready": True}), "none"

    def _model_named(self, request: Request) -> None:
        name = request.path_params["name"]
        if name != self.settings.model_name:
            raise ModelNotFound(f"no model named {name!r}; this server serves {self.settings.model_name!r}")

    async def _oip_ready(self, request: Request, ready: dict[str, Any]) -> Response:
        if not await self._ready(request):
            raise NotReady("the model is not loaded and warmed up yet")
        return JsonResponse(ready)

    async def _ready(self, request: Request) -> bool:
        """This process is ready; with EDGE_PROCESSES > 1, every sibling too (unless asked by one)."""
        if not self.stack.ready:
            return False
        peers = self.stack.peers
        return peers is None or _local(request) or await peers.all_ready()

    async def v2_model(self, request: Request) -> tuple[Response, str]:
        with oip.protocol_errors():
            self._model_named(request)
            return JsonResponse(oip.model_metadata(self.settings.model_name, self.stack.models.current)), "none"

    async def v2_model_ready(self, request: Request) -> tuple[Response, str]:
        with oip.protocol_errors():
            self._model_named(request)
            return await self._oip_ready(request, {"name": self.settings.model_name, "ready": True}), "none"

    async def v2_infer(self, request: Request) -> tuple[Response, str]:
        with oip.protocol_errors():
            self.auth.identify(request.headers, _address(request))  # an inference route: same keys, OIP errors
            self._model_named(request)
            body = await oip.read_body(request, self.settings.max_body_bytes)
            infer = oip.parse_infer(body, request.headers, self.settings)
            rows = await self.service.edge(infer.texts)
            return oip.infer_response(self.settings.model_name, rows.model, rows.probs, infer), "edge"

    # --- operations -----------------------------------------------------------------------------------------
    async def healthz(self, request: Request) -> tuple[Response, str]:
        return JsonResponse({"status": "ok"}), "none"

    async def readyz(self, request: Request) -> tuple[Response, str]:
        if await self._ready(request):
            return JsonResponse({"status": "ready", "model_version": self.stack.models.current.version}), "none"
        err = NotReady("the model is not loaded and warmed up yet")
        return JsonResponse({"status": "not_ready", **err.body()}, status_code=err.status,
                            headers=err.headers()), "none"

    async def metrics_text(self, request: Request) -> tuple[Response, str]:
        """With EDGE_PROCESSES > 1, every process's metrics, each sample labelled with its `process`."""
        own, peers = self.metrics.exposition(), self.stack.peers
        if peers is not None and not _local(request):
            texts = {self.settings.process_index or 0: own.decode()}
            texts.update({r.peer.index: r.body for r in await peers.ask("GET", "/metrics")
                          if r.status == 200 and isinstance(r.body, str)})
            own = merged_metrics(texts)
        return Response(own, media_type=self.metrics.content_type), "none"

    async def openapi(self, request: Request) -> tuple[Response, str]:
        return JsonResponse(openapi_document(package_version(), self.settings)), "none"

    # --- admin ----------------------------------------------------------------------------------------------
    def _authorise(self, request: Request) -> None:
        token = self.settings.admin_token
        if token is None:
            raise AdminDisabled("admin endpoints are disabled: set EDGE_ADMIN_TOKEN")
        given = request.headers.get("x-admin-token", "")
        if not given and request.headers.get("authorization", "").startswith("Bearer "):
            given = request.headers["authorization"][7:]
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise Unauthorized("missing or wrong admin token (x-admin-token or Authorization: Bearer)")

    async def admin_model(self, request: Request) -> tuple[Response, str]:
        self._authorise(request)
        return await self._everywhere(request, "GET", "/admin/model"), "none"

    async def admin_reload(self, request: Request) -> tuple[Response, str]:
        self._authorise(request)
        raw = await read_json(request, self.settings.max_body_bytes, empty=None)
        source = json_object(raw or {}, frozenset({"source"})).get("source", "folder")
        if source not in ("folder", "s3"):
            raise BadRequest("source must be 'folder' or 's3'")
        await self.stack.reloader.reload(source)
        return await self._everywhere(request, "POST", "/admin/reload", {"source": source}), "none"

    async def admin_rollback(self, request: Request) -> tuple[Response, str]:
        self._authorise(request)
        await self.stack.models.rollback()
        return await self._everywhere(request, "POST", "/admin/rollback", {}), "none"

    async def _everywhere(self, request: Request, method: str, path: str, body: Any = None) -> Response:
        """This process's status, after the same admin call on every sibling (EDGE_PROCESSES > 1):
        `processes` says which version each serves; a sibling that failed makes it a PROCESSES_DIVERGED."""
        peers = self.stack.peers
        if peers is None or _local(request):
            return JsonResponse(self._status())
        assert self.settings.admin_token is not None  # _authorise passed
        replies = await peers.ask(method, path, headers={"x-admin-token": self.settings.admin_token}, json=body)
        current = self.stack.models.current
        processes = [{"index": self.settings.process_index, "pid": os.getpid(), "model_version": current.version,
                      "ok": True, "error": None}, *(_process_entry(r) for r in replies)]
        processes.sort(key=lambda p: p["index"])
        failed = [p["index"] for p in processes if not p["ok"]]
        if failed or len(processes) < self.settings.processes:
            raise ProcessesDiverged(f"{path} done here, but not on every process (failed: {failed}, "
                                    f"{len(processes)} of {self.settings.processes} answered)", processes=processes)
        return JsonResponse({**self._status(), "processes": processes})

    def _status(self) -> dict[str, Any]:
        escalation = self.service.escalation
        circuit = escalation.cloud.breaker.state if escalation.cloud else "disabled"
        budget_until = escalation.budget.blocked_until
        feedback = self.service.feedback
        return {**self.stack.models.status(), "policy": self.service.policy.describe(), "circuit": circuit,
                "budget_blocked_until": budget_until.isoformat() if budget_until else None,
                "feedback_store": feedback.status() if feedback is not None else None}


class EdgeApp(Starlette):
    """Starlette, with the inference routes dispatched before its middleware and router.

    Their endpoints (`Api.endpoint`) map every error and time themselves already, so for them the two
    middleware layers, the route table and Starlette's per-route wrapper were pure cost on every request
    (bench/results/edge_profile.md). Everything else, and any other method on those paths (405), goes
    through Starlette as before."""

    def __init__(self, fast: Mapping[str, Endpoint], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._fast = dict(fast)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self._fast.get(scope["path"])
            if endpoint is not None:
                scope["app"] = self
                response = await endpoint(Request(scope, receive))
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def _local(request: Request) -> bool:
    """A sibling's fanned-out call (edge_container.peers): answer for this process only."""
    return request.headers.get(LOCAL_HEADER) == "1"


def _process_entry(reply: PeerReply) -> dict[str, Any]:
    body = reply.body if isinstance(reply.body, dict) else {}
    current = body.get("current") or {}
    error = reply.error or (body.get("error") or {}).get("message") if reply.status != 200 else None
    return {"index": reply.peer.index, "pid": reply.peer.pid, "model_version": current.get("model_version"),
            "ok": reply.status == 200, "error": error or (None if reply.status == 200 else f"HTTP {reply.status}")}


def _address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def create_app(settings: Settings | None = None, *, stack: EdgeStack | None = None) -> Starlette:
    """The ASGI app. Nothing is loaded here: the lifespan loads and warms the model before serving."""
    stack = stack or EdgeStack.create(settings or Settings.from_env())
    api = Api(stack)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await stack.start()
        try:
            async with debug_listener(stack) as debug:  # the mutual-TLS port, when EDGE_DEBUG_PORT is set
                stack.debug_port = debug_port(debug)
                yield
        finally:
            await stack.stop()

    fast: dict[str, Endpoint] = {}

    def route(path: str, name: str, handler: Handler, method: str = "GET", *, client_auth: bool = False) -> Route:
        endpoint = api.endpoint(name, handler, client_auth=client_auth)
        if client_auth and method == "POST":  # the inference routes: straight to the endpoint (EdgeApp)
            fast[path] = endpoint
        return Route(path, endpoint, methods=[method], name=name)

    routes = [
        route("/v1/predict", "predict", api.predict, "POST", client_auth=True),
        route("/health", "health", api.health),
        route("/predict", "compat_predict", api.compat_predict, "POST", client_auth=True),
        route("/joint_predict", "compat_joint_predict", api.compat_joint, "POST", client_auth=True),
        route("/batch_predict", "compat_batch_predict", api.compat_batch, "POST", client_auth=True),
        route("/v2", "v2_server", api.v2_server),
        route("/v2/health/live", "v2_live", api.v2_live),
        route("/v2/health/ready", "v2_ready", api.v2_ready),
        route("/v2/models/{name}", "v2_model", api.v2_model),
        route("/v2/models/{name}/ready", "v2_model_ready", api.v2_model_ready),
        route("/v2/models/{name}/infer", "v2_infer", api.v2_infer, "POST"),  # authenticates in its handler
        route("/healthz", "healthz", api.healthz),
        route("/readyz", "readyz", api.readyz),
        route("/metrics", "metrics", api.metrics_text),
        route("/openapi.json", "openapi", api.openapi),
        route("/admin/model", "admin_model", api.admin_model),
        route("/admin/reload", "admin_reload", api.admin_reload, "POST"),
        route("/admin/rollback", "admin_rollback", api.admin_rollback, "POST"),
    ]

    app = EdgeApp(fast, routes=routes, lifespan=lifespan, exception_handlers=_exception_handlers(stack))
    app.state.stack = stack
    return app


def _exception_handlers(stack: EdgeStack) -> dict[Any, Any]:
    """Starlette's own errors (404, 405, a bug outside an endpoint) in the API's error shape."""

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error: EdgeError = {404: NotFound, 405: MethodNotAllowed}.get(exc.status_code, BadRequest)(
            f"{request.method} {request.url.path}: {exc.detail}")
        if request.url.path == "/v2" or request.url.path.startswith("/v2/"):
            error = oip.ProtocolError(error)  # the protocol's error shape under its prefix
        stack.metrics.errors.labels("unmatched", error.code).inc()
        response = _error_response(error)
        response.headers.update(exc.headers or {})  # a 405 carries its Allow header
        return response

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        stack.metrics.errors.labels("unmatched", EdgeError.code).inc()
        return _error_response(EdgeError("internal error"))

    return {HTTPException: http_error, Exception: internal_error}
