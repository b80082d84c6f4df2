"""Every endpoint over real HTTP (uvicorn on loopback), with the real tiny model and the fake cloud."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from edge_container.policies import ThresholdPolicy
from edge_container.wiring import EdgeStack
from modelpack.manifest import RoutingEntry
from modelpack.scores import SCORES
from tests.edge_container.conftest import ADMIN_TOKEN, CONFIDENT, UNSURE, FakeCloud, edge_settings, serve_edge


@pytest.fixture(scope="module")
def server(tiny_artifact: Path, fake_cloud: FakeCloud) -> Iterator[tuple[httpx.Client, EdgeStack]]:
    settings = edge_settings(tiny_artifact, cloud_url=fake_cloud.url, cloud_api_key="key-1",
                             max_texts=8, max_text_chars=200, max_body_bytes=1024)
    with serve_edge(settings) as pair:
        yield pair


@pytest.fixture
def client(server: tuple[httpx.Client, EdgeStack], cloud: FakeCloud) -> httpx.Client:
    return server[0]


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body["error"]) >= {"code", "message"}
    return body["error"]["code"]


def test_predict_routes_the_unsure_text_to_the_cloud_in_one_call(client: httpx.Client, cloud: FakeCloud) -> None:
    r = client.post("/v1/predict", json={"texts": [CONFIDENT, UNSURE, "tell me about the weather"],
                                         "request_id": "req-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "req-1"
    body = r.json()
    assert body["request_id"] == "req-1" and body["policy"] == "threshold" and body["latency_ms"] > 0
    sure, unsure, _ = body["results"]
    assert (sure["label"], sure["source"], sure["reason"]) == ("weather", "edge", "confident")
    assert sure["model_versions"] == {"edge": "tiny-1", "cloud": None}
    assert (unsure["source"], unsure["reason"], unsure["label"]) == ("cloud", "low_confidence", "oos")
    assert unsure["model_versions"] == {"edge": "tiny-1", "cloud": "cloud-7"}
    assert unsure["edge"]["confidence"] < 0.6 and unsure["top_k"] == [{"label": "oos", "confidence": 0.97}]
    [attempt] = cloud.attempts  # only the unsure text went, in one call
    assert attempt.body["texts"] == [UNSURE] and attempt.body["request_id"] == "req-1"


def test_routing_uses_the_manifest_score_on_calibrated_probabilities(client: httpx.Client) -> None:
    texts = [CONFIDENT, UNSURE, "hello there", "order a pizza", "tell me a joke", "check my balance"]
    probs = np.array(client.post("/batch_predict", json={"texts": texts}).json()["confidences"])
    expected = SCORES["max_prob"](probs) < 0.6
    results = client.post("/v1/predict", json={"texts": texts}).json()["results"]
    assert [r["source"] == "cloud" for r in results] == expected.tolist()


def test_one_text_and_forced_routes(client: httpx.Client, cloud: FakeCloud) -> None:
    edge = client.post("/v1/predict", json={"text": UNSURE, "route": "edge"}).json()["results"]
    assert [(r["source"], r["reason"]) for r in edge] == [("edge", "forced_edge")]
    forced = client.post("/v1/predict", json={"text": CONFIDENT, "route": "cloud"}).json()["results"]
    assert [(r["source"], r["reason"]) for r in forced] == [("cloud", "forced_cloud")]
    assert len(cloud.attempts) == 1


def test_tutorial_compatible_aliases(client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "healthy"}
    probs = client.post("/predict", json={"text": CONFIDENT}).json()["confidence"]
    assert len(probs) == 5 and abs(sum(probs) - 1) < 1e-6 and int(np.argmax(probs)) == 3  # weather
    assert client.post("/joint_predict", json={"text": CONFIDENT}).json()["source"] == "edge"
    joint = client.post("/joint_predict", json={"text": UNSURE}).json()
    assert joint["source"] == "cloud" and joint["label"] == "oos"
    batch = client.post("/batch_predict", json={"texts": [CONFIDENT, UNSURE]}).json()["confidences"]
    assert len(batch) == 2 and np.allclose(batch[0], probs)


def test_open_inference_protocol_v2(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/models/edge/ready").json() == {"name": "edge", "ready": True}
    meta = client.get("/v2/models/edge").json()
    assert meta["versions"] == ["tiny-1"] and meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert client.get("/v2").json()["name"] == "edge_container"
    r = client.post("/v2/models/edge/infer", json={
        "id": "abc", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [2, 1], "data": [[CONFIDENT], [UNSURE]]}]})
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == "abc" and body["model_name"] == "edge" and body["model_version"] == "tiny-1"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["probabilities"]["shape"] == [2, 5] and len(outputs["probabilities"]["data"]) == 10
    assert outputs["label"]["data"][0] == "weather" and outputs["label"]["datatype"] == "BYTES"
    only = client.post("/v2/models/edge/infer", json={
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}], "outputs": [{"name": "label"}]})
    assert [o["name"] for o in only.json()["outputs"]] == ["label"]
    assert client.get("/v2/models/other").status_code == 404  # error bodies there: tests/edge_container/test_oip.py
    assert client.post("/v2/models/other/infer", json={}).status_code == 404


@pytest.mark.parametrize(("path", "payload", "status", "code"), [
    ("/v1/predict", b"{not json", 400, "INVALID_JSON"),
    ("/v1/predict", b"", 400, "INVALID_JSON"),
    ("/v1/predict", b"\xff\xfe", 400, "INVALID_JSON"),
    ("/v1/predict", [1, 2], 400, "BAD_REQUEST"),
    ("/v1/predict", {}, 400, "BAD_REQUEST"),
    ("/v1/predict", {"text": "a", "texts": ["b"]}, 400, "BAD_REQUEST"),
    ("/v1/predict", {"text": 5}, 400, "BAD_REQUEST"),
    ("/v1/predict", {"text": None}, 400, "BAD_REQUEST"),
    ("/v1/predict", {"texts": "not a list"}, 400, "BAD_REQUEST"),
    ("/v1/predict", {"texts": ["ok", {"a": 1}]}, 400, "BAD_REQUEST"),
    ("/v1/predict", {"text": "   "}, 400, "EMPTY_TEXT"),
    ("/v1/predict", {"texts": []}, 400, "EMPTY_TEXT"),
    ("/v1/predict", {"text": "x" * 201}, 400, "TEXT_TOO_LONG"),
    ("/v1/predict", {"texts": ["a"] * 9}, 400, "TOO_MANY_TEXTS"),
    ("/v1/predict", {"text": "a", "route": "moon"}, 400, "BAD_REQUEST"),
    ("/v1/predict", {"text": "a", "deadline_ms": "soon"}, 400, "BAD_REQUEST"),
    ("/v1/predict", {"text": "a", "deadline_ms": True}, 400, "BAD_REQUEST"),
    ("/v1/predict", {"text": "a", "request_id": "bad id\n"}, 400, "BAD_REQUEST"),
    ("/v1/predict", {"text": "a", "txt": "typo"}, 400, "BAD_REQUEST"),
    ("/v1/predict", {"texts": ["x" * 150] * 8}, 413, "PAYLOAD_TOO_LARGE"),
    ("/predict", {"texts": ["a"]}, 400, "BAD_REQUEST"),
    ("/batch_predict", {"texts": [1]}, 400, "BAD_REQUEST"),
    ("/joint_predict", {"text": ""}, 400, "EMPTY_TEXT"),
])  # the OIP routes answer in the protocol's error shape: their bad requests are in test_oip.py
def test_bad_requests_get_a_4xx_with_a_stable_code(client: httpx.Client, path: str, payload: object, status: int,
                                                   code: str) -> None:
    if isinstance(payload, bytes):
        r = client.post(path, content=payload, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=payload)
    assert r.status_code == status, r.text
    assert error_code(r) == code


def test_a_chunked_body_over_the_limit_is_cut_off(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"text": "'
        for _ in range(100):
            yield b"x" * 100
        yield b'"}'

    r = client.post("/v1/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and error_code(r) == "PAYLOAD_TOO_LARGE"


def test_unknown_paths_and_methods_are_json_errors(client: httpx.Client) -> None:
    assert client.get("/nope").status_code == 404 and error_code(client.get("/nope")) == "NOT_FOUND"
    r = client.get("/v1/predict")
    assert r.status_code == 405 and error_code(r) == "METHOD_NOT_ALLOWED"


def test_health_readiness_openapi(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "model_version": "tiny-1"}
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/v1/predict" in doc["paths"] and "/v2/models/{name}/infer" in doc["paths"]


def test_metrics_cover_requests_stages_batches_routing_and_the_model(client: httpx.Client) -> None:
    client.post("/v1/predict", json={"texts": [CONFIDENT, UNSURE]})
    client.post("/v1/predict", json={"text": 3})
    text = client.get("/metrics").text
    for needle in [
        'edge_request_duration_seconds_count{endpoint="predict",source="mixed"}',
        'edge_stage_duration_seconds_count{stage="queue"}', 'edge_stage_duration_seconds_count{stage="tokenize"}',
        'edge_stage_duration_seconds_count{stage="infer"}', 'edge_stage_duration_seconds_count{stage="cloud"}',
        "edge_batch_size_bucket", 'edge_escalations_total{reason="low_confidence"}',
        'edge_cloud_circuit_state{edge_cloud_circuit_state="closed"} 1.0', 'edge_model_info{',
        'version="tiny-1"', "edge_cloud_budget_remaining", 'edge_http_errors_total{code="BAD_REQUEST",endpoint="predict"}',
        'edge_texts_total{source="cloud"}', "edge_queue_depth",
    ]:
        assert needle in text, needle


def test_admin_endpoints_need_the_token(client: httpx.Client) -> None:
    assert client.get("/admin/model").status_code == 401
    assert client.get("/admin/model", headers={"x-admin-token": "wrong-token-wrong-token"}).status_code == 401
    status = client.get("/admin/model", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}).json()
    assert status["current"]["model_version"] == "tiny-1" and status["circuit"] == "closed"
    assert client.post("/admin/rollback").status_code == 401
    r = client.post("/admin/reload", headers={"x-admin-token": ADMIN_TOKEN}, json={"source": "s3"})
    assert r.status_code == 409 and error_code(r) == "RELOAD_REFUSED"  # no S3 source configured here


def test_admin_is_disabled_without_a_token(edge_server) -> None:  # type: ignore[no-untyped-def]
    with edge_server(admin_token=None) as (client, _):
        r = client.get("/admin/model")
        assert r.status_code == 403 and error_code(r) == "ADMIN_DISABLED"


class BrokenPolicy(ThresholdPolicy):
    def escalate(self, probs: np.ndarray, routing: RoutingEntry) -> np.ndarray:
        raise RuntimeError("a bug")


def test_an_unexpected_bug_is_a_json_500_without_details(tiny_artifact: Path) -> None:
    with serve_edge(edge_settings(tiny_artifact), policy=BrokenPolicy()) as (client, _):
        r = client.post("/v1/predict", json={"text": CONFIDENT})
        assert r.status_code == 500 and r.json() == {"error": {"code": "INTERNAL_ERROR", "message": "internal error"}}
        assert client.get("/healthz").status_code == 200  # and the server goes on
