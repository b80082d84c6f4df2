"""The whole system on loopback, started by one command: moto (DynamoDB + S3), the Lambda over HTTP, the edge.

    python -m infra.stack up [--model-dir DIR] [--preset full|quick] [--edge-port 8080] [--cloud-port 8081]
                             [--moto-port 5000] [--daily-budget N] [--tenant demo] [--api-key KEY]

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
   teacher from the bucket's latest.json; warmed with one call on a key of its own, so the first
   escalation does not pay the model load (and the tenant's budget stays untouched);
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

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

from infra.budget_admin import non_negative_int

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ARTIFACT = REPO_ROOT / "artifacts" / "latest"
DEFAULT_WORK_DIR = REPO_ROOT / ".cache" / "local-stack"
MANIFEST_NAME = "manifest.json"
READY_PREFIX = "READY "
REGION = "us-east-1"
RESOURCE_PREFIX = "local"  # tables local-BudgetTable / local-IdempotencyTable, bucket local-modelbucket
MODEL_PREFIX = "models"
PROG = "python -m infra.stack"
SERVICE_BUDGET = 10**9
DEFAULT_EDGE_PORT, DEFAULT_CLOUD_PORT, DEFAULT_MOTO_PORT = 8080, 8081, 5000  # `up`'s; the class picks free ones
# What the stack sets on the edge itself: an override from edge_env would break the wiring silently.
WIRED_EDGE_VARIABLES = ("EDGE_HOST", "EDGE_PORT", "EDGE_MODEL_DIR", "EDGE_S3_LATEST_URI", "EDGE_S3_CACHE_DIR",
                        "EDGE_CLOUD_URL", "EDGE_CLOUD_API_KEY", "EDGE_ADMIN_TOKEN", "EDGE_CLIENT_KEYS",
                        "EDGE_CLIENT_KEYS_FILE")
EDGE_CLIENT_ID = "local"  # the one client the stack configures on the edge (key: LocalStack.edge_client_key)
_SECRET_NAME_PARTS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
# The edge's defaults (800 ms per cloud attempt, 2 s per request) are sized for API Gateway + Lambda, which
# scale out. The local cloud is ONE execution environment in front of a one-request-at-a-time moto: under
# concurrent escalations its queue, not its work, sets the latency (~15-20 calls/s at most on 2 cores, so
# 16 clients escalating a quarter of their texts wait seconds at p99), and a timed-out call keeps its
# place in that queue. Longer limits keep the local stack about routing, not about the stand-in's queue;
# `edge_env` (or EDGE_* variables in `up`'s environment) overrides them.
# The demo's one client (`local`) is all of the traffic: its escalation allowance is the whole cloud's, so
# the per-client limit (meant for one kiosk among many) is lifted here; EDGE_CLIENT_ESCALATIONS_PER_S=20
# make up puts it back.
LOCAL_EDGE_DEFAULTS = {"EDGE_CLOUD_TIMEOUT_MS": "5000", "EDGE_DEFAULT_DEADLINE_MS": "10000",
                       "EDGE_CLIENT_ESCALATIONS_PER_S": "0"}

Log = Callable[[str], None]


class StackError(Exception):
    """Something the user can fix (a port in use, no artifact, a child that would not start): one line,
    plus the tail of the child's log when there is one."""


# --------------------------------------------------------------------------- one child process


class _Child:
    """A subprocess in its own process group, its stdout and stderr appended to a log file.

    A file, not a pipe: an unread pipe fills up and blocks the child; a file also survives the child for
    troubleshooting. Readiness is read back from the part of the file this start wrote."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.name, self.argv, self.env, self.log_path = name, list(argv), dict(env), log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._offset = 0

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        _private_dir(self.log_path.parent)
        # 0600 from the start, and again if an older run left it readable to others.
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(self.argv)}\n".encode())
            self._offset = log.tell()
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
                self.argv,
                cwd=REPO_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: signals reach it and its children only
                preexec_fn=_die_with_parent if _in_main_thread() else None,  # noqa: PLW1509
            )

    def ready_line(self, prefix: str, timeout_s: float) -> str:
        """The rest of the first output line starting with `prefix`; StackError if the child exits first
        or the time runs out."""
        deadline = time.monotonic() + timeout_s
        while True:
            for line in self._new_output().splitlines():
                if line.startswith(prefix):
                    return line[len(prefix):].strip()
            self._fail_if_dead()
            if time.monotonic() > deadline:
                raise StackError(f"{self.name} printed no {prefix.strip()!r} line within {timeout_s:.0f} s"
                                 + self.tail_note())
            time.sleep(0.05)

    def wait_http_ok(self, url: str, timeout_s: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2.0) as client:
            while True:
                self._fail_if_dead()
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(url).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise StackError(f"{self.name} was not ready ({url}) within {timeout_s:.0f} s"
                                     + self.tail_note())
                time.sleep(0.1)

    def stop(self, grace_s: float) -> None:
        """SIGTERM to the group, SIGKILL after `grace_s`; then SIGKILL whatever is left of the group."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        _signal_group(process.pid, signal.SIGKILL)  # stragglers the leader left behind, if any

    def kill(self) -> None:
        """SIGKILL, no grace: what a crash looks like from outside."""
        process, self.process = self.process, None
        if process is not None:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def tail_note(self) -> str:
        tail = self.tail()
        return f"\n--- last lines of {self.log_path}:\n{tail}" if tail else ""

    def _new_output(self) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._offset)
                return log.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def _fail_if_dead(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            code = self.process.returncode
            _signal_group(self.process.pid, signal.SIGKILL)  # anything it started and left behind
            self.process = None
            raise StackError(f"{self.name} exited with status {code} while starting" + self.tail_note())


def _private_dir(path: Path) -> Path:
    """`path` created if missing, then 0700 (mkdir's mode is cut by the umask, and the folder may be old)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _write_private(path: Path, text: str) -> Path:
    """`text` in a 0600 file in a 0700 folder: written, never first created readable to others."""
    _private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM if the launcher dies without cleaning up (e.g. kill -9).

    Only armed for children started from the main thread: the signal fires when the *thread* that
    started the child exits, which for the main thread means the launcher itself."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the clean shutdown paths still apply
        pass


# --------------------------------------------------------------------------- ports


@dataclass(frozen=True, slots=True)
class _Port:
    what: str
    flag: str  # how to choose another one


def _check_free(host: str, port: int, about: _Port) -> None:
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is fine
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise StackError(
                f"port {port} on {host} ({about.what}) is not free: {exc.strerror or exc}. "
                f"Stop what uses it (e.g. `lsof -i :{port}`), or choose another port with {about.flag} "
                "(0 picks a free one)"
            ) from None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


_MOTO = _Port("moto: DynamoDB + S3", "--moto-port N / make up MOTO_PORT=N")
_CLOUD = _Port("the cloud API", "--cloud-port N / make up CLOUD_PORT=N")
_EDGE = _Port("the edge service", "--edge-port N / make up EDGE_PORT=N")


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
        log: Log | None = None,
    ) -> None:
        if daily_budget < 0:
            raise ValueError("daily_budget must be >= 0")
        self.model_dir = Path(model_dir)
        self.host = host
        self.tenant = tenant
        self.api_key = api_key or f"local-{secrets.token_urlsafe(18)}"
        self.admin_token = secrets.token_urlsafe(24)  # EDGE_ADMIN_TOKEN wants >= 16 characters
        self.daily_budget = daily_budget
        self.reload_poll_s = reload_poll_s
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
        self._moto: _Child | None = None
        self._cloud: _Child | None = None
        self._edge: _Child | None = None
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
        for name, about in (("moto", _MOTO), ("cloud", _CLOUD), ("edge", _EDGE)):
            _check_free(self.host, self._ports[name], about)
        logs = _private_dir(self.work_dir / "logs")
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
        """Start (or start again) the cloud on its port, and warm it with one call on the stack's own key."""
        # Written at every start: it reads them once, at start-up.
        keys_file = self._secret_file("cloud-api-keys", [f"{self.api_key}={self.tenant}",
                                                         f"{self.service_api_key}={self.service_tenant}"])
        if self._cloud is None:
            argv = [
                sys.executable, "-m", "infra.local_api", "--host", self.host, "--port", str(self._ports["cloud"]),
                "--model-dir", f"s3://{self.bucket}/{MODEL_PREFIX}/", "--dynamodb-endpoint", self.moto_url,
                "--budget-table", self.budget_table, "--idempotency-table", self.idempotency_table,
                "--api-keys-file", str(keys_file),
            ]
            env = {
                **self._aws_env(),
                "MODEL_CACHE_DIR": str(self.work_dir / "cloud-models"),
                "POWERTOOLS_LOG_LEVEL": "WARNING",  # one INFO line per refused request is noise here
                **self._cloud_env,
            }
            self._cloud = _Child("cloud", argv, env, self.work_dir / "logs" / "cloud.log")
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
        self._moto = _Child("moto", argv, self._aws_env(), self.work_dir / "logs" / "moto.log")
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
        """One inference on the stack's own key: the handler loads the teacher on its first call (as a
        Lambda cold start does), which would otherwise land on the first escalation and time it out."""
        import httpx

        assert self._cloud is not None
        try:
            response = httpx.post(f"{self.cloud_url}/v1/infer", json={"texts": ["hello"]},
                                  headers={"x-api-key": self.service_api_key}, timeout=self._start_timeout_s)
        except httpx.HTTPError as exc:
            raise StackError(f"the cloud did not answer its warm-up call: {exc}" + self._cloud.tail_note()) from exc
        if response.status_code != 200:
            raise StackError(f"the cloud's warm-up call got {response.status_code}: {response.text[:300]}"
                             + self._cloud.tail_note())

    def _start_edge(self) -> None:
        port = self._ports["edge"] or free_port(self.host)
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
        self._edge = _Child("edge", [sys.executable, "-m", "edge_container", "serve"], env,
                            self.work_dir / "logs" / "edge.log")
        self._edge.start()
        self.edge_url = f"http://{self.host}:{port}"
        self._edge.wait_http_ok(f"{self.edge_url}/readyz", self._start_timeout_s)
        self._log(f"edge ready at {self.edge_url}")

    @property
    def _secrets_dir(self) -> Path:
        return self.work_dir / "secrets"

    def _secret_file(self, name: str, lines: Sequence[str]) -> Path:
        return _write_private(self._secrets_dir / name, "".join(f"{line}\n" for line in lines))

    def _aws_env(self) -> dict[str, str]:
        """The parent's environment without any AWS/Powertools/EDGE settings of the user's, plus fake
        credentials and every AWS endpoint pointed at the local moto."""
        kept = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_", "EDGE_"))}
        python_path = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {
            **kept,
            "PYTHONPATH": os.pathsep.join(python_path),
            "PYTHONUNBUFFERED": "1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        if self.moto_url:
            env["AWS_ENDPOINT_URL"] = self.moto_url
        return env

    def _ledger(self) -> Any:
        from cloud_functions.budget import BudgetLedger

        return BudgetLedger(self.budget_table, dynamodb_client=self.client("dynamodb"), default_limit=None)


# --------------------------------------------------------------------------- the artifact


_BUILD_MINUTES = {"full": 18, "fast": 6, "quick": 2}  # measured alone on a 2-core AMD EPYC (README)


def ensure_artifact(model_dir: Path | str | None, *, preset: str, data: Path | None = None,
                    log: Log = print) -> Path:
    """`model_dir` if given (it must hold a manifest); else artifacts/latest, built first if it has none.
    The build runs in the foreground: its progress bars go straight to the terminal."""
    if model_dir is not None:
        folder = Path(model_dir)
        if not (folder / MANIFEST_NAME).is_file():
            raise StackError(f"{folder}: no {MANIFEST_NAME} (not an artifact folder); build one with "
                             f"`python -m model_build build --preset {preset} --out {folder}`")
        return folder
    if (DEFAULT_ARTIFACT / MANIFEST_NAME).is_file():
        return DEFAULT_ARTIFACT
    command = [sys.executable, "-m", "model_build", "build", "--preset", preset, "--out", str(DEFAULT_ARTIFACT)]
    if data is not None:
        command += ["--data", str(data)]
    unlabeled = os.environ.get("UNLABELED")  # the Makefile's: CLINC150's wiki pool, when it is there
    if preset != "quick" and unlabeled and Path(unlabeled).is_file():
        command += ["--unlabeled", unlabeled]
    log(f"no model in {DEFAULT_ARTIFACT.relative_to(REPO_ROOT)} yet: building it ({preset} preset; "
        f"about {_BUILD_MINUTES[preset]} minutes on 2 cores)")
    log("$ " + " ".join(command[1:]))
    if subprocess.call(command, cwd=REPO_ROOT) != 0:  # noqa: S603
        raise StackError("the model build failed (see above); fix it, or pass --model-dir DIR")
    return DEFAULT_ARTIFACT


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log = _stderr
    # Ctrl-C and SIGTERM both end up in the `finally` below; children sit in their own process groups,
    # so the terminal's SIGINT reaches only this process and the stop order stays ours.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    stack: LocalStack | None = None
    started = False
    try:
        model_dir = ensure_artifact(args.model_dir, preset=args.preset, data=args.data, log=log)
        edge_env = {k: v for k, v in os.environ.items() if k.startswith("EDGE_") and k not in WIRED_EDGE_VARIABLES}
        if edge_env:
            log("edge settings from the environment: " + ", ".join(
                f"{k}={'<redacted>' if any(part in k for part in _SECRET_NAME_PARTS) else v}"
                for k, v in sorted(edge_env.items())))
        stack = LocalStack(
            model_dir, host=args.host, edge_port=args.edge_port, cloud_port=args.cloud_port,
            moto_port=args.moto_port, tenant=args.tenant, api_key=args.api_key, daily_budget=args.daily_budget,
            work_dir=args.work_dir, reload_poll_s=args.reload_poll_s, edge_env=edge_env, log=log)
        log(f"starting the local stack (logs in {stack.work_dir / 'logs'}) ...")
        started = True
        stack.start()
        print(_banner(stack), flush=True)
        while True:
            stack.check()
            time.sleep(0.5)
    except KeyboardInterrupt:
        log("stopping ...")
        return 0
    except StackError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if stack is not None:
            # A second Ctrl-C must not cut the clean-up short and leave children behind.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            stack.stop()
            if started:
                log("stopped: every process ended, ports freed")


def _banner(stack: LocalStack) -> str:
    budget = stack.budget()
    predict = (f"curl -s {stack.edge_url}/v1/predict -H 'x-api-key: {stack.edge_client_key}' "
               "-H 'content-type: application/json' -d ")
    curl = predict + "'{\"text\": \"what is my checking account balance\"}'"
    forced = predict + "'{\"text\": \"how do i say thank you in japanese\", \"route\": \"cloud\"}'"
    cloud_curl = f"curl -s {stack.cloud_url}/v1/budget -H 'x-api-key: {stack.api_key}'"
    return "\n".join([
        "",
        "local stack is up (Ctrl-C stops everything)",
        f"  edge       {stack.edge_url}      /v1/predict  /metrics  /readyz  /openapi.json",
        f"  cloud      {stack.cloud_url}      POST /v1/infer  GET /v1/budget  (header x-api-key)",
        f"  moto       {stack.moto_url}      DynamoDB + S3 (bucket {stack.bucket})",
        f"  tenant     {stack.tenant}   daily budget {budget['limit']} units, {budget['remaining']} left",
        f"  API key    {stack.api_key}   (the tenant's, for the cloud)",
        f"  client key {stack.edge_client_key}   (client {stack.edge_client_id!r} of the edge: x-api-key)",
        f"  admin      x-admin-token: {stack.admin_token}   (GET {stack.edge_url}/admin/model)",
        f"  logs       {stack.work_dir / 'logs'}",
        "",
        "try:",
        f"  {curl}",
        f"  {forced}     # the cloud answers",
        f"  {cloud_curl}     # what the tenant spent",
        "",
    ])


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt




def _port(text: str) -> int:
    value = non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start moto, the cloud API and the edge; Ctrl-C stops them",
                             description="Start moto (DynamoDB + S3), the cloud API and the edge on loopback; "
                             "print the URLs, the API key and a sample curl; Ctrl-C stops everything.")
    up.add_argument("--model-dir", type=Path, help="artifact folder (default: artifacts/latest, built if missing)")
    up.add_argument("--preset", choices=["full", "fast", "quick"], default=os.environ.get("PRESET") or "fast",
                    help="preset of the build when artifacts/latest is missing (default: $PRESET or full)")
    up.add_argument("--data", type=Path, help="labelled data for that build (default: model_build's)")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--edge-port", type=_port, default=DEFAULT_EDGE_PORT, help="default %(default)s; 0 picks a free one")
    up.add_argument("--cloud-port", type=_port, default=DEFAULT_CLOUD_PORT, help="default %(default)s; 0: a free one")
    up.add_argument("--moto-port", type=_port, default=DEFAULT_MOTO_PORT, help="default %(default)s; 0: a free one")
    up.add_argument("--daily-budget", type=non_negative_int, default=10_000,
                    help="the tenant's daily budget in cost units (default %(default)s)")
    up.add_argument("--tenant", default="demo", help="the tenant the API key belongs to (default %(default)s)")
    up.add_argument("--api-key", default=os.environ.get("LOCAL_STACK_API_KEY") or None,
                    help="the tenant's x-api-key (default: $LOCAL_STACK_API_KEY, else a random one, "
                    "printed); ps shows it to every user: prefer the variable")
    up.add_argument("--reload-poll-s", type=float, default=10.0,
                    help="how often the edge polls the bucket's latest.json (default %(default)s)")
    up.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR,
                    help="logs and model caches (default: .cache/local-stack)")
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
