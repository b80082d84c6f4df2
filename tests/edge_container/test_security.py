"""Who may call the edge and spend the cloud budget (issue 9, #4), and text the tokenizer cannot read (#2).

All over real HTTP on loopback, with the real tiny model and the fake cloud counting what reaches it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_container.auth import ClientKey
from edge_container.errors import ConfigurationError
from edge_container.settings import Settings
from edge_container.wiring import EdgeStack
from tests.edge_container.conftest import CLIENT_KEY, CONFIDENT, UNSURE, FakeCloud, edge_settings, serve_edge

OTHER_KEY = "another-client-key-987654321"


def post_raw(client: httpx.Client, path: str, body: str, content_type: str | None = "application/json",
             **headers: str) -> httpx.Response:
    if content_type is not None:
        headers["content-type"] = content_type
    return client.post(path, content=body.encode(), headers=headers)


# --- #4: anyone who reaches the edge spends the tenant's budget --------------------------------------------------

def test_without_client_keys_nobody_may_force_the_cloud(tiny_artifact: Path, cloud: FakeCloud) -> None:
    settings = edge_settings(tiny_artifact, client_keys=(), cloud_url=cloud.url, cloud_api_key="k")
    with serve_edge(settings) as (client, _):
        forced = client.post("/v1/predict", json={"texts": [CONFIDENT] * 32, "route": "cloud"})
        assert forced.status_code == 403
        assert forced.json()["error"]["code"] == "CLOUD_ROUTE_FORBIDDEN"
        assert cloud.attempts == []  # nothing spent
        # The edge's own decision still escalates what it is unsure of, for anyone.
        auto = client.post("/v1/predict", json={"texts": [CONFIDENT, UNSURE]})
        assert auto.status_code == 200
        assert [r["source"] for r in auto.json()["results"]] == ["edge", "cloud"]
        assert len(cloud.attempts) == 1


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "wrong-key-0123456789"}, {"authorization": "Bearer nope"},
                                     {"x-api-key": CLIENT_KEY[:-1]}])
def test_with_client_keys_inference_needs_a_known_key(tiny_artifact: Path, cloud: FakeCloud,
                                                      headers: dict[str, str]) -> None:
    settings = edge_settings(tiny_artifact, cloud_url=cloud.url, cloud_api_key="k")
    with serve_edge(settings) as (client, _):
        client.headers.pop("x-api-key")
        for path, body in [("/v1/predict", {"text": UNSURE, "route": "cloud"}), ("/predict", {"text": UNSURE}),
                           ("/joint_predict", {"text": UNSURE}), ("/batch_predict", {"texts": [UNSURE]})]:
            response = client.post(path, json=body, headers=headers)
            assert response.status_code == 401, path
            assert response.json()["error"]["code"] == "CLIENT_UNAUTHORIZED"
            assert "WWW-Authenticate" in response.headers
        assert cloud.attempts == []
        # Health, readiness and metadata stay open: probes and load balancers carry no key.
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200


def test_a_known_key_may_force_the_cloud_by_header_or_bearer(tiny_artifact: Path, cloud: FakeCloud) -> None:
    keys = (ClientKey("kiosk", CLIENT_KEY), ClientKey("hub", OTHER_KEY))
    settings = edge_settings(tiny_artifact, client_keys=keys, cloud_url=cloud.url, cloud_api_key="k")
    with serve_edge(settings) as (client, _):
        client.headers.pop("x-api-key")
        by_header = client.post("/v1/predict", json={"text": CONFIDENT, "route": "cloud"},
                                headers={"x-api-key": CLIENT_KEY})
        by_bearer = client.post("/v1/predict", json={"text": CONFIDENT, "route": "cloud"},
                                headers={"authorization": f"Bearer {OTHER_KEY}"})
        assert [by_header.status_code, by_bearer.status_code] == [200, 200]
        assert by_header.json()["results"][0]["source"] == "cloud"
        assert by_bearer.json()["results"][0]["source"] == "cloud"
        assert len(cloud.attempts) == 2


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
def test_json_routes_refuse_other_media_types(tiny_artifact: Path, cloud: FakeCloud,
                                              content_type: str | None) -> None:
    """A browser POSTs text/plain or a form cross-site without a CORS preflight: such a body must do nothing."""
    settings = edge_settings(tiny_artifact, cloud_url=cloud.url, cloud_api_key="k")
    with serve_edge(settings) as (client, _):
        body = json.dumps({"texts": [UNSURE] * 8, "route": "cloud"})
        for path in ("/v1/predict", "/joint_predict"):
            response = post_raw(client, path, body if path == "/v1/predict" else json.dumps({"text": UNSURE}),
                                content_type)
            assert response.status_code == 415, (path, response.text)
            assert response.json()["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"
        assert cloud.attempts == []
        ok = post_raw(client, "/v1/predict", body, "application/json; charset=utf-8")
        assert ok.status_code == 200


def test_each_client_has_its_own_escalation_allowance(tiny_artifact: Path, cloud: FakeCloud) -> None:
    keys = (ClientKey("kiosk", CLIENT_KEY), ClientKey("hub", OTHER_KEY))
    settings = edge_settings(tiny_artifact, client_keys=keys, cloud_url=cloud.url, cloud_api_key="k",
                             client_escalations_per_s=0.001, client_escalation_burst=3)
    with serve_edge(settings) as (client, _):
        first = client.post("/v1/predict", json={"texts": [UNSURE] * 5 + [CONFIDENT]}).json()["results"]
        assert [(r["source"], r["reason"]) for r in first] == (
            [("cloud", "low_confidence")] * 3 + [("edge_fallback", "rate_limited")] * 2 + [("edge", "confident")])
        again = client.post("/v1/predict", json={"text": UNSURE, "route": "cloud"}).json()["results"]
        assert [(r["source"], r["reason"]) for r in again] == [("edge_fallback", "rate_limited")]
        other = client.post("/v1/predict", json={"texts": [UNSURE] * 2},
                            headers={"x-api-key": OTHER_KEY}).json()["results"]
        assert [r["source"] for r in other] == ["cloud", "cloud"]  # another client's share is its own
        assert sum(len(a.body["texts"]) for a in cloud.attempts) == 5
        metrics = client.get("/metrics").text
        assert 'edge_fallbacks_total{reason="rate_limited"} 3.0' in metrics


def test_the_default_bind_address_is_loopback() -> None:
    assert Settings().host == "127.0.0.1"
    assert Settings.from_env({}).host == "127.0.0.1"
    dockerfile = (Path(__file__).parents[2] / "edge_container" / "Dockerfile").read_text()
    assert "EDGE_HOST=0.0.0.0" in dockerfile  # a container must listen on its interface: said explicitly there


def test_client_keys_come_from_the_environment_or_a_file(tmp_path: Path) -> None:
    keys = Settings.from_env({"EDGE_CLIENT_KEYS": f"kiosk:{CLIENT_KEY}, hub:{OTHER_KEY}"}).client_keys
    assert [(k.client_id, k.key) for k in keys] == [("kiosk", CLIENT_KEY), ("hub", OTHER_KEY)]
    file = tmp_path / "keys"
    file.write_text(f"# operators\nkiosk:{CLIENT_KEY}\n\nhub:{OTHER_KEY}\n")
    assert Settings.from_env({"EDGE_CLIENT_KEYS_FILE": str(file)}).client_keys == keys
    assert CLIENT_KEY not in repr(keys)  # a key never reaches a log through repr


@pytest.mark.parametrize("raw, words", [("kiosk", "client_id:key"), ("kiosk:short", "shorter than 16"),
                                        (f"a:{CLIENT_KEY},a:{OTHER_KEY}", "twice"),
                                        (f"a:{CLIENT_KEY},b:{CLIENT_KEY}", "reuses"),
                                        (f"bad id:{CLIENT_KEY}", "client_id:key")])
def test_bad_client_keys_fail_start_up_without_printing_the_key(raw: str, words: str) -> None:
    with pytest.raises(ConfigurationError, match=words) as caught:
        Settings.from_env({"EDGE_CLIENT_KEYS": raw})
    assert caught.value.key == "EDGE_CLIENT_KEYS"
    assert CLIENT_KEY not in str(caught.value) and "short" not in str(caught.value).replace("shorter", "")


# --- #2: one bad text fails its neighbours ---------------------------------------------------------------------

@pytest.mark.parametrize("path, body, where", [
    ("/v1/predict", '{"texts": ["hello", "play \\ud800 music"]}', 1),
    ("/v1/predict", '{"text": "\\udfff"}', None),
    ("/batch_predict", '{"texts": ["a", "b", "\\ud83d"]}', 2),
])
def test_a_lone_surrogate_is_a_400_naming_its_index(tiny_artifact: Path, path: str, body: str,
                                                     where: int | None) -> None:
    with serve_edge(edge_settings(tiny_artifact)) as (client, _):
        response = post_raw(client, path, body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "INVALID_TEXT"
        assert error.get("index") == where
        assert "surrogate" in error["message"]
        # A proper pair (an emoji, escaped as two surrogates in JSON) is a valid text.
        assert post_raw(client, path, body.replace("\\ud800", "\\ud83d\\ude00").replace("\\udfff", "\\ud83d\\ude00")
                        .replace("\\ud83d\"", "\\ud83d\\ude00\"")).status_code == 200


def test_bad_texts_in_concurrent_requests_fail_only_themselves(tiny_artifact: Path) -> None:
    """60 good and 3 bad requests at once over HTTP: the good ones are all answered."""
    good = [{"text": f"what is the weather in city number {i}"} for i in range(60)]
    bad = ['{"text": "x \\ud800"}'] * 3

    async def main(base_url: str) -> tuple[list[int], list[int]]:
        async with httpx.AsyncClient(base_url=base_url, timeout=30, headers={"x-api-key": CLIENT_KEY},
                                     limits=httpx.Limits(max_connections=64)) as client:
            calls: list[Any] = [client.post("/v1/predict", json=b) for b in good]
            calls[10:10] = [client.post("/v1/predict", content=b, headers={"content-type": "application/json"})
                            for b in bad]
            responses = await asyncio.gather(*calls)
        codes = [r.status_code for r in responses]
        return codes[:10] + codes[13:], codes[10:13]

    with serve_edge(edge_settings(tiny_artifact, workers=1, max_batch_size=64)) as (client, _):
        for _ in range(3):
            good_codes, bad_codes = asyncio.run(main(str(client.base_url)))
            assert good_codes == [200] * 60
            assert bad_codes == [400] * 3


def test_a_text_the_tokenizer_rejects_fails_only_its_own_batch_job(tiny_artifact: Path) -> None:
    """Behind validation, the batcher itself: the tokenizer raises on a lone surrogate inside a batch of 63
    jobs; only that job fails, the 62 others get their rows."""
    stack = EdgeStack.create(edge_settings(tiny_artifact, workers=1, max_batch_size=64))

    async def main() -> list[Any]:
        await stack.start()
        try:
            texts = [(f"set a timer for {i} minutes",) for i in range(62)]
            texts.insert(30, ("bad \ud800 text",))
            return await asyncio.gather(*(stack.service.edge(t) for t in texts), return_exceptions=True)
        finally:
            await stack.stop()

    outcomes = asyncio.run(main())
    failed = [i for i, o in enumerate(outcomes) if isinstance(o, BaseException)]
    assert failed == [30]
    assert all(o.probs.shape == (1, len(o.model.labels)) for i, o in enumerate(outcomes) if i != 30)
    assert stack.metrics.batch_size.collect()[0].samples  # the jobs were batched, not run one by one


def test_oip_inference_needs_the_key_too_and_says_so_in_the_protocols_shape(tiny_artifact: Path) -> None:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [CONFIDENT]}]}
    with serve_edge(edge_settings(tiny_artifact)) as (client, _):
        client.headers.pop("x-api-key")
        refused = client.post("/v2/models/edge/infer", json=body)
        assert refused.status_code == 401
        assert isinstance(refused.json()["error"], str) and "client key" in refused.json()["error"]
        assert client.post("/v2/models/edge/infer", json=body, headers={"x-api-key": CLIENT_KEY}).status_code == 200
        assert client.get("/v2/models/edge").status_code == 200  # metadata stays open


def test_the_openapi_document_states_the_client_key_schemes(tiny_artifact: Path) -> None:
    with serve_edge(edge_settings(tiny_artifact)) as (client, _):
        doc = client.get("/openapi.json").json()
    assert set(doc["components"]["securitySchemes"]) == {"ClientKey", "ClientBearer"}
    for path in ("/v1/predict", "/predict", "/joint_predict", "/batch_predict", "/v2/models/{name}/infer"):
        op = doc["paths"][path]["post"]
        assert {"ClientKey": []} in op["security"] and "401" in op["responses"] and "415" in op["responses"]
    assert "security" not in doc["paths"]["/healthz"]["get"]
