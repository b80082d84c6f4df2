"""edge_container.logs: EDGE_LOG_FORMAT=json writes one JSON object a line, each escalated answer is a line
with its request id, model version, source and reason, and that request id goes to the cloud with the call."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_container.errors import ConfigurationError
from edge_container.logs import JsonFormatter, answers_log
from edge_container.settings import Settings
from tests.edge_container.conftest import CONFIDENT, UNSURE, FakeCloud, edge_settings, serve_edge
from tests.edge_container.test_packaging import free_port, launch, wait_ready


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """What the edge's loggers write, through the JSON formatter (as `serve` with EDGE_LOG_FORMAT=json)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("edge_container")
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def lines(log: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.getvalue().splitlines()]


def test_text_is_the_default_and_json_the_other_choice() -> None:
    assert Settings.from_env({}).log_format == "text"
    assert Settings.from_env({"EDGE_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(ConfigurationError, match="EDGE_LOG_FORMAT"):
        Settings.from_env({"EDGE_LOG_FORMAT": "yaml"})


def test_a_json_line_carries_the_call_fields_and_the_traceback_on_one_line() -> None:
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        record = logging.LogRecord("edge_container.cloud", logging.WARNING, __file__, 1, "failed: %s", ("x",),
                                   sys.exc_info())
    record.request_id = "r-1"  # what `extra=` does
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "failed: x" and parsed["level"] == "warning" and parsed["request_id"] == "r-1"
    assert parsed["logger"] == "edge_container.cloud" and parsed["time"].endswith("+00:00")
    assert "RuntimeError: boom" in parsed["exception"]


def test_each_escalated_answer_is_a_line_and_its_id_goes_to_the_cloud(
        tiny_artifact: Path, cloud: FakeCloud, json_log: io.StringIO) -> None:
    with serve_edge(edge_settings(tiny_artifact, cloud_url=cloud.url, cloud_api_key="k")) as (client, _):
        r = client.post("/v1/predict", json={"texts": [CONFIDENT, UNSURE], "request_id": "trace-7"})
    assert r.status_code == 200 and [x["source"] for x in r.json()["results"]] == ["edge", "cloud"]
    [attempt] = cloud.attempts
    assert attempt.headers["x-request-id"] == "trace-7" and attempt.body["request_id"] == "trace-7"
    answers = [line for line in lines(json_log) if line.get("event") == "answer"]
    assert answers == [{  # the edge's own confident answer is a DEBUG line: not at INFO
        **answers[0], "request_id": "trace-7", "index": 1, "source": "cloud", "reason": "low_confidence",
        "model_version": "tiny-1", "cloud_model_version": "cloud-7", "level": "info"}]


def test_an_answer_the_cloud_did_not_give_says_why_with_the_request_id(
        tiny_artifact: Path, cloud: FakeCloud, json_log: io.StringIO) -> None:
    cloud.reset("error", status=500)
    with serve_edge(edge_settings(tiny_artifact, cloud_url=cloud.url, cloud_api_key="k")) as (client, _):
        client.post("/v1/predict", json={"texts": [UNSURE], "request_id": "trace-8"})
    logged = lines(json_log)
    [answer] = [line for line in logged if line.get("event") == "answer"]
    assert (answer["request_id"], answer["source"], answer["reason"]) == ("trace-8", "edge_fallback", "cloud_error")
    assert any(line["logger"] == "edge_container.cloud" and line.get("request_id") == "trace-8" for line in logged)


def test_the_edges_own_answers_are_logged_at_debug(
        tiny_artifact: Path, json_log: io.StringIO) -> None:
    answers_log.setLevel(logging.DEBUG)
    try:
        with serve_edge(edge_settings(tiny_artifact)) as (client, _):
            client.post("/v1/predict", json={"texts": [CONFIDENT], "request_id": "trace-9"})
    finally:
        answers_log.setLevel(logging.NOTSET)
    [answer] = [line for line in lines(json_log) if line.get("event") == "answer"]
    assert (answer["level"], answer["source"], answer["request_id"]) == ("debug", "edge", "trace-9")


def test_the_entry_point_logs_json_lines_uvicorns_included(tiny_artifact: Path) -> None:
    port = free_port()
    proc = launch("serve", "--model-dir", str(tiny_artifact), "--host", "127.0.0.1", EDGE_PORT=str(port),
                  EDGE_RELOAD_POLL_S="0", EDGE_LOG_FORMAT="json", EDGE_ACCESS_LOG="true")
    try:
        wait_ready(proc, port)
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    # Every line is one JSON object, but the one the LiteRT runtime's native code prints to the file descriptor
    # itself when it creates its XNNPACK delegate (no Python logger sees it, and no setting silences it).
    native = [line for line in stderr.splitlines() if line.startswith("INFO: Created TensorFlow Lite")]
    logged = [json.loads(line) for line in stderr.splitlines() if line not in native]
    messages = {line["message"] for line in logged}
    assert "Application startup complete." in messages and "Application shutdown complete." in messages
    assert any(line["logger"] == "edge_container" and line["message"].startswith("edge ready") for line in logged)
    [access] = [line for line in logged if line["logger"] == "uvicorn.access" and line.get("path") == "/readyz"
                and line.get("status") == 200]
    assert access["method"] == "GET"
