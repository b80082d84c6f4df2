"""Concurrent budget charges against a serialised moto server: does any schedule overspend or double-charge?

    python bench/budget_concurrency.py --json          # or: python -m bench.budget_concurrency --json

Two runs, each on a fresh server state with the template's tables:
  unkeyed  `attempts` reservations of 1 unit without idempotency keys (the single conditional UpdateItem);
  keyed    `attempts` distinct requests with idempotency keys, a `--retry-fraction` of them sent again by
           another client at the same time (lost-response retries) -> the TransactWriteItems path.
Top-level figures are the keyed run (what the handler uses); both runs are under "runs". Exit status 1 if
any run overspent, double-charged or lost track of a unit. Throughput is moto's (one request at a time over
local HTTP), not DynamoDB's: read it as a correctness check with a cost comparison between the two paths.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # runnable as a plain script too
    sys.path.insert(0, str(REPO_ROOT))

from cloud_functions.budget import BudgetLedger, Reservation
from cloud_functions.errors import BudgetExhausted, CloudError
from infra.moto_server import SerialisedMotoServer, create_template_resources

DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "budget_concurrency.json"


def _run(
    server: SerialisedMotoServer,
    *,
    mode: str,
    clients: int,
    attempts: int,
    budget_units: int,
    retry_fraction: float,
) -> dict[str, Any]:
    server.reset()
    dynamodb = server.client("dynamodb", max_pool_connections=clients * 2)
    tables = create_template_resources(
        dynamodb_client=dynamodb, s3_client=server.client("s3"), prefix="bench"
    )
    ledger = BudgetLedger(tables.tables["BudgetTable"], dynamodb_client=dynamodb, default_limit=budget_units)
    tenant = f"bench-{mode}"

    calls: list[str | None]
    if mode == "unkeyed":
        calls = [None] * attempts
    else:
        every = max(1, round(1 / retry_fraction)) if retry_fraction > 0 else 0
        calls = []
        for i in range(attempts):
            # A retried key sits next to its original: the two land on neighbouring clients in the same
            # round, so both are in flight at once.
            calls += [f"req-{i}"] * (2 if every and i % every == 0 else 1)
    shares = [calls[i::clients] for i in range(clients)]
    start = threading.Barrier(clients)

    def client(share: list[str | None]) -> list[tuple[str, str | None, float]]:
        start.wait()
        outcomes: list[tuple[str, str | None, float]] = []
        for key in share:
            began = time.perf_counter()
            try:
                reservation: Reservation = ledger.reserve(tenant, 1, idempotency_key=key)
                kind = "replayed" if reservation.replayed else "granted"
            except BudgetExhausted:
                kind = "exhausted"
            except CloudError as exc:
                kind = f"error:{exc.code}"
            outcomes.append((kind, key, time.perf_counter() - began))
        return outcomes

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        outcomes = [outcome for share_outcomes in pool.map(client, shares) for outcome in share_outcomes]
    elapsed = time.perf_counter() - began

    status = ledger.status(tenant)
    kinds = Counter(kind for kind, _key, _latency in outcomes)
    granted_per_key = Counter(
        key for kind, key, _latency in outcomes if kind == "granted" and key is not None
    )
    latencies_ms = sorted(latency * 1000 for _kind, _key, latency in outcomes)
    return {
        "mode": mode,
        "calls": len(calls),
        "granted": kinds["granted"],
        "replayed": kinds["replayed"],
        "exhausted": kinds["exhausted"],
        "errors": {kind: n for kind, n in kinds.items() if kind.startswith("error:")},
        "charged": status.spent,
        "remaining": status.remaining,
        "overspend": max(0, status.spent - budget_units),
        # keyed: a key granted more than once; unkeyed calls have no key, so nothing can be counted here
        "double_charges": sum(n - 1 for n in granted_per_key.values() if n > 1) if mode == "keyed" else None,
        "unaccounted_units": status.spent - kinds["granted"],  # units taken that no caller was told about
        "elapsed_s": round(elapsed, 3),
        "calls_per_s": round(len(calls) / elapsed, 1),
        "latency_ms": {
            "p50": round(statistics.median(latencies_ms), 2),
            "p95": round(latencies_ms[int(0.95 * (len(latencies_ms) - 1))], 2),
            "max": round(latencies_ms[-1], 2),
        },
    }


def _machine() -> dict[str, Any]:
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "packages": {name: version(name) for name in ("moto", "boto3", "Werkzeug")},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--attempts", type=int, default=1000)
    parser.add_argument("--budget", type=int, default=500, help="daily budget units (default: %(default)s)")
    parser.add_argument("--retry-fraction", type=float, default=0.25, help="keyed requests sent twice")
    parser.add_argument("--modes", default="unkeyed,keyed")
    parser.add_argument("--json", action="store_true", help="print the JSON result")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    if not set(modes) <= {"unkeyed", "keyed"} or not modes:
        parser.error("--modes takes unkeyed and/or keyed")
    if args.clients < 1 or args.attempts < 1 or args.budget < 0 or not 0 <= args.retry_fraction <= 1:
        parser.error("clients and attempts must be >= 1, budget >= 0, retry fraction in [0, 1]")

    machine_before = _machine()
    with SerialisedMotoServer() as server:
        runs = [
            _run(
                server,
                mode=mode,
                clients=args.clients,
                attempts=args.attempts,
                budget_units=args.budget,
                retry_fraction=args.retry_fraction,
            )
            for mode in modes
        ]
    headline = next((run for run in runs if run["mode"] == "keyed"), runs[0])
    result = {
        "benchmark": "budget_concurrency",
        "backend": "moto server, serialised (werkzeug threaded=False), local HTTP",
        "clients": args.clients,
        "attempts": args.attempts,
        "budget_units": args.budget,
        "retry_fraction": args.retry_fraction if "keyed" in modes else None,
        "headline_mode": headline["mode"],
        "charged": headline["charged"],
        "overspend": max(run["overspend"] for run in runs),
        "double_charges": max(run["double_charges"] or 0 for run in runs),
        "unaccounted_units": max(abs(run["unaccounted_units"]) for run in runs),
        "elapsed_s": round(sum(run["elapsed_s"] for run in runs), 3),
        "runs": runs,
        "machine": {**machine_before, "load_average_1m_after": _machine()["load_average_1m"]},
        "caveat": "throughput and latency are moto's (one request at a time; moto copies the whole table "
        "for every transaction), not DynamoDB's",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for run in runs:
            print(
                f"{run['mode']:>8}: {run['calls']} calls, {run['granted']} granted, "
                f"charged {run['charged']}, overspend {run['overspend']}, double charges {run['double_charges']}, "
                f"{run['calls_per_s']} calls/s"
            )
        print(f"written to {args.out}")
    ok = result["overspend"] == 0 and result["double_charges"] == 0 and result["unaccounted_units"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
