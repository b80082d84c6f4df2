"""Schemathesis (`--checks all`) against the edge's own /openapi.json, over real HTTP on loopback.

    python bench/schemathesis_edge.py [--model-dir DIR] [--max-examples 25] [--max-time 240] [--out FILE]

Schemathesis is not a test dependency (no test imports it); install it into the venv first:

    .venv/bin/pip install schemathesis==4.32.5 -c requirements/constraints.txt

Without --model-dir it builds the tiny test artifact first (needs TensorFlow, ~20 s). The edge runs in this
process (uvicorn in a thread) with a client key, which every request carries, no cloud (an escalation is an
edge fallback) and the admin routes disabled (403), so nothing here spends a budget or swaps a model.
Schemathesis runs as its CLI in a subprocess with a fixed seed, one worker and a time budget. Written to
bench/results/schemathesis_edge.json: requests sent, responses by status, 5xx count, failures by check
(`response_schema_conformance` is the schema violations), operations tested, and the machine.
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import socket
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

DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "schemathesis_edge.json"
CLIENT_KEY = "bench-client-key-0123456789"
SEED = 20261201


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


class _Edge:
    """The real edge app on a free loopback port, in a thread (as tests/edge_container/conftest.py does)."""

    def __init__(self, model_dir: Path) -> None:
        import uvicorn

        from edge_container.app import create_app
        from edge_container.auth import ClientKey
        from edge_container.settings import Settings

        settings = Settings(model_dir=model_dir, reload_poll_s=0.0, workers=1,
                            client_keys=(ClientKey("bench", CLIENT_KEY),))
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="error", access_log=False,
                                                    lifespan="on"))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> _Edge:
        self._thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the edge did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(15)
        self._sock.close()


def _statuses(har_path: Path) -> collections.Counter[int]:
    entries = json.loads(har_path.read_text())["log"]["entries"]
    return collections.Counter(int(e["response"]["status"]) for e in entries)


def _failures(ndjson_path: Path) -> tuple[collections.Counter[str], list[dict[str, Any]], int]:
    """Failing check results by check name (one failure found by several cases counts for each), a few
    examples, and the number of operations that ran; from schemathesis's event stream."""
    by_check: collections.Counter[str] = collections.Counter()
    examples: list[dict[str, Any]] = []
    operations: set[str] = set()
    for line in ndjson_path.read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if not finished:
            continue
        recorder = finished.get("recorder") or {}
        label = recorder.get("label")
        if label:
            operations.add(label)
        for checks in (recorder.get("checks") or {}).values():
            for check in checks:
                if str(check.get("status")).lower() == "failure":
                    by_check[check["name"]] += 1
                    if len(examples) < 10:
                        failure = check.get("failure_info") or {}
                        examples.append({"operation": label, "check": check["name"],
                                         "title": (failure.get("failure") or {}).get("title")})
    return by_check, examples, len(operations)


def run(model_dir: Path, max_examples: int, max_time: int, log: Path | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, _Edge(model_dir) as edge:
        har, ndjson = Path(tmp) / "run.har", Path(tmp) / "events.ndjson"
        command = [sys.executable, "-m", "schemathesis.cli", "run", f"{edge.url}/openapi.json",
                   "--checks", "all", "--workers", "1", "--seed", str(SEED), "--max-examples", str(max_examples),
                   "--max-time", str(max_time), "--request-timeout", "10", "-H", f"x-api-key: {CLIENT_KEY}",
                   "--report", "har,ndjson", "--report-har-path", str(har), "--report-ndjson-path", str(ndjson),
                   "--warnings", "off"]
        start = time.monotonic()
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.monotonic() - start
        if log is not None:
            log.write_text(proc.stdout + proc.stderr)
            (log.parent / (log.name + ".ndjson")).write_text(ndjson.read_text())
        statuses = _statuses(har)
        by_check, examples, operations = _failures(ndjson)
    return {
        "tool": f"schemathesis {metadata.version('schemathesis')}",
        "command": "schemathesis run /openapi.json --checks all --workers 1 "
                   f"--seed {SEED} --max-examples {max_examples} --max-time {max_time}",
        "exit_code": proc.returncode,
        "seconds": round(seconds, 1),
        "operations_tested": operations,
        "requests": sum(statuses.values()),
        "responses_by_status": {str(k): v for k, v in sorted(statuses.items())},
        "server_errors_5xx": sum(v for k, v in statuses.items() if k >= 500),
        "failing_checks_by_name": dict(sorted(by_check.items())),
        "schema_violations": by_check.get("response_schema_conformance", 0),
        "failure_examples": examples,
        "summary_tail": proc.stdout.strip().splitlines()[-12:],
        "machine": {"cpu": _cpu_model(), "python": platform.python_version(), "platform": platform.platform()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="an artifact folder (default: build the tiny one)")
    parser.add_argument("--max-examples", type=int, default=25)
    parser.add_argument("--max-time", type=int, default=240, help="seconds for the whole schemathesis run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--log", type=Path, help="also keep schemathesis's own output (and events) here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir
        if model_dir is None:
            from tests.fixtures.tiny_artifact import make_tiny_artifact

            model_dir = make_tiny_artifact(Path(tmp) / "tiny", version="tiny-1", seed=0)
        result = run(model_dir, args.max_examples, args.max_time, args.log)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    clean = result["server_errors_5xx"] == 0 and not result["failing_checks_by_name"] and result["exit_code"] == 0
    return 0 if clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
