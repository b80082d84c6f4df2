"""What the edge's HTTP limits (edge_container/http_limits.py) cost on the hot path and what they save.

    git worktree add --detach /tmp/old_edge <a commit before the limits>
    python bench/http_limits.py --old-root /tmp/old_edge [--new-root DIR] [--model-dir DIR] [--runs 3]
                                [--repeats 3] [--out FILE]

Three measurements, each old and new side by side in one run, interleaved (the order flips every repeat,
so drift in the machine's other load hits both alike); figures are medians of the repeats:

  protocol      in process, no sockets: uvicorn's HttpToolsProtocol and LimitedHttpToolsProtocol fed the
                same requests on one keep-alive connection (a fake transport, a trivial ASGI app, uvloop),
                CPU microseconds per request (process time: the machine's other load does not count): a GET
                in one read, a POST in one read, a POST whose head and body arrive in two reads (the body
                deadline is armed and cancelled)
  serving       `python -m edge_container serve` of --old-root and of this checkout (bench/edge_serving.py's
                Service, default settings): c1 POST /v1/predict p50 / p99, c64 requests/s and the server's
                CPU per request
  slowloris     bench/slowloris.py against both: 200 connections x 1 MB of unfinished headers, and
                200 x 15,000 bytes (under the limit: held until the head deadline)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # runnable as a plain script too
    sys.path.insert(0, str(REPO_ROOT))

from bench.edge_serving import _percentile, machine, measure_c64, sequential_latencies
from bench.slowloris import measure as slowloris, start

DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "http_limits.json"
HEADERS = (b"host: 127.0.0.1:8080\r\naccept: */*\r\naccept-encoding: gzip, deflate\r\nconnection: keep-alive\r\n"
           b"user-agent: python-httpx/0.28.1\r\nx-api-key: client-key-0123456789\r\n")
BODY = b'{"text": "what is the weather going to be like tomorrow"}'
POST_HEAD = (b"POST /v1/predict HTTP/1.1\r\n" + HEADERS
             + b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(BODY))
REQUESTS = {"get_one_read": [b"GET /healthz HTTP/1.1\r\n" + HEADERS + b"\r\n"],
            "post_one_read": [POST_HEAD + BODY],
            "post_two_reads": [POST_HEAD, BODY]}


# --- protocol: in process -------------------------------------------------------------------------------------
class _Transport:
    """Just enough of an asyncio transport for uvicorn's protocol: writes are counted, not sent."""

    def __init__(self) -> None:
        self.writes = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def write(self, data: bytes) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True


async def _app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    if scope["method"] == "POST":
        while (await receive())["more_body"]:
            pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


def protocol_us(n: int, repeats: int) -> dict[str, Any]:
    import uvicorn
    import uvloop
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    from edge_container.http_limits import ConnectionGate, LimitedHttpToolsProtocol
    from edge_container.settings import Settings

    config = uvicorn.Config(_app, lifespan="off", log_level="warning")
    config.load()
    gate = ConnectionGate(Settings())
    factories = {"old": HttpToolsProtocol, "new": lambda **kw: LimitedHttpToolsProtocol(**kw, gate=gate)}

    async def per_request(factory: Callable[..., Any], chunks: list[bytes]) -> float:
        protocol = factory(config=config, server_state=ServerState(), app_state={})
        transport = _Transport()
        protocol.connection_made(transport)
        start = time.process_time()  # this process's CPU: what the machine's other load does not inflate
        for i in range(n):
            for chunk in chunks:
                protocol.data_received(chunk)
            while transport.writes < 2 * (i + 1):  # the response's head and body: this request is done
                await asyncio.sleep(0)
        elapsed = time.process_time() - start
        protocol.connection_lost(None)
        return elapsed / n * 1e6

    runs: dict[str, dict[str, list[float]]] = {kind: {"old": [], "new": []} for kind in REQUESTS}
    for r in range(repeats):
        for kind, chunks in REQUESTS.items():
            for name in ("old", "new") if r % 2 == 0 else ("new", "old"):
                runs[kind][name].append(uvloop.run(per_request(factories[name], chunks)))
    out: dict[str, Any] = {}
    for kind, by in runs.items():
        old, new = statistics.median(by["old"]), statistics.median(by["new"])
        out[kind] = {"old_us": round(old, 2), "new_us": round(new, 2), "added_us": round(new - old, 2),
                     "new_over_old": round(new / old, 3), "min_old_us": round(min(by["old"]), 2),
                     "min_new_us": round(min(by["new"]), 2),
                     "repeats": {name: [round(v, 2) for v in values] for name, values in by.items()}}
    return out


# --- serving: two checkouts ------------------------------------------------------------------------------------
def serving(roots: dict[str, Path], model_dir: Path, *, repeats: int, requests: int, seconds: float,
            connections: int) -> dict[str, Any]:
    services = {name: start(root, model_dir) for name, root in roots.items()}
    runs: dict[str, dict[str, list[float]]] = {name: {"c1_p50_ms": [], "c1_p99_ms": [], "c64_rps": [],
                                                     "c64_server_cpu_us_per_request": [], "c64_errors": []}
                                               for name in roots}
    try:
        for r in range(repeats):
            for name in list(roots) if r % 2 == 0 else list(roots)[::-1]:
                latencies = sequential_latencies(services[name].port, requests)
                c64 = measure_c64(services[name], connections=connections, seconds=seconds)
                figures = runs[name]
                figures["c1_p50_ms"].append(_percentile(latencies, 0.5) * 1e3)
                figures["c1_p99_ms"].append(_percentile(latencies, 0.99) * 1e3)
                figures["c64_rps"].append(c64["rps"])
                figures["c64_server_cpu_us_per_request"].append(c64["server_cpu_us_per_request"])
                figures["c64_errors"].append(c64["errors"])
    finally:
        for service in services.values():
            service.close()
    out: dict[str, Any] = {name: {key: round(statistics.median(values), 4 if "ms" in key else 1)
                                  for key, values in figures.items()} for name, figures in runs.items()}
    out["new_over_old"] = {key: round(out["new"][key] / out["old"][key], 3)
                           for key in ("c1_p50_ms", "c1_p99_ms", "c64_rps", "c64_server_cpu_us_per_request")}
    out["repeats"] = {name: {key: [round(v, 4) for v in values] for key, values in figures.items()}
                      for name, figures in runs.items()}
    return out


def _commit(root: Path) -> str:
    import subprocess

    out = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h %s"], capture_output=True, text=True,
                         check=False).stdout.strip()
    return out[:100]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-root", type=Path, required=True, help="a checkout from before the limits")
    parser.add_argument("--new-root", type=Path, default=REPO_ROOT,
                        help="the checkout with them (default: this one, as it is in the working tree)")
    parser.add_argument("--model-dir", type=Path, help="an artifact folder (default: build the tiny test artifact)")
    parser.add_argument("--runs", type=int, default=3, help="whole old/new comparisons, one after the other")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved old/new repeats within a run")
    parser.add_argument("--protocol-requests", type=int, default=20000, help="requests per in-process run")
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests of each c1 figure")
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each c64 run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--slowloris-connections", type=int, default=200)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    roots = {"old": args.old_root.resolve(), "new": args.new_root.resolve()}
    if (roots["old"] / "edge_container" / "http_limits.py").exists():
        parser.error(f"{roots['old']} already has edge_container/http_limits.py: give a checkout from before it")
    started, info = time.time(), machine()
    result: dict[str, Any] = {"benchmark": "http_limits", "old_root": str(roots["old"]), "new_root": str(roots["new"]),
                              "commits": {name: _commit(root) for name, root in roots.items()}}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir
        if model_dir is None:
            from tests.fixtures.tiny_artifact import make_tiny_artifact  # TensorFlow: the bench only

            model_dir = make_tiny_artifact(Path(tmp) / "tiny", version="bench-tiny", seed=0)
        result["model_dir"] = str(args.model_dir) if args.model_dir else "tiny test artifact"
        runs = []
        for _ in range(args.runs):
            runs.append({"protocol": protocol_us(args.protocol_requests, max(args.repeats, 5)),
                         "serving": serving(roots, model_dir, repeats=args.repeats, requests=args.requests,
                                            seconds=args.seconds, connections=args.connections),
                         "load_average_1m": round(os.getloadavg()[0], 2)})
        result["summary"] = {
            "protocol_added_us": {kind: [run["protocol"][kind]["added_us"] for run in runs] for kind in REQUESTS},
            "protocol_min_added_us": {kind: [round(run["protocol"][kind]["min_new_us"]
                                                   - run["protocol"][kind]["min_old_us"], 2) for run in runs]
                                      for kind in REQUESTS},
            "serving_new_over_old": {key: [run["serving"]["new_over_old"][key] for run in runs]
                                     for key in runs[0]["serving"]["new_over_old"]}}
        result["runs"] = runs
        result["slowloris"] = {}
        for label, head_bytes, hold_s in (("1MB_heads", 1 << 20, 3.0), ("15000B_heads", 15000, 12.0)):
            for name, root in roots.items():
                service = start(root, model_dir)
                try:
                    result["slowloris"][f"{label}_{name}"] = slowloris(
                        service, connections=args.slowloris_connections, head_bytes=head_bytes, hold_s=hold_s)
                finally:
                    service.close()
    result["settings"] = {"runs": args.runs, "repeats": args.repeats, "protocol_requests": args.protocol_requests,
                          "requests": args.requests, "seconds": args.seconds, "connections": args.connections,
                          "slowloris_connections": args.slowloris_connections,
                          "server": "python -m edge_container serve, defaults (EDGE_WORKERS=2, batch 32), "
                                    "EDGE_POLICY=edge_only; new: EDGE_HEAD_TIMEOUT_S=10, EDGE_MAX_HEADER_BYTES=16384"}
    result["machine"] = {**info, "load_average_1m_after": round(os.getloadavg()[0], 2)}
    result["elapsed_s"] = round(time.time() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
