"""One demo from start to files: the stack up, the cloud-only pass, the replay (and its faults), the report.

    python -m infra.demo --scenario normal     # reports/demo.{json,md} and two PNGs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from infra.artifact import ensure_artifact
from infra.demo.faults import Progress, inject_faults, phases
from infra.demo.load import SHUFFLE_SEED, cloud_only_labels, load_samples, replay
from infra.demo.plots import plot
from infra.demo.records import Outcome, Run, Sample, Timeline
from infra.demo.replays import REPLAYS, run_replay
from infra.demo.report import explain, render_markdown
from infra.demo.stats import summarise
from infra.errors import StackError
from infra.local_api import CONCURRENCY_ENV, DEFAULT_CONCURRENCY, concurrency, default_concurrency
from infra.processes import REPO_ROOT
from infra.stack import LOCAL_EDGE_DEFAULTS, LocalStack

PROG = "python -m infra.demo"


def run(args: argparse.Namespace) -> dict[str, Any]:
    from modelpack.manifest import load_manifest

    model_dir = ensure_artifact(args.model_dir, preset=args.preset, data=args.data, log=_stderr)
    manifest = load_manifest(model_dir, verify=False)
    samples = load_samples(args.data, limit=args.limit)
    # One text per request costs 1 per call + 1 per text (the template's prices): enough for every text.
    budget = args.daily_budget if args.daily_budget is not None else len(samples) * 2
    edge_env = {"EDGE_BREAKER_RESET_S": str(args.breaker_reset_s),
                "EDGE_CLOUD_BATCH_WAIT_MS": f"{args.cloud_batch_wait_ms:g}"}
    _stderr(f"{len(samples)} texts, scenario {args.scenario}, concurrency {args.concurrency}, "
            f"cloud environments {args.cloud_concurrency}, model {manifest.model_version}")
    result = _replay_on_a_stack(args, model_dir, samples, budget, edge_env)
    report = summarise(samples, result.outcomes, result.cloud_labels, oos_label=manifest.oos_label,
                       pricing=result.pricing, spent=result.spent, wall_s=result.wall_s, budget=result.budget)
    report = {
        "scenario": args.scenario,
        **report,
        "timeline": [asdict(e) for e in result.events],
        "phases": phases(result.outcomes, result.events, result.wall_s) if result.events else [],
        "notes": explain(report, args, manifest, result),
        "config": {
            "concurrency": args.concurrency, "cloud_concurrency": args.cloud_concurrency, "limit": args.limit,
            "shuffle_seed": SHUFFLE_SEED, "model_dir": str(model_dir), "model_version": manifest.model_version,
            "cloud_version": result.cloud_version,
            "expected_escalation_rate": manifest.routing.expected_escalation_rate,
            "routing": {"score": manifest.routing.score, "threshold": manifest.routing.threshold},
            "tenant": result.tenant, "daily_budget": budget, "edge_env": {**LOCAL_EDGE_DEFAULTS, **edge_env},
            "data": str(args.data), "command": " ".join([PROG, *sys.argv[1:]]),
        },
    }
    _write(report, result, args.out_dir, report_stem(args.scenario))
    return report


def _write(report: dict[str, Any], result: Run, out_dir: Path, stem: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = plot(result.outcomes, result.events, out_dir, stem)
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out_dir / f"{stem}.md").write_text(render_markdown(report, plots), encoding="utf-8")


def _replay_on_a_stack(args: argparse.Namespace, model_dir: Path, samples: Sequence[Sample], budget: int,
                       edge_env: dict[str, str]) -> Run:
    with LocalStack(model_dir, daily_budget=budget, work_dir=args.work_dir, edge_env=edge_env,
                    cloud_concurrency=args.cloud_concurrency, log=_stderr) as stack:
        _stderr("cloud-only pass (straight to the cloud API, the stack's own key) ...")
        started = time.monotonic()
        cloud_labels, cloud_version = cloud_only_labels(stack.cloud_url, stack.service_api_key,
                                                        [s.text for s in samples])
        _stderr(f"  {len(samples)} texts in {time.monotonic() - started:.1f} s")
        before = stack.budget()
        _stderr(f"replaying through the edge ({stack.edge_url}) ...")
        timeline = Timeline()
        progress = Progress(len(samples))

        async def main() -> list[Outcome]:
            faults = None
            if args.scenario == "faults":
                faults = asyncio.create_task(inject_faults(stack, timeline, progress, budget))
            outcomes = await replay(stack.edge_url, samples, concurrency=args.concurrency, timeline=timeline,
                                    headers=stack.edge_headers, on_outcome=progress)
            if faults is not None:
                if not faults.done():
                    timeline.add("replay ended", "before every fault step ran: replay more texts")
                    faults.cancel()
                await asyncio.gather(faults, return_exceptions=True)
            return outcomes

        outcomes = asyncio.run(main())
        wall = timeline.now()
        after = stack.budget()
        return Run(outcomes, cloud_labels, cloud_version, timeline.events, wall, after["spent"] - before["spent"],
                   after, stack.pricing, stack.tenant)


def _replay(args: argparse.Namespace) -> int:
    try:
        model_dir = ensure_artifact(args.model_dir, preset=args.preset, data=args.data, log=_stderr)
        result = run_replay(args.scenario, model_dir, data=args.data, log=_stderr)
    except StackError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, (dict, list))}, indent=2))
    print(f"report: bench/results/{args.scenario}.md", file=sys.stderr)
    return 0 if not result.get("failed") else 1


def report_stem(scenario: str) -> str:
    """demo.json / demo.md for the normal run; the fault run writes beside it, not over it."""
    return "demo" if scenario == "normal" else f"demo_{scenario}"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    from model_build.data.dataset import DATA_ENV_VAR, DEFAULT_DATA_PATH

    parser = argparse.ArgumentParser(prog=PROG, description="Replay the CLINC150 test split through the local "
                                     "stack's edge and report what the edge-cloud split bought.")
    parser.add_argument("--scenario", choices=["normal", "faults", *REPLAYS], default="normal",
                        help="normal | faults: the local stack under load; learn | pacing | shift: the cascade's "
                             "replays (bench/results/<scenario>.json and .md; infra/demo/replays.py)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default %(default)s)")
    parser.add_argument("--cloud-concurrency", type=concurrency, default=default_concurrency(os.environ),
                        help=f"the local cloud's Lambda execution environments (default: ${CONCURRENCY_ENV} or "
                        f"{DEFAULT_CONCURRENCY}; 1: one invocation at a time)")
    parser.add_argument("--cloud-batch-wait-ms", type=float, default=20.0,
                        help="the edge's EDGE_CLOUD_BATCH_WAIT_MS: escalations of several requests share a cloud call, "
                             "waiting at most this long for company (0: one call per request; default %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="replay only the first N (shuffled) texts")
    parser.add_argument("--model-dir", type=Path, help="artifact folder (default: artifacts/latest, built if missing)")
    parser.add_argument("--preset", choices=["full", "fast", "quick"], default=os.environ.get("PRESET") or "fast",
                        help="preset of the build when artifacts/latest is missing (default: $PRESET or fast)")
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get(DATA_ENV_VAR) or REPO_ROOT / DEFAULT_DATA_PATH),
                        help="CLINC150 data_full.json (default: $MODEL_BUILD_DATA or data/clinc150/data_full.json)")
    parser.add_argument("--daily-budget", type=int, default=None,
                        help="the tenant's budget (default: enough for every request to escalate)")
    parser.add_argument("--breaker-reset-s", type=float, default=3.0,
                        help="EDGE_BREAKER_RESET_S for this run (default %(default)s: recovery shows in a short run)")
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "reports")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="the stack's logs and caches (default: a temporary folder, removed afterwards, so "
                        "demos can run side by side)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.concurrency < 1 or (args.limit is not None and args.limit < 1):
        print(f"{PROG}: error: --concurrency and --limit must be >= 1", file=sys.stderr)
        return 2
    if args.scenario in REPLAYS:
        return _replay(args)
    try:
        report = run(args)
    except StackError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    summary = {k: report[k] for k in ("requests", "failed", "edge_only_accuracy", "cloud_only_accuracy",
                                      "joint_accuracy", "escalation_rate", "cost", "cloud_only_cost",
                                      "p50_ms", "p99_ms", "fallbacks_by_reason")}
    print(json.dumps(summary, indent=2))
    print(f"report: {args.out_dir / (report_stem(args.scenario) + '.md')}", file=sys.stderr)
    return 0 if report["failed"] == 0 else 1
