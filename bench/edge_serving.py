"""Edge serving overhead and dynamic-batching gain, over real HTTP on loopback.

    python bench/edge_serving.py --json [--model-dir DIR] [--seconds 4] [--repeats 3] [--out FILE]

Without --model-dir it builds the tiny test artifact first (needs TensorFlow, ~20 s). The service runs as
`python -m edge_container serve` in a subprocess (policy edge_only: the cloud is not part of this
measurement); the load comes from this process over raw keep-alive sockets (cheaper than any HTTP client
library, so more of the 2 cores go to the server). Figures:

  raw_b1_ms_p50        tokenize + invoke + calibrate one text in-process (EdgeModel.run)
  http_b1_ms_p50/p99   one client, one text per POST /v1/predict, sequential
  overhead_ms_p50      http_b1_ms_p50 - raw_b1_ms_p50
  rps_c64_batching     64 concurrent connections, one text each, batching on (EDGE_MAX_BATCH_SIZE)
  rps_c64_no_batching  the same with EDGE_MAX_BATCH_SIZE=1
  batching_gain        rps_c64_batching / rps_c64_no_batching
  raw_batched_rps      in-process ceiling: texts/s through EdgeModel.run in batches, EDGE_WORKERS threads
  efficiency           rps_c64_batching / raw_batched_rps
  processes_2_over_1   rps at c64 with EDGE_PROCESSES=2, EDGE_WORKERS=0 / one process (EDGE_WORKERS threads)
  batch32_efficiency   texts/s with 32 texts per request (2 x workers connections) / raw_batched_rps
                       (_processes_2: the same through EDGE_PROCESSES=2, EDGE_WORKERS=0, 8 connections)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # runnable as a plain script too
    sys.path.insert(0, str(REPO_ROOT))

DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "edge_serving.json"
TEXT = "what is the weather going to be like tomorrow"
GOALS = {"overhead_ms_p50": ("<=", 0.5), "batching_gain": (">=", 3.0), "efficiency": (">=", 0.7),
         "processes_2_over_1": (">=", 1.6), "batch32_efficiency": (">=", 0.8)}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _request(port: int, body: bytes) -> bytes:
    return (f"POST /v1/predict HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            return int(line[15:])
    raise ValueError("response without content-length")


# --- in-process -----------------------------------------------------------------------------------------------
def raw_figures(model_dir: Path, *, workers: int, batch: int, seconds: float) -> dict[str, float]:
    from edge_container.runtime import EdgeModel

    model = EdgeModel.load(model_dir, slots=workers)
    for _ in range(200):
        model.run([TEXT])
    single = []
    for _ in range(3000):
        start = time.perf_counter()
        model.run([TEXT])
        single.append(time.perf_counter() - start)
    texts, done = [TEXT] * batch, [0] * workers
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < stop:
            model.run(texts)
            done[i] += batch

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(workers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"raw_b1_ms_p50": statistics.median(single) * 1e3,
            "raw_batched_rps": sum(done) / (time.perf_counter() - start)}


# --- the service ----------------------------------------------------------------------------------------------
class Service:
    def __init__(self, model_dir: Path, **env: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        environ = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
        path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        environ.update(PYTHONPATH=path, EDGE_MODEL_DIR=str(model_dir), EDGE_HOST="127.0.0.1",
                       EDGE_PORT=str(self.port), EDGE_POLICY="edge_only", EDGE_RELOAD_POLL_S="0",
                       EDGE_LOG_LEVEL="warning", EDGE_QUEUE_SIZE="4096", **env)
        self.proc = subprocess.Popen([sys.executable, "-m", "edge_container", "serve"], cwd=REPO_ROOT, env=environ,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service died: {self.proc.communicate()[1].decode()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    conn.sendall(b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n")
                    if conn.recv(64).startswith(b"HTTP/1.1 200"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the service never became ready")
            time.sleep(0.1)

    def cpu_seconds(self) -> float:
        """utime + stime of the server and its children (EDGE_PROCESSES > 1), all threads."""
        return sum(_cpu_seconds(pid) for pid in (self.proc.pid, *_children(self.proc.pid)))

    def batch_totals(self) -> tuple[float, float]:
        """(texts, batches) so far, from the service's own edge_batch_size histogram (all processes)."""
        with socket.create_connection(("127.0.0.1", self.port)) as conn:
            conn.sendall(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            raw = b"".join(iter(lambda: conn.recv(65536), b"")).decode()
        totals = {"edge_batch_size_sum": 0.0, "edge_batch_size_count": 0.0}
        for line in raw.splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in totals:
                totals[name] += float(line.rsplit(" ", 1)[1])
        return totals["edge_batch_size_sum"], totals["edge_batch_size_count"]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.communicate(timeout=30)


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # gone meanwhile
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def sequential_latencies(port: int, n: int) -> list[float]:
    request = _request(port, json.dumps({"text": TEXT}).encode())
    latencies = []
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        for i in range(n + 200):
            start = time.perf_counter()
            conn.sendall(request)
            while b"\r\n\r\n" not in buf:
                buf += conn.recv(65536)
            head, _, buf = buf.partition(b"\r\n\r\n")
            length = _content_length(head)
            while len(buf) < length:
                buf += conn.recv(65536)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.decode())
            buf = buf[length:]
            if i >= 200:  # after warm-up
                latencies.append(time.perf_counter() - start)
    return latencies


def closed_loop_rps(port: int, *, connections: int, seconds: float, texts: int = 1) -> dict[str, float]:
    """Requests/s over `connections` keep-alive connections, each request `texts` texts (1: {"text": ...})."""
    body = {"text": TEXT} if texts == 1 else {"texts": [TEXT] * texts}
    request = _request(port, json.dumps(body).encode())

    async def client(stop_at: float, warm_until: float, counts: list[int]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (now := time.perf_counter()) < stop_at:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(_content_length(head))
                if now >= warm_until:
                    counts[0 if head.startswith(b"HTTP/1.1 200") else 1] += 1
        finally:
            writer.close()

    async def main() -> dict[str, float]:
        counts = [0, 0]  # answered 200, answered otherwise
        start = time.perf_counter()
        warm_until, stop_at = start + 1.0, start + 1.0 + seconds
        await asyncio.gather(*(client(stop_at, warm_until, counts) for _ in range(connections)))
        return {"rps": counts[0] / (time.perf_counter() - warm_until), "errors": counts[1]}

    return asyncio.run(main())


def machine() -> dict[str, Any]:
    packages: dict[str, str | None] = {}
    for name in ("ai-edge-litert", "tokenizers", "numpy", "starlette", "uvicorn", "httpx", "prometheus-client",
                 "h11", "httptools", "uvloop"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2), "packages": packages}


def measure_c64(service: Service, *, connections: int, seconds: float) -> dict[str, float]:
    (texts, batches), cpu, wall = service.batch_totals(), service.cpu_seconds(), time.perf_counter()
    run = closed_loop_rps(service.port, connections=connections, seconds=seconds)
    cpu, wall = service.cpu_seconds() - cpu, time.perf_counter() - wall
    texts_after, batches_after = service.batch_totals()
    # Server CPU per answered request: steadier than rps on a shared machine (2 cores, other load).
    return {**run, "server_cpu_us_per_request": cpu / (run["rps"] * wall) * 1e6, "server_cpu_cores": cpu / wall,
            "mean_batch_size": (texts_after - texts) / max(batches_after - batches, 1.0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--model-dir", type=Path, help="an artifact folder (default: build the tiny test artifact)")
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each throughput run")
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests for the latency figures")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; figures are their medians")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="EDGE_WORKERS (interpreter threads)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=0.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--variant", help="store this run under variants.NAME of --out, keeping the main result "
                                          "(e.g. PYTHONPATH=<dir with httptools, uvloop> ... --variant httptools_uvloop)")
    args = parser.parse_args(argv)

    started = time.time()
    info = machine()
    modes = {"batching": {"EDGE_MAX_BATCH_SIZE": str(args.max_batch_size)},
             "no_batching": {"EDGE_MAX_BATCH_SIZE": "1"},
             # one process per core, each running its batches on its event loop (no thread hand-off)
             "processes_2": {"EDGE_MAX_BATCH_SIZE": str(args.max_batch_size), "EDGE_PROCESSES": "2",
                             "EDGE_WORKERS": "0"}}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir
        if model_dir is None:
            from tests.fixtures.tiny_artifact import (
                make_tiny_artifact,  # TensorFlow: the bench only, never the service
            )

            model_dir = make_tiny_artifact(Path(tmp) / "tiny", version="bench-tiny", seed=0)
        raw = raw_figures(model_dir, workers=args.workers, batch=args.max_batch_size, seconds=args.seconds)
        env = {"EDGE_WORKERS": str(args.workers), "EDGE_MAX_WAIT_MS": str(args.max_wait_ms)}
        services = {mode: Service(model_dir, **{**env, **mode_env}) for mode, mode_env in modes.items()}
        b1_p50, b1_p99, batch32, batch32_p2 = [], [], [], []
        c64: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
        try:
            for _ in range(args.repeats):  # interleaved, so every mode sees the same background load
                latencies = sequential_latencies(services["batching"].port, args.requests)
                b1_p50.append(_percentile(latencies, 0.5) * 1e3)
                b1_p99.append(_percentile(latencies, 0.99) * 1e3)
                for mode, service in services.items():
                    c64[mode].append(measure_c64(service, connections=args.connections, seconds=args.seconds))
                # One request = one full batch: what the HTTP layer costs when it carries many texts.
                run = closed_loop_rps(services["batching"].port, connections=2 * args.workers, seconds=args.seconds,
                                      texts=args.max_batch_size)
                batch32.append(run["rps"] * args.max_batch_size)
                # two processes: more connections, so that the kernel's spreading of them evens out
                run = closed_loop_rps(services["processes_2"].port, connections=8, seconds=args.seconds,
                                      texts=args.max_batch_size)
                batch32_p2.append(run["rps"] * args.max_batch_size)
        finally:
            for service in services.values():
                service.close()

    def med(mode: str, key: str) -> float:
        return statistics.median(run[key] for run in c64[mode])

    http_p50 = statistics.median(b1_p50)
    rps = {mode: med(mode, "rps") for mode in modes}
    result: dict[str, Any] = {
        "benchmark": "edge_serving",
        "model_dir": str(args.model_dir) if args.model_dir else "tiny test artifact (tests/fixtures/tiny_artifact.py)",
        "settings": {"workers": args.workers, "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
                     "connections": args.connections, "seconds": args.seconds, "repeats": args.repeats,
                     "policy": "edge_only", "server": "python -m edge_container serve (uvicorn, one process; "
                     "processes_2: EDGE_PROCESSES=2 with EDGE_WORKERS=0, inference inline on each event loop)",
                     "batch_connections": 2 * args.workers},
        "raw_b1_ms_p50": round(raw["raw_b1_ms_p50"], 4),
        "http_b1_ms_p50": round(http_p50, 4),
        "http_b1_ms_p99": round(statistics.median(b1_p99), 4),
        "overhead_ms_p50": round(http_p50 - raw["raw_b1_ms_p50"], 4),
        "rps_c64_batching": round(rps["batching"], 1),
        "rps_c64_no_batching": round(rps["no_batching"], 1),
        "batching_gain": round(rps["batching"] / rps["no_batching"], 3),
        "raw_batched_rps": round(raw["raw_batched_rps"], 1),
        "efficiency": round(rps["batching"] / raw["raw_batched_rps"], 4),
        "rps_c64_processes_2": round(rps["processes_2"], 1),
        "processes_2_over_1": round(rps["processes_2"] / rps["batching"], 3),
        f"batch{args.max_batch_size}_texts_per_s": round(statistics.median(batch32), 1),
        "batch32_efficiency": round(statistics.median(batch32) / raw["raw_batched_rps"], 4),
        "batch32_efficiency_processes_2": round(statistics.median(batch32_p2) / raw["raw_batched_rps"], 4),
        "c64_detail": {mode: {"server_cpu_us_per_request": round(med(mode, "server_cpu_us_per_request"), 1),
                              "server_cpu_cores": round(med(mode, "server_cpu_cores"), 2),
                              "mean_batch_size": round(med(mode, "mean_batch_size"), 2),
                              "errors": int(sum(run["errors"] for run in c64[mode]))} for mode in modes},
        "repeats": {"http_b1_ms_p50": [round(v, 4) for v in b1_p50],
                    **{f"rps_c64_{mode}": [round(run["rps"], 1) for run in c64[mode]] for mode in modes},
                    "batch_texts_per_s": [round(v, 1) for v in batch32],
                    "batch_texts_per_s_processes_2": [round(v, 1) for v in batch32_p2]},
    }
    result["goals"] = {name: {"goal": f"{op} {bound}",
                              "met": result[name] <= bound if op == "<=" else result[name] >= bound}
                       for name, (op, bound) in GOALS.items()}
    result["machine"] = {**info, "load_average_1m_after": round(os.getloadavg()[0], 2)}
    result["caveat"] = ("2 cores shared by the server, its interpreter threads, this load generator and any other "
                        "load on the machine (see load_average): single runs vary by +-30 %; figures are medians "
                        "of interleaved repeats, and c64_detail.server_cpu_us_per_request is the steadier figure")
    result["elapsed_s"] = round(time.time() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    stored = result
    if args.variant:
        stored = json.loads(args.out.read_text()) if args.out.is_file() else {}
        stored.setdefault("variants", {})[args.variant] = result
    args.out.write_text(json.dumps(stored, indent=2) + "\n")
    print(json.dumps(result, indent=2) if args.json else
          "\n".join(f"{k}: {v}" for k, v in result.items() if not isinstance(v, dict)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
