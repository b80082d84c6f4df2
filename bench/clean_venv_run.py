"""The image's entry point, run the way the image runs it, without Docker: a clean CPython 3.12 venv made
from `edge_container/requirements.txt` alone, the image's code layout, a non-root user, a read-only model
folder, nothing writable but a temp folder. It answers a request, or this exits non-zero.

    .venv/bin/python bench/clean_venv_run.py [--python $(pyenv prefix 3.12.1)/bin/python3.12] \
        [--user nobody] [--model-dir DIR] [--out bench/results/clean_venv_run.json]

As the Dockerfile: `pip install -r edge_container/requirements.txt` (no constraints, no other file), then
`modelpack/` and `edge_container/` copied into an app folder, `python -m edge_container serve` from it with
PYTHONDONTWRITEBYTECODE=1, EDGE_HOST/EDGE_PORT/EDGE_MODEL_DIR/EDGE_S3_CACHE_DIR set. Differences, and
why: the service binds 127.0.0.1 (a free port), not 0.0.0.0; the user is `--user` (root must run this to
switch to it) rather than the image's uid 10001; the interpreter is copied out of its prefix when the
user cannot reach it (pyenv's lives under /root, mode 0700) and the venv is made from the copy. Read-only
is by ownership and mode, as a stand-in for the image's read-only root file system: the venv, the code
and the model folder belong to root (the model folder 0555/0444), the user may write only TMPDIR; the
run then lists every file the user created. Without `--model-dir`, the tiny test artifact is built with
this repository's own fixture (it needs the build venv: TensorFlow), ~20 s.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib import error, request

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
REQUIREMENTS = REPO_ROOT / "edge_container" / "requirements.txt"
TEXTS = ["what is my account balance", "set a timer for five minutes", "how tall is mount everest"]


def run(cmd: list[str], log: list[dict], **kwargs) -> subprocess.CompletedProcess[str]:
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    log.append({"cmd": " ".join(cmd), "exit_code": proc.returncode, "seconds": round(time.monotonic() - start, 1)})
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc


def reachable_by(path: Path, user: pwd.struct_passwd) -> bool:
    """Can `user` (by the other bits: it owns none of these) reach and read `path`?"""
    for part in [*reversed(path.resolve().parents), path.resolve()]:
        mode = part.stat().st_mode
        if part.stat().st_uid != user.pw_uid and not mode & stat.S_IXOTH:
            return False
    return True


def interpreter(python: Path, work: Path, user: pwd.struct_passwd, log: list[dict]) -> tuple[Path, dict]:
    """The interpreter to make the venv from, and the environment it needs (its shared library path)."""
    prefix = Path(subprocess.run([str(python), "-c", "import sys; print(sys.base_prefix)"], capture_output=True,
                                 text=True, check=True).stdout.strip())
    if reachable_by(python, user) and reachable_by(prefix, user):
        return python, {}
    copy = work / "python"
    start = time.monotonic()
    # The test suite and the base site-packages are not part of a runtime; the venv does not see the latter.
    shutil.copytree(prefix, copy, symlinks=True,
                    ignore=lambda d, names: [n for n in names if Path(d, n) in (
                        prefix / "lib" / python.name / "test", prefix / "lib" / python.name / "site-packages")])
    (copy / "lib" / python.name / "site-packages").mkdir()
    log.append({"cmd": f"copy {prefix} -> {copy} (without lib/{python.name}/test and site-packages): {user.pw_name} "
                       f"cannot reach {prefix}", "exit_code": 0, "seconds": round(time.monotonic() - start, 1)})
    # Its RUNPATH still names the original prefix; LD_LIBRARY_PATH is searched first.
    return copy / "bin" / python.name, {"LD_LIBRARY_PATH": str(copy / "lib")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: dict | None = None) -> tuple[int, dict | str]:
    data = json.dumps(body).encode() if body is not None else None
    req = request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with request.urlopen(req, timeout=10) as resp:
            status, raw = resp.status, resp.read().decode()
    except error.HTTPError as exc:
        status, raw = exc.code, exc.read().decode()
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError:
        return status, raw


def server_pid(launcher_pid: int, argv0: str) -> int:
    """runuser forks the command: find its child running the venv's python."""
    seen = [launcher_pid]
    while seen:
        pid = seen.pop()
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode() == argv0:
                return pid
            seen += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except FileNotFoundError:
            continue
    raise RuntimeError("the server process was not found")


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (ln.partition(":") for ln in lines)}


def make_read_only(root: Path, *, uid: int = 0) -> None:
    for path in [root, *root.rglob("*")]:
        os.lchown(path, uid, uid)
        if not path.is_symlink():
            path.chmod(0o555 if path.is_dir() else 0o444)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", type=Path, default=None, help="a CPython 3.12 (default: pyenv's 3.12.1)")
    parser.add_argument("--user", default="nobody")
    parser.add_argument("--model-dir", type=Path, default=None, help="an artifact folder (default: build the tiny one)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "clean_venv_run.json")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: it switches to --user with runuser (a non-root user cannot)")
    user = pwd.getpwnam(args.user)
    python = args.python or Path(subprocess.run(["pyenv", "prefix", "3.12.1"], capture_output=True, text=True,
                                                check=True).stdout.strip()) / "bin" / "python3.12"
    log: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="edge-clean-venv-"))
    work.chmod(0o755)
    try:
        base, lib_env = interpreter(python, work, user, log)
        env_root = {**os.environ, **lib_env}
        venv = work / "venv"
        run([str(base), "-m", "venv", str(venv)], log, env=env_root)
        vpy = venv / "bin" / "python"
        run([str(vpy), "-m", "pip", "install", "--quiet", "--no-input", "-r", str(REQUIREMENTS)], log, env=env_root)
        freeze = run([str(vpy), "-m", "pip", "freeze", "--all"], log, env=env_root).stdout.split()
        version = run([str(vpy), "-c", "import platform; print(platform.python_version())"], log,
                      env=env_root).stdout.strip()

        app = work / "app"  # the Dockerfile's COPY modelpack /app/modelpack, COPY edge_container /app/edge_container
        for package in ("modelpack", "edge_container"):
            shutil.copytree(REPO_ROOT / package, app / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        models = work / "models"
        if args.model_dir:
            shutil.copytree(args.model_dir, models)
            model_source = str(args.model_dir)
        else:
            from tests.fixtures.tiny_artifact import make_tiny_artifact

            start = time.monotonic()
            make_tiny_artifact(models, version="tiny-1", seed=0)
            log.append({"cmd": "tests.fixtures.tiny_artifact.make_tiny_artifact(models, version='tiny-1', seed=0) "
                               "(build venv)", "exit_code": 0, "seconds": round(time.monotonic() - start, 1)})
            model_source = "tests/fixtures/tiny_artifact.py (version tiny-1, seed 0)"
        for path in (app, venv):
            for p in [path, *path.rglob("*")]:
                os.lchown(p, 0, 0)
        make_read_only(models)
        tmp = work / "tmp"
        tmp.mkdir(mode=0o700)
        os.chown(tmp, user.pw_uid, user.pw_gid)

        port = free_port()
        env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": "/nonexistent", "TMPDIR": str(tmp),
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", **lib_env,
               "EDGE_MODEL_DIR": str(models), "EDGE_HOST": "127.0.0.1", "EDGE_PORT": str(port),
               "EDGE_S3_CACHE_DIR": str(tmp / "edge-models")}
        cmd = ["runuser", "-u", user.pw_name, "--", "env", "-i", *[f"{k}={v}" for k, v in env.items()],
               str(vpy), "-m", "edge_container", "serve"]
        shown = " ".join(c for c in cmd if not c.startswith("PATH="))
        probe = (f"touch {models}/probe 2>&1; touch {app}/probe 2>&1; touch {venv}/probe 2>&1; "
                 f"touch {tmp}/probe && echo tmp-writable; rm -f {tmp}/probe")
        write_probe = run(["runuser", "-u", user.pw_name, "--", "sh", "-c", probe], log).stdout.strip()
        start = time.monotonic()
        launcher = subprocess.Popen(cmd, cwd=app, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        base_url = f"http://127.0.0.1:{port}"
        try:
            while True:
                if launcher.poll() is not None:
                    raise SystemExit(f"the service exited ({launcher.returncode}):\n{launcher.stdout.read()}")
                try:
                    status, _ = http("GET", base_url + "/readyz")
                    if status == 200:
                        break
                except (error.URLError, ConnectionError):
                    pass
                if time.monotonic() - start > 90:
                    raise SystemExit("the service was not ready within 90 s")
                time.sleep(0.2)
            ready_s = round(time.monotonic() - start, 2)
            pid = server_pid(launcher.pid, str(vpy))
            status_lines = proc_status(pid)
            calls = {
                "GET /healthz": http("GET", base_url + "/healthz"),
                "GET /readyz": http("GET", base_url + "/readyz"),
                "POST /v1/predict": http("POST", base_url + "/v1/predict", {"texts": TEXTS}),
            }
            metrics_status, metrics = http("GET", base_url + "/metrics")
            rss = proc_status(pid)
        finally:
            launcher.send_signal(signal.SIGTERM)
            try:
                output, _ = launcher.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                launcher.kill()
                output, _ = launcher.communicate()
        created = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.lstat().st_uid == user.pw_uid)
        predict_status, predict = calls["POST /v1/predict"]
        results = predict.get("results", []) if isinstance(predict, dict) else []
        ok = (predict_status == 200 and len(results) == len(TEXTS) and calls["GET /healthz"][0] == 200
              and calls["GET /readyz"][0] == 200 and metrics_status == 200 and "edge_model_info" in metrics
              and status_lines["Uid"].split()[0] == str(user.pw_uid) and created == ["tmp"]
              and "tmp-writable" in write_probe and write_probe.count("Permission denied") == 3)
        report = {
            "benchmark": "clean_venv_run",
            "ok": ok,
            "what": "the image's entry point (python -m edge_container serve) in a clean CPython venv made from "
                    "edge_container/requirements.txt alone, as a non-root user, read-only model folder and code",
            "python": version,
            "interpreter": str(python),
            "venv_packages": freeze,
            "user": {"name": user.pw_name, "uid": user.pw_uid,
                     "server_process": {"Uid": status_lines["Uid"], "Gid": status_lines["Gid"],
                                        "CapEff": status_lines.get("CapEff")}},
            "model": {"source": model_source, "mode": "root-owned, directories 0555, files 0444"},
            "write_probe_as_user": write_probe.replace(str(work), "$WORK").splitlines(),
            "files_created_by_user": created,
            "entry_point": shown.replace(str(work), "$WORK"),
            "ready_after_s": ready_s,
            "responses": {k: {"status": s, "body": b} for k, (s, b) in calls.items()},
            "metrics_has_edge_model_info": "edge_model_info" in metrics,
            "server_memory": {"VmRSS": rss.get("VmRSS"), "VmHWM": rss.get("VmHWM")},
            "shutdown": {"exit_code": launcher.returncode,
                         "graceful": "Application shutdown complete" in output},
            "steps": [{**s, "cmd": s["cmd"].replace(str(work), "$WORK").replace(f"{REPO_ROOT}/", "")} for s in log],
            "machine": {"arch": os.uname().machine, "kernel": os.uname().release,
                        "date": time.strftime("%Y-%m-%d")},
        }
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"ok": ok, "ready_after_s": ready_s, "uid": status_lines["Uid"],
                      "predict": [(r["label"], r["source"]) for r in results], "rss": rss.get("VmRSS")}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
