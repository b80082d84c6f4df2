"""`python -m model_build ...`: thin commands over the pipeline. Every user-fixable error is one line, exit 2."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from model_build.errors import BuildError
from modelpack.errors import ArtifactError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model_build", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="train teacher and student, convert, calibrate, write the artifact")
    b.add_argument("--preset", choices=["quick", "fast", "full"], default="full",
                   help="full: the measured recipe; fast: a real model in minutes (make up's default); quick: a toy")
    b.add_argument("--data", type=Path, help="CLINC150 data_full.json, or a CSV/JSONL with text,label[,split]")
    b.add_argument("--out", type=Path, required=True, help="artifact folder to write")
    b.add_argument("--cache-dir", type=Path, help="stage cache (default .cache/model_build, env MODEL_BUILD_CACHE)")
    b.add_argument("--no-cache", action="store_true", help="recompute every stage")
    b.add_argument(
        "--traffic-oos-fraction",
        default="test",
        help="out-of-scope share of the traffic the threshold and temperatures are fit for: a number in "
        "[0, 1), 'test' (the test split's share, default) or 'val' (the validation split as it is)",
    )
    b.add_argument("--routing-target", type=float, default=None,
                   help="joint accuracy / teacher accuracy the threshold must reach on validation data (0.995: "
                        "a threshold fit for 0.99 on CLINC150's validation split lands at 0.989 on its test split)")
    b.add_argument("--unlabeled", type=Path, default=None,
                   help="unlabelled texts (a .txt, one a line, or a .csv/.jsonl with a 'text' column) the teacher "
                        "labels for the student: your own traffic is best (for CLINC150: all_wiki_sents.txt)")
    b.add_argument("--augment", type=int, default=None, metavar="N",
                   help="teacher-labelled augmented copies of each training text for the student (preset default)")
    b.add_argument("--prune", type=float, default=None, metavar="FRACTION",
                   help="structured L1 pruning of the student: drop this share of its conv filters and hidden "
                        "units, then fine-tune (default 0; bench/results/pruning.json measures 0.3 and 0.5)")
    b.add_argument("--model-version", help="version string (default: date + config digest)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--strict", action="store_true",
                   help="exit non-zero when a gate fails (the artifact is still written, its failures recorded); "
                        "a cheap gate failing right after training stops the build at once")

    e = sub.add_parser("evaluate", help="recompute metrics.json from an artifact folder's files alone")
    e.add_argument("dir", type=Path)
    e.add_argument("--data", type=Path)
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")

    u = sub.add_parser("publish", help="upload an artifact to S3 under a versioned prefix, then latest.json")
    u.add_argument("dir", type=Path)
    u.add_argument("--bucket", required=True)
    u.add_argument("--prefix", default="models")
    u.add_argument("--region", default=None)
    u.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint (e.g. the local moto server)")
    u.add_argument("--allow-failed-gates", action="store_true",
                   help="publish an artifact whose build gates failed (its manifest says which)")

    d = sub.add_parser("data", help="data set helpers")
    dsub = d.add_subparsers(dest="data_command", required=True)
    f = dsub.add_parser("fetch", help="download a public data set and verify its SHA-256")
    f.add_argument("name", choices=["clinc150"])
    f.add_argument("--out", type=Path, default=Path("data/clinc150/data_full.json"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (BuildError, ArtifactError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    if args.command == "data":
        from model_build.fetch import CLINC150_WIKI_NAME, fetch_clinc150, fetch_clinc150_wiki

        path = fetch_clinc150(args.out)
        wiki = fetch_clinc150_wiki(args.out.parent / CLINC150_WIKI_NAME)
        print(f"{path} verified\n{wiki} verified (unlabelled texts for build --unlabeled)")
        return 0
    if args.command == "publish":
        import boto3
        from botocore.config import Config

        from model_build.publish import publish

        client = boto3.client(
            "s3",
            region_name=args.region,
            endpoint_url=args.endpoint_url,
            config=Config(connect_timeout=10, read_timeout=60, retries={"max_attempts": 5, "mode": "standard"}),
        )
        result = publish(args.dir, bucket=args.bucket, prefix=args.prefix, s3_client=client,
                         allow_failed_gates=args.allow_failed_gates)
        print(json.dumps({"bucket": args.bucket, **result.as_dict()}, indent=2))
        return 0
    if args.command == "evaluate":
        from model_build.evaluate import evaluate_artifact

        metrics = evaluate_artifact(args.dir, data_path=args.data)
        print(json.dumps(metrics, indent=2) if args.json else _summary(metrics))
        return 0
    from model_build.config import preset
    from model_build.pipeline import build

    overrides = {"traffic_oos_fraction": args.traffic_oos_fraction, "seed": args.seed}
    if args.routing_target is not None:
        overrides["routing_target"] = args.routing_target
    if args.unlabeled is not None:
        overrides["unlabeled"] = str(args.unlabeled)
    if args.augment is not None:
        overrides["augment"] = args.augment
    if args.prune is not None:
        overrides["prune"] = args.prune
    config = preset(args.preset, **overrides)
    result = build(
        config,
        data_path=args.data,
        out_dir=args.out,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        model_version=args.model_version,
        strict=args.strict,
    )
    print(_summary(result.metrics.to_dict()))
    print(f"artifact: {args.out}  (report: {args.out / 'report.md'})")
    return 0


def _summary(metrics: dict) -> str:
    lines = []
    for section in ("teacher", "edge_int8", "edge_fp32", "routing"):
        values = metrics.get(section, {})
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items() if isinstance(v, (int, float)))
        lines.append(f"{section:10s} {shown}")
    return "\n".join(lines)
