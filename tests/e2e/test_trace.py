"""One escalation, one id, both tiers' logs: the local stack (`make up`'s moto, the Lambda handler behind the
local API adapter, the edge) with the edge logging JSON and the Lambda at INFO. A request's id is on the
edge's answer line and on the Lambda's Powertools line for the call it made (`edge_request_id`)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.stack import LocalStack
from tests.e2e.conftest import EDGE_ENV

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def traced(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    edge_env = {**EDGE_ENV, "EDGE_LOG_FORMAT": "json", "EDGE_LOG_LEVEL": "info", "EDGE_POLICY": "cloud_only"}
    with LocalStack(tiny_artifact, work_dir=tmp_path_factory.mktemp("trace"), daily_budget=1000,
                    reload_poll_s=5.0, edge_env=edge_env, cloud_env={"POWERTOOLS_LOG_LEVEL": "INFO"},
                    cloud_concurrency=1) as running:
        yield running


def json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError:
            continue  # the child's start banner, native runtime lines
        if isinstance(parsed, dict):
            out.append(parsed)
    return out


def wait_for_lines(path: Path, match: Any, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Log files are written by other processes: what they logged for a request may land just after it."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [line for line in json_lines(path) if match(line)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_an_escalation_is_found_in_both_logs_by_one_id(traced: LocalStack) -> None:
    r = httpx.post(f"{traced.edge_url}/v1/predict", headers=traced.edge_headers, timeout=30,
                   json={"texts": ["what is my account balance"], "request_id": "trace-e2e-1"})
    assert r.status_code == 200 and r.json()["results"][0]["source"] == "cloud", r.text

    [edge] = wait_for_lines(traced.logs["edge"], lambda line: line.get("request_id") == "trace-e2e-1")
    assert (edge["event"], edge["source"], edge["reason"]) == ("answer", "cloud", "forced_cloud")
    [cloud] = wait_for_lines(traced.logs["cloud"], lambda line: line.get("edge_request_id") == "trace-e2e-1")
    assert cloud["message"] == "infer" and cloud["tenant"] == traced.tenant
    assert cloud["function_request_id"]  # and from it, the Lambda's other lines for this invocation
