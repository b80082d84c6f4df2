"""What API Gateway (REST, proxy integration, `ApiKeyRequired`) does around the function, locally.

    keys = load_api_keys(keys_file, os.environ)       # KEY=TENANT entries: a file, or $LOCAL_API_KEYS
    event = proxy_event(method=..., path=..., query=..., headers=..., body=..., api_key=key, source_ip=...)
    response = gateway_response(result, starlette.responses.Response)
    refused = GatewayResponses.from_template().response(Refusal("INVALID_API_KEY", 403, "Forbidden"),
                                                        request_id, starlette.responses.Response)

A known key becomes the event's `requestContext.identity.apiKeyId` (the tenant, as in AWS); the request a
REST proxy event (payload format 1.0: path, method, headers, query, body, a fresh requestId); the function's
statusCode, headers and body go back unchanged. A request it answers itself (`Refusal`: no such route,
a bad key or signature, a body over 10 MB) gets the body template.yaml's GatewayResponses give it. Keys
never come from a command line: `ps` shows those to every user.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

API_KEYS_ENV = "LOCAL_API_KEYS"
MAX_BODY_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit


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
    single_headers, multi_headers = _fold(headers)
    single_query, multi_query = _fold(query)
    text, is_base64 = _body_text(body)
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
            "domainName": single_headers.get("host", "localhost"),
            "protocol": "HTTP/1.1",
            "identity": _identity(api_key, source_ip, single_headers.get("user-agent")),
        },
        "body": text,
        "isBase64Encoded": is_base64,
    }


def _fold(pairs: Sequence[tuple[str, str]]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(last value by name, every value by name): API Gateway keeps the last of a repeated header or
    query parameter in the single-value map."""
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for name, value in pairs:
        single[name] = value
        multi.setdefault(name, []).append(value)
    return single, multi


def _body_text(body: bytes) -> tuple[str | None, bool]:
    """(body, isBase64Encoded): API Gateway passes binary bodies base64-encoded."""
    try:
        return (body.decode("utf-8") if body else None), False
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), True


def _identity(api_key: ApiKey, source_ip: str, user_agent: str | None) -> dict[str, Any]:
    return {
        "apiKey": api_key.value,
        "apiKeyId": api_key.key_id,
        "sourceIp": source_ip,
        "userAgent": user_agent,
        **dict.fromkeys(("accountId", "caller", "user", "userArn", "accessKey", "cognitoIdentityId",
                         "cognitoIdentityPoolId", "cognitoAuthenticationType",
                         "cognitoAuthenticationProvider")),
    }


# --------------------------------------------------------------------------- the answer it sends back


def gateway_response(result: Mapping[str, Any], response_class: Any) -> Any:
    """The function's proxy result as an HTTP response of `response_class` (Starlette's `Response`)."""
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


# --------------------------------------------------------------------------- the answers it gives itself


class Refusal(Exception):
    """A request API Gateway answers itself: `response_type` is its gateway response type."""

    def __init__(self, response_type: str, status: int, message: str) -> None:
        super().__init__(message)
        self.response_type, self.status, self.message = response_type, status, message


@dataclass(frozen=True, slots=True)
class GatewayResponses:
    """template.yaml's GatewayResponses (their mapping templates) and the API's routes, rendered here as
    API Gateway renders them."""

    templates: Mapping[str, str]  # response type (or DEFAULT_4XX / DEFAULT_5XX) -> application/json template
    routes: frozenset[tuple[str, str]]  # (METHOD, path)

    @classmethod
    def from_template(cls, template: Mapping[str, Any] | None = None) -> GatewayResponses:
        from infra.moto_server import load_template

        api = (template or load_template())["Resources"]["InferenceApi"]["Properties"]
        templates = {kind: spec["ResponseTemplates"]["application/json"]
                     for kind, spec in api.get("GatewayResponses", {}).items()}
        routes = frozenset((verb.upper(), path) for path, verbs in api["DefinitionBody"]["paths"].items()
                           for verb in verbs)
        return cls(templates, routes)

    def body(self, refusal: Refusal, request_id: str) -> bytes:
        fallback = "DEFAULT_5XX" if refusal.status >= 500 else "DEFAULT_4XX"
        template = self.templates.get(refusal.response_type) or self.templates.get(fallback)
        if template is None:  # no gateway response configured: API Gateway's own shape
            return json.dumps({"message": refusal.message}).encode()
        rendered = (template.replace("$context.error.messageString", json.dumps(refusal.message))
                    .replace("$context.error.responseType", refusal.response_type)
                    .replace("$context.requestId", request_id))
        return rendered.encode()

    def response(self, refusal: Refusal, request_id: str, response_class: Any) -> Any:
        return response_class(
            content=self.body(refusal, request_id), status_code=refusal.status, media_type="application/json",
            headers={"x-amzn-RequestId": request_id, "x-amzn-ErrorType": _ERROR_TYPES.get(
                refusal.response_type, "ForbiddenException")},
        )


_ERROR_TYPES = {"MISSING_AUTHENTICATION_TOKEN": "MissingAuthenticationTokenException",
                "INVALID_SIGNATURE": "InvalidSignatureException", "REQUEST_TOO_LARGE": "RequestTooLongException"}
