"""Edge-container fixtures: the real tiny artifact, real servers on loopback (uvicorn in a thread), and a
fake cloud whose behaviour a test can switch (ok / slow / 5xx / budget exhausted / flaky / down)."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edge_container.app import create_app
from edge_container.auth import ClientKey
from edge_container.settings import Settings
from edge_container.wiring import EdgeStack
from modelpack.cloud_api import (
    Answer,
    BudgetInfo,
    ErrorBody,
    ErrorCode,
    InferReply,
    InferRequest,
    RequestRefused,
    TextResult,
)
from modelpack.limits import CLOUD_MAX_TEXT_CHARS, CLOUD_MAX_TEXTS
from modelpack.manifest import load_manifest, write_manifest

CONFIDENT = "what is the weather today"  # the tiny edge model: max_prob ~1.0
UNSURE = "play music"  # max_prob ~0.48 < the manifest's threshold 0.6
ADMIN_TOKEN = "test-admin-token-0123456789"
CLIENT_ID, CLIENT_KEY = "tests", "test-client-key-0123456789"  # `serve_edge`'s client sends it


class ServerThread:
    """A real uvicorn server on a free loopback port, in a thread of its own."""

    def __init__(self, app: Any) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(10)
        self._sock.close()


@dataclasses.dataclass
class Attempt:
    idempotency_key: str | None
    api_key: str | None
    headers: dict[str, str]
    body: dict[str, Any]


class FakeCloud:
    """The cloud's POST /v1/infer contract, with switchable behaviour and a record of every attempt.

    Like the real cloud it refuses (400) more than `max_texts` texts or a text longer than `max_chars`.
    `fail_marker`: a call with a text containing it fails with `status`; mode `raw` answers `raw_status`
    with the bytes `raw_body` verbatim (replies a well-behaved server would never send)."""

    def __init__(self) -> None:
        self.url = ""
        self.mode = "ok"  # ok | slow | error | budget | flaky | bad_request | raw
        self.max_texts, self.max_chars = CLOUD_MAX_TEXTS, CLOUD_MAX_TEXT_CHARS
        self.fail_marker: str | None = None
        self.raw_status, self.raw_body = 200, b""
        self.in_flight = self.max_in_flight = 0
        self.status = 503
        self.delay_s = 0.0
        self.fail_first = 0  # flaky: this many attempts per idempotency key fail with `status`
        self.resets_at = datetime.now(UTC) + timedelta(hours=1)
        self.remaining = 1000
        self.attempts: list[Attempt] = []
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/v1/infer", self._infer, methods=["POST"])])

    def reset(self, mode: str = "ok", **kwargs: Any) -> None:
        with self._lock:
            self.mode, self.attempts = mode, []
            self.status, self.delay_s, self.fail_first, self.remaining = 503, 0.0, 0, 1000
            self.resets_at = datetime.now(UTC) + timedelta(hours=1)
            self.max_texts, self.max_chars = CLOUD_MAX_TEXTS, CLOUD_MAX_TEXT_CHARS
            self.fail_marker, self.raw_status, self.raw_body = None, 200, b""
            self.in_flight = self.max_in_flight = 0
            for key, value in kwargs.items():
                setattr(self, key, value)

    def keys(self) -> list[str | None]:
        return [a.idempotency_key for a in self.attempts]

    async def _infer(self, request: Request) -> Response:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _answer(self, request: Request) -> Response:
        body = await request.json()
        key = request.headers.get("idempotency-key")
        with self._lock:
            self.attempts.append(Attempt(key, request.headers.get("x-api-key"), dict(request.headers), body))
            seen = sum(1 for a in self.attempts if a.idempotency_key == key)
            mode = self.mode
        if mode == "raw":
            return Response(self.raw_body, status_code=self.raw_status, media_type="application/json")
        try:  # the real cloud's refusals, by the contract's own parser
            texts = InferRequest.from_json(body, max_texts=self.max_texts, max_chars=self.max_chars).texts
        except RequestRefused as refused:
            return JSONResponse(ErrorBody(refused.code, refused.message, refused.details).to_json(), status_code=400)
        if self.fail_marker is not None and any(self.fail_marker in t for t in texts):
            return JSONResponse({"error": {"code": "INTERNAL", "message": "boom"}}, status_code=self.status)
        if mode == "slow":
            await asyncio.sleep(self.delay_s)
        if mode == "error" or (mode == "flaky" and seen <= self.fail_first):
            return JSONResponse({"error": {"code": "INTERNAL", "message": "boom"}}, status_code=self.status)
        if mode == "bad_request":
            return JSONResponse({"error": {"code": "BAD_REQUEST", "message": "no"}}, status_code=400)
        if mode == "budget":
            return JSONResponse(ErrorBody(ErrorCode.BUDGET_EXHAUSTED, "spent",
                                          {"resets_at": self.resets_at.isoformat()}).to_json(), status_code=429)
        self.remaining -= len(texts)
        results = tuple(TextResult(label, 0.97, (Answer(label, 0.97),))
                        for label in ("weather" if "weather" in t else "oos" for t in texts))
        budget = BudgetInfo(self.remaining, 1000, "2026-11-22", self.resets_at)
        return JSONResponse(InferReply(results, "cloud-7", len(texts), budget).to_json())


@pytest.fixture(scope="session")
def fake_cloud() -> Iterator[FakeCloud]:
    cloud = FakeCloud()
    with ServerThread(cloud.app) as server:
        cloud.url = server.url
        yield cloud


@pytest.fixture
def cloud(fake_cloud: FakeCloud) -> FakeCloud:
    fake_cloud.reset()
    return fake_cloud


@pytest.fixture(scope="session")
def artifact_v2(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second version made from the first without TensorFlow: same files, new version, temperature 3.
    Real enough for swaps (its probabilities differ) and ~15 s cheaper than `tiny_artifact_v2`."""
    folder = tmp_path_factory.mktemp("edge_v2") / "v2"
    shutil.copytree(tiny_artifact, folder)
    manifest = load_manifest(folder)
    write_manifest(dataclasses.replace(manifest, model_version="tiny-2",
                                       edge=dataclasses.replace(manifest.edge, temperature=3.0)), folder)
    return folder


def edge_settings(model_dir: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {"model_dir": model_dir, "reload_poll_s": 0.0, "admin_token": ADMIN_TOKEN, "workers": 2,
                            "client_keys": (ClientKey(CLIENT_ID, CLIENT_KEY),),
                            "cloud_timeout_ms": 1000, "cloud_retries": 1, "cloud_backoff_ms": 5,
                            "default_deadline_ms": 3000}
    return Settings(**{**base, **overrides})


@contextmanager
def serve_edge(settings: Settings, **stack_kwargs: Any) -> Iterator[tuple[httpx.Client, EdgeStack]]:
    """The real app (lifespan and all) on a loopback port, and a client for it."""
    stack = EdgeStack.create(settings, **stack_kwargs)
    headers = {"x-api-key": settings.client_keys[0].key} if settings.client_keys else {}
    with ServerThread(create_app(settings, stack=stack)) as server, \
            httpx.Client(base_url=server.url, timeout=30, headers=headers) as client:
        yield client, stack


@pytest.fixture
def edge_server(tiny_artifact: Path) -> Callable[..., Any]:
    def make(**overrides: Any) -> Any:
        return serve_edge(edge_settings(tiny_artifact, **overrides))
    return make
