"""The remote debugging listener: a second HTTPS port that only the operator's client certificates open.

    EDGE_DEBUG_PORT=8443 EDGE_DEBUG_TLS_CERT=server.pem EDGE_DEBUG_TLS_KEY=server.key \\
    EDGE_DEBUG_TLS_CLIENT_CA=operators-ca.pem python -m edge_container serve

Mutual TLS, enforced in the handshake (`ssl.CERT_REQUIRED` against EDGE_DEBUG_TLS_CLIENT_CA): no client
certificate, one of another CA, or an expired one never gets a byte of HTTP. What it serves, all bounded and
with every secret the settings hold redacted:

    GET  /debug/logs?lines=N     the last N log lines (N <= 1000) of this process
    GET  /debug/model            model state, previous version, rollback pin, last error, reload history,
                                 feedback store health
    POST /debug/reload           {"source": "folder"|"s3"}: reload now (verified like every reload; lifts a pin)
    POST /debug/rollback         back to the previous version in memory, pinned there (as /admin/rollback)
    GET  /debug/config           the effective configuration (secrets shown as "[redacted]")
    GET  /debug/metrics          a Prometheus text snapshot
    GET  /debug/bundle           all of the above as one .tar.gz, for a support ticket

It shares the serving process's state (the same `EdgeStack`), runs in the same event loop, and starts and
stops with the main server's lifespan. The plain admin token (`/admin/*`) stays for local use only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import platform
import ssl
import tarfile
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from edge_container.errors import BadRequest, EdgeError

if TYPE_CHECKING:
    from edge_container.metrics import Metrics
    from edge_container.settings import Settings
    from edge_container.wiring import EdgeStack

log = logging.getLogger("edge_container.debug")
MAX_LINES = 1000
REDACTED = "[redacted]"
_SECRET_FIELDS = frozenset({"cloud_api_key", "admin_token"})


class LogRing(logging.Handler):
    """The last `capacity` formatted log lines, with the given secrets replaced by `[redacted]`."""

    def __init__(self, capacity: int = 2000, secrets: Sequence[str] = ()) -> None:
        super().__init__()
        self._lines: deque[str] = deque(maxlen=capacity)
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)  # longest first
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.redact(self.format(record)))
        except Exception:  # noqa: BLE001 - a log handler must never raise into the code that logs
            self.handleError(record)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def tail(self, n: int) -> list[str]:
        return list(self._lines)[-n:] if n > 0 else []


def secrets_of(settings: Settings) -> list[str]:
    return [s for s in (settings.cloud_api_key, settings.admin_token, *(k.key for k in settings.client_keys)) if s]


def effective_config(settings: Settings) -> dict[str, Any]:
    """Every setting as JSON, secrets redacted (client keys by id only)."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if field.name in _SECRET_FIELDS:
            value = None if value is None else REDACTED
        elif field.name == "client_keys":
            value = [{"client_id": k.client_id, "key": REDACTED} for k in value]
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[field.name] = value
    out["device"] = settings.device
    return out


def create_debug_app(stack: EdgeStack, ring: LogRing) -> Starlette:
    settings = stack.settings

    def model_state() -> dict[str, Any]:  # `pinned`: a rollback in force (reload.Pin)
        feedback = stack.service.feedback
        return {**stack.models.status(), "history": list(stack.models.history),
                "policy": stack.service.policy.describe(),
                "feedback_store": feedback.status() if feedback is not None else None}

    async def logs(request: Request) -> Response:
        raw = request.query_params.get("lines", "200")
        if not raw.isdigit() or not 0 < int(raw) <= MAX_LINES:
            raise BadRequest(f"lines must be a whole number in [1, {MAX_LINES}]")
        return JSONResponse({"lines": ring.tail(int(raw))})

    async def model(request: Request) -> Response:
        return JSONResponse(model_state())

    async def reload(request: Request) -> Response:
        body = await request.body()
        try:
            source = json.loads(body).get("source", "folder") if body.strip() else "folder"
        except (ValueError, AttributeError):
            raise BadRequest('the body must be {"source": "folder" | "s3"}') from None
        if source not in ("folder", "s3"):
            raise BadRequest("source must be 'folder' or 's3'")
        log.info("debug listener: reload from %s requested", source)
        await stack.reloader.reload(source)
        return JSONResponse(model_state())

    async def rollback(request: Request) -> Response:
        log.info("debug listener: rollback requested")
        await stack.models.rollback()
        return JSONResponse(model_state())

    async def config(request: Request) -> Response:
        return JSONResponse(effective_config(settings))

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(stack.metrics.exposition().decode())

    async def bundle(request: Request) -> Response:
        parts = {"logs.txt": "\n".join(ring.tail(MAX_LINES)) + "\n",
                 "model.json": json.dumps(model_state(), indent=2, default=str),
                 "config.json": json.dumps(effective_config(settings), indent=2),
                 "metrics.txt": stack.metrics.exposition().decode(),
                 "system.json": json.dumps({"python": platform.python_version(), "platform": platform.platform(),
                                            "time": time.time()}, indent=2)}
        return Response(_tar(parts), media_type="application/gzip",
                        headers={"content-disposition": f'attachment; filename="edge-{settings.device}-debug.tar.gz"'})

    async def edge_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, EdgeError)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())

    return Starlette(routes=[
        Route("/debug/logs", logs), Route("/debug/model", model), Route("/debug/reload", reload, methods=["POST"]),
        Route("/debug/rollback", rollback, methods=["POST"]), Route("/debug/config", config),
        Route("/debug/metrics", metrics), Route("/debug/bundle", bundle),
    ], exception_handlers={EdgeError: edge_error})


def _tar(parts: dict[str, str]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, text in parts.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def server_ssl_context(settings: Settings) -> ssl.SSLContext:
    """TLS 1.2+, the device's certificate, and client certificates required from the operators' CA."""
    assert settings.debug_tls_cert and settings.debug_tls_key and settings.debug_tls_client_ca
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(settings.debug_tls_client_ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(str(settings.debug_tls_cert), str(settings.debug_tls_key))
    return context


class _Server:
    """A uvicorn server for the debug app inside the main server's event loop (the main server owns the
    signals; this one stops when told)."""

    def __init__(self, app: Starlette, settings: Settings, metrics: Metrics) -> None:
        import uvicorn

        from edge_container.http_limits import ConnectionGate

        class Quiet(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        gate = ConnectionGate.for_listener(settings, metrics, "debug")  # slow and numerous clients, as on the API
        # log_config None: the serving process has configured logging (EDGE_LOG_FORMAT); uvicorn's own text
        # configuration, applied again here, would take its loggers back from a JSON root handler.
        config = uvicorn.Config(app, host=settings.debug_host or settings.host, port=settings.debug_port or 0,
                                lifespan="off", log_level="warning", access_log=False, log_config=None,
                                **gate.uvicorn_options())
        context = server_ssl_context(settings)  # built here: a bad certificate fails start-up, by name
        config.load()
        config.ssl = context
        self.server = Quiet(config)

    async def serve(self) -> None:
        await self.server.serve()

    def stop(self) -> None:
        self.server.should_exit = True


@contextlib.asynccontextmanager
async def debug_listener(stack: EdgeStack) -> Any:
    """Serve the debug app while the body runs (nothing when EDGE_DEBUG_PORT is not set)."""
    import asyncio

    settings = stack.settings
    if settings.debug_port is None or not settings.is_primary:  # one listener per server, not per process
        yield None
        return
    ring = LogRing(secrets=secrets_of(settings))
    logging.getLogger().addHandler(ring)
    server = _Server(create_debug_app(stack, ring), settings, stack.metrics)
    task = asyncio.create_task(server.serve())
    try:
        while not server.server.started and not task.done():
            await asyncio.sleep(0.01)
        if task.done():
            task.result()  # raises what made the listener fail (a port in use, ...)
            raise RuntimeError("the debug listener stopped at start-up")
        log.info("debug listener (mutual TLS) on port %s", debug_port(server))
        yield server
    finally:
        server.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=5)
        logging.getLogger().removeHandler(ring)


def debug_port(server: _Server | None) -> int | None:
    """The port the listener is bound to (EDGE_DEBUG_PORT=0 picks a free one), or None when off."""
    if server is None:
        return None
    for s in server.server.servers:
        for sock in s.sockets:
            return int(sock.getsockname()[1])
    return None
