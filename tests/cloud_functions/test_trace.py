"""The edge's request id in the Lambda's log and trace: one escalation is found in both tiers' logs by one id
(the edge sends it as X-Request-Id and as the body's request_id; tests/edge_container/test_logging.py
pins the edge's side)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from cloud_functions.backends import LiteRTBackend

from .test_handler import Install, Invoke, env, event, handler, install, invoke, teacher  # noqa: F401 fixtures


@pytest.fixture
def annotations(handler: ModuleType, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """X-Ray annotations the handler puts (tracing is off outside Lambda: Powertools would drop them)."""
    seen: list[tuple[str, Any]] = []
    monkeypatch.setattr(handler.tracer, "put_annotation", lambda key, value: seen.append((key, value)))
    return seen


@pytest.fixture
def cloud_log(handler: ModuleType) -> Iterator[io.StringIO]:
    """The Lambda's log lines as CloudWatch gets them: Powertools' JSON, with the keys the handler appends."""
    out = io.StringIO()
    stream = logging.StreamHandler(out)
    stream.setFormatter(handler.logger.registered_formatter)
    std = logging.getLogger(handler.logger.name)
    std.addHandler(stream)
    yield out
    std.removeHandler(stream)


def infer_line(log: io.StringIO) -> dict[str, Any]:
    [line] = [parsed for parsed in map(json.loads, log.getvalue().splitlines()) if parsed["message"] == "infer"]
    return line


def test_the_edges_request_id_header_is_on_the_log_line_and_the_trace(
        install: Install, invoke: Invoke, teacher: LiteRTBackend, annotations: list[tuple[str, Any]],
        cloud_log: io.StringIO) -> None:
    install(backend=teacher)

    reply = invoke(event("infer", headers={"X-Request-Id": "edge-trace-1"}))

    assert reply.status == 200
    line = infer_line(cloud_log)
    assert line["edge_request_id"] == "edge-trace-1" and line["tenant"] == "k1acme0001" and line["texts"] == 2
    assert annotations == [("edge_request_id", "edge-trace-1")]


def test_without_the_header_the_bodys_request_id_is_the_edges(
        install: Install, invoke: Invoke, teacher: LiteRTBackend, annotations: list[tuple[str, Any]],
        cloud_log: io.StringIO) -> None:
    install(backend=teacher)

    invoke(event("infer"))  # the recorded body's request_id: edge-req-42

    line = infer_line(cloud_log)
    assert line["edge_request_id"] == "edge-req-42"
    assert annotations == [("edge_request_id", "edge-req-42")]


def test_a_call_without_an_id_is_logged_without_one(
        install: Install, invoke: Invoke, teacher: LiteRTBackend, annotations: list[tuple[str, Any]],
        cloud_log: io.StringIO) -> None:
    install(backend=teacher)

    invoke(event("infer", body={"texts": ["hello there"]}))  # neither header nor request_id

    line = infer_line(cloud_log)
    assert "edge_request_id" not in line and annotations == []
