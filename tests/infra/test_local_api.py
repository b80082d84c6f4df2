"""infra.local_api: real HTTP on loopback (`python -m infra.local_api` in a subprocess) in front of the
handler, a serialised moto server for DynamoDB, and the real tiny artifact."""

from __future__ import annotations

import base64
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from cloud_functions.budget import BudgetLedger
from infra.local_api import READY_PREFIX, ApiKey, load_api_keys, proxy_event
from infra.moto_server import SerialisedMotoServer
from modelpack.classifier import Classifier

REPO = Path(__file__).resolve().parents[2]
ACME_KEY, SMALL_KEY = "s3cr3t-acme-key", "s3cr3t-small-key"
BUDGET_TABLE = "localtest-BudgetTable"


@pytest.fixture(scope="module")
def moto_server() -> Iterator[SerialisedMotoServer]:
    with SerialisedMotoServer() as server:
        yield server


@pytest.fixture(scope="module")
def local_api(moto_server: SerialisedMotoServer, tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[str]:
    """`python -m infra.local_api` on a free port; yields its base URL."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_"))},
        "PYTHONPATH": str(REPO),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "DEFAULT_DAILY_BUDGET": "10",
        "MODEL_CACHE_DIR": str(tmp_path_factory.mktemp("local-api-cache")),
        "LOCAL_API_KEYS": f"{ACME_KEY}=k1acme0001,{SMALL_KEY}=k2small0002",  # never on the command line
    }
    command = [
        sys.executable, "-m", "infra.local_api", "--port", "0", "--model-dir", str(tiny_artifact),
        "--dynamodb-endpoint", moto_server.endpoint_url, "--create-tables", "--table-prefix", "localtest",
    ]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    assert process.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    stdout = process.stdout
    reader = threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True)
    reader.start()
    seen = []
    try:
        while True:
            line = lines.get(timeout=60)
            seen.append(line)
            if line.startswith(READY_PREFIX):
                break
        yield line[len(READY_PREFIX):].strip()
    except queue.Empty:
        pytest.fail("the local API did not start:\n" + "".join(seen))
    finally:
        process.terminate()
        process.wait(timeout=20)
        reader.join(timeout=10)  # it ends at EOF; then the pipe can be closed
        stdout.close()


@pytest.fixture(scope="module")
def ledger(moto_server: SerialisedMotoServer, local_api: str) -> BudgetLedger:
    return BudgetLedger(BUDGET_TABLE, dynamodb_client=moto_server.client("dynamodb"), default_limit=10)


def test_an_inference_over_http_is_answered_and_charged(
    local_api: str, ledger: BudgetLedger, tiny_artifact: Path
) -> None:
    texts = ["set a timer for five minutes"]

    response = httpx.post(f"{local_api}/v1/infer", json={"texts": texts},
                          headers={"x-api-key": ACME_KEY, "Idempotency-Key": "http-1"}, timeout=30)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    (expected,) = Classifier.from_folder(tiny_artifact, "cloud").predict(texts)
    assert body["results"][0]["label"] == expected.label
    assert body["cost"] == 2 and body["budget"]["remaining"] == 8
    assert ledger.status("k1acme0001").spent == 2

    budget = httpx.get(f"{local_api}/v1/budget", headers={"x-api-key": ACME_KEY}, timeout=30)
    assert budget.json()["spent"] == 2


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "not-a-key"}], ids=["missing", "unknown"])
def test_a_missing_or_unknown_api_key_is_refused_before_the_function(local_api: str, headers: dict[str, str]
                                                                    ) -> None:
    response = httpx.post(f"{local_api}/v1/infer", json={"texts": ["hello"]}, headers=headers, timeout=30)

    assert response.status_code == 403
    assert response.json() == {"message": "Forbidden"}


def test_an_exhausted_budget_is_429_with_its_reset_time(local_api: str, ledger: BudgetLedger) -> None:
    ledger.set_limit("k2small0002", 2)
    headers = {"x-api-key": SMALL_KEY}

    first = httpx.post(f"{local_api}/v1/infer", json={"texts": ["hello"]}, headers=headers, timeout=30)
    second = httpx.post(f"{local_api}/v1/infer", json={"texts": ["hello"]}, headers=headers, timeout=30)

    assert first.status_code == 200
    assert second.status_code == 429
    error = second.json()["error"]
    assert error["code"] == "BUDGET_EXHAUSTED"
    assert datetime.fromisoformat(error["resets_at"]) > datetime.now(UTC)
    assert int(second.headers["retry-after"]) > 0


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
