"""The whole system on loopback, as `make up` starts it: moto (DynamoDB + S3), the Lambda handler behind the
local API adapter, the edge service; real HTTP, real subprocesses, the real tiny artifact."""

from __future__ import annotations

import asyncio
import os
import queue
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from infra.processes import REPO_ROOT
from infra.stack import DEFAULT_EDGE_PORT, LocalStack
from modelpack.routing import cloud_answer
from modelpack.scores import SCORES
from tests.e2e.conftest import EDGE_ENV, Reference
from tests.fixtures.tiny_artifact import TEXTS

pytestmark = pytest.mark.slow

UNSURE = "play music"  # the tiny edge model's max_prob ~0.48, below the manifest's threshold 0.6
IN_DOMAIN = [text for texts in TEXTS.values() for text in texts]
OTHER = [
    "play music", "book a flight to rome", "what is my credit score", "turn off the lights",
    "order a pizza", "translate hello into french", "how do i reset my password", "call my mother",
    "what time is it in tokyo", "remind me to buy milk", "is my package delayed", "spell necessary",
    "how many calories in an apple", "what's the exchange rate for euros", "cancel my reservation",
    "find a gas station nearby", "tell me a joke", "when is my next meeting", "add eggs to my list",
    "what song is this", "how long to boil an egg", "change my pin number", "where is my phone",
    "set the thermostat to 70", "who are you", "transfer money to savings", "snooze the alarm",
    "what's the traffic like", "how far is the moon", "play the next episode",
]


# --------------------------------------------------------------------------- helpers


def post_all(url: str, bodies: Sequence[dict[str, Any]], *, concurrency: int = 8,
             headers: dict[str, str] | None = None) -> list[tuple[int, Any]]:
    """POST every body to `url`, `concurrency` at a time; (status, JSON body) in the bodies' order."""

    async def run() -> list[tuple[int, Any]]:
        out: list[tuple[int, Any]] = [(0, None)] * len(bodies)
        gate = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(timeout=60.0, headers=headers) as client:

            async def one(i: int) -> None:
                async with gate:
                    response = await client.post(url, json=bodies[i])
                    out[i] = (response.status_code, response.json())

            await asyncio.gather(*(one(i) for i in range(len(bodies))))
        return out

    return asyncio.run(run())


def predict(stack: LocalStack, text: str, **fields: Any) -> dict[str, Any]:
    response = httpx.post(f"{stack.edge_url}/v1/predict", json={"text": text, **fields},
                          headers=stack.edge_headers, timeout=60.0)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()["results"][0]
    return result


def circuit(stack: LocalStack) -> str:
    response = httpx.get(f"{stack.edge_url}/admin/model", headers={"x-admin-token": stack.admin_token}, timeout=10)
    assert response.status_code == 200, response.text
    return str(response.json()["circuit"])


def spent(stack: LocalStack) -> int:
    response = httpx.get(f"{stack.cloud_url}/v1/budget", headers={"x-api-key": stack.api_key}, timeout=30)
    assert response.status_code == 200, response.text
    return int(response.json()["spent"])


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def assert_stopped_cleanly(pids: Sequence[int], ports: Sequence[int]) -> None:
    """No process of any child's group is left, and every port can be bound again."""
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    for port in ports:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))


# --------------------------------------------------------------------------- answers


def test_answers_match_the_models_run_directly(stack: LocalStack, references: dict[str, Reference]) -> None:
    # Given a few hundred requests, some the edge is sure of and some it is not
    texts = (IN_DOMAIN + OTHER) * 5
    bodies = [{"text": text, "request_id": f"answers-{i}"} for i, text in enumerate(texts)]

    # When they go through the edge, 8 at a time
    replies = post_all(f"{stack.edge_url}/v1/predict", bodies, headers=stack.edge_headers)

    # Then every one is answered, and each answer is what the model that gave it says when run directly
    assert [status for status, _ in replies] == [200] * len(texts)
    results = [body["results"][0] for _, body in replies]
    sources = Counter(result["source"] for result in results)
    assert sources["edge"] > 0 and sources["cloud"] > 0, sources
    assert sources["edge_fallback"] == 0, [r["reason"] for r in results if r["source"] == "edge_fallback"]
    for text, result in zip(texts, results, strict=True):
        edge = references[result["model_versions"]["edge"]]
        probs = edge.edge.probabilities([text])[0]
        assert result["edge"]["label"] == edge.manifest.labels[int(probs.argmax())], text
        assert result["edge"]["confidence"] == pytest.approx(float(probs.max()), abs=1e-6), text
        routing = edge.manifest.routing
        score = float(SCORES[routing.score](probs[np.newaxis])[0])
        if abs(score - routing.threshold) > 1e-6:  # exactly at the threshold, rounding decides
            assert (result["source"] == "cloud") == (score < routing.threshold), (text, score)
        if result["source"] == "edge":
            assert (result["label"], result["reason"]) == (result["edge"]["label"], "confident")
        else:
            cloud = references[result["model_versions"]["cloud"]]
            cloud_logits = cloud.cloud.logits([text])
            cloud_probs = cloud.cloud.calibrate(cloud_logits)[0]
            best = int(cloud_probs.argmax())
            answer = cloud_answer(cloud_probs[np.newaxis], cloud.manifest.cloud, cloud.manifest.oos_index,
                                  logits=cloud_logits)
            expected = cloud.manifest.labels[int(answer[0])]
            assert (result["label"], result["reason"]) == (expected, "low_confidence"), text
            assert result["confidence"] == pytest.approx(float(cloud_probs[best]), abs=1e-6), text


# --------------------------------------------------------------------------- charging


def test_a_retried_escalation_is_charged_once(stack: LocalStack) -> None:
    # Given the cloud API called twice with the same Idempotency-Key (a client retrying a lost answer)
    headers = {"x-api-key": stack.api_key, "Idempotency-Key": "e2e-retry-cloud-1"}
    body = {"texts": [UNSURE, "hello there"]}
    before = spent(stack)
    first = httpx.post(f"{stack.cloud_url}/v1/infer", json=body, headers=headers, timeout=30)
    second = httpx.post(f"{stack.cloud_url}/v1/infer", json=body, headers=headers, timeout=30)

    # Then the second gets the first answer back, and the tenant pays once (1 per call + 1 per text)
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert second.json() == first.json()
    assert spent(stack) - before == first.json()["cost"] == 3

    # Given the edge asked twice for one request (same request_id): it sends the same key both times
    before = spent(stack)
    answers = [predict(stack, UNSURE, route="cloud", request_id="e2e-retry-edge-1") for _ in range(2)]

    # Then both are cloud answers, charged once
    assert [a["source"] for a in answers] == ["cloud", "cloud"]
    assert spent(stack) - before == 2


# --------------------------------------------------------------------------- hot reload


def test_a_model_published_to_s3_is_served_under_load_without_a_failed_request(
    stack: LocalStack, tiny_artifact_v2: Path
) -> None:
    texts = IN_DOMAIN + [UNSURE]
    seen: list[tuple[float, float, int, str | None]] = []  # (sent at, answered at, status, edge model version)

    async def scenario() -> float:
        stop = asyncio.Event()
        async with httpx.AsyncClient(timeout=60.0, headers=stack.edge_headers) as client:

            async def load(worker: int) -> None:
                i = 0
                while not stop.is_set():
                    sent = time.monotonic()
                    body = {"text": texts[i % len(texts)], "request_id": f"reload-{worker}-{i}"}
                    response = await client.post(f"{stack.edge_url}/v1/predict", json=body)
                    version = response.json()["results"][0]["model_versions"]["edge"] \
                        if response.status_code == 200 else None
                    seen.append((sent, time.monotonic(), response.status_code, version))
                    i += 1

            workers = [asyncio.create_task(load(w)) for w in range(4)]
            await asyncio.sleep(1.0)
            # When a new version is published to the bucket while the edge is under load
            await asyncio.to_thread(stack.publish, tiny_artifact_v2)
            published = time.monotonic()
            deadline = published + 30
            while not any(version == "tiny-2" for *_, version in seen) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # and a while more on the new version
            stop.set()
            await asyncio.gather(*workers)
        return published

    published = asyncio.run(scenario())

    # Then no request failed, and answers moved from the old version to the new one for good
    assert Counter(status for _, _, status, _ in seen) == {200: len(seen)}
    assert all(version == "tiny-1" for sent, _, _, version in seen if sent < published)
    switched = min((answered for _, answered, _, version in seen if version == "tiny-2"), default=None)
    assert switched is not None, "the edge never served the published version"
    # a batch already running finishes on the old version; everything sent after the first new answer is new
    after = [version for sent, _, _, version in seen if sent > switched]
    assert after and set(after) == {"tiny-2"}
    status = httpx.get(f"{stack.edge_url}/admin/model", headers={"x-admin-token": stack.admin_token}).json()
    assert (status["current"]["model_version"], status["source"]) == ("tiny-2", "s3")


# --------------------------------------------------------------------------- cloud failure


def test_a_killed_cloud_means_fallbacks_then_an_open_circuit_then_recovery(stack: LocalStack) -> None:
    # Given the cloud process dies
    stack.kill_cloud()

    # When escalations keep coming
    down = [predict(stack, UNSURE, route="cloud", request_id=f"kill-{i}") for i in range(6)]

    # Then the edge answers every one itself: first the calls fail, then the circuit opens
    assert {(a["source"], a["label"]) for a in down} == {("edge_fallback", down[0]["edge"]["label"])}
    reasons = [a["reason"] for a in down]
    assert reasons[:3] == ["cloud_error"] * 3, reasons  # EDGE_BREAKER_FAILURES=3
    assert "circuit_open" in reasons[3:], reasons
    assert circuit(stack) == "open"

    # When the cloud comes back
    stack.start_cloud()

    # Then, after the breaker's reset time, answers come from the cloud again
    deadline = time.monotonic() + 30
    recovered = None
    while recovered is None and time.monotonic() < deadline:
        answer = predict(stack, UNSURE, route="cloud", request_id=f"recover-{time.monotonic_ns()}")
        if answer["source"] == "cloud":
            recovered = answer
        else:
            assert answer["source"] == "edge_fallback"
            time.sleep(0.2)
    assert recovered is not None, "the edge never went back to the cloud"
    assert circuit(stack) == "closed"


# --------------------------------------------------------------------------- observability config


def test_the_dashboard_and_scrape_config_use_the_edges_real_metrics(stack: LocalStack) -> None:
    import json
    import re

    import yaml
    from prometheus_client.parser import text_string_to_metric_families

    # Given the edge's /metrics after some traffic
    predict(stack, "hello there")
    exposition = httpx.get(f"{stack.edge_url}/metrics", timeout=10).text
    names = set()
    for family in text_string_to_metric_families(exposition):
        names |= {family.name + suffix for suffix in ("", "_total", "_bucket", "_sum", "_count", "_info")}

    # Then every metric the dashboard queries is one the edge exposes
    dashboard = json.loads((REPO_ROOT / "infra" / "grafana" / "edge_dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    unquoted = [re.sub(r'"[^"]*"', '""', expr) for expr in exprs]  # label values are not metric names
    used = {name for expr in unquoted for name in re.findall(r"\bedge_[a-z_]+\b", expr)}
    assert used and used <= names, sorted(used - names)

    # And Prometheus scrapes the path, and the port `make up` gives the edge by default
    config = yaml.safe_load((REPO_ROOT / "infra" / "prometheus.yml").read_text())
    job = next(job for job in config["scrape_configs"] if job["job_name"] == "edge")
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"127.0.0.1:{DEFAULT_EDGE_PORT}"]


# --------------------------------------------------------------------------- budget (a stack of its own)


def test_an_exhausted_budget_means_budget_exhausted_fallbacks_and_no_errors(
    tiny_artifact: Path, tmp_path: Path
) -> None:
    """Its own stack: once told the budget is spent, the edge stops asking until the period resets (the
    next UTC midnight), which would leak into any test after it. Its clean stop is checked too."""
    # Given a tenant whose daily budget pays for 10 escalations (1 per call + 1 per text)
    with LocalStack(tiny_artifact, work_dir=tmp_path, daily_budget=20, edge_env=EDGE_ENV) as stack:
        # When 60 escalations arrive, 4 at a time
        bodies = [{"text": UNSURE, "route": "cloud", "request_id": f"budget-{i}"} for i in range(60)]
        replies = post_all(f"{stack.edge_url}/v1/predict", bodies, concurrency=4, headers=stack.edge_headers)
        budget = httpx.get(f"{stack.cloud_url}/v1/budget", headers={"x-api-key": stack.api_key}).json()
        pids = list(stack.pids.values())
        ports = [port_of(url) for url in (stack.moto_url, stack.cloud_url, stack.edge_url)]

    # Then every request is answered (no 5xx): the cloud answers what the budget pays for, exactly,
    # and the edge answers the rest, saying why
    assert [status for status, _ in replies] == [200] * 60
    results = [body["results"][0] for _, body in replies]
    kinds = Counter((r["source"], r["reason"]) for r in results)
    assert kinds == {("cloud", "forced_cloud"): 10, ("edge_fallback", "budget_exhausted"): 50}, kinds
    assert (budget["spent"], budget["remaining"]) == (20, 0)

    # And stopping the stack ended every process it started and freed every port
    assert_stopped_cleanly(pids, ports)


# --------------------------------------------------------------------------- the command


def test_up_prints_a_curl_that_works_and_ctrl_c_stops_everything(tiny_artifact: Path, tmp_path: Path) -> None:
    # Given `python -m infra.stack up` (what `make up` runs), on free ports
    command = [sys.executable, "-m", "infra.stack", "up", "--model-dir", str(tiny_artifact), "--edge-port", "0",
               "--cloud-port", "0", "--moto-port", "0", "--work-dir", str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    stdout = process.stdout
    threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
    try:
        banner: list[str] = []
        deadline = time.monotonic() + 120
        while not any(line.strip().startswith("curl") and "/v1/predict" in line for line in banner):
            assert process.poll() is None and time.monotonic() < deadline, "".join(banner)
            try:
                banner.append(lines.get(timeout=0.5))
            except queue.Empty:
                pass
        curl = next(line.strip() for line in banner if line.strip().startswith("curl") and "/v1/predict" in line)
        children = _child_pids(process.pid)
        assert len(children) == 3, children  # moto, cloud, edge

        # When the printed curl is run
        if shutil.which("curl"):
            out = subprocess.run(shlex.split(curl), capture_output=True, text=True, timeout=30, check=True).stdout
        else:  # the same request, without curl
            args = shlex.split(curl)
            sent = dict(args[i + 1].split(": ", 1) for i, arg in enumerate(args) if arg == "-H")
            out = httpx.post(args[2], content=args[args.index("-d") + 1], headers=sent).text
        # Then it gets an answer
        assert '"results"' in out and '"label"' in out, out

        # When Ctrl-C is pressed
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        stdout.close()

    # Then no child is left, and the ports are free again
    ports = [port_of(line.split()[1]) for line in banner if line.split()[:1] in (["edge"], ["cloud"], ["moto"])]
    assert len(ports) == 3, banner
    assert_stopped_cleanly(children, ports)


def _child_pids(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                pids.append(int(entry.name))
    return pids
