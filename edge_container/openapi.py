"""The OpenAPI document, written by hand: Starlette has no generator, and the API is small."""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}
_ANSWER = {"type": "object", "properties": {"label": {"type": "string"}, "confidence": {"type": "number"}}}


def _op(summary: str, *, body: dict[str, Any] | None = None, ok: dict[str, Any] | None = None,
        errors: tuple[int, ...] = (400, 413, 503), tag: str = "inference") -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": {
        "200": {"description": "OK", "content": {"application/json": {"schema": ok or {"type": "object"}}}},
        **{str(code): {"description": "Error", "content": {"application/json": {"schema": _ERROR}}}
           for code in errors}}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def _texts(*fields: str) -> dict[str, Any]:
    props = {"text": {"type": "string", "minLength": 1}, "texts": {"type": "array", "items": {"type": "string"}}}
    return {"type": "object", "properties": {f: props[f] for f in fields}, "required": list(fields)[:1]}


PREDICT_REQUEST = {
    "type": "object",
    "description": "Exactly one of text / texts.",
    "properties": {
        "text": {"type": "string", "minLength": 1},
        "texts": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
        "route": {"type": "string", "enum": ["auto", "edge", "cloud"], "default": "auto"},
        "deadline_ms": {"type": "integer", "minimum": 1, "maximum": 600000},
        "request_id": {"type": "string", "pattern": "^[A-Za-z0-9._:\\-]{1,128}$"},
    },
    "additionalProperties": False,
}
RESULT = {
    "type": "object",
    "properties": {
        "label": {"type": "string"},
        "confidence": {"type": "number"},
        "source": {"type": "string", "enum": ["edge", "cloud", "edge_fallback"]},
        "reason": {"type": "string", "enum": [
            "confident", "low_confidence", "forced_edge", "forced_cloud", "sampled", "not_sampled",
            "budget_exhausted", "cloud_timeout", "cloud_error", "circuit_open", "deadline", "cloud_disabled"]},
        "edge": _ANSWER,
        "model_versions": {"type": "object", "properties": {"edge": {"type": "string"},
                                                            "cloud": {"type": ["string", "null"]}}},
        "latency_ms": {"type": "number"},
        "top_k": {"type": "array", "items": _ANSWER},
    },
}


def openapi_document(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Edge inference service", "version": version,
                 "description": "int8 LiteRT intent model on the device; unsure answers go to the cloud."},
        "paths": {
            "/v1/predict": {"post": _op(
                "Classify one text or a list; route auto|edge|cloud", body=PREDICT_REQUEST,
                ok={"type": "object", "properties": {"request_id": {"type": "string"}, "policy": {"type": "string"},
                                                     "latency_ms": {"type": "number"},
                                                     "results": {"type": "array", "items": RESULT}}})},
            "/health": {"get": _op("Tutorial-compatible liveness: {status: healthy}", errors=(), tag="compat")},
            "/predict": {"post": _op("Tutorial-compatible: edge class probabilities", body=_texts("text"),
                                     tag="compat")},
            "/joint_predict": {"post": _op("Tutorial-compatible: routed answer with its source",
                                           body=_texts("text"), tag="compat")},
            "/batch_predict": {"post": _op("Tutorial-compatible: edge probabilities for a list",
                                           body=_texts("texts"), tag="compat")},
            "/v2/health/live": {"get": _op("OIP v2 liveness", errors=(), tag="oip-v2")},
            "/v2/health/ready": {"get": _op("OIP v2 readiness", errors=(503,), tag="oip-v2")},
            "/v2/models/{name}": {"get": _op("OIP v2 model metadata", errors=(404, 503), tag="oip-v2")},
            "/v2/models/{name}/ready": {"get": _op("OIP v2 model readiness", errors=(404, 503), tag="oip-v2")},
            "/v2/models/{name}/infer": {"post": _op("OIP v2 inference: one BYTES input of texts",
                                                    body={"type": "object"}, errors=(400, 404, 413, 503),
                                                    tag="oip-v2")},
            "/healthz": {"get": _op("Liveness", errors=(), tag="ops")},
            "/readyz": {"get": _op("Readiness: model loaded and warmed up", errors=(503,), tag="ops")},
            "/metrics": {"get": {"summary": "Prometheus metrics", "tags": ["ops"],
                                 "responses": {"200": {"description": "text exposition format"}}}},
            "/admin/model": {"get": _op("Model status (x-admin-token)", errors=(401, 403), tag="admin")},
            "/admin/reload": {"post": _op("Reload from the folder or S3 (x-admin-token)",
                                          body={"type": "object", "properties": {"source": {
                                              "type": "string", "enum": ["folder", "s3"]}}},
                                          errors=(400, 401, 403, 409), tag="admin")},
            "/admin/rollback": {"post": _op("Swap back to the previous version (x-admin-token)",
                                            errors=(401, 403, 409), tag="admin")},
        },
        "components": {"schemas": {"Error": {
            "type": "object", "required": ["error"],
            "properties": {"error": {"type": "object", "required": ["code", "message"],
                                     "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}}},
    }
