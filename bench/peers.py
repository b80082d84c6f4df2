"""The edge service against two peer model servers serving the same int8 edge model, over real HTTP.

    python bench/peers.py --json [--model-dir DIR] [--seconds 4] [--repeats 3]
                             [--servers edge,litserve,bentoml] [--out FILE]

Servers, each started afresh for every run and alone on the machine while it is measured (an idle LitServe
polls its queues and would take CPU from the others), one worker process each, max batch size 32:

  edge      `python -m edge_container serve`, EDGE_POLICY=edge_only, EDGE_WORKERS single-threaded interpreters
  litserve  LitServe 0.2.19, a `LitAPI` with `max_batch_size` / `batch_timeout` (bench/peers_servers/)
  bentoml   BentoML 1.4.40, `@bentoml.api(batchable=True, max_batch_size=..., max_latency_ms=...)`

The peers load the model through `modelpack.Classifier` (what the edge runs) in one interpreter of
EDGE_WORKERS threads: they run one batch at a time, the edge runs EDGE_WORKERS batches of one thread each.
They are installed, pinned, into a venv of their own (default .cache/bench/peers-venv) with the modelpack
runtime at the versions of edge_container/requirements.txt, uvicorn at the edge's version, and uvloop +
httptools for every server; never into the repo's requirements.

Load: raw keep-alive sockets from this process (as bench/edge_serving.py), one CLINC150 test text per
request. Per run: 200 answers checked against the model in process (agreement), c1 (sequential) p50/p99,
c64 (closed loop) requests/s, p50/p99 and server CPU per request (utime + stime of the server's whole
process tree, from /proc), then c1 again right after the load. Repeats interleave the servers
(edge, litserve, bentoml, edge, ...); figures are medians. In process: the edge runtime's batch-1 p50 and
batch-32 texts/s with the same interpreter threads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # runnable as a plain script too
    sys.path.insert(0, str(REPO_ROOT))

from bench.edge_serving import _content_length, _percentile

SERVERS = ("edge", "litserve", "bentoml")
PEERS = {"litserve": "0.2.19", "bentoml": "1.4.40"}
HTTP_EXTRAS = {"uvloop": "0.23.0", "httptools": "0.9.0"}  # uvicorn[standard]'s loop and parser, for all
FROM_EDGE_REQUIREMENTS = ("ai-edge-litert", "tokenizers", "numpy", "uvicorn")  # the modelpack runtime + HTTP
EDGE_REQUIREMENTS = REPO_ROOT / "edge_container" / "requirements.txt"
SERVER_SCRIPTS = REPO_ROOT / "bench" / "peers_servers"
CLINC = REPO_ROOT / "data" / "clinc150" / "data_full.json"
DEFAULT_VENV = REPO_ROOT / ".cache" / "bench" / "peers-venv"
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "peers.json"
GOALS = {"c64_throughput_ratio": (">=", 5.0), "c1_p50_ratio": ("<=", 0.5), "c64_over_in_process": (">=", 0.7),
         "server_cpu_us_per_request": ("<=", 400.0)}

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
REQUEST_TIMEOUT_S = 30.0
VENV_TIMEOUT_S = 1200.0
WARMUP_REQUESTS = 200
AGREEMENT_TEXTS = 200
AFTER_LOAD_REQUESTS = 300
C64_WARMUP_S = 1.0


class BenchError(Exception):
    """A failure the bench reports in one message, without a traceback (venv, server start, no answers)."""


def _progress(message: str) -> None:
    print(f"[peers {datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


# --- the peers' venv ----------------------------------------------------------------------------------------
def pinned_requirements(edge_requirements: Path = EDGE_REQUIREMENTS) -> list[str]:
    pins = {}
    for line in edge_requirements.read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep and name.lower() in FROM_EDGE_REQUIREMENTS:
            pins[name.lower()] = version.strip()
    missing = [name for name in FROM_EDGE_REQUIREMENTS if name not in pins]
    if missing:
        raise BenchError(f"{edge_requirements} pins no version of {', '.join(missing)}")
    return [f"{name}=={version}" for name, version in {**PEERS, **pins, **HTTP_EXTRAS}.items()]


def _run_logged(argv: list[str], log: Path, what: str) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        try:
            done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=VENV_TIMEOUT_S,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{what}: no end after {VENV_TIMEOUT_S:.0f} s; log {log}:\n{_tail(log)}") \
                from None
        except OSError as exc:
            raise BenchError(f"{what}: {exc}") from None
    if done.returncode != 0:
        raise BenchError(f"{what} failed (exit {done.returncode}); log {log}:\n{_tail(log)}")


def ensure_peers_venv(venv: Path) -> Path:
    """The peers' interpreter: `venv` made and filled with the pinned requirements unless they are there."""
    requirements = pinned_requirements()
    python, stamp = venv / "bin" / "python", venv / "peers-requirements.txt"
    log = venv.parent / f"{venv.name}.log"
    wanted = "\n".join(requirements) + "\n"
    if python.is_file() and stamp.is_file() and stamp.read_text() == wanted:
        return python
    try:
        venv.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
    except OSError as exc:
        raise BenchError(f"cannot make the peers' venv {venv}: {exc}") from None
    _progress(f"making the peers' venv {venv} ({', '.join(requirements)}); log {log}")
    if not python.is_file():
        _run_logged([sys.executable, "-m", "venv", str(venv)], log, f"python -m venv {venv}")
    _run_logged([str(python), "-m", "pip", "install", "--disable-pip-version-check", *requirements], log,
                f"pip install into {venv}")
    stamp.write_text(wanted)  # last: an interrupted install is redone next time
    return python


def _has_modules(python: str, *modules: str) -> bool:
    code = ("import importlib.util, sys\n"
            "sys.exit(any(importlib.util.find_spec(m) is None for m in sys.argv[1:]))")
    return subprocess.run([python, "-c", code, *modules], capture_output=True, timeout=60,
                          check=False).returncode == 0


def edge_http_extras(peers_python: Path, venv: Path) -> Path | None:
    """A folder to put on the edge's PYTHONPATH with uvloop + httptools when the repo's venv lacks them (the
    peers get them; the comparison is of servers, not of HTTP parsers), or None when it has them."""
    if _has_modules(sys.executable, *HTTP_EXTRAS):
        return None
    target = venv / "edge-http-extras"
    pins = [f"{name}=={version}" for name, version in HTTP_EXTRAS.items()]
    if not all((target / name).is_dir() for name in HTTP_EXTRAS):
        _run_logged([str(peers_python), "-m", "pip", "install", "--disable-pip-version-check", "--target",
                     str(target), *pins], venv.parent / f"{venv.name}.log", f"pip install --target {target}")
    return target


# --- the servers --------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server and talk to it: the request for a text, the model's label in an answer."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    path: str
    ready_path: str
    body: Callable[[str], bytes]
    label: Callable[[Any], str]
    settings: dict[str, Any]
    settings_file: Path | None = None  # where a peer script writes the settings it actually runs with


@dataclass(frozen=True)
class SpecOptions:
    model_dir: Path
    threads: int
    max_batch_size: int
    edge_max_wait_ms: float
    litserve_batch_timeout_ms: float
    bentoml_max_latency_ms: int
    peers_python: Path | None
    edge_extras: Path | None
    workdir: Path


def _base_env(extra_path: Sequence[str]) -> dict[str, str]:
    ours = ("EDGE_", "PEERS_", "BENTOML_", "LITSERVE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    env["PYTHONPATH"] = os.pathsep.join([*extra_path, *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def edge_spec(o: SpecOptions) -> ServerSpec:
    port = _free_port()
    edge_env = {"EDGE_MODEL_DIR": str(o.model_dir), "EDGE_HOST": "127.0.0.1", "EDGE_PORT": str(port),
                "EDGE_POLICY": "edge_only", "EDGE_WORKERS": str(o.threads),
                "EDGE_MAX_BATCH_SIZE": str(o.max_batch_size), "EDGE_MAX_WAIT_MS": str(o.edge_max_wait_ms),
                "EDGE_PROCESSES": "1", "EDGE_QUEUE_SIZE": "4096", "EDGE_RELOAD_POLL_S": "0",
                "EDGE_LOG_LEVEL": "warning"}
    paths = [str(REPO_ROOT), *([str(o.edge_extras)] if o.edge_extras else [])]
    packages = {name: _version(name) for name in ("starlette", "uvicorn", *HTTP_EXTRAS, "ai-edge-litert",
                                                    "tokenizers", "numpy")}
    if o.edge_extras:
        packages.update(HTTP_EXTRAS)
    recorded_env = {k: v for k, v in edge_env.items() if k not in ("EDGE_PORT", "EDGE_MODEL_DIR")}
    settings = {"command": "python -m edge_container serve (uvicorn, one process)", "env": recorded_env,
                "request": 'POST /v1/predict {"text": "..."}', "interpreters": f"{o.threads} x 1 thread",
                "batch_wait": f"EDGE_MAX_WAIT_MS={o.edge_max_wait_ms:g} (the edge's default, 0: a batch "
                              "takes what queued while the interpreters were busy, a lone request never "
                              "waits)",
                "packages": packages,
                "http_extras_from": str(o.edge_extras) if o.edge_extras else "the repo's venv"}
    argv = [sys.executable, "-m", "edge_container", "serve"]
    return ServerSpec("edge", argv, {**_base_env(paths), **edge_env}, port, "/v1/predict", "/readyz",
                      lambda text: json.dumps({"text": text}).encode(),
                      lambda answer: answer["results"][0]["edge"]["label"], settings)


def litserve_spec(o: SpecOptions) -> ServerSpec:
    assert o.peers_python is not None
    port, settings_file = _free_port(), o.workdir / f"litserve-settings-{time.monotonic_ns()}.json"
    argv = [str(o.peers_python), str(SERVER_SCRIPTS / "litserve_server.py"), "--model-dir", str(o.model_dir),
            "--port", str(port), "--threads", str(o.threads), "--max-batch-size", str(o.max_batch_size),
            "--batch-timeout-s", str(o.litserve_batch_timeout_ms / 1000.0)]
    settings = {"request": 'POST /predict {"text": "..."}', "interpreters": f"1 x {o.threads} threads",
                "batch_wait": f"LitAPI(batch_timeout={o.litserve_batch_timeout_ms / 1000.0:g}) s: the batch "
                              "window opens when the worker starts collecting, not when the first request "
                              "arrives; 0 would make the worker spin on its queue"}
    env = {**_base_env([]), "PEERS_SETTINGS_OUT": str(settings_file)}
    return ServerSpec("litserve", argv, env, port, "/predict", "/health",
                      lambda text: json.dumps({"text": text}).encode(), lambda answer: answer["label"],
                      settings, settings_file)


def bentoml_spec(o: SpecOptions) -> ServerSpec:
    assert o.peers_python is not None
    port, settings_file = _free_port(), o.workdir / f"bentoml-settings-{time.monotonic_ns()}.json"
    home = o.workdir / "bentoml-home"
    home.mkdir(exist_ok=True)
    bentoml_cli = o.peers_python.parent / "bentoml"
    argv = [str(bentoml_cli), "serve", "bentoml_service:TextClassifier", "--working-dir", str(SERVER_SCRIPTS),
            "--host", "127.0.0.1", "--port", str(port)]
    env = {**_base_env([]), "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True",
           "PEERS_MODEL_DIR": str(o.model_dir), "PEERS_THREADS": str(o.threads),
           "PEERS_MAX_BATCH_SIZE": str(o.max_batch_size),
           "PEERS_MAX_LATENCY_MS": str(o.bentoml_max_latency_ms), "PEERS_SETTINGS_OUT": str(settings_file)}
    settings = {"request": 'POST /predict {"text": ["..."]} (a batchable API takes a batch: a list of one)',
                "interpreters": f"1 x {o.threads} threads",
                "batch_wait": "no such setting: the CORK dispatcher waits as long as recent batches waited "
                              "(learned), polling its queue every 1 ms (CorkDispatcher.TICKET_INTERVAL, "
                              "fixed); "
                              "max_latency_ms is a deadline past which queued requests are refused with 503, "
                              f"so it is left at BentoML's default ({o.bentoml_max_latency_ms} ms)"}
    return ServerSpec("bentoml", argv, env, port, "/predict", "/readyz",
                      lambda text: json.dumps({"text": [text]}).encode(), lambda answer: answer[0]["label"],
                      settings, settings_file)


SPECS: dict[str, Callable[[SpecOptions], ServerSpec]] = {"edge": edge_spec, "litserve": litserve_spec,
                                                          "bentoml": bentoml_spec}


def _proc_stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_tree(root: int) -> list[int]:
    """`root` and its live descendants (BentoML's worker and LitServe's broker sit in process groups and
    sessions of their own, so the tree is walked by parent pid)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _proc_stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of every live process of the tree (all its threads), plus the reaped children's time
    (cutime + cstime): the server's whole CPU, the load generator's excluded."""
    ticks = 0
    for pid in process_tree(root):
        if (fields := _proc_stat(pid)) is not None:
            ticks += sum(int(v) for v in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def _mapped(pid: int, needle: str) -> bool:
    try:
        return needle in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


class Server:
    """One running server (its own session, so its whole tree can be signalled); `close` always kills it."""

    def __init__(self, spec: ServerSpec, log: Path) -> None:
        self.spec, self.log = spec, log
        self._out = log.open("w")
        try:
            self.proc = subprocess.Popen(spec.argv, cwd=log.parent, env=spec.env, stdin=subprocess.DEVNULL,
                                         stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            self._out.close()
            raise BenchError(f"{spec.name}: cannot start {spec.argv[0]}: {exc}") from None
        self._groups: set[int] = {self.proc.pid}

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> float:
        started, deadline = time.perf_counter(), time.perf_counter() + timeout_s
        request = (f"GET {self.spec.ready_path} HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                   "connection: close\r\n\r\n").encode()
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.spec.name} exited (code {self.proc.returncode}) while starting; "
                                 f"end of its log {self.log}:\n{_tail(self.log)}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.spec.port),
                                                                        timeout=2) as conn:
                conn.settimeout(2)
                conn.sendall(request)
                if conn.recv(64).startswith(b"HTTP/1.1 200"):
                    self._remember_groups()
                    return time.perf_counter() - started
            if time.perf_counter() > deadline:
                raise BenchError(f"{self.spec.name} not ready after {timeout_s:.0f} s; end of its log "
                                 f"{self.log}:\n{_tail(self.log)}")
            time.sleep(0.2)

    def _remember_groups(self) -> None:
        for pid in process_tree(self.proc.pid):
            with contextlib.suppress(OSError):
                self._groups.add(os.getpgid(pid))

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.proc.pid)

    def describe(self) -> dict[str, Any]:
        tree = process_tree(self.proc.pid)
        return {"processes": len(tree), "uvloop_loaded": any(_mapped(p, "/uvloop/") for p in tree),
                "httptools_loaded": any(_mapped(p, "/httptools/") for p in tree)}

    def close(self) -> None:
        """SIGTERM to every process group of the tree, SIGKILL to what is left after STOP_TIMEOUT_S."""
        with contextlib.suppress(Exception):
            self._remember_groups()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for group in self._groups:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(group, sig)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while time.monotonic() < deadline and any(_group_alive(g) for g in self._groups):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=0.1)
            if not any(_group_alive(g) for g in self._groups):
                break
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=1)
        self._out.close()


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still counts for killpg: alive means a process of the group that is not a zombie.
    for entry in Path("/proc").iterdir():
        fields = _proc_stat(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None and int(fields[2]) == group and fields[0] != "Z":
            return True
    return False


@contextlib.contextmanager
def running(spec: ServerSpec, log: Path) -> Iterator[Server]:
    server = Server(spec, log)
    try:
        server.wait_ready()
        yield server
    finally:
        server.close()


# --- load ---------------------------------------------------------------------------------------------------
def _post(port: int, path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


def requests_for(spec: ServerSpec, texts: Sequence[str]) -> list[bytes]:
    return [_post(spec.port, spec.path, spec.body(text)) for text in texts]


@dataclass
class Sequential:
    latencies: list[float] = field(default_factory=list)
    bodies: list[bytes | None] = field(default_factory=list)  # None: not a 200
    errors: int = 0


def sequential(port: int, requests: Sequence[bytes], n: int, *, warmup: int = 0, keep_bodies: bool = False,
               start: int = 0) -> Sequential:
    """n requests one after the other on one keep-alive connection (after `warmup` unrecorded ones)."""
    out = Sequential()
    conn, buf, failures = None, b"", 0
    try:
        for i in range(warmup + n):
            request = requests[(start + i) % len(requests)]
            try:
                if conn is None:
                    conn = socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT_S)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    buf = b""
                t0 = time.perf_counter()
                conn.sendall(request)
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        raise ConnectionError("connection closed by the server")
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = _content_length(head)
                while len(buf) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        raise ConnectionError("connection closed by the server")
                    buf += chunk
                body, buf = buf[:length], buf[length:]
                elapsed, ok = time.perf_counter() - t0, head.startswith(b"HTTP/1.1 200")
                failures = 0
            except (OSError, ValueError) as exc:
                if conn is not None:
                    conn.close()
                conn, failures = None, failures + 1
                if failures >= 10:
                    raise BenchError(f"no answer from port {port} ten times in a row: {exc}") from None
                elapsed, ok, body = 0.0, False, b""
            if i < warmup:
                continue
            if ok:
                out.latencies.append(elapsed)
            else:
                out.errors += 1
            if keep_bodies:
                out.bodies.append(body if ok else None)
    finally:
        if conn is not None:
            conn.close()
    return out


def closed_loop(port: int, requests: Sequence[bytes], *, connections: int, seconds: float,
                cpu: Callable[[], float], warmup_s: float = C64_WARMUP_S) -> dict[str, float]:
    """`connections` clients, each sending its next text as soon as the last answer came, for warm-up +
    `seconds`. Counted: the requests sent after the warm-up; server CPU over the same span."""
    n = len(requests)

    async def client(k: int, warm_until: float, stop_at: float, lat: list[float], errors: list[int]) -> None:
        i, reader, writer = k * (n // connections), None, None
        while (t0 := time.perf_counter()) < stop_at:
            request = requests[i % n]
            i += 1
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    t0 = time.perf_counter()
                assert reader is not None
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(_content_length(head))
                ok = head.startswith(b"HTTP/1.1 200")
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                if writer is not None:
                    writer.close()
                reader, writer, ok = None, None, False
                await asyncio.sleep(0.01)
            if t0 >= warm_until:
                if ok:
                    lat.append(time.perf_counter() - t0)
                else:
                    errors[0] += 1
        if writer is not None:
            writer.close()

    async def main() -> dict[str, float]:
        lat: list[float] = []
        errors = [0]
        start = time.perf_counter()
        warm_until, stop_at = start + warmup_s, start + warmup_s + seconds
        clients = asyncio.gather(*(client(k, warm_until, stop_at, lat, errors) for k in range(connections)))
        await asyncio.sleep(warmup_s)
        cpu0, t0 = cpu(), time.perf_counter()
        try:
            await asyncio.wait_for(clients, seconds + REQUEST_TIMEOUT_S)
        except TimeoutError:
            raise BenchError(f"port {port}: requests still unanswered {REQUEST_TIMEOUT_S:.0f} s after the "
                             "run") from None
        cpu1, wall = cpu(), time.perf_counter() - t0
        done = len(lat) + errors[0]
        if not lat:
            raise BenchError(f"port {port}: no request answered 200 under load ({errors[0]} errors)")
        return {"rps": len(lat) / wall, "p50_ms": _percentile(lat, 0.5) * 1e3,
                "p99_ms": _percentile(lat, 0.99) * 1e3,
                "errors": errors[0], "server_cpu_us_per_request": (cpu1 - cpu0) / max(done, 1) * 1e6,
                "server_cpu_cores": (cpu1 - cpu0) / wall}

    return asyncio.run(main())


def agreement(spec: ServerSpec, bodies: Sequence[bytes | None], expected: Sequence[str]) -> float:
    matches = 0
    for body, label in zip(bodies, expected, strict=True):
        with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
            matches += body is not None and spec.label(json.loads(body)) == label
    return matches / len(expected)


def measure_server(spec: ServerSpec, log: Path, *, texts: Sequence[str], sample: Sequence[str],
                   expected: Sequence[str], requests: int, connections: int,
                   seconds: float) -> dict[str, Any]:
    """One run: a fresh server, agreement (which also warms it), c1, c64, c1 right after c64."""
    load = requests_for(spec, texts)
    with running(spec, log) as server:
        try:
            checked = sequential(spec.port, requests_for(spec, sample), len(sample), keep_bodies=True)
            c1 = sequential(spec.port, load, requests, warmup=WARMUP_REQUESTS)
            c64 = closed_loop(spec.port, load, connections=connections, seconds=seconds,
                              cpu=server.cpu_seconds)
            after = sequential(spec.port, load, AFTER_LOAD_REQUESTS, start=requests)
        except BenchError as exc:
            raise BenchError(f"{spec.name}: {exc}; end of its log {log}:\n{_tail(log)}") from None
        described = server.describe()
    if not c1.latencies or not after.latencies:
        raise BenchError(f"{spec.name}: no sequential request answered 200 ({c1.errors} errors); log {log}:\n"
                         f"{_tail(log)}")
    run = {"c1_p50_ms": _percentile(c1.latencies, 0.5) * 1e3,
           "c1_p99_ms": _percentile(c1.latencies, 0.99) * 1e3,
           "c64_rps": c64["rps"], "c64_p50_ms": c64["p50_ms"], "c64_p99_ms": c64["p99_ms"],
           "server_cpu_us_per_request": c64["server_cpu_us_per_request"],
           "server_cpu_cores": c64["server_cpu_cores"],
           "c1_p50_ms_after_c64": _percentile(after.latencies, 0.5) * 1e3,
           "errors": c1.errors + c64["errors"] + after.errors + checked.errors,
           "agreement": agreement(spec, checked.bodies, expected), "runtime": described}
    if spec.settings_file is not None and spec.settings_file.is_file():
        run["reported_settings"] = json.loads(spec.settings_file.read_text())
    return run


# --- in process ---------------------------------------------------------------------------------------------
def in_process(model_dir: Path, texts: Sequence[str], *, threads: int, batch: int, seconds: float,
               requests: int) -> dict[str, float]:
    """The edge runtime alone (`EdgeModel`, `threads` single-threaded slots): batch-1 p50 over `requests`
    texts, and texts/s in batches of `batch` from `threads` threads for `seconds`."""
    from edge_container.runtime import EdgeModel

    model = EdgeModel.load(model_dir, slots=threads)
    n = len(texts)
    for i in range(WARMUP_REQUESTS):
        model.run([texts[i % n]])
    single = []
    for i in range(requests):
        t0 = time.perf_counter()
        model.run([texts[i % n]])
        single.append(time.perf_counter() - t0)
    done = [0] * threads
    stop = time.perf_counter() + seconds

    def loop(k: int) -> None:
        i = k * (n // threads)
        while time.perf_counter() < stop:
            model.run([texts[(i + j) % n] for j in range(batch)])
            i += batch
            done[k] += batch

    workers = [threading.Thread(target=loop, args=(k,)) for k in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return {"b1_p50_ms": _percentile(single, 0.5) * 1e3,
            f"b{batch}_texts_per_s": sum(done) / (time.perf_counter() - t0)}


def expected_labels(model_dir: Path, texts: Sequence[str]) -> list[str]:
    """The model's label of each text, in process, one text at a time (as the servers see them at c1)."""
    from modelpack.classifier import Classifier

    classifier = Classifier.load(model_dir, "edge")[0]
    return [classifier.predict([text])[0].label for text in texts]


# --- the result ---------------------------------------------------------------------------------------------
SERVER_FIGURES = ("c1_p50_ms", "c1_p99_ms", "c64_rps", "c64_p50_ms", "c64_p99_ms",
                  "server_cpu_us_per_request")


def _median(runs: Sequence[dict[str, Any]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def summarise_server(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {key: round(_median(runs, key), 4 if key.endswith("_ms") else 1)
                           for key in SERVER_FIGURES}
    out["errors"] = int(sum(run["errors"] for run in runs))
    out["agreement"] = round(statistics.fmean(run["agreement"] for run in runs), 4)
    out["detail"] = {"server_cpu_cores": round(_median(runs, "server_cpu_cores"), 2),
                     "c1_p50_ms_after_c64": round(_median(runs, "c1_p50_ms_after_c64"), 4),
                     "repeats": {key: [round(run[key], 4) for run in runs]
                                 for key in ("c1_p50_ms", "c64_rps", "server_cpu_us_per_request",
                                             "c1_p50_ms_after_c64")},
                     "runtime": runs[-1]["runtime"]}
    return out


def _goal(value: float | None, op: str, bound: float) -> dict[str, Any]:
    met = None if value is None else (value >= bound if op == ">=" else value <= bound)
    return {"value": value, "goal": f"{op} {bound:g}", "met": met,
            "status": "not measured" if met is None else ("pass" if met else "fail")}


def summarise(runs: dict[str, list[dict[str, Any]]], in_proc: Sequence[dict[str, float]], *,
              batch: int) -> dict[str, Any]:
    """The figures (medians over repeats), edge ÷ best peer and the goals; a ratio is None without a peer."""
    servers = {name: summarise_server(server_runs) for name, server_runs in runs.items() if server_runs}
    texts_key = f"b{batch}_texts_per_s"
    in_process_fig = {"b1_p50_ms": round(_median(in_proc, "b1_p50_ms"), 4),
                      texts_key: round(_median(in_proc, texts_key), 1)}
    peers = [name for name in servers if name != "edge"]
    edge = servers.get("edge")
    ratios: dict[str, Any] = {"c64_throughput_ratio": None, "c1_p50_ratio": None, "c64_best_peer": None,
                              "c1_best_peer": None}
    if edge is not None and peers:
        best_rps = max(peers, key=lambda p: servers[p]["c64_rps"])
        best_c1 = min(peers, key=lambda p: servers[p]["c1_p50_ms"])
        ratios = {"c64_throughput_ratio": round(edge["c64_rps"] / servers[best_rps]["c64_rps"], 3),
                  "c1_p50_ratio": round(edge["c1_p50_ms"] / servers[best_c1]["c1_p50_ms"], 3),
                  "c64_best_peer": best_rps, "c1_best_peer": best_c1}
    edge_fig = {"c64_over_in_process": None, "server_cpu_us_per_request": None}
    if edge is not None:
        edge_fig = {"c64_over_in_process": round(edge["c64_rps"] / _median(in_proc, texts_key), 4),
                    "server_cpu_us_per_request": edge["server_cpu_us_per_request"]}
    values = {**ratios, **edge_fig}
    goals = {name: _goal(values[name], op, bound) for name, (op, bound) in GOALS.items()}
    return {"servers": servers, "in_process": in_process_fig, "vs_best_peer": ratios, "edge": edge_fig,
            "goals": goals}


def machine_info() -> dict[str, Any]:
    lscpu: dict[str, str] = {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        lscpu = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}
    flags = set(lscpu.get("Flags", "").split())
    if not flags:
        with contextlib.suppress(OSError):
            flags = {f for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
                     for f in line.partition(":")[2].split()}
    return {"cpu_model": lscpu.get("Model name", platform.processor() or "unknown"),
            "avx2": "avx2" in flags, "avx512": any(f.startswith("avx512") for f in flags),
            "avx512_flags": sorted(f for f in flags if f.startswith("avx512")), "cores": os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "load_average_1m": round(os.getloadavg()[0], 2)}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def clinc_texts(path: Path = CLINC) -> list[str]:
    if not path.is_file():
        raise BenchError(f"{path} is missing (make test fetches CLINC150)")
    return [text for text, _ in json.loads(path.read_text())["test"]]


# --- main ---------------------------------------------------------------------------------------------------
def _servers_arg(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in SERVERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {','.join(SERVERS)}, got {value!r}")
    return list(dict.fromkeys(names))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from edge_container.settings import Settings

    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path,
                        help="an artifact folder (default: build the tiny test artifact)")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds of each c64 run")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved repeats; figures are their medians")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests of each c1 figure")
    parser.add_argument("--servers", type=_servers_arg, default=list(SERVERS), help="comma-separated, of "
                        + ",".join(SERVERS))
    parser.add_argument("--threads", type=int, default=defaults.workers,
                        help="interpreter threads: EDGE_WORKERS for the edge, num_threads of the peers' one "
                             "interpreter (default: the edge's default EDGE_WORKERS)")
    parser.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size)
    parser.add_argument("--edge-max-wait-ms", type=float, default=defaults.max_wait_ms)
    parser.add_argument("--litserve-batch-timeout-ms", type=float, default=1.0)
    parser.add_argument("--bentoml-max-latency-ms", type=int, default=60000, help="BentoML's default")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="the peers' venv (made if missing)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.seconds <= 0 or args.connections < 1 or args.requests < 1 or args.threads < 1:
        parser.error("--repeats, --seconds, --connections, --requests and --threads must be positive")
    return args


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    info = machine_info()
    texts = clinc_texts()
    peers = [name for name in args.servers if name != "edge"]
    peers_python = ensure_peers_venv(args.venv) if peers else None
    extras = edge_http_extras(peers_python, args.venv) if peers_python and "edge" in args.servers else None
    model_dir = args.model_dir
    if model_dir is None:
        _progress("building the tiny test artifact (TensorFlow, ~20 s)")
        from tests.fixtures.tiny_artifact import make_tiny_artifact  # TensorFlow: the bench only

        model_dir = make_tiny_artifact(workdir / "tiny", version="bench-tiny", seed=0)
    model_dir = model_dir.resolve()  # the servers run in the run's own folder
    if not (model_dir / "manifest.json").is_file():
        raise BenchError(f"{model_dir}: no manifest.json (not a built artifact)")
    sample = random.Random(0).sample(texts, min(AGREEMENT_TEXTS, len(texts)))
    from modelpack.errors import ArtifactError

    try:
        expected = expected_labels(model_dir, sample)
    except ArtifactError as exc:
        raise BenchError(f"{model_dir}: {exc}") from None
    options = SpecOptions(model_dir, args.threads, args.max_batch_size, args.edge_max_wait_ms,
                          args.litserve_batch_timeout_ms, args.bentoml_max_latency_ms, peers_python, extras,
                          workdir)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.servers}
    in_proc: list[dict[str, float]] = []
    specs: dict[str, ServerSpec] = {}
    for repeat in range(1, args.repeats + 1):
        t0 = time.perf_counter()
        in_proc.append(in_process(model_dir, texts, threads=args.threads, batch=args.max_batch_size,
                                  seconds=args.seconds, requests=args.requests))
        _progress(f"repeat {repeat}/{args.repeats} in process: b1 p50 {in_proc[-1]['b1_p50_ms']:.3f} ms, "
                  f"b{args.max_batch_size} {in_proc[-1][f'b{args.max_batch_size}_texts_per_s']:.0f} texts/s "
                  f"({time.perf_counter() - t0:.1f} s)")
        for name in args.servers:
            t0 = time.perf_counter()
            specs[name] = spec = SPECS[name](options)
            result = measure_server(spec, workdir / f"{name}-{repeat}.log", texts=texts, sample=sample,
                                    expected=expected, requests=args.requests, connections=args.connections,
                                    seconds=args.seconds)
            runs[name].append(result)
            _progress(f"repeat {repeat}/{args.repeats} {name}: c1 p50 {result['c1_p50_ms']:.3f} ms, c64 "
                      f"{result['c64_rps']:.0f} rps (p99 {result['c64_p99_ms']:.1f} ms), "
                      f"{result['server_cpu_us_per_request']:.0f} us CPU/request, {result['errors']} errors, "
                      f"agreement {result['agreement']:.3f} ({time.perf_counter() - t0:.1f} s)")
    summary = summarise(runs, in_proc, batch=args.max_batch_size)
    settings: dict[str, Any] = {
        "common": {"max_batch_size": args.max_batch_size, "threads": args.threads,
                   "connections": args.connections,
                   "seconds": args.seconds, "c64_warmup_s": C64_WARMUP_S, "repeats": args.repeats,
                   "c1_requests": args.requests, "c1_warmup_requests": WARMUP_REQUESTS,
                   "agreement_texts": len(sample),
                   "texts": f"CLINC150 test split ({len(texts)} texts), one per request, in order; each c64 "
                            "connection starts at its own offset",
                   "model_dir": str(model_dir) if args.model_dir else "tiny test artifact "
                                                                       "(tests/fixtures/tiny_artifact.py)",
                   "model_version": json.loads((model_dir / "manifest.json").read_text()).get("model_version"),
                   "server_start": "fresh server per run, alone on the machine while measured",
                   "load_generator": "this process: raw keep-alive sockets (asyncio for c64)"}}
    for name, spec in specs.items():
        settings[name] = {**spec.settings, **({"version": PEERS[name]} if name in PEERS else {})}
        if "reported_settings" in runs[name][-1]:
            settings[name]["reported_by_server"] = runs[name][-1]["reported_settings"]
    if peers_python is not None:
        settings["peers_venv"] = {"path": str(args.venv), "requirements": pinned_requirements()}
    return {"benchmark": "peers", "machine": {**info, "load_average_1m_after": round(os.getloadavg()[0], 2)},
            "settings": settings, **summary,
            "caveat": ("2 cores shared by the server, its interpreter threads and this load generator: "
                       "single runs vary by +-30 %; figures are medians of interleaved repeats, and "
                       "server_cpu_us_per_request is the steadier figure"),
            "elapsed_s": round(time.perf_counter() - started, 1)}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so a SIGTERM also unwinds through `running` and stops the server


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
    try:
        with tempfile.TemporaryDirectory(prefix="peers-bench-") as tmp:
            result = run(args, Path(tmp))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: servers stopped, nothing written", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name, goal in result["goals"].items():
            print(f"{name}: {goal['value']} ({goal['goal']}: {goal['status']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
