"""EDGE_PROCESSES=N: real processes on one port (SO_REUSEPORT), real HTTP on loopback, the tiny artifact.

Shown here: connections reach every process; admin reload and rollback reach every process and say which
version each serves; /metrics holds every process's samples (a `process` label, each family once);
/readyz is ready only when every process is; a crashed process is started again; a start-up failure, a busy
port and SIGTERM stop the whole server cleanly (no orphan, no leftover peers folder).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_container.app import create_app
from edge_container.processes import Peer, read_peers, register
from edge_container.settings import Settings
from tests.edge_container.conftest import ServerThread

REPO = Path(__file__).resolve().parents[2]
TOKEN = "multi-process-admin-token"
pytestmark = pytest.mark.timeout(180)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(port: int, model_dir: Path, processes: int = 2, **env: str) -> subprocess.Popen[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    environ.update(PYTHONPATH=str(REPO), EDGE_MODEL_DIR=str(model_dir), EDGE_HOST="127.0.0.1", EDGE_PORT=str(port),
                   EDGE_PROCESSES=str(processes), EDGE_WORKERS="1", EDGE_RELOAD_POLL_S="0", EDGE_POLICY="edge_only",
                   EDGE_ADMIN_TOKEN=TOKEN, EDGE_LOG_LEVEL="warning", **env)
    return subprocess.Popen([sys.executable, "-m", "edge_container", "serve"], cwd=REPO, env=environ, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _children(supervisor: int) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(supervisor)], capture_output=True, text=True,
                         check=False).stdout  # no child: status 1, empty output
    return {int(pid) for pid in out.split()}


def _wait_ready(client: httpx.Client, proc: subprocess.Popen[str], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("the server never became ready")


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM (if still running); its exit status and what it wrote to stderr."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=40)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_artifact: Path) -> Path:
    folder = tmp_path_factory.mktemp("processes") / "model"
    shutil.copytree(tiny_artifact, folder)
    return folder


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[tuple[httpx.Client, subprocess.Popen[str]]]:
    port = _free_port()
    proc = _launch(port, model_dir)
    # A fresh connection per request: keep-alive would pin the client to one process.
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10,
                      limits=httpx.Limits(max_keepalive_connections=0)) as client:
        try:
            _wait_ready(client, proc)
            yield client, proc
        finally:
            children = _children(proc.pid)
            assert _stop(proc)[0] == 0
            time.sleep(0.5)
            assert not any(Path(f"/proc/{pid}").exists() for pid in children), "a child outlived the supervisor"


def _families(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_connections_reach_every_process_and_metrics_say_which(server) -> None:
    client, _ = server
    for _ in range(60):
        assert client.post("/v1/predict", json={"text": "what is my balance"}).status_code == 200
    text = client.get("/metrics").text
    type_lines = [line for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(type_lines) == len(set(type_lines)), "a family written twice"
    texts = [s for s in _families(text)["edge_texts"] if s.name == "edge_texts_total" and s.labels["source"] == "edge"]
    per_process = {s.labels["process"]: s.value for s in texts}
    assert set(per_process) == {"0", "1"}
    assert sum(per_process.values()) >= 60  # /metrics from any process counts every process's answers
    assert all(v > 0 for v in per_process.values()), f"the kernel sent every connection to one process: {per_process}"
    memory = {s.labels["process"] for s in _families(text)["process_resident_memory_bytes"]}
    assert memory == {"0", "1"}


def test_reload_and_rollback_reach_every_process(server, model_dir: Path, tiny_artifact_v2: Path) -> None:
    client, _ = server
    shutil.rmtree(model_dir)
    shutil.copytree(tiny_artifact_v2, model_dir)
    reply = client.post("/admin/reload", headers={"x-admin-token": TOKEN})
    assert reply.status_code == 200, reply.text
    processes = reply.json()["processes"]
    assert [p["index"] for p in processes] == [0, 1]
    assert {p["model_version"] for p in processes} == {"tiny-2"} and all(p["ok"] for p in processes)
    for _ in range(6):  # whichever process answers, it serves the new version
        assert client.post("/v1/predict", json={"text": "hi"}).json()["results"][0]["model_versions"]["edge"] == "tiny-2"
    back = client.post("/admin/rollback", headers={"x-admin-token": TOKEN})
    assert back.status_code == 200, back.text
    assert {p["model_version"] for p in back.json()["processes"]} == {"tiny-1"}
    status = client.get("/admin/model", headers={"x-admin-token": TOKEN}).json()
    assert [p["model_version"] for p in status["processes"]] == ["tiny-1", "tiny-1"]
    assert client.post("/admin/reload").status_code == 401  # the fan-out does not open the door


def test_ready_only_when_every_process_is_and_a_crashed_one_comes_back(server) -> None:
    client, proc = server
    before = {p.index: p.pid for p in read_peers(_peers_dir(proc.pid))}
    os.kill(before[1], signal.SIGKILL)
    seen_not_ready = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            status = client.get("/readyz").status_code
        except httpx.TransportError:  # the connection went to the dead one's socket
            status = None
        now = {p.index: p.pid for p in read_peers(_peers_dir(proc.pid))}
        seen_not_ready |= status == 503
        if status == 200 and now.get(1) not in (None, before[1]):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the crashed process was not started again")
    assert seen_not_ready, "/readyz said ready while a process was down"
    assert proc.poll() is None and now[0] == before[0]


def _peers_dir(supervisor: int) -> Path:
    environ = Path(f"/proc/{min(_children(supervisor))}/environ").read_bytes().split(b"\0")
    return Path(next(v for v in environ if v.startswith(b"EDGE_PEERS_DIR=")).split(b"=", 1)[1].decode())


def test_a_start_up_failure_stops_the_whole_server_with_its_status(tmp_path: Path) -> None:
    proc = _launch(_free_port(), tmp_path / "no-model-here")
    try:
        assert proc.wait(timeout=90) == 1
    finally:
        err = _stop(proc)[1]
    assert "EDGE_MODEL_DIR" in err
    # a start-up failure is not a crash: no child is started again (uvicorn's own status 3 once was, 5 times)
    assert "failed to start (exit 1): stopping" in err and "starting it again" not in err


def test_a_busy_port_is_a_clear_error_before_anything_starts(model_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = _launch(taken.getsockname()[1], model_dir)
        assert proc.wait(timeout=30) == 2
        assert "cannot bind" in _stop(proc)[1]


def test_a_sibling_that_does_not_answer_makes_a_reload_a_diverged_error(tmp_path: Path, tiny_artifact: Path) -> None:
    """In process: this process is child 0 of 2; its sibling's port is closed (a dead process)."""
    peers = tmp_path / "peers"
    peers.mkdir()
    register(peers, Peer(1, 999_999, _free_port()))
    settings = Settings(model_dir=tiny_artifact, reload_poll_s=0.0, admin_token=TOKEN, processes=2,
                        process_index=0, peers_dir=peers)
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        reply = client.post("/admin/reload", headers={"x-admin-token": TOKEN})
        assert reply.status_code == 502
        error = reply.json()["error"]
        assert error["code"] == "PROCESSES_DIVERGED"
        assert [(p["index"], p["ok"]) for p in error["processes"]] == [(0, True), (1, False)]
        assert "ConnectError" in error["processes"][1]["error"]
        assert client.get("/readyz").status_code == 503  # the sibling is not ready either
        assert client.get("/readyz", headers={"x-edge-local": "1"}).status_code == 200  # this one is
