"""The OpenAPI document, written by hand: Starlette has no generator, and the API is small.

It states the limits the parsers enforce (from the running service's `Settings`), so that what it calls
valid is accepted and what it calls invalid is refused: schemathesis checks both ways
(bench/schemathesis_edge.py). An operation is built by `_op`; to add a status, a header or a security
requirement, pass it there (or add it to the returned dict) rather than editing paths one by one.
"""

from __future__ import annotations

from typing import Any

from edge_container.oip import BINARY_MEDIA_TYPE, HEADER_LENGTH, MAX_DIMS, OUTPUTS
from edge_container.settings import Settings

_ERROR = {"$ref": "#/components/schemas/Error"}
_OIP_ERROR = {"$ref": "#/components/schemas/OipError"}
_ANSWER = {"type": "object", "properties": {"label": {"type": "string"}, "confidence": {"type": "number"}}}
_MODEL_NAME = "#/components/parameters/ModelName"


def _op(summary: str, *, body: dict[str, Any] | None = None, ok: dict[str, Any] | None = None,
        errors: tuple[int, ...] = (400, 413, 503), tag: str = "inference", error: dict[str, Any] = _ERROR,
        parameters: list[dict[str, Any]] | None = None, body_required: bool = True,
        ok_content: dict[str, Any] | None = None, description: str | None = None) -> dict[str, Any]:
    content = ok_content or {"application/json": {"schema": ok or {"type": "object"}}}
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": {
        "200": {"description": "OK", "content": content},
        **{str(code): {"description": "Error", "content": {"application/json": {"schema": error}}}
           for code in errors}}}
    if description is not None:
        op["description"] = description
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = {"required": body_required, "content": {"application/json": {"schema": body}}}
    return op


def _oip(summary: str, errors: tuple[int, ...], **kwargs: Any) -> dict[str, Any]:
    return _op(summary, errors=errors, tag="oip-v2", error=_OIP_ERROR, **kwargs)


def _model(summary: str, errors: tuple[int, ...], **kwargs: Any) -> dict[str, Any]:
    return _oip(summary, errors, parameters=[{"$ref": _MODEL_NAME}], **kwargs)


# Python's whitespace (str.isspace, what `str.strip` removes), spelled out: `\s` differs between Python and
# the ECMA regexes JSON Schema validators use (\x1c-\x1f, \x85, \ufeff). A test pins it to str.isspace.
WHITESPACE = r"\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


_MODEL_STATUS = ("`current` and `previous` versions; `pinned`: a rollback in force (version, rolled_back_from, "
                 "since) or null; `last_error`; `feedback_store`: `healthy` or `failing` (since, error, "
                 "failed_writes, records_lost, retry_in_s) or null with no store.")
_RELOAD = ("Verifies and loads what the source holds now; the version already serving (same manifest SHA-256) "
           "is verified but not swapped, so `previous` stays. Lifts a rollback's pin. 409 RELOAD_REFUSED: the "
           "artifact failed verification and the current version keeps serving.")
_ROLLBACK = ("Swaps back to the previous version in memory and pins it: the folder and S3 watchers install "
             "nothing until POST /admin/reload or a newly published version other than the one rolled back from. "
             "409 NO_PREVIOUS_MODEL: no different version in memory to go back to.")


def _text(settings: Settings) -> dict[str, Any]:
    """A text the parsers accept: not blank (one character that is not whitespace), within the limit."""
    return {"type": "string", "minLength": 1, "maxLength": settings.max_text_chars, "pattern": f"[^{WHITESPACE}]"}


def _texts(settings: Settings) -> dict[str, Any]:
    return {"type": "array", "items": _text(settings), "minItems": 1, "maxItems": settings.max_texts}


def _compat(field: str, settings: Settings) -> dict[str, Any]:
    schema = _text(settings) if field == "text" else _texts(settings)
    return {"type": "object", "properties": {field: schema}, "required": [field], "additionalProperties": False}


def predict_request(settings: Settings) -> dict[str, Any]:
    common = {
        "route": {"type": "string", "enum": ["auto", "edge", "cloud"], "default": "auto"},
        "deadline_ms": {"type": ["integer", "null"], "minimum": 1, "maximum": 600000},  # null: the default
        "request_id": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9._:\\-]{1,128}$"},
        # high: an authenticated client only (403 otherwise); how EDGE_POLICY=paced treats the escalations.
        "priority": {"type": "string", "enum": ["high", "normal", "low"], "default": "normal"},
    }
    return {"description": "Exactly one of text / texts.", "oneOf": [
        {"type": "object", "properties": {"text": _text(settings), **common}, "required": ["text"],
         "additionalProperties": False},
        {"type": "object", "properties": {"texts": _texts(settings), **common}, "required": ["texts"],
         "additionalProperties": False},
    ]}


RESULT = {
    "type": "object",
    "properties": {
        "label": {"type": "string"},
        "confidence": {"type": "number"},
        "source": {"type": "string", "enum": ["edge", "cloud", "edge_fallback"]},
        "reason": {"type": "string"},
        "edge": _ANSWER,
        "model_versions": {"type": "object", "properties": {"edge": {"type": "string"},
                                                            "cloud": {"type": ["string", "null"]}}},
        "latency_ms": {"type": "number"},
        "top_k": {"type": "array", "items": _ANSWER},
    },
}

_INFER_DESCRIPTION = f"""One BYTES input tensor of texts. In this JSON form, a shape `[n]` and `n` texts; the
server also takes up to {MAX_DIMS} dimensions with flat or nested `data` whose element count is the shape's
product, which JSON Schema cannot state.

Binary tensor data extension (body `{BINARY_MEDIA_TYPE}` or without a content type): the
`{HEADER_LENGTH}` header gives the length of the JSON header that starts the body; an input with
`parameters.binary_data_size` instead of `data` takes that many bytes after it, each element a 4-byte
little-endian length and UTF-8 bytes. Outputs asked for with `parameters.binary_data` (or all, with the
request's `parameters.binary_data_output`) come back the same way: the answer is then
`{BINARY_MEDIA_TYPE}` with `{HEADER_LENGTH}`."""


def infer_request(settings: Settings) -> dict[str, Any]:
    """The JSON form of an inference request: one tensor of `n` texts and shape `[n]`, one branch per `n`
    (the only way JSON Schema can tie a shape to its data's length)."""
    tensors = [{"type": "object", "required": ["name", "datatype", "shape", "data"], "additionalProperties": False,
                "properties": {
                    "name": {"type": "string"},
                    "datatype": {"type": "string", "enum": ["BYTES"]},
                    "shape": {"type": "array", "items": {"type": "integer", "enum": [n]}, "minItems": 1,
                              "maxItems": 1},
                    "data": {**_texts(settings), "minItems": n, "maxItems": n},
                    "parameters": {"type": "object", "additionalProperties": False},
                }} for n in range(1, settings.max_texts + 1)]
    output = {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {
        "name": {"type": "string", "enum": list(OUTPUTS)},
        "parameters": {"type": "object", "additionalProperties": False,
                       "properties": {"binary_data": {"type": "boolean"}}}}}
    return {"type": "object", "required": ["inputs"], "additionalProperties": False, "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": {"oneOf": tensors}},
        "outputs": {"type": "array", "minItems": 1, "items": output},
        "parameters": {"type": "object", "description": "Other parameters are ignored.",
                       "properties": {"binary_data_output": {"type": "boolean"}}},
    }}


_TENSOR_OUT = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
    "name": {"type": "string"}, "datatype": {"type": "string"},
    "shape": {"type": "array", "items": {"type": "integer"}}, "data": {"type": "array"},
    "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer"}}}}}
INFER_RESPONSE = {"type": "object", "required": ["model_name", "outputs"], "properties": {
    "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
    "outputs": {"type": "array", "items": _TENSOR_OUT}}}
_TENSOR_META = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
    "name": {"type": "string"}, "datatype": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}}}}
MODEL_METADATA = {"type": "object", "required": ["name", "platform", "inputs", "outputs"], "properties": {
    "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
    "platform": {"type": "string"}, "inputs": {"type": "array", "items": _TENSOR_META},
    "outputs": {"type": "array", "items": _TENSOR_META}}}


def openapi_document(version: str, settings: Settings | None = None) -> dict[str, Any]:
    """The document for a service configured by `settings` (its limits and model name; defaults if None)."""
    settings = settings or Settings()
    document = _document(version, settings)
    # The inference routes: client keys when EDGE_CLIENT_KEYS is set (none needed otherwise: `{}`), JSON only.
    for path, error in (("/v1/predict", _ERROR), ("/predict", _ERROR), ("/joint_predict", _ERROR),
                        ("/batch_predict", _ERROR), ("/v2/models/{name}/infer", _OIP_ERROR)):
        op = document["paths"][path]["post"]
        op["security"] = [{"ClientKey": []}, {"ClientBearer": []}, {}]
        extra = (401, 415, 403) if path == "/v1/predict" else (401, 415)  # 403: route "cloud"/priority "high" without a key
        for code in extra:
            op["responses"].setdefault(str(code), {
                "description": "Error", "content": {"application/json": {"schema": error}}})
    document["components"]["securitySchemes"] = {
        "ClientKey": {"type": "apiKey", "in": "header", "name": "x-api-key",
                      "description": "a client key of EDGE_CLIENT_KEYS"},
        "ClientBearer": {"type": "http", "scheme": "bearer", "description": "a client key of EDGE_CLIENT_KEYS"}}
    return document


def _document(version: str, settings: Settings) -> dict[str, Any]:
    infer_ok = {"application/json": {"schema": INFER_RESPONSE},
                BINARY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Edge inference service", "version": version,
                 "description": "int8 LiteRT intent model on the device; unsure answers go to the cloud."},
        "paths": {
            "/v1/predict": {"post": _op(
                "Classify one text or a list; route auto|edge|cloud", body=predict_request(settings),
                ok={"type": "object", "properties": {"request_id": {"type": "string"}, "policy": {"type": "string"},
                                                     "priority": {"type": "string",
                                                                  "enum": ["high", "normal", "low"]},
                                                     "latency_ms": {"type": "number"},
                                                     "results": {"type": "array", "items": RESULT}}})},
            "/health": {"get": _op("Tutorial-compatible liveness: {status: healthy}", errors=(), tag="compat")},
            "/predict": {"post": _op("Tutorial-compatible: edge class probabilities",
                                     body=_compat("text", settings), tag="compat")},
            "/joint_predict": {"post": _op("Tutorial-compatible: routed answer with its source",
                                           body=_compat("text", settings), tag="compat")},
            "/batch_predict": {"post": _op("Tutorial-compatible: edge probabilities for a list",
                                           body=_compat("texts", settings), tag="compat")},
            "/v2": {"get": _oip("OIP v2 server metadata", errors=())},
            "/v2/health/live": {"get": _oip("OIP v2 liveness", errors=())},
            "/v2/health/ready": {"get": _oip("OIP v2 readiness", errors=(503,))},
            "/v2/models/{name}": {"get": _model("OIP v2 model metadata", errors=(404, 503), ok=MODEL_METADATA)},
            "/v2/models/{name}/ready": {"get": _model("OIP v2 model readiness", errors=(404, 503))},
            "/v2/models/{name}/infer": {"post": _model(
                "OIP v2 inference: one BYTES input of texts", errors=(400, 404, 413, 415, 503),
                body=infer_request(settings), ok_content=infer_ok, description=_INFER_DESCRIPTION)},
            "/healthz": {"get": _op("Liveness", errors=(), tag="ops")},
            "/readyz": {"get": _op("Readiness: model loaded and warmed up", errors=(503,), tag="ops")},
            "/metrics": {"get": {"summary": "Prometheus metrics", "tags": ["ops"], "responses": {"200": {
                "description": "text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/admin/model": {"get": _op("Model status (x-admin-token)", errors=(401, 403), tag="admin",
                                        description=_MODEL_STATUS)},
            "/admin/reload": {"post": _op("Reload from the folder or S3 (x-admin-token)",
                                          body={"type": "object", "additionalProperties": False, "properties": {
                                              "source": {"type": "string", "enum": ["folder", "s3"]}}},
                                          body_required=False, errors=(400, 401, 403, 409, 413), tag="admin",
                                          description=_RELOAD)},
            "/admin/rollback": {"post": _op("Swap back to the previous version, pinned (x-admin-token)",
                                            errors=(401, 403, 409), tag="admin", description=_ROLLBACK)},
        },
        "components": {
            "parameters": {"ModelName": {
                "name": "name", "in": "path", "required": True, "description": "The served model's name",
                "schema": {"type": "string", "enum": [settings.model_name]}}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
                "OipError": {"type": "object", "required": ["error"], "additionalProperties": False,
                             "description": "The Open Inference Protocol's error body",
                             "properties": {"error": {"type": "string"}}},
            },
        },
    }
