"""`python -m model_build ...`: thin commands over the pipeline. Every user-fixable error is one line, exit 2."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from model_build.cache import default_cache_dir
from model_build.config import preset
from model_build.errors import BuildError, DataError, PublishError
from modelpack.errors import ArtifactError
from modelpack.version import version_line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model_build", description=__doc__)
    p.add_argument("--version", action="version", version=version_line("model_build"))
    sub = p.add_subparsers(dest="command", required=True)

    _build_parser(sub.add_parser("build", help="train teacher and student, convert, calibrate, write the artifact"))

    e = sub.add_parser("evaluate", help="recompute metrics.json from an artifact folder's files alone")
    e.add_argument("dir", type=Path)
    e.add_argument("--data", type=Path)
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.add_argument("--ood", type=Path, metavar="FILE",
                   help="texts known to lie outside every intent (.txt, one a line, or .csv/.jsonl with 'text'): "
                        "report what each tier does with them beside the in-scope test texts, instead")

    _publish_parser(sub.add_parser(
        "publish", help="upload an artifact to S3 under a versioned prefix, then latest.json "
                        "(--canary F: only a device-hashed share of the fleet; --promote/--abort)"))

    d = sub.add_parser("data", help="data set helpers")
    dsub = d.add_subparsers(dest="data_command", required=True)
    f = dsub.add_parser("fetch", help="download a public data set and verify its SHA-256")
    f.add_argument("name", choices=["clinc150"])
    f.add_argument("--out", type=Path, default=Path("data/clinc150/data_full.json"))
    o = dsub.add_parser("off-topic", help="the requests the cloud refused, from the edge's feedback, as a CSV to "
                                          "review before build --off-topic")
    o.add_argument("feedback", metavar="PATH|s3://BUCKET/PREFIX",
                   help="the edge's feedback: a store, an export, a folder of them, or the S3 prefix they ship to")
    o.add_argument("--out", type=Path, required=True, help="the review CSV to write (text,times,edge_label,"
                                                           "edge_top; --off-topic reads its text column)")
    o.add_argument("--label", default="oos", help="the cloud's out-of-scope label (default: oos)")
    o.add_argument("--cache-dir", type=Path, help="where an S3 prefix is copied (default: the build's stage cache)")
    return p


def _build_parser(b: argparse.ArgumentParser) -> None:
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
    b.add_argument("--cloud-precision", choices=["auto", "fp32", "dynamic_range"], default="auto",
                   help="the cloud model shipped: auto (the int8 teacher when its validation accuracy is within "
                        "0.3 pt of fp32), or force one; both are measured, nothing is re-trained to switch")
    b.add_argument("--unlabeled", type=Path, default=None,
                   help="unlabelled texts (a .txt, one a line, or a .csv/.jsonl with a 'text' column) the teacher "
                        "labels for the student: your own traffic is best (for CLINC150: all_wiki_sents.txt)")
    _out_of_scope_args(b)
    b.add_argument("--feedback", default=None, metavar="PATH|s3://BUCKET/PREFIX",
                   help="the edge's feedback (EDGE_FEEDBACK_PATH stores, `edge_container feedback export` files, a "
                        "folder of them, or an S3 prefix holding them): the cloud-answered texts join the student's "
                        "transfer set, labelled by the teacher")
    b.add_argument("--feedback-weight", type=float, default=None, metavar="W",
                   help="loss weight of each feedback text (default 1; the edge's hardest texts are few among "
                        "the transfer set's tens of thousands)")
    b.add_argument("--feedback-copies", type=int, default=None, metavar="N",
                   help="also N word-dropout copies of each feedback text, labelled by the teacher (default 0)")
    b.add_argument("--no-oos-bias", action="store_true",
                   help="fit the edge's temperature alone (by default a bias on its oos logit is fitted with it on "
                        "validation, when it lets the routing escalate less)")
    b.add_argument("--augment", type=int, default=None, metavar="N",
                   help="teacher-labelled augmented copies of each training text for the student (preset default)")
    b.add_argument("--prune", type=float, default=None, metavar="FRACTION",
                   help="structured L1 pruning of the student: drop this share of its conv filters and hidden "
                        "units, then fine-tune (default 0; bench/results/pruning.json measures 0.3 and 0.5)")
    b.add_argument("--student", choices=["cnn", "transformer"], default="cnn",
                   help="the edge model: cnn (a 1-D CNN over MiniLM's word vectors, the default) or transformer "
                        "(MiniLM's own first blocks, distilled; larger and slower, see bench/results/student_search.md)")
    b.add_argument("--model-version", help="version string (default: date + config digest)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--strict", action="store_true",
                   help="exit non-zero when a gate fails (the artifact is still written, its failures recorded); "
                        "a cheap gate failing right after training stops the build at once")


def _out_of_scope_args(b: argparse.ArgumentParser) -> None:
    """The build's options for requests none of the intents fits (docs/build.md, "From your own data")."""
    b.add_argument("--negatives", type=Path, default=None,
                   help="texts known to lie outside every intent (a .txt, one a line, or a .csv/.jsonl with a "
                        "'text' column; generic sentences such as CLINC150's all_wiki_sents.txt, or off-topic "
                        "requests of your own). Data without an 'oos' label gains a background class 'oos' learnt "
                        "from them, so both tiers answer 'oos' for requests none of your intents fits; data with "
                        "one gains them as out-of-scope training texts")
    b.add_argument("--off-topic", type=Path, default=None,
                   help="requests from your own traffic that none of your intents fits (same formats): every "
                        "one joins the background class before any of --negatives, which fill the rest")
    b.add_argument("--max-false-reject", type=float, default=None, metavar="RATE",
                   help="the share of in-scope validation texts the cascade may answer 'oos' (default: 0.02 for a "
                        "background class from --negatives; no cap for data with its own 'oos' rows)")
    b.add_argument("--neighbours", choices=["on", "off"], default=None,
                   help="the cloud's oos rule also reads each text's similarity to its nearest labelled training "
                        "text in the pretrained encoder's embedding (a second encoder in the cloud, ~23 MB; "
                        "default off; with --negatives it refuses more out-of-domain requests: docs/build.md)")


def _publish_parser(u: argparse.ArgumentParser) -> None:
    u.add_argument("dir", type=Path, nargs="?", help="the artifact folder (not with --promote / --abort)")
    stage = u.add_mutually_exclusive_group()
    stage.add_argument("--canary", type=float, metavar="FRACTION",
                       help="a staged rollout: this share of devices (by EDGE_DEVICE_ID hash) serves the new version")
    stage.add_argument("--promote", action="store_true", help="finish the rollout: every device on the canary")
    stage.add_argument("--abort", action="store_true", help="undo the rollout: every device on the stable version")
    u.add_argument("--bucket", required=True)
    u.add_argument("--prefix", default="models")
    u.add_argument("--region", default=None)
    u.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint (e.g. the local moto server)")
    u.add_argument("--allow-failed-gates", action="store_true",
                   help="publish an artifact whose build gates failed (its manifest says which)")


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
    # Each command imports what it runs, here and in _publish / _s3_client: `--help` loads none of it, `data`
    # no numpy or LiteRT, `evaluate` no TensorFlow, `publish` no build, `build` its pipeline (and TensorFlow
    # only when a stage trains).
    if args.command == "data" and args.data_command == "off-topic":
        return _off_topic(args)
    if args.command == "data":
        from model_build.data.fetch import CLINC150_WIKI_NAME, fetch_clinc150, fetch_clinc150_wiki

        path = fetch_clinc150(args.out)
        wiki = fetch_clinc150_wiki(args.out.parent / CLINC150_WIKI_NAME)
        print(f"{path} verified\n{wiki} verified (unlabelled texts for build --unlabeled)")
        return 0
    if args.command == "publish":
        return _publish(args)
    if args.command == "evaluate":
        from model_build.evaluate.measure import evaluate_artifact
        from model_build.evaluate.ood import evaluate_ood

        if args.ood is not None:
            report = evaluate_ood(args.dir, args.ood, data_path=args.data)
            print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
            return 0
        metrics = evaluate_artifact(args.dir, data_path=args.data)
        print(json.dumps(metrics, indent=2) if args.json else _summary(metrics))
        return 0
    return _build(args)


def _build(args: argparse.Namespace) -> int:
    from model_build.pipeline import build  # see _run

    overrides = {"traffic_oos_fraction": args.traffic_oos_fraction, "seed": args.seed,
                 "cloud_precision": args.cloud_precision, "student": args.student}
    if args.routing_target is not None:
        overrides["routing_target"] = args.routing_target
    if args.unlabeled is not None:
        overrides["unlabeled"] = str(args.unlabeled)
    if args.negatives is not None:
        overrides["negatives"] = str(args.negatives)
    if args.off_topic is not None:
        overrides["off_topic"] = str(args.off_topic)
    if args.max_false_reject is not None:
        overrides["max_false_reject"] = args.max_false_reject
    if args.augment is not None:
        overrides["augment"] = args.augment
    if args.feedback is not None:
        overrides["feedback"] = _local_feedback(args.feedback, args.cache_dir)
    if args.feedback_weight is not None:
        overrides["feedback_weight"] = args.feedback_weight
    if args.feedback_copies is not None:
        overrides["feedback_copies"] = args.feedback_copies
    if args.prune is not None:
        overrides["prune"] = args.prune
    if args.no_oos_bias:
        overrides["edge_oos_bias"] = False
    if args.neighbours is not None:
        overrides["neighbours"] = args.neighbours == "on"
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


def _s3_client(region: str | None, endpoint_url: str | None) -> object:
    import boto3  # only the commands that reach S3 pay for it (see _run)
    from botocore.config import Config

    return boto3.client("s3", region_name=region, endpoint_url=endpoint_url,
                        config=Config(connect_timeout=10, read_timeout=60,
                                      retries={"max_attempts": 5, "mode": "standard"}))


def _publish(args: argparse.Namespace) -> int:
    from model_build.publish import abort, promote, publish  # botocore: see _run

    client = _s3_client(args.region, args.endpoint_url)
    if args.promote or args.abort:
        if args.dir is not None:
            raise PublishError("--promote / --abort take no artifact folder: they only rewrite latest.json")
        pointer = (promote if args.promote else abort)(bucket=args.bucket, prefix=args.prefix, s3_client=client)
        print(pointer.to_json(), end="")
        return 0
    if args.dir is None:
        raise PublishError("publish needs the artifact folder (or --promote / --abort)")
    result = publish(args.dir, bucket=args.bucket, prefix=args.prefix, s3_client=client,
                     allow_failed_gates=args.allow_failed_gates, canary=args.canary)
    print(json.dumps({"bucket": args.bucket, **result.as_dict()}, indent=2))
    return 0


def _off_topic(args: argparse.Namespace) -> int:
    from model_build.data.off_topic import refused_texts, write_review
    from modelpack.feedback import FeedbackError, read_feedback

    source = _local_feedback(args.feedback, args.cache_dir, flag="data off-topic")
    try:
        refused = refused_texts(read_feedback(source), label=args.label)
    except FeedbackError as exc:
        raise DataError(f"data off-topic: {exc}") from None
    if not refused.candidates:
        raise DataError(f"{args.feedback}: none of its {refused.records} records has a text the cloud answered "
                        f"{args.label!r} ({refused.textless} without text)")
    write_review(refused.candidates, args.out)
    print(refused.summary(args.out, args.label))
    return 0


def _local_feedback(source: str, cache_dir: Path | None, *, flag: str = "--feedback") -> str:
    """`source` itself, or for `s3://bucket/prefix` a local copy of the feedback files under that prefix."""
    if not source.startswith("s3://"):
        return source
    bucket, _, prefix = source[len("s3://"):].partition("/")
    if not bucket:
        raise BuildError(f"{flag} {source}: not s3://bucket/prefix")
    client = _s3_client(None, None)
    folder = (cache_dir or default_cache_dir()) / "feedback" / hashlib.sha256(source.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    found = 0
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                if key.endswith((".jsonl", ".sqlite", ".db")):
                    client.download_file(bucket, key, str(folder / key.replace("/", "__")))
                    found += 1
    except Exception as exc:  # noqa: BLE001 - botocore's errors: one line naming the source, not a traceback
        raise BuildError(f"{flag} {source}: cannot read it ({type(exc).__name__}: {exc})") from None
    if not found:
        raise BuildError(f"{flag} {source}: no .jsonl / .sqlite feedback files under that prefix")
    return str(folder)


def _summary(metrics: dict) -> str:
    lines = []
    # cloud+rule / edge+band: each tier alone with its `oos` rule, its AUROC on the order the rule refuses in.
    for section, name in (("teacher", "teacher"), ("teacher_with_oos_rule", "cloud+rule"), ("edge_int8", "edge_int8"),
                          ("edge_int8_with_oos_rule", "edge+band"), ("edge_fp32", "edge_fp32"),
                          ("routing", "routing")):
        if section not in metrics:
            continue
        values = metrics[section]
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items() if isinstance(v, (int, float)))
        lines.append(f"{name:10s} {shown}")
    return "\n".join(lines)
