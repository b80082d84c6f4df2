"""infra.api_gateway: the API keys the local gateway accepts, the proxy event it hands the function, and the
refusals it answers itself."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from infra.api_gateway import ApiKey, GatewayResponses, Refusal, gateway_response, load_api_keys, proxy_event


def test_the_function_sees_an_api_gateway_proxy_event() -> None:
    event = proxy_event(
        method="POST", path="/v1/infer", query=[("a", "1"), ("a", "2")],
        headers=[("host", "127.0.0.1:8080"), ("x-api-key", "k"), ("accept", "a"), ("accept", "b")],
        body=b"\xff\x00", api_key=ApiKey("k", "tenant-1"), source_ip="127.0.0.1", request_id="r-1",
        now=datetime(2026, 3, 14, 12, 0, tzinfo=UTC),
    )

    assert event["requestContext"]["identity"]["apiKeyId"] == "tenant-1"
    assert event["requestContext"]["requestId"] == "r-1"
    assert event["requestContext"]["path"] == "/dev/v1/infer"
    assert event["headers"]["accept"] == "b" and event["multiValueHeaders"]["accept"] == ["a", "b"]
    assert event["queryStringParameters"] == {"a": "2"}
    assert event["multiValueQueryStringParameters"] == {"a": ["1", "2"]}
    assert event["isBase64Encoded"] and base64.b64decode(event["body"]) == b"\xff\x00"


def test_api_keys_come_from_a_file_or_the_environment(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# tenant keys\n\n  s3cr3t-acme-key=acme  \nbase64ish==beta\n", encoding="utf-8")

    assert load_api_keys(str(keys_file), {"LOCAL_API_KEYS": "ignored=x"}) == [
        ApiKey("s3cr3t-acme-key", "acme"), ApiKey("base64ish=", "beta")]
    assert load_api_keys(None, {"LOCAL_API_KEYS": "k1=a, k2=b"}) == [ApiKey("k1", "a"), ApiKey("k2", "b")]


@pytest.mark.parametrize("environ", [{}, {"LOCAL_API_KEYS": " , "}], ids=["unset", "empty"])
def test_no_api_key_is_a_start_up_error(environ: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="no API key"):
        load_api_keys(None, environ)


def test_a_malformed_key_entry_is_named_by_position_never_echoed() -> None:
    with pytest.raises(ValueError, match="entry 2") as raised:
        load_api_keys(None, {"LOCAL_API_KEYS": "k1=a,s3cr3t-without-tenant"})

    assert "s3cr3t" not in str(raised.value)


class _Response:
    def __init__(self, content: bytes, status_code: int) -> None:
        self.body, self.status_code = content, status_code
        self.raw_headers: list[tuple[bytes, bytes]] = []


def test_the_functions_result_goes_back_as_it_is_with_headers_merged() -> None:
    result = {"statusCode": 429, "headers": {"Retry-After": "7"}, "body": base64.b64encode(b"\xff").decode(),
              "isBase64Encoded": True, "multiValueHeaders": {"retry-after": ["1"], "X-Extra": ["a", "b"]}}

    response = gateway_response(result, _Response)

    assert response.status_code == 429 and response.body == b"\xff"
    assert response.raw_headers == [(b"content-length", b"1"), (b"retry-after", b"7"), (b"x-extra", b"a"),
                                    (b"x-extra", b"b")]


def test_gateway_refusals_are_rendered_from_the_templates_gateway_responses() -> None:
    """Issue 24 #3: the local adapter wrote {"message": ...} of its own; now it renders template.yaml's."""
    gateway = GatewayResponses.from_template()

    for refusal in (Refusal("INVALID_API_KEY", 403, "Forbidden"), Refusal("REQUEST_TOO_LARGE", 413, "Request Too Long"),
                    Refusal("INTEGRATION_TIMEOUT", 504, "Endpoint request timed out")):
        body = json.loads(gateway.body(refusal, "rid-1"))
        assert body == {"error": {"code": refusal.response_type, "message": refusal.message, "request_id": "rid-1"}}
    assert gateway.routes == {("POST", "/v1/infer"), ("GET", "/v1/budget")}
