"""`pip install ".[edge]"` into a clean venv gives an edge that serves: the console script, started outside the
source tree (so nothing is imported from the checkout), answers a prediction over real HTTP on loopback with
the tiny test artifact and reports the installed version; the venv holds no TensorFlow, torch or model_build
dependency. The install goes through pip's index and cache as a user's would: slow (tens of seconds)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest

from tests.edge_container.test_packaging import FORBIDDEN, free_port, wait_ready

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def source_copy(dest: Path) -> Path:
    """The checkout as a clone has it (tracked and new files, nothing ignored): a build writes its egg-info
    beside the sources, which must not land in the working tree."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def run(*cmd: str | Path, **kwargs: object) -> str:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_pip_install_edge_extra_into_a_clean_venv_serves(tiny_artifact: Path, tmp_path: Path) -> None:
    source = source_copy(tmp_path / "src")
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("EDGE_", "PYTHON", "VIRTUAL_ENV")) and k != "PIP_REQUIRE_VIRTUALENV"}
    run(sys.executable, "-m", "venv", venv, env=env)
    bin_ = venv / "bin"
    run(bin_ / "python", "-m", "pip", "install", "--quiet", "--no-input", f"{source}[edge]", env=env, cwd=tmp_path)

    frozen = run(bin_ / "python", "-m", "pip", "freeze", env=env).splitlines()
    installed = {line.split("==")[0].split(" @ ")[0].strip().lower().replace("-", "_") for line in frozen}
    assert not {name for name in installed if name in FORBIDDEN or name.startswith("tensorflow")}, installed
    assert {"uvicorn", "ai_edge_litert", "edge_cloud_inference"} <= installed
    for script in ("edge-container", "model-build"):
        assert run(bin_ / script, "--version", env=env).strip().endswith(f"(edge-cloud-inference) {VERSION}")

    port = free_port()
    proc = subprocess.Popen([bin_ / "edge-container", "serve", "--model-dir", str(tiny_artifact), "--host", "127.0.0.1",
                             "--port", str(port)], cwd=tmp_path, env={**env, "EDGE_RELOAD_POLL_S": "0"}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_ready(proc, port)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            r = client.post("/v1/predict", json={"texts": ["what is the weather today", "play music"]})
            assert r.status_code == 200 and len(r.json()["results"]) == 2, r.text
            assert client.get("/v2").json()["version"] == VERSION
            assert client.get("/openapi.json").json()["info"]["version"] == VERSION
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode in (0, -signal.SIGTERM), stderr
    served_from = run(bin_ / "python", "-c", "import edge_container; print(edge_container.__file__)", env=env,
                      cwd=tmp_path)
    assert served_from.startswith(str(venv)), served_from  # the installed package, not the checkout's
