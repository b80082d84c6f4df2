"""The whole system on loopback, started by one command: moto (DynamoDB + S3), the Lambda over HTTP, the edge.

    python -m infra.stack up [--model-dir DIR] [--preset full|quick] [--edge-port 8080] [--cloud-port 8081]
                             [--moto-port 5000] [--daily-budget N] [--tenant demo] [--api-key KEY]
                             [--cloud-concurrency 4]        # the command line: infra/stack/__main__.py

    with LocalStack(artifact_dir) as stack:         # tests and the demo: free ports unless given
        httpx.post(stack.edge_url + "/v1/predict", json={"text": "hello"})
        stack.kill_cloud(); stack.start_cloud()      # fault scenarios
        stack.set_budget(0)                          # the tenant's daily limit, applied to today at once

What runs, in this order, each a subprocess in a process group of its own (so a stop reaches every
process it made, and Ctrl-C in the terminal reaches only this launcher, which stops them in order):

1. `python -m infra.moto_server`: one serialised moto server for DynamoDB and S3 (a threaded one lets
   conditional writes through that DynamoDB would refuse, so budgets would not hold under load);
2. the template's tables and bucket, created from `template.yaml`'s own definitions; the tenant's daily
   budget; the artifact published to the bucket with `model_build.publish` (`models/<version>/`, then
   `models/latest.json`), exactly what the cloud and the edge read in AWS;
3. `python -m infra.local_api`: the Lambda handler behind an API-Gateway-like adapter (API key -> tenant),
   in `cloud_concurrency` execution environments side by side, teacher from the bucket's latest.json;
   each warmed with one call on a key of its own, so no escalation pays the model load (and the
   tenant's budget stays untouched);
4. `python -m edge_container serve`: the edge, escalating to 3, its model from the bucket too, polling
   latest.json for hot reloads.

Every child gets fake AWS credentials and `AWS_ENDPOINT_URL` pointing at the local moto: nothing here can
reach a real AWS account. Their output goes to `<work dir>/logs/<name>.log` (folder 0700, files 0600).

Secrets (the tenant's and the stack's API keys, the edge's admin token and client key) never go on a
child's command line, which `ps` shows to every user: the cloud reads its keys from a 0600 file
(`--api-keys-file`), the edge its client keys from one (`EDGE_CLIENT_KEYS_FILE`), both in
`<work dir>/secrets/` (0700, removed on stop); the edge's cloud key and admin token are in its environment,
which only its owner can read. So no log holds a key either: a child's log starts with its command line.
"""

from __future__ import annotations

import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from infra import processes
from infra.artifact import MANIFEST_NAME
from infra.errors import StackError, refusal
from infra.local_api import DEFAULT_CONCURRENCY
from infra.processes import REPO_ROOT, ChildProcess, Port

DEFAULT_WORK_DIR = REPO_ROOT / ".cache" / "local-stack"
READY_PREFIX = "READY "
REGION = "us-east-1"
RESOURCE_PREFIX = "local"  # tables local-BudgetTable / local-IdempotencyTable, bucket local-modelbucket
MODEL_PREFIX = "models"
SERVICE_BUDGET = 10**9
DEFAULT_EDGE_PORT, DEFAULT_CLOUD_PORT, DEFAULT_MOTO_PORT = 8080, 8081, 5000  # `up`'s; the class picks free ones
PORTS = {"moto": Port("moto: DynamoDB + S3", "--moto-port N / make up UP_ARGS=\"--moto-port N\""),
         "cloud": Port("the cloud API", "--cloud-port N / make up UP_ARGS=\"--cloud-port N\""),
         "edge": Port("the edge service", "--edge-port N / make up UP_ARGS=\"--edge-port N\"")}
# What the stack sets on the edge itself: an override from edge_env would break the wiring silently.
WIRED_EDGE_VARIABLES = ("EDGE_HOST", "EDGE_PORT", "EDGE_MODEL_DIR", "EDGE_S3_LATEST_URI", "EDGE_S3_CACHE_DIR",
                        "EDGE_CLOUD_URL", "EDGE_CLOUD_API_KEY", "EDGE_ADMIN_TOKEN", "EDGE_CLIENT_KEYS",
                        "EDGE_CLIENT_KEYS_FILE")
EDGE_CLIENT_ID = "local"  # the one client the stack configures on the edge (key: LocalStack.edge_client_key)
# The edge's defaults (800 ms per cloud attempt, 2 s per request) are sized for API Gateway + Lambda, which
# scale out; the local cloud is a few execution environments in front of ONE one-request-at-a-time moto on
# the same cores, whose queue can set the latency under a burst. Longer limits keep the local stack about
# routing; `edge_env` (or EDGE_* variables in `up`'s environment) overrides them. The demo's one client
# (`local`) is all of the traffic, so the per-client escalation limit (meant for one kiosk among many) is
# lifted; EDGE_CLIENT_ESCALATIONS_PER_S=20 make up puts it back.
LOCAL_EDGE_DEFAULTS = {"EDGE_CLOUD_TIMEOUT_MS": "5000", "EDGE_DEFAULT_DEADLINE_MS": "10000",
                       "EDGE_CLIENT_ESCALATIONS_PER_S": "0"}

Log = Callable[[str], None]


# --------------------------------------------------------------------------- the stack


class LocalStack:
    """moto + cloud + edge on loopback; a context manager. Ports 0 (the default) pick free ones.

    `edge_env` / `cloud_env` add or override EDGE_* / Lambda variables (e.g. a shorter breaker reset for a
    fault test). Nothing starts before `start()` / `__enter__`."""

    def __init__(
        self,
        model_dir: Path | str,
        *,
        host: str = "127.0.0.1",
        edge_port: int = 0,
        cloud_port: int = 0,
        moto_port: int = 0,
        tenant: str = "demo",
        api_key: str | None = None,
        daily_budget: int = 10_000,
        work_dir: Path | str | None = None,
        reload_poll_s: float = 10.0,
        edge_env: Mapping[str, str] | None = None,
        cloud_env: Mapping[str, str] | None = None,
        start_timeout_s: float = 120.0,
        stop_grace_s: float = 10.0,
        cloud_concurrency: int = DEFAULT_CONCURRENCY,
        log: Log | None = None,
    ) -> None:
        if daily_budget < 0:
            raise ValueError("daily_budget must be >= 0")
        if cloud_concurrency < 1:
            raise ValueError("cloud_concurrency must be >= 1")
        self.model_dir = Path(model_dir)
        self.host = host
        self.tenant = tenant
        self.api_key = api_key or f"local-{secrets.token_urlsafe(18)}"
        self.admin_token = secrets.token_urlsafe(24)  # EDGE_ADMIN_TOKEN wants >= 16 characters
        self.daily_budget = daily_budget
        self.reload_poll_s = reload_poll_s
        self.cloud_concurrency = cloud_concurrency
        self._ports = {"moto": moto_port, "cloud": cloud_port, "edge": edge_port}
        self._edge_env = dict(edge_env or {})
        self._cloud_env = dict(cloud_env or {})
        self._start_timeout_s = start_timeout_s
        self._stop_grace_s = stop_grace_s
        self._log: Log = log or (lambda message: None)
        self._owns_work_dir = work_dir is None
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="local-stack-"))
        # A second key, for the stack's own calls (warm-up, the demo's cloud-only pass): never the tenant's.
        self.service_api_key = f"local-{secrets.token_urlsafe(18)}"
        self.service_tenant = "local-stack"
        # The edge's one client: what `/v1/predict` callers send as x-api-key (see edge_headers).
        self.edge_client_id = EDGE_CLIENT_ID
        self.edge_client_key = secrets.token_urlsafe(24)
        self.moto_url = self.cloud_url = self.edge_url = ""
        self.bucket = f"{RESOURCE_PREFIX}-modelbucket"
        self.budget_table = f"{RESOURCE_PREFIX}-BudgetTable"
        self.idempotency_table = f"{RESOURCE_PREFIX}-IdempotencyTable"
        self._moto: ChildProcess | None = None
        self._cloud: ChildProcess | None = None
        self._edge: ChildProcess | None = None
        self._clients: dict[str, Any] = {}

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        if not (self.model_dir / MANIFEST_NAME).is_file():
            raise StackError(f"{self.model_dir}: no {MANIFEST_NAME}; build one with "
                             "`python -m model_build build --preset quick --out DIR`")
        for name, about in PORTS.items():
            processes.check_free(self.host, self._ports[name], about)
        logs = processes.private_dir(self.work_dir / "logs")
        for old in logs.glob("*.log"):  # one run's logs per folder; restarts within a run append
            old.unlink()
        try:
            self._start_moto()
            self._create_resources()
            self._log(f"publishing {self.model_dir} to s3://{self.bucket}/{MODEL_PREFIX}/")
            self.publish(self.model_dir)
            self.set_budget(self.daily_budget)
            # The stack's own key (warm-up, the demo's cloud-only pass) must never run out.
            self._ledger().set_limit(self.service_tenant, SERVICE_BUDGET)
            self.start_cloud()
            self._start_edge()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Edge first (it stops calling the cloud), then the cloud, then moto. Safe to call twice."""
        for child in (self._edge, self._cloud, self._moto):
            if child is not None:
                child.stop(self._stop_grace_s)
        self._clients.clear()
        shutil.rmtree(self._secrets_dir, ignore_errors=True)  # this run's keys; a new start makes new ones
        if self._owns_work_dir:  # a temporary folder of ours: model caches are large, do not leave them
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def check(self) -> None:
        """StackError naming the first child that is no longer running (with its log's last lines)."""
        for child in (self._moto, self._cloud, self._edge):
            if child is not None and child.process is not None and child.process.poll() is not None:
                raise StackError(f"{child.name} exited with status {child.process.returncode}"
                                 + child.tail_note())

    @property
    def pricing(self) -> tuple[int, int]:
        """(units per call, units per text) the cloud charges: the template's defaults unless overridden."""
        return (int(self._cloud_env.get("COST_PER_REQUEST", "1")), int(self._cloud_env.get("COST_PER_TEXT", "1")))

    @property
    def logs(self) -> dict[str, Path]:
        return {c.name: c.log_path for c in (self._moto, self._cloud, self._edge) if c is not None}

    @property
    def edge_headers(self) -> dict[str, str]:
        """What a client of the edge's JSON routes sends: its client key and the JSON content type."""
        return {"x-api-key": self.edge_client_key, "content-type": "application/json"}

    @property
    def pids(self) -> dict[str, int]:
        return {c.name: c.pid for c in (self._moto, self._cloud, self._edge) if c is not None and c.pid}

    # ------------------------------------------------------------------ the cloud, for fault scenarios

    def start_cloud(self) -> None:
        """Start (or start again) the cloud on its port; warm each environment with a call on the stack's key."""
        # Written at every start: it reads them once, at start-up.
        keys_file = self._secret_file("cloud-api-keys", [f"{self.api_key}={self.tenant}",
                                                         f"{self.service_api_key}={self.service_tenant}"])
        if self._cloud is None:
            argv = [
                sys.executable, "-m", "infra.local_api", "--host", self.host, "--port", str(self._ports["cloud"]),
                "--model-dir", f"s3://{self.bucket}/{MODEL_PREFIX}/", "--dynamodb-endpoint", self.moto_url,
                "--budget-table", self.budget_table, "--idempotency-table", self.idempotency_table,
                "--api-keys-file", str(keys_file), "--concurrency", str(self.cloud_concurrency),
            ]
            env = {
                **self._aws_env(),
                "MODEL_CACHE_DIR": str(self.work_dir / "cloud-models"),
                "POWERTOOLS_LOG_LEVEL": "WARNING",  # one INFO line per refused request is noise here
                **self._cloud_env,
            }
            self._cloud = ChildProcess("cloud", argv, env, self.work_dir / "logs" / "cloud.log")
        self._cloud.start()
        url = self._cloud.ready_line(READY_PREFIX, self._start_timeout_s)
        if self._ports["cloud"] == 0:  # keep the port: the edge is configured with this URL
            self._ports["cloud"] = int(url.rsplit(":", 1)[1])
            self._cloud.argv[self._cloud.argv.index("--port") + 1] = str(self._ports["cloud"])
        self.cloud_url = url
        self._warm_cloud()
        self._log(f"cloud ready at {self.cloud_url}")

    def stop_cloud(self) -> None:
        """Graceful: SIGTERM, then SIGKILL after the grace period."""
        if self._cloud is not None:
            self._cloud.stop(self._stop_grace_s)

    def kill_cloud(self) -> None:
        """SIGKILL: a crashed cloud, connections refused from now on."""
        if self._cloud is not None:
            self._cloud.kill()

    def restart_cloud(self) -> None:
        self.stop_cloud()
        self.start_cloud()

    @property
    def cloud_running(self) -> bool:
        return self._cloud is not None and self._cloud.running

    # ------------------------------------------------------------------ budget and models

    def set_budget(self, limit: int) -> dict[str, Any]:
        """The tenant's daily limit, applied to today's row at once (units already spent stay spent)."""
        return self._ledger().set_limit(self.tenant, limit).to_json()

    def budget(self) -> dict[str, Any]:
        return self._ledger().status(self.tenant).to_json()

    def publish(self, artifact_dir: Path | str) -> Any:
        """Publish an artifact to the local bucket (models/<version>/, then latest.json): the edge picks it
        up at its next poll; the cloud at its next cold start (restart_cloud)."""
        from model_build.publish import publish
        from modelpack.manifest import load_manifest

        # A local stack serves what the user built, even when a build gate failed (publish to AWS refuses
        # that without --allow-failed-gates); it says so.
        gates = load_manifest(artifact_dir, verify=False).build.get("gates") or {}
        if gates.get("passed") is False:
            self._log(f"WARNING: {artifact_dir} failed build gates ({'; '.join(gates.get('failures', []))}); "
                      "serving it locally anyway")
        return publish(artifact_dir, bucket=self.bucket, prefix=MODEL_PREFIX, s3_client=self.client("s3"),
                       allow_failed_gates=True)

    def client(self, service: str) -> Any:
        """A boto3 client of the local moto (fake credentials, bounded timeouts and retries)."""
        if service not in self._clients:
            import boto3
            from botocore.config import Config

            config = Config(connect_timeout=5, read_timeout=60, retries={"mode": "standard", "max_attempts": 3})
            self._clients[service] = boto3.client(
                service, endpoint_url=self.moto_url, region_name=REGION, aws_access_key_id="testing",
                aws_secret_access_key="testing", config=config)
        return self._clients[service]

    # ------------------------------------------------------------------ start-up steps

    def _start_moto(self) -> None:
        argv = [sys.executable, "-m", "infra.moto_server", "--host", self.host, "--port", str(self._ports["moto"])]
        self._moto = ChildProcess("moto", argv, self._aws_env(), self.work_dir / "logs" / "moto.log")
        self._moto.start()
        self.moto_url = self._moto.ready_line(READY_PREFIX, self._start_timeout_s)
        self._log(f"moto (DynamoDB + S3) ready at {self.moto_url}")

    def _create_resources(self) -> None:
        from infra.moto_server import create_template_resources

        created = create_template_resources(dynamodb_client=self.client("dynamodb"), s3_client=self.client("s3"),
                                            prefix=RESOURCE_PREFIX)
        self.budget_table = created.tables["BudgetTable"]
        self.idempotency_table = created.tables["IdempotencyTable"]
        self.bucket = created.buckets["ModelBucket"]
        self._log(f"created from template.yaml: tables {', '.join(created.tables.values())}; "
                  f"bucket {', '.join(created.buckets.values())}")

    def _warm_cloud(self) -> None:
        """One inference per execution environment, all at once, on the stack's own key: an environment
        loads the teacher on its first call (as a Lambda cold start does), which would otherwise land on an
        escalation and time it out. Each environment takes one call at a time and a first call lasts the
        model load, so concurrent calls reach every environment."""
        from concurrent.futures import ThreadPoolExecutor

        import httpx

        cloud = self._cloud
        assert cloud is not None

        def call(_: int) -> None:
            try:
                response = httpx.post(f"{self.cloud_url}/v1/infer", json={"texts": ["hello"]},
                                      headers={"x-api-key": self.service_api_key}, timeout=self._start_timeout_s)
            except httpx.HTTPError as exc:
                raise StackError(f"the cloud did not answer its warm-up call: {exc}" + cloud.tail_note()) from exc
            if response.status_code != 200:
                raise StackError(f"the cloud's warm-up call got {response.status_code}: {refusal(response)}"
                                 + cloud.tail_note())

        with ThreadPoolExecutor(self.cloud_concurrency, thread_name_prefix="warm-cloud") as calls:
            list(calls.map(call, range(self.cloud_concurrency)))

    def _start_edge(self) -> None:
        port = self._ports["edge"] or processes.free_port(self.host)
        self._ports["edge"] = port
        model_dir = self.work_dir / "edge-model"  # empty: the edge takes its model from the bucket, like the cloud
        model_dir.mkdir(parents=True, exist_ok=True)
        wiring = {
            "EDGE_HOST": self.host,
            "EDGE_PORT": str(port),
            "EDGE_MODEL_DIR": str(model_dir),
            "EDGE_S3_LATEST_URI": f"s3://{self.bucket}/{MODEL_PREFIX}/latest.json",
            "EDGE_S3_CACHE_DIR": str(self.work_dir / "edge-s3-cache"),
            "EDGE_CLOUD_URL": self.cloud_url,
            "EDGE_CLOUD_API_KEY": self.api_key,
            "EDGE_ADMIN_TOKEN": self.admin_token,
            "EDGE_CLIENT_KEYS_FILE": str(self._secret_file(
                "edge-client-keys", [f"{self.edge_client_id}:{self.edge_client_key}"])),
        }
        env = {
            **self._aws_env(),
            "EDGE_RELOAD_POLL_S": str(self.reload_poll_s),
            "EDGE_LOG_LEVEL": "warning",
            **LOCAL_EDGE_DEFAULTS,
            **self._edge_env,
            **wiring,  # last: see WIRED_EDGE_VARIABLES
        }
        env.pop("EDGE_CLIENT_KEYS", None)  # the edge refuses both it and EDGE_CLIENT_KEYS_FILE
        self._edge = ChildProcess("edge", [sys.executable, "-m", "edge_container", "serve"], env,
                                  self.work_dir / "logs" / "edge.log")
        self._edge.start()
        self.edge_url = f"http://{self.host}:{port}"
        self._edge.wait_http_ok(f"{self.edge_url}/readyz", self._start_timeout_s)
        self._log(f"edge ready at {self.edge_url}")

    @property
    def _secrets_dir(self) -> Path:
        return self.work_dir / "secrets"

    def _secret_file(self, name: str, lines: Sequence[str]) -> Path:
        return processes.write_private(self._secrets_dir / name, "".join(f"{line}\n" for line in lines))

    def _aws_env(self) -> dict[str, str]:
        return processes.fake_aws_env(self.moto_url, REGION)

    def _ledger(self) -> Any:
        from cloud_functions.budget import BudgetLedger

        return BudgetLedger(self.budget_table, dynamodb_client=self.client("dynamodb"), default_limit=None)
