"""The container's entry point and requirements are the ones tested here, and the service runs without
TensorFlow, torch or model_build (the image has none of them)."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "edge_container" / "Dockerfile"
REQUIREMENTS = REPO / "edge_container" / "requirements.txt"
FORBIDDEN = ("tensorflow", "tf_keras", "keras", "torch", "jax", "model_build")

# Runs the real entry point with an import hook that refuses (and reports) any forbidden import.
LAUNCHER = f"""
import importlib.abc, runpy, sys
FORBIDDEN = {FORBIDDEN!r}
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            print("FORBIDDEN IMPORT:", name, file=sys.stderr, flush=True)
            raise ImportError("forbidden in the edge container: " + name)
        return None
sys.meta_path.insert(0, Refuse())
sys.argv = ["edge_container", *sys.argv[1:]]
runpy.run_module("edge_container", run_name="__main__", alter_sys=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_response(conn: socket.socket) -> bytes:
    """One whole HTTP/1.1 response (head and its content-length body), b"" if the server closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = conn.recv(4096)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def launch(*args: str, **env: str) -> subprocess.Popen[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    environ.update(PYTHONPATH=str(REPO), **env)
    return subprocess.Popen([sys.executable, "-c", LAUNCHER, *args], cwd=REPO, env=environ, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_ready(proc: subprocess.Popen[str], port: int, timeout_s: float = 60) -> None:
    """Until the service on `port` answers /readyz 200; fails with its stderr if it exits first."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the service never became ready"
            time.sleep(0.1)


def dockerfile_json_array(instruction: str) -> list[str]:
    match = re.search(rf"^{instruction}\s+(\[.*\])\s*$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match, f"no exec-form {instruction} in the Dockerfile"
    return json.loads(match.group(1))


def test_the_entry_point_serves_without_tensorflow_torch_or_model_build(tiny_artifact: Path) -> None:
    entry = dockerfile_json_array("ENTRYPOINT") + dockerfile_json_array("CMD")
    assert entry == ["python", "-m", "edge_container", "serve"]
    port = free_port()
    proc = launch(*entry[3:], "--model-dir", str(tiny_artifact), "--host", "127.0.0.1",
                  EDGE_PORT=str(port), EDGE_RELOAD_POLL_S="0")
    try:
        wait_ready(proc, port)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            r = client.post("/v1/predict", json={"texts": ["what is the weather today", "play music"]})
            assert r.status_code == 200 and len(r.json()["results"]) == 2
            assert "edge_model_info" in client.get("/metrics").text
        # An idle client connection outlives uvicorn's 5 s default (EDGE_KEEP_ALIVE_S, 75 s): a client that
        # pools it for longer reuses it, instead of racing the server's close with its next request.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            for pause in (0.0, 6.0):
                time.sleep(pause)
                conn.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                assert read_response(conn).startswith(b"HTTP/1.1 200"), f"closed after {pause} s idle"
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status still says why it stopped.
    assert proc.returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in stderr, stderr
    assert "FORBIDDEN IMPORT" not in stderr, stderr


def test_a_bad_setting_stops_the_entry_point_naming_the_variable() -> None:
    proc = launch("serve", EDGE_PORT="eighty")
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "EDGE_PORT" in stderr


def test_a_missing_model_stops_the_entry_point(tmp_path: Path) -> None:
    proc = launch("serve", "--model-dir", str(tmp_path), EDGE_PORT=str(free_port()))
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "EDGE_MODEL_DIR" in stderr


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{line!r} is not pinned exactly"
            pins[name] = version
    return pins


def test_requirements_are_exact_pins_of_what_the_tests_run() -> None:
    pins = requirement_pins()
    assert {"ai-edge-litert", "tokenizers", "numpy", "starlette", "uvicorn", "httpx", "prometheus-client"} <= set(pins)
    for name, version in pins.items():
        assert metadata.version(name) == version, f"{name}: tests run {metadata.version(name)}, image gets {version}"
    assert not any(name.split("-")[0] in FORBIDDEN or name.startswith("tensorflow") for name in pins)


def test_the_image_is_slim_non_root_healthchecked_and_holds_only_runtime_code() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.12-slim\b", text, re.MULTILINE)
    assert re.search(r"^COPY edge_container/requirements.txt ", text, re.MULTILINE)
    assert "pip install --no-cache-dir -r /app/edge_container/requirements.txt" in text
    copied = re.findall(r"^COPY (?:--\S+ )*(\S+) ", text, re.MULTILINE)
    assert set(copied) == {"edge_container/requirements.txt", "modelpack", "edge_container", "pyproject.toml",
                           "${MODEL_DIR}"}
    assert re.search(r"^USER 10001$", text, re.MULTILINE) and "useradd" in text
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD .*/readyz", text, re.MULTILINE)
    assert re.search(r"^EXPOSE 8080$", text, re.MULTILINE) and "EDGE_MODEL_DIR=/models" in text
    ignore = [line for line in (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
              if line and not line.startswith("#")]
    assert ignore[:3] == ["*", "!edge_container/", "!modelpack/"]  # a small build context, no .venv or data


@pytest.mark.parametrize("module", ["edge_container.app", "edge_container.__main__", "edge_container.wiring"])
def test_importing_the_service_does_no_work_and_pulls_no_heavy_framework(module: str) -> None:
    code = (f"import sys, threading; import {module}; "
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}); "
            "print(bad, threading.active_count())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    assert out.strip() == "[] 1"  # nothing forbidden, and no thread started at import


def test_the_pins_give_uvicorn_its_fast_loop_and_parser() -> None:
    """uvicorn picks uvloop and httptools by itself when importable ("auto"); the image must carry them."""
    import uvicorn
    import uvloop
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    assert {"uvloop", "httptools", "orjson"} <= set(requirement_pins())
    config = uvicorn.Config(lambda scope, receive, send: None)
    config.load()
    assert config.http_protocol_class is HttpToolsProtocol
    factory = config.get_loop_factory()
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
