"""infra.local_api: real HTTP on loopback (`python -m infra.local_api` in a subprocess) in front of the
handler, a serialised moto server for DynamoDB, and the real tiny artifact; and the app itself (served
in-process) over a pool of execution environments whose backend sleeps, for concurrency and budgets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud_functions.backends import Inference
from cloud_functions.budget import BudgetLedger
from infra.api_gateway import ApiKey
from infra.lambda_pool import EnvironmentPool, Handler
from infra.local_api import READY_PREFIX, create_app
from infra.local_function import FunctionSetup, powertools_environ, resolve_tables
from infra.moto_server import SerialisedMotoServer
from infra.sigv4 import IamCredential
from modelpack.classifier import Classifier
from modelpack.cloud_api import BudgetStatus, ErrorBody, ErrorCode, InferReply, TextResult

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
    assert BudgetStatus.from_json(budget.json()).spent == 2


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "not-a-key"}], ids=["missing", "unknown"])
def test_a_missing_or_unknown_api_key_is_refused_before_the_function(local_api: str, headers: dict[str, str]
                                                                    ) -> None:
    response = httpx.post(f"{local_api}/v1/infer", json={"texts": ["hello"]}, headers=headers, timeout=30)

    assert response.status_code == 403
    body = response.json()
    assert ErrorBody.from_json(body).code == "INVALID_API_KEY"  # template.yaml's GatewayResponses, rendered
    assert body["error"]["message"] == "Forbidden" and body["error"]["request_id"]


def test_a_route_the_api_does_not_have_is_api_gateways_403(local_api: str) -> None:
    """As in AWS: an unknown path is MISSING_AUTHENTICATION_TOKEN, decided before any key is looked at."""
    response = httpx.get(f"{local_api}/v1/models", headers={"x-api-key": ACME_KEY}, timeout=30)

    assert response.status_code == 403
    assert ErrorBody.from_json(response.json()).code == "MISSING_AUTHENTICATION_TOKEN"


def test_an_exhausted_budget_is_429_with_its_reset_time(local_api: str, ledger: BudgetLedger) -> None:
    ledger.set_limit("k2small0002", 2)
    headers = {"x-api-key": SMALL_KEY}

    first = httpx.post(f"{local_api}/v1/infer", json={"texts": ["hello"]}, headers=headers, timeout=30)
    second = httpx.post(f"{local_api}/v1/infer", json={"texts": ["hello"]}, headers=headers, timeout=30)

    assert first.status_code == 200
    assert second.status_code == 429
    error = ErrorBody.from_json(second.json())
    assert error.code == ErrorCode.BUDGET_EXHAUSTED
    resets_at = error.resets_at()
    assert resets_at is not None and resets_at > datetime.now(UTC)
    assert int(second.headers["retry-after"]) > 0


# --------------------------------------------------------------------------- execution environments side by side


@dataclass(frozen=True)
class SleepingBackend:
    """An InferenceBackend that takes `sleep_s` a call (none for texts starting "quick") and answers with
    the id of the process it ran in: the cost of a model without one. Pickled to every environment."""

    sleep_s: float
    model_version: str = "sleepy-1"
    labels: tuple[str, ...] = ("slow",)

    def max_cost_usd(self, texts: Sequence[str]) -> Decimal:
        return Decimal(0)

    def infer(self, texts: Sequence[str]) -> Inference:
        if not texts[0].startswith("quick"):
            time.sleep(self.sleep_s)
        return Inference(tuple(TextResult(f"pid-{os.getpid()}", 0.9) for _ in texts))


@dataclass(frozen=True)
class LocalFunction:
    """`FunctionSetup` with the environment `python -m infra.local_api` gives its environments (this test's
    fork server was started with pytest's)."""

    setup: FunctionSetup

    auth_mode: str = "apikey"

    def __call__(self, index: int) -> Handler:
        os.environ.update(powertools_environ(emit_metrics=False), POWERTOOLS_LOG_LEVEL="WARNING",
                          AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                          AUTH_MODE=self.auth_mode)
        return self.setup(index)


@contextlib.contextmanager
def served(app: Any) -> Iterator[str]:
    """`app` under uvicorn on a free loopback port, in a thread of this process; yields its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the app did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


@pytest.fixture(scope="module")
def sleepy_cloud(moto_server: SerialisedMotoServer, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[tuple[str, BudgetLedger]]:
    """The local API app over 4 environments running the real handler with a backend of 1 s, on
    tables of its own in the serialised moto; yields (URL, the tables' ledger)."""
    folder = tmp_path_factory.mktemp("sleepy-cloud")
    with pytest.MonkeyPatch.context() as env:
        for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                            ("AWS_DEFAULT_REGION", "us-east-1")):
            env.setenv(name, value)
        tables = resolve_tables(moto_server.endpoint_url, create=True, prefix="sleepy", budget=None,
                                idempotency=None)
    setup = FunctionSetup(str(folder / "no-model"), moto_server.endpoint_url, tables, str(folder / "cache"),
                          backend=SleepingBackend(1.0))
    keys = [ApiKey(key, tenant) for key, tenant in SLOW_TENANTS.items()]
    app = create_app(keys, environments=EnvironmentPool(LocalFunction(setup), size=4))
    ledger = BudgetLedger(tables.budget, dynamodb_client=moto_server.client("dynamodb"), default_limit=None)
    with served(app) as url:
        yield url, ledger


SLOW_TENANTS = {"s3cr3t-slow-a": "slow-a", "s3cr3t-slow-b": "slow-b"}  # key -> tenant: one per test


def post_at_once(url: str, tenant: str, n: int, *, in_flight: int, text: str = "text"
                 ) -> tuple[list[httpx.Response], float]:
    """`n` one-text inferences of `tenant`, `in_flight` at a time; the responses and the seconds they took."""
    key = next(k for k, t in SLOW_TENANTS.items() if t == tenant)

    async def main() -> list[httpx.Response]:
        gate = asyncio.Semaphore(in_flight)
        async with httpx.AsyncClient(base_url=url, headers={"x-api-key": key}, timeout=60) as client:

            async def one(i: int) -> httpx.Response:
                async with gate:
                    return await client.post("/v1/infer", json={"texts": [f"{text} {i}"]})

            return await asyncio.gather(*(one(i) for i in range(n)))

    started = time.monotonic()
    responses = asyncio.run(main())
    return responses, time.monotonic() - started


def test_invocations_run_side_by_side_through_the_local_api(sleepy_cloud: tuple[str, BudgetLedger]) -> None:
    # Given 4 execution environments whose backend takes 1 s a call
    url, ledger = sleepy_cloud
    ledger.set_limit("slow-a", 1000)

    # When 8 calls arrive at once
    responses, wall_s = post_at_once(url, "slow-a", 8, in_flight=8)

    # Then all are answered by the 4 environments, in about two rounds of 1 s, not in eight
    assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
    answered_by = {InferReply.from_json(r.json(), n_texts=1).results[0].label for r in responses}
    assert len(answered_by) == 4, answered_by
    assert wall_s < 8 * 1.0 / 2, wall_s  # one at a time takes >= 8 s; side by side ~2 s plus moto's share


def test_budgets_stay_exact_under_concurrent_charges_through_the_local_api(
    sleepy_cloud: tuple[str, BudgetLedger]
) -> None:
    # Given a tenant with 30 units, and calls of 2 units each (1 per call + 1 per text)
    url, ledger = sleepy_cloud
    ledger.set_limit("slow-b", 30)

    # When 40 calls race for them, 16 in flight over 4 environments (their backend answers at once)
    responses, _ = post_at_once(url, "slow-b", 40, in_flight=16, text="quick")

    # Then exactly 15 are answered and charged, the other 25 refused, and not one unit more is spent
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 15 + [429] * 25, statuses
    refused = [ErrorBody.from_json(r.json()).code for r in responses if r.status_code == 429]
    assert set(refused) == {ErrorCode.BUDGET_EXHAUSTED}
    status = ledger.status("slow-b")
    assert (status.spent, status.remaining) == (30, 0)


# --------------------------------------------------------------------------- IAM: the edge's SigV4 client end to end


DEVICE = IamCredential("AKIAEDGEDEVICE000001", "edge/Device+Secret0000000000000000000001",
                       "arn:aws:sts::123456789012:assumed-role/edge-acme/device-0042")
ROLE_TENANT = "arn:aws:iam::123456789012:role/edge-acme"


@pytest.fixture(scope="module")
def iam_cloud(moto_server: SerialisedMotoServer, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[str, BudgetLedger]]:
    """The local API in IAM mode (template AuthMode=Iam) over one environment running the real handler with
    AUTH_MODE=iam and a backend that answers at once; yields (URL, the tables' ledger)."""
    folder = tmp_path_factory.mktemp("iam-cloud")
    with pytest.MonkeyPatch.context() as env:
        for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                            ("AWS_DEFAULT_REGION", "us-east-1")):
            env.setenv(name, value)
        tables = resolve_tables(moto_server.endpoint_url, create=True, prefix="iam", budget=None, idempotency=None)
    setup = FunctionSetup(str(folder / "no-model"), moto_server.endpoint_url, tables, str(folder / "cache"),
                          backend=SleepingBackend(0.0))
    app = create_app([], environments=EnvironmentPool(LocalFunction(setup, auth_mode="iam"), size=1),
                     auth_mode="iam", iam_credentials=[DEVICE], region="us-east-1")
    ledger = BudgetLedger(tables.budget, dynamodb_client=moto_server.client("dynamodb"), default_limit=10)
    with served(app) as url:
        yield url, ledger


def _edge_client(http: httpx.AsyncClient, url: str, secret: str = DEVICE.secret_access_key) -> Any:
    from botocore.credentials import Credentials

    from edge_container.breaker import CircuitBreaker
    from edge_container.cloud import CloudClient, SigV4Signer

    signer = SigV4Signer(Credentials(DEVICE.access_key_id, secret), region="us-east-1")
    return CloudClient(http, url=f"{url}/v1/infer", api_key=None, signer=signer, timeout_s=20, retries=0,
                       breaker=CircuitBreaker(failures=5, reset_s=30))


def test_the_edges_sigv4_client_is_answered_and_its_role_is_charged(iam_cloud: tuple[str, BudgetLedger]) -> None:
    """Issue 24 #1: a device set up for SigV4 got 403 on every escalation. Here the edge's own client signs,
    the local API Gateway verifies the signature as AWS does, and the handler charges the signing role."""
    url, ledger = iam_cloud

    async def main() -> Any:
        async with httpx.AsyncClient() as http:
            return await _edge_client(http, url).infer(["quick one", "quick two"], idempotency_key="iam-1",
                                                       deadline=time.monotonic() + 30)

    reply = asyncio.run(main())

    assert len(reply.results) == 2 and reply.cost == 3
    assert ledger.status(ROLE_TENANT).spent == 3


def _signed(url: str, body: bytes, *, secret: str = DEVICE.secret_access_key, when: datetime | None = None
            ) -> dict[str, str]:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method="POST", url=url, data=body, headers={"content-type": "application/json"})
    signer = SigV4Auth(Credentials(DEVICE.access_key_id, secret), "execute-api", "us-east-1")
    if when is None:
        signer.add_auth(request)
    else:  # botocore signs with the current time: write the date it would have used then
        request.context["timestamp"] = when.strftime("%Y%m%dT%H%M%SZ")
        request.headers["X-Amz-Date"] = request.context["timestamp"]
        signature = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
        request.headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={DEVICE.access_key_id}/{request.context['timestamp'][:8]}/us-east-1/"
            f"execute-api/aws4_request, SignedHeaders={signer.signed_headers(signer.headers_to_sign(request))}, "
            f"Signature={signature}")
    return dict(request.headers.items())


@pytest.mark.parametrize(
    ("case", "code"),
    [("unsigned", "MISSING_AUTHENTICATION_TOKEN"), ("wrong-secret", "INVALID_SIGNATURE"),
     ("body-changed-after-signing", "INVALID_SIGNATURE"), ("signed-10-minutes-ago", "INVALID_SIGNATURE"),
     ("api-key-instead", "MISSING_AUTHENTICATION_TOKEN")],
)
def test_requests_iam_mode_refuses_never_reach_the_function(
    iam_cloud: tuple[str, BudgetLedger], case: str, code: str
) -> None:
    url, ledger = iam_cloud
    target, body = f"{url}/v1/infer", b'{"texts":["quick"]}'
    headers = {
        "unsigned": {"content-type": "application/json"},
        "wrong-secret": _signed(target, body, secret="not-the-secret"),
        "body-changed-after-signing": _signed(target, b'{"texts":["quick","free"]}'),
        "signed-10-minutes-ago": _signed(target, body, when=datetime.now(UTC) - timedelta(minutes=10)),
        "api-key-instead": {"content-type": "application/json", "x-api-key": ACME_KEY},
    }[case]
    spent = ledger.status(ROLE_TENANT).spent

    response = httpx.post(target, content=body, headers=headers, timeout=30)

    assert response.status_code == 403, response.text
    assert ErrorBody.from_json(response.json()).code == code
    assert ledger.status(ROLE_TENANT).spent == spent
