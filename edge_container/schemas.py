"""Request parsing and response shapes of the HTTP API. Parsing is strict: a bad field is a 4xx naming it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request

from edge_container.errors import (
    BadRequest,
    EmptyText,
    InvalidJson,
    InvalidText,
    PayloadTooLarge,
    TextTooLong,
    TooManyTexts,
    UnsupportedMediaType,
)
from edge_container.pacing import PRIORITIES, Priority
from edge_container.service import ROUTES, Prediction, Result, Route
from edge_container.settings import Settings
from modelpack.limits import text_problem

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_PREDICT_FIELDS = frozenset({"text", "texts", "route", "deadline_ms", "request_id", "priority"})
MAX_DEADLINE_MS = 600_000


@dataclass(frozen=True, slots=True)
class PredictRequest:
    texts: tuple[str, ...]
    route: Route
    deadline_ms: int | None
    request_id: str | None
    priority: Priority = "normal"


_REQUIRED = object()


def is_json_media_type(content_type: str | None) -> bool:
    """`application/json` or a `+json` type, parameters (charset) allowed."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def read_json(request: Request, limit: int, *, empty: Any = _REQUIRED) -> Any:
    """The parsed JSON body, read up to `limit` bytes; an empty body is `empty` if given, else a 400.

    A non-empty body must be declared `application/json`: a browser sends `text/plain` cross-site without a
    CORS preflight, so accepting it would let any web page a user opens spend this edge's cloud budget."""
    content_type = request.headers.get("content-type")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():  # counted as it arrives: a lying or absent length cannot get past
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
    if not body.strip():
        if empty is not _REQUIRED:
            return empty
        raise InvalidJson("the body is empty; send a JSON object")
    if not is_json_media_type(content_type):
        raise UnsupportedMediaType(f"the body must be sent as content-type: application/json, "
                                   f"not {content_type or 'nothing'!r}")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass  # the standard parser decides what orjson refuses (lone surrogates, NaN, huge integers, bad JSON)
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidJson(f"the body is not valid JSON: {exc}") from None


def json_object(raw: Any, allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise BadRequest(f"unknown field(s) {unknown}; allowed: {sorted(allowed)}")
    return raw


def check_text(value: Any, settings: Settings, where: str = "text", index: int | None = None) -> str:
    at = {} if index is None else {"index": index}
    if not isinstance(value, str):
        raise BadRequest(f"{where} must be a string, got {type(value).__name__}", **at)
    if not value.strip():
        raise EmptyText(f"{where} is empty", **at)
    if len(value) > settings.max_text_chars:
        raise TextTooLong(f"{where} has {len(value)} characters; the limit is {settings.max_text_chars}", **at)
    problem = text_problem(value)
    if problem is not None:
        raise InvalidText(f"{where} {problem}: not valid Unicode text", **at)
    return value


def check_texts(value: Any, settings: Settings, where: str = "texts") -> tuple[str, ...]:
    if not isinstance(value, list):
        raise BadRequest(f"{where} must be a list of strings, got {type(value).__name__}")
    if not value:
        raise EmptyText(f"{where} is empty")
    if len(value) > settings.max_texts:
        raise TooManyTexts(f"{where} has {len(value)} items; the limit is {settings.max_texts}")
    return tuple(check_text(v, settings, f"{where}[{i}]", i) for i, v in enumerate(value))


def one_or_many(raw: dict[str, Any], settings: Settings) -> tuple[str, ...]:
    if ("text" in raw) == ("texts" in raw):
        raise BadRequest("send exactly one of 'text' (a string) or 'texts' (a list of strings)")
    return (check_text(raw["text"], settings),) if "text" in raw else check_texts(raw["texts"], settings)


def parse_predict(raw: Any, settings: Settings) -> PredictRequest:
    body = json_object(raw, _PREDICT_FIELDS)
    texts = one_or_many(body, settings)
    route = body.get("route", "auto")
    if route not in ROUTES:
        raise BadRequest(f"route must be one of {list(ROUTES)}, got {route!r}")
    deadline = body.get("deadline_ms")
    if isinstance(deadline, float) and deadline.is_integer():
        deadline = int(deadline)  # JSON (and JSON Schema) has one number type: 427.0 is the integer 427
    if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, int)
                                 or not 1 <= deadline <= MAX_DEADLINE_MS):
        raise BadRequest(f"deadline_ms must be an integer in [1, {MAX_DEADLINE_MS}], got {deadline!r}")
    request_id = body.get("request_id")
    if request_id is not None and (not isinstance(request_id, str) or not _REQUEST_ID.match(request_id)):
        raise BadRequest("request_id must be 1-128 characters of letters, digits and . _ : -")
    priority = body.get("priority", "normal")
    if priority not in PRIORITIES:
        raise BadRequest(f"priority must be one of {list(PRIORITIES)}, got {priority!r}")
    return PredictRequest(texts, route, deadline, request_id, priority)


def result_json(result: Result, latency_ms: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "label": result.label,
        "confidence": result.confidence,
        "source": result.source,
        "reason": result.reason,
        "edge": {"label": result.edge.label, "confidence": result.edge.confidence},
        "model_versions": {"edge": result.edge_model_version, "cloud": result.cloud_model_version},
        "latency_ms": latency_ms,
    }
    if result.top_k:
        out["top_k"] = [{"label": a.label, "confidence": a.confidence} for a in result.top_k]
    return out


def prediction_json(prediction: Prediction, policy: str) -> dict[str, Any]:
    latency = round(prediction.latency_ms, 3)
    return {"request_id": prediction.request_id, "policy": policy, "priority": prediction.priority,
            "latency_ms": latency, "results": [result_json(r, latency) for r in prediction.results]}
