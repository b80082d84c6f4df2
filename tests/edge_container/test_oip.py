"""The Open Inference Protocol v2 routes over real HTTP (uvicorn on loopback) with the real tiny model: the
binary tensor data extension, the protocol's error shape, the bounded shape check, and a real OIP client
(`tritonclient[http]`) using its defaults."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from edge_container.openapi import WHITESPACE
from edge_container.wiring import EdgeStack
from tests.edge_container.conftest import CLIENT_KEY, CONFIDENT, UNSURE, edge_settings, serve_edge

INFER = "/v2/models/edge/infer"
AUTH = {"x-api-key": CLIENT_KEY}


def auth() -> dict[str, str]:
    """A fresh dict per call: tritonclient writes Inference-Header-Content-Length into the one it is given."""
    return dict(AUTH)


@pytest.fixture(scope="module")
def server(tiny_artifact: Path) -> Iterator[tuple[httpx.Client, EdgeStack]]:
    with serve_edge(edge_settings(tiny_artifact)) as pair:  # default limits: a 1 MiB body, 64 texts
        yield pair


@pytest.fixture
def client(server: tuple[httpx.Client, EdgeStack]) -> httpx.Client:
    return server[0]


@pytest.fixture
def triton_client(client: httpx.Client) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(url=f"{client.base_url.host}:{client.base_url.port}",
                                      network_timeout=30) as tc:
        yield tc


def texts_tensor(texts: list[str], *, binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_), binary_data=binary)
    return tensor


def binary_body(header: dict[str, Any], blob: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + blob, {**AUTH, "inference-header-content-length": str(len(head))}


def bytes_input(texts: list[str], **overrides: Any) -> tuple[dict[str, Any], bytes]:
    blob = serialize_byte_tensor(np.array([t.encode() for t in texts], dtype=np.object_)).item()
    tensor = {"name": "text", "datatype": "BYTES", "shape": [len(texts)],
              "parameters": {"binary_data_size": len(blob)}, **overrides}
    return tensor, blob


def oip_error(response: httpx.Response) -> str:
    """The protocol's error body is `{"error": "<message>"}`: a string, nothing else."""
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    return body["error"]


# --- defect #1: a huge shape must be refused before any arithmetic on it ------------------------------------

def test_a_huge_shape_is_refused_in_milliseconds_and_the_loop_keeps_serving(client: httpx.Client) -> None:
    # given a 1 MB body whose shape has 500,000 dimensions of 2 (their product has 150,000 digits)
    shape = ",".join(["2"] * 500_000)
    body = ('{"inputs":[{"name":"text","datatype":"BYTES","shape":[' + shape + '],"data":["a"]}]}').encode()
    assert len(body) < 1 << 20
    stalls: list[float] = []
    done = threading.Event()

    def probe_health() -> None:
        with httpx.Client(base_url=client.base_url, timeout=10) as probe:
            while not done.is_set():
                start = time.perf_counter()
                assert probe.get("/healthz").status_code == 200
                stalls.append(time.perf_counter() - start)
                time.sleep(0.005)

    prober = threading.Thread(target=probe_health, daemon=True)
    prober.start()
    while not stalls and prober.is_alive():  # the loop is being probed before the request goes in
        time.sleep(0.005)
    # when it is posted
    start = time.perf_counter()
    try:
        r = client.post(INFER, content=body, headers={"content-type": "application/json"}, timeout=5)
    finally:
        elapsed = time.perf_counter() - start
        time.sleep(0.05)  # and for a little while after its answer
        done.set()
        prober.join(15)
    # then it is a 400 naming the shape, answered at once, and /healthz never waited on it
    assert r.status_code == 400 and "shape" in oip_error(r)
    assert elapsed < 1.0, f"the 400 took {elapsed:.2f} s"
    assert max(stalls) < 0.5, f"/healthz waited {max(stalls):.2f} s"


@pytest.mark.parametrize("shape", [[65], [1] * 9, [0, 10**30], [64, 2], [2**63]])
def test_shapes_past_the_limits_are_a_400(client: httpx.Client, shape: list[int]) -> None:
    r = client.post(INFER, json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": shape, "data": ["a"]}]})
    assert r.status_code == 400 and "shape" in oip_error(r)


@pytest.mark.parametrize(("payload", "needle"), [
    ({"inputs": [{"name": "t", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, "BYTES"),
    ({"inputs": [{"name": "t", "datatype": "BYTES", "shape": [3], "data": ["a"]}]}, "shape"),
    ({"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1], "data": [7]}]}, "string"),
    ({"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1], "data": [[[["a"]]]]}]}, "shape"),
    ({"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1], "data": "a"}]}, "data"),
    ({"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1], "data": ["a"]}], "outputs": []}, "outputs"),
    ({"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1], "data": ["a"]}], "top_k": 3}, "top_k"),
    ({"inputs": [{"datatype": "BYTES", "shape": [1], "data": ["a"]}]}, "name"),
])
def test_bad_json_requests_are_a_400_in_the_protocols_shape(client: httpx.Client, payload: dict[str, Any],
                                                            needle: str) -> None:
    r = client.post(INFER, json=payload)
    assert r.status_code == 400 and needle in oip_error(r)


# --- defect #12: the binary tensor data extension and the protocol's error shape -----------------------------

def test_binary_input_and_binary_outputs_as_the_extension_defines_them(client: httpx.Client) -> None:
    # given two texts as a binary BYTES tensor and outputs asked for in binary and in JSON
    tensor, blob = bytes_input([CONFIDENT, UNSURE])
    body, headers = binary_body({"id": "b-1", "inputs": [tensor], "outputs": [
        {"name": "probabilities", "parameters": {"binary_data": True}},
        {"name": "label", "parameters": {"binary_data": True}},
        {"name": "confidence", "parameters": {"binary_data": False}}]}, blob)
    # when it is posted as application/octet-stream
    r = client.post(INFER, content=body, headers={**headers, "content-type": "application/octet-stream"})
    # then the answer is a JSON header of the declared length followed by the binary outputs in order
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    length = int(r.headers["inference-header-content-length"])
    head, rest = json.loads(r.content[:length]), r.content[length:]
    assert head["id"] == "b-1" and head["model_name"] == "edge" and head["model_version"] == "tiny-1"
    probs, labels, confidence = head["outputs"]
    assert probs["shape"] == [2, 5] and "data" not in probs and probs["parameters"] == {"binary_data_size": 40}
    matrix = np.frombuffer(rest[:40], dtype="<f4").reshape(2, 5)
    assert np.allclose(matrix.sum(axis=1), 1, atol=1e-5) and int(matrix[0].argmax()) == 3  # weather
    n0 = int.from_bytes(rest[40:44], "little")
    assert rest[44:44 + n0] == b"weather" and labels["parameters"]["binary_data_size"] == len(rest) - 40
    assert confidence["data"] == pytest.approx(matrix.max(axis=1).tolist())
    # and the same request in JSON tensors gives the same numbers
    plain = client.post(INFER, json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2],
                                                 "data": [CONFIDENT, UNSURE]}]}).json()
    assert np.allclose(plain["outputs"][0]["data"], matrix.ravel(), atol=1e-6)


def test_binary_data_output_asks_for_every_output_in_binary(client: httpx.Client) -> None:
    tensor, blob = bytes_input(["hello there"])
    body, headers = binary_body({"inputs": [tensor], "parameters": {"binary_data_output": True}}, blob)
    r = client.post(INFER, content=body, headers=headers)  # no content-type, as tritonclient sends it
    assert r.status_code == 200, r.text
    head = json.loads(r.content[:int(r.headers["inference-header-content-length"])])
    sizes = [o["parameters"]["binary_data_size"] for o in head["outputs"]]
    assert [o["name"] for o in head["outputs"]] == ["probabilities", "label", "confidence"]
    assert sizes[0] == 20 and sizes[2] == 4 and len(r.content) == int(r.headers["inference-header-content-length"]) \
        + sum(sizes)


@pytest.mark.parametrize(("header", "blob", "length", "needle"), [
    ({"inputs": [bytes_input(["hi"])[0]]}, b"\x05\x00\x00\x00hi", None, "binary"),  # element overruns its tensor
    ({"inputs": [bytes_input(["hi"])[0]]}, bytes_input(["hi"])[1][:-1], None, "binary"),  # body cut short
    ({"inputs": [bytes_input(["hi"])[0]]}, bytes_input(["hi"])[1] + b"x", None, "binary"),  # bytes left over
    ({"inputs": [bytes_input(["a", "b"], shape=[3])[0]]}, bytes_input(["a", "b"])[1], None, "shape"),
    ({"inputs": [bytes_input(["hi"], data=["hi"])[0]]}, bytes_input(["hi"])[1], None, "data"),
    ({"inputs": [bytes_input(["hi"])[0]]}, b"\x02\x00\x00\x00\xff\xfe", None, "UTF-8"),
    ({"inputs": [bytes_input(["hi"])[0]]}, bytes_input(["hi"])[1], "999999", "Inference-Header-Content-Length"),
    ({"inputs": [bytes_input(["hi"])[0]]}, bytes_input(["hi"])[1], "-1", "Inference-Header-Content-Length"),
    ({"inputs": [bytes_input(["hi"])[0]], "outputs": [{"name": "label", "parameters": {"classification": 2}}]},
     bytes_input(["hi"])[1], None, "classification"),
], ids=["element-overruns", "cut-short", "left-over", "shape-mismatch", "data-and-binary", "not-utf8",
        "header-too-long", "header-negative", "classification"])
def test_bad_binary_requests_are_a_400_naming_the_problem(client: httpx.Client, header: dict[str, Any], blob: bytes,
                                                          length: str | None, needle: str) -> None:
    body, headers = binary_body(header, blob)
    if length is not None:
        headers["inference-header-content-length"] = length
    r = client.post(INFER, content=body, headers=headers)
    assert r.status_code == 400 and needle in oip_error(r)


def test_a_body_of_another_media_type_is_a_415(client: httpx.Client) -> None:
    r = client.post(INFER, content=json.dumps({"inputs": []}), headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "content-type" in oip_error(r)


def test_oip_errors_are_strings_and_other_routes_keep_their_shape(client: httpx.Client) -> None:
    missing = client.get("/v2/models/other")
    assert missing.status_code == 404 and "other" in oip_error(missing)
    assert client.post("/v2/models/other/infer", json={}).status_code == 404
    assert client.get("/v2/models/other/ready").status_code == 404
    bad = client.post(INFER, json={"inputs": [{"name": "t", "datatype": "FP32", "shape": [1], "data": [1.0]}]})
    assert bad.status_code == 400 and "BYTES" in oip_error(bad)
    assert client.get("/v2/nothing/here").status_code == 404 and oip_error(client.get("/v2/nothing/here"))
    wrong_method = client.get(INFER)
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST" and oip_error(wrong_method)
    native = client.get("/v1/predict")
    assert native.status_code == 405 and native.headers["allow"] == "POST"
    assert native.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


# --- a real OIP client with its defaults ---------------------------------------------------------------------

def test_tritonclient_drives_health_metadata_and_inference(triton_client: triton.InferenceServerClient,
                                                           client: httpx.Client) -> None:
    # health and metadata
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.is_model_ready("edge") and not triton_client.is_model_ready("other")
    assert triton_client.get_server_metadata()["name"] == "edge_container"
    meta = triton_client.get_model_metadata("edge")
    assert meta["versions"] == ["tiny-1"] and meta["inputs"][0]["datatype"] == "BYTES"
    labels = meta["parameters"]["labels"]

    # inference with every default: binary input, no outputs named (so all come back in binary)
    result = triton_client.infer("edge", [texts_tensor([CONFIDENT, UNSURE])], headers=auth())
    probs = result.as_numpy("probabilities")
    assert probs.shape == (2, 5) and probs.dtype == np.float32 and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert result.as_numpy("label").tolist() == [labels[i].encode() for i in probs.argmax(axis=1)]
    assert np.allclose(result.as_numpy("confidence"), probs.max(axis=1))
    assert result.as_numpy("label")[0] == b"weather"

    # requested outputs with their default (binary) and in JSON, JSON inputs, a request id
    outputs = [triton.InferRequestedOutput("label"), triton.InferRequestedOutput("probabilities", binary_data=False)]
    mixed = triton_client.infer("edge", [texts_tensor([CONFIDENT, UNSURE], binary=False)], outputs=outputs,
                                request_id="r-7", headers=auth())
    assert mixed.get_response()["id"] == "r-7" and mixed.as_numpy("confidence") is None
    assert mixed.as_numpy("label").tolist() == result.as_numpy("label").tolist()
    assert np.allclose(mixed.as_numpy("probabilities"), probs, atol=1e-6)

    # the same numbers as the native route
    native = client.post("/batch_predict", json={"texts": [CONFIDENT, UNSURE]}).json()["confidences"]
    assert np.allclose(native, probs, atol=1e-6)


def test_tritonclient_reads_the_servers_errors(triton_client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as missing:
        triton_client.get_model_metadata("other")
    assert missing.value.status() == "404" and "no model named 'other'" in missing.value.message()
    with pytest.raises(InferenceServerException) as empty:
        triton_client.infer("edge", [texts_tensor(["   "])], headers=auth())
    assert empty.value.status() == "400" and "empty" in empty.value.message()


# --- the OpenAPI document: what schemathesis generates from (bench/schemathesis_edge.py) ----------------------

def test_the_openapi_document_lets_generators_reach_the_oip_model_routes(client: httpx.Client) -> None:
    doc = client.get("/openapi.json").json()
    name = doc["components"]["parameters"]["ModelName"]
    assert (name["in"], name["name"], name["required"], name["schema"]["enum"]) == ("path", "name", True, ["edge"])
    for path, method in [("/v2/models/{name}", "get"), ("/v2/models/{name}/ready", "get"),
                         ("/v2/models/{name}/infer", "post")]:
        op = doc["paths"][path][method]
        assert op["parameters"] == [{"$ref": "#/components/parameters/ModelName"}], path
        errors = [r for code, r in op["responses"].items() if code != "200"]
        assert errors and all(r["content"]["application/json"]["schema"]["$ref"].endswith("/OipError")
                              for r in errors)
    infer = doc["paths"]["/v2/models/{name}/infer"]["post"]
    assert set(infer["responses"]["200"]["content"]) == {"application/json", "application/octet-stream"}
    tensor = infer["requestBody"]["content"]["application/json"]["schema"]["properties"]["inputs"]["items"]
    assert len(tensor["oneOf"]) == 64  # one branch per text count up to max_texts: shape [n] with n texts


def test_the_documents_whitespace_is_what_the_parsers_strip() -> None:
    blank = re.compile(f"[{WHITESPACE}]")
    assert [c for c in range(0x110000) if (blank.fullmatch(chr(c)) is not None) != chr(c).isspace()] == []
