"""`python -m infra.stack up`: the local stack in the foreground, its URLs and keys printed, Ctrl-C stops it.

    python -m infra.stack up [--model-dir DIR] [--edge-port 8080] [--cloud-port 8081] [--moto-port 5000]
                             [--daily-budget N] [--tenant demo] [--api-key KEY] [--cloud-concurrency N]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from infra.artifact import ensure_artifact
from infra.budget_admin import non_negative_int
from infra.errors import StackError
from infra.local_api import CONCURRENCY_ENV, DEFAULT_CONCURRENCY, concurrency, default_concurrency
from infra.stack import (
    DEFAULT_CLOUD_PORT,
    DEFAULT_EDGE_PORT,
    DEFAULT_MOTO_PORT,
    DEFAULT_WORK_DIR,
    WIRED_EDGE_VARIABLES,
    LocalStack,
)

PROG = "python -m infra.stack"
_SECRET_NAME_PARTS = ("KEY", "TOKEN", "SECRET", "PASSWORD")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log = _stderr
    # Ctrl-C and SIGTERM both end up in the `finally` below; children sit in their own process groups,
    # so the terminal's SIGINT reaches only this process and the stop order stays ours.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    stack: LocalStack | None = None
    started = False
    try:
        model_dir = ensure_artifact(args.model_dir, preset=args.preset, data=args.data, log=log)
        edge_env = {k: v for k, v in os.environ.items() if k.startswith("EDGE_") and k not in WIRED_EDGE_VARIABLES}
        if edge_env:
            log("edge settings from the environment: " + ", ".join(
                f"{k}={'<redacted>' if any(part in k for part in _SECRET_NAME_PARTS) else v}"
                for k, v in sorted(edge_env.items())))
        stack = LocalStack(
            model_dir, host=args.host, edge_port=args.edge_port, cloud_port=args.cloud_port,
            moto_port=args.moto_port, tenant=args.tenant, api_key=args.api_key, daily_budget=args.daily_budget,
            work_dir=args.work_dir, reload_poll_s=args.reload_poll_s, edge_env=edge_env,
            cloud_concurrency=args.cloud_concurrency, log=log)
        log(f"starting the local stack (logs in {stack.work_dir / 'logs'}) ...")
        started = True
        stack.start()
        print(_banner(stack), flush=True)
        while True:
            stack.check()
            time.sleep(0.5)
    except KeyboardInterrupt:
        log("stopping ...")
        return 0
    except StackError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if stack is not None:
            # A second Ctrl-C must not cut the clean-up short and leave children behind.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            stack.stop()
            if started:
                log("stopped: every process ended, ports freed")


def _banner(stack: LocalStack) -> str:
    budget = stack.budget()
    predict = (f"curl -s {stack.edge_url}/v1/predict -H 'x-api-key: {stack.edge_client_key}' "
               "-H 'content-type: application/json' -d ")
    curl = predict + "'{\"text\": \"what is my checking account balance\"}'"
    forced = predict + "'{\"text\": \"how do i say thank you in japanese\", \"route\": \"cloud\"}'"
    cloud_curl = f"curl -s {stack.cloud_url}/v1/budget -H 'x-api-key: {stack.api_key}'"
    return "\n".join([
        "",
        "local stack is up (Ctrl-C stops everything)",
        f"  edge       {stack.edge_url}      /v1/predict  /metrics  /readyz  /openapi.json",
        (f"  cloud      {stack.cloud_url}      POST /v1/infer  GET /v1/budget  (header x-api-key; "
        f"{stack.cloud_concurrency} execution environments)"),
        f"  moto       {stack.moto_url}      DynamoDB + S3 (bucket {stack.bucket})",
        f"  tenant     {stack.tenant}   daily budget {budget['limit']} units, {budget['remaining']} left",
        f"  API key    {stack.api_key}   (the tenant's, for the cloud)",
        f"  client key {stack.edge_client_key}   (client {stack.edge_client_id!r} of the edge: x-api-key)",
        f"  admin      x-admin-token: {stack.admin_token}   (GET {stack.edge_url}/admin/model)",
        f"  logs       {stack.work_dir / 'logs'}",
        "",
        "try:",
        f"  {curl}",
        f"  {forced}     # the cloud answers",
        f"  {cloud_curl}     # what the tenant spent",
        "",
    ])


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _port(text: str) -> int:
    value = non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="The whole system on loopback, started by one "
                                     "command: moto (DynamoDB + S3), the Lambda over HTTP, the edge.")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start moto, the cloud API and the edge; Ctrl-C stops them",
                             description="Start moto (DynamoDB + S3), the cloud API and the edge on loopback; "
                             "print the URLs, the API key and a sample curl; Ctrl-C stops everything.")
    up.add_argument("--model-dir", type=Path, help="artifact folder (default: artifacts/latest, built if missing)")
    up.add_argument("--preset", choices=["full", "fast", "quick"], default=os.environ.get("PRESET") or "fast",
                    help="preset of the build when artifacts/latest is missing (default: $PRESET or fast)")
    up.add_argument("--data", type=Path, help="labelled data for that build (default: model_build's)")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--edge-port", type=_port, default=DEFAULT_EDGE_PORT, help="default %(default)s; 0 picks a free one")
    up.add_argument("--cloud-port", type=_port, default=DEFAULT_CLOUD_PORT, help="default %(default)s; 0: a free one")
    up.add_argument("--moto-port", type=_port, default=DEFAULT_MOTO_PORT, help="default %(default)s; 0: a free one")
    up.add_argument("--daily-budget", type=non_negative_int, default=10_000,
                    help="the tenant's daily budget in cost units (default %(default)s)")
    up.add_argument("--tenant", default="demo", help="the tenant the API key belongs to (default %(default)s)")
    up.add_argument("--api-key", default=os.environ.get("LOCAL_STACK_API_KEY") or None,
                    help="the tenant's x-api-key (default: $LOCAL_STACK_API_KEY, else a random one, "
                    "printed); ps shows it to every user: prefer the variable")
    up.add_argument("--cloud-concurrency", type=concurrency, default=default_concurrency(os.environ),
                    help=f"Lambda execution environments of the cloud, answering side by side (default: "
                    f"${CONCURRENCY_ENV} or {DEFAULT_CONCURRENCY}; 1: one invocation at a time)")
    up.add_argument("--reload-poll-s", type=float, default=10.0,
                    help="how often the edge polls the bucket's latest.json (default %(default)s)")
    up.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR,
                    help="logs and model caches (default: .cache/local-stack)")
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
