"""Cold start and warm latency of the Lambda handler, with moto standing in for DynamoDB (and S3).

    python bench/lambda_handler.py --json [--model-dir DIR] [--requests 300] [--cold-runs 3]
    python bench/lambda_handler.py --model-dir artifacts/full --s3 [--with-int8 | --cloud-file TFLITE]

cold  A fresh Python process per run (`--cold-runs`): import `cloud_functions.handler`, then the first
      request, which builds the settings, clients and ledger and loads the model from a local artifact
      folder (the packaged-model path) or, with --s3, from S3. DynamoDB (and S3) is a serialised moto
      server over local HTTP. `cold_init_s` = import + first request, measured inside the process (the
      median of the runs); `process_wall_s` adds the interpreter's own start-up.
warm  In this process, in-process moto (`mock_aws`): `--requests` one-text POST /v1/infer calls through
      `lambda_handler` after a warm-up. Headline `warm_p50_ms` / `warm_p99_ms` are new calls with an
      Idempotency-Key (what the edge sends: Powertools record put + update, the ledger's charge
      transaction, a status read); also reported: replays of one key, and calls without the header.

--s3    Cold runs fetch the model from the moto server's bucket (`model_build.publish`, MODEL_URI
        s3://.../models/, as deployed): `cold_init_s` includes its download and SHA-256 check.
--cloud-file / --with-int8  Other teacher files side by side, each in a copy of the artifact (calibration
        kept): `--with-int8` derives the dynamic-range one from an fp32 artifact; an int8 artifact's fp32
        teacher is `<cache>/<teacher_stage>/cloud.tflite` (teacher_stage: metrics.json's
        teacher.precision_choice). Headline keys: the artifact's own model; `variants`: every model's.

Without --model-dir the tiny test artifact is built into a temporary folder (~20 s, needs the build
dependencies); the result names the model either way. Results go to bench/results/lambda_handler.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "lambda_handler.json"
EVENT_PATH = REPO_ROOT / "tests" / "events" / "infer.json"
RESULT_PREFIX = "RESULT "
GOALS = {"cold_init_s": 1.5, "warm_p50_ms": 20.0}
ONE_TEXT = "what is my account balance"
TENANT = "k1bench0001"


class _Context:
    function_name = "bench-inference"
    function_version = "$LATEST"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bench-inference"
    log_group_name = "/aws/lambda/bench-inference"

    def __init__(self, request_id: str) -> None:
        self.aws_request_id = request_id

    def get_remaining_time_in_millis(self) -> int:
        return 29_000


def _event(key: str | None) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(EVENT_PATH.read_text())
    event["body"] = json.dumps({"texts": [ONE_TEXT]})
    event["requestContext"]["identity"]["apiKeyId"] = TENANT
    for table in (event["headers"], event["multiValueHeaders"]):
        table.pop("Idempotency-Key", None)
        if key is not None:
            table["Idempotency-Key"] = key if table is event["headers"] else [key]
    return event


def _lambda_env(model_uri: Path | str, cache_dir: Path, tables: dict[str, str]) -> dict[str, str]:
    return {
        "BUDGET_TABLE": tables["BudgetTable"], "IDEMPOTENCY_TABLE": tables["IdempotencyTable"],
        "DEFAULT_DAILY_BUDGET": str(10**9), "MODEL_URI": str(model_uri), "MODEL_CACHE_DIR": str(cache_dir),
        "POWERTOOLS_SERVICE_NAME": "inference", "POWERTOOLS_METRICS_NAMESPACE": "EdgeCloudInferenceBench",
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
    }


# --------------------------------------------------------------------------- cold start (child process)


def _cold_child() -> None:
    """Runs in a fresh interpreter; prints one RESULT line. Everything after `started` is timed."""
    started = time.perf_counter()
    from cloud_functions import handler  # noqa: PLC0415 - the import is what is measured

    imported = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # EMF lines are not our result
        first = handler.lambda_handler(_event(f"cold-{os.getpid()}"), _Context("cold-1"))
    answered = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        second = handler.lambda_handler(_event(f"cold-{os.getpid()}-2"), _Context("cold-2"))
    warm = time.perf_counter()
    if first["statusCode"] != 200 or second["statusCode"] != 200:
        raise SystemExit(f"cold request failed: {first['statusCode']} {first['body']}")
    from modelpack.cloud_api import InferReply  # after the measured import (the handler's own)

    result = {
        "import_s": round(imported - started, 4),
        "first_request_s": round(answered - imported, 4),
        "cold_init_s": round(answered - started, 4),
        "second_request_ms": round((warm - answered) * 1000, 2),
        "label": InferReply.from_json(json.loads(first["body"])).results[0].label,
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def _cold_runs(variants: dict[str, Path], runs: int, *, from_s3: bool) -> dict[str, list[dict[str, Any]]]:
    """`runs` fresh processes per model, interleaved (run 1 of each, then run 2 ...) so that machine noise
    hits every model alike."""
    from infra.moto_server import SerialisedMotoServer

    out: dict[str, list[dict[str, Any]]] = {label: [] for label in variants}
    with SerialisedMotoServer() as server, tempfile.TemporaryDirectory(prefix="lambda-bench-") as tmp:
        for run in range(runs):
            for label, model_dir in variants.items():
                env = _cold_env(server, model_dir, Path(tmp) / f"cache-{label}-{run}", from_s3=from_s3)
                began = time.perf_counter()
                child = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), "--cold-child"],
                    cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
                )
                wall = time.perf_counter() - began
                lines = [line for line in child.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
                if child.returncode != 0 or not lines:
                    raise RuntimeError(f"cold run of {label} failed ({child.returncode}):\n{child.stderr[-3000:]}")
                out[label].append({**json.loads(lines[-1][len(RESULT_PREFIX) :]), "process_wall_s": round(wall, 4)})
    return out


def _cold_env(server: Any, model_dir: Path, cache_dir: Path, *, from_s3: bool) -> dict[str, str]:
    """A fresh moto state (tables; with `from_s3` the model published to the bucket) and the child's
    environment pointing at it."""
    from infra.moto_server import create_template_resources

    server.reset()
    s3 = server.client("s3")
    created = create_template_resources(dynamodb_client=server.client("dynamodb"), s3_client=s3, prefix="bench")
    model_uri = str(model_dir)
    if from_s3:
        from model_build.publish import publish

        bucket = created.buckets["ModelBucket"]
        publish(model_dir, bucket=bucket, prefix="models", s3_client=s3, allow_failed_gates=True)
        model_uri = f"s3://{bucket}/models/"
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(REPO_ROOT),
        "AWS_ENDPOINT_URL_DYNAMODB": server.endpoint_url,
        "AWS_ENDPOINT_URL_S3": server.endpoint_url,
        **_lambda_env(model_uri, cache_dir, dict(created.tables)),
    }


# --------------------------------------------------------------------------- warm (this process)


def _warm(model_dir: Path, requests: int, warmup: int, reset_every: int) -> dict[str, dict[str, Any]]:
    import boto3
    from moto import mock_aws

    from infra.moto_server import create_template_resources, load_template

    template = load_template()
    tables_only = {"Resources": {name: resource for name, resource in template["Resources"].items()
                                 if resource["Type"] == "AWS::DynamoDB::Table"}}
    with tempfile.TemporaryDirectory(prefix="lambda-bench-") as tmp, mock_aws():
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        created = create_template_resources(dynamodb_client=dynamodb, s3_client=None, template=tables_only,
                                            prefix="bench")
        os.environ.update(_lambda_env(model_dir, Path(tmp) / "cache", dict(created.tables)))
        from cloud_functions import handler
        from cloud_functions.settings import Settings

        handler.use_runtime(handler.build_runtime(Settings.from_env(), dynamodb_client=dynamodb))
        in_dynamodb = _DynamoDBTimer(dynamodb)

        def fresh_tables() -> None:
            # moto's TransactWriteItems deep-copies the whole table, so its cost grows with every charge
            # record; DynamoDB's does not. Start from empty tables now and then, outside the timed region.
            for name in created.tables.values():
                dynamodb.delete_table(TableName=name)
            create_template_resources(dynamodb_client=dynamodb, s3_client=None, template=tables_only,
                                      prefix="bench")

        def run(name: str, key_of: Any) -> dict[str, Any]:
            fresh_tables()
            latencies, db_ms, db_calls = [], [], []
            for i in range(warmup + requests):
                if i > warmup and (i - warmup) % reset_every == 0 and name != "replay":
                    fresh_tables()
                event, context = _event(key_of(i)), _Context(f"{name}-{i}")
                in_dynamodb.reset()
                with contextlib.redirect_stdout(_DEVNULL):
                    began = time.perf_counter()
                    response = handler.lambda_handler(event, context)
                    elapsed = (time.perf_counter() - began) * 1000
                if response["statusCode"] != 200:
                    raise RuntimeError(f"{name}: {response['statusCode']} {response['body']}")
                if i >= warmup:
                    latencies.append(elapsed)
                    db_ms.append(in_dynamodb.ms)
                    db_calls.append(in_dynamodb.calls)
            return {
                **_summary(latencies),
                "dynamodb_calls_per_request": round(statistics.mean(db_calls), 2),
                "dynamodb_p50_ms": round(statistics.median(db_ms), 3),
                "outside_dynamodb_p50_ms": round(
                    statistics.median(t - d for t, d in zip(latencies, db_ms, strict=True)), 3
                ),
            }

        return {
            "keyed_new": run("keyed", lambda i: f"bench-key-{i}"),
            "keyed_replay": run("replay", lambda i: "bench-same-key"),
            "unkeyed": run("unkeyed", lambda i: None),
        }


class _DynamoDBTimer:
    """Time spent in (moto's) DynamoDB per request, from botocore's before-call/after-call events."""

    def __init__(self, client: Any) -> None:
        self.calls, self.ms, self._started = 0, 0.0, 0.0
        client.meta.events.register("before-call.dynamodb.*", self._before)
        client.meta.events.register("after-call.dynamodb.*", self._after)

    def reset(self) -> None:
        self.calls, self.ms = 0, 0.0

    def _before(self, **_kwargs: Any) -> None:
        self._started = time.perf_counter()

    def _after(self, **_kwargs: Any) -> None:
        self.calls += 1
        self.ms += (time.perf_counter() - self._started) * 1000


_DEVNULL = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process


def _summary(latencies: list[float]) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "p50_ms": round(statistics.median(ordered), 3),
        "p90_ms": round(ordered[int(0.90 * (len(ordered) - 1))], 3),
        "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))], 3),
        "max_ms": round(ordered[-1], 3),
    }


# --------------------------------------------------------------------------- the models measured


def _variants(model_dir: Path, cloud_files: Sequence[Path], with_int8: bool, scratch: Path) -> dict[str, Path]:
    """Label -> artifact folder of every cloud model to measure: the artifact's own first, then each
    other teacher file swapped into a copy of it (`model_build.artifact.with_cloud_model`)."""
    cloud = json.loads((model_dir / "manifest.json").read_text())["models"]["cloud"]
    variants, files = {cloud["precision"]: model_dir}, list(cloud_files)
    if with_int8:
        from model_build.tflite.dynamic_range import dynamic_range_from_fp32  # model_build, but no TensorFlow

        if cloud["precision"] != "fp32":
            raise SystemExit(f"--with-int8: the artifact's cloud model is {cloud['precision']} already; pass the "
                             "fp32 one with --cloud-file (the teacher stage's cloud.tflite)")
        files.append(scratch / "cloud_dynamic.tflite")
        files[-1].write_bytes(dynamic_range_from_fp32((model_dir / cloud["file"]).read_bytes()))
    for index, file in enumerate(files):
        from model_build.artifact import with_cloud_model

        folder = scratch / f"variant-{index}"
        precision = with_cloud_model(model_dir, Path(file), folder).cloud.precision
        variants[precision if precision not in variants else f"{precision}-{index + 1}"] = folder
    return variants


# --------------------------------------------------------------------------- main


def _model_info(model_dir: Path, built: bool) -> dict[str, Any]:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    cloud = manifest["models"]["cloud"]
    return {"source": "tests.fixtures.tiny_artifact (built for this run)" if built else str(model_dir),
            "model_version": manifest["model_version"], "cloud_file": cloud["file"],
            "cloud_precision": cloud["precision"], "cloud_size_bytes": cloud["size_bytes"],
            "labels": len(manifest["labels"]), "build_preset": manifest.get("build", {}).get("preset")}


def _machine() -> dict[str, Any]:
    packages = {}
    for name in ("aws-lambda-powertools", "boto3", "moto", "ai-edge-litert", "numpy", "tokenizers"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            packages[name] = metadata.version(name)
    return {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2), "packages": packages}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench/lambda_handler.py", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--model-dir", type=Path, help="artifact folder (default: build the tiny one)")
    parser.add_argument("--s3", action="store_true", help="cold runs fetch the model from moto S3")
    parser.add_argument("--cloud-file", type=Path, action="append", default=[], metavar="TFLITE",
                        help="another teacher file to measure beside the artifact's (repeatable)")
    parser.add_argument("--with-int8", action="store_true",
                        help="also measure the dynamic-range copy of the artifact's fp32 cloud model")
    parser.add_argument("--requests", type=int, default=300, help="timed warm requests per variant")
    for flag, default in (("--warmup", 20), ("--cold-runs", 3)):
        parser.add_argument(flag, type=int, default=default)
    parser.add_argument("--reset-every", type=int, default=50, help="empty the moto tables every N requests")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="result file (default: %(default)s)")
    parser.add_argument("--no-write", action="store_true", help="do not write the result file")
    parser.add_argument("--cold-child", action="store_true", help=argparse.SUPPRESS)
    return parser


def _measure(args: argparse.Namespace, scratch: Path) -> tuple[dict[str, dict[str, Any]], float]:
    """Every model's figures (the artifact's own first) and the load average before the runs."""
    built = args.model_dir is None
    if built:
        from tests.fixtures.tiny_artifact import make_tiny_artifact

        with contextlib.redirect_stdout(sys.stderr):
            model_dir = make_tiny_artifact(scratch / "artifact", version="tiny-1", seed=0)
    else:
        model_dir = args.model_dir.resolve()
    variants = _variants(model_dir, args.cloud_file, args.with_int8, scratch)
    load_before = round(os.getloadavg()[0], 2)
    cold = _cold_runs(variants, args.cold_runs, from_s3=args.s3)
    measured = {}
    for label, folder in variants.items():
        warm = _warm(folder, args.requests, args.warmup, args.reset_every)
        new = warm["keyed_new"]
        measured[label] = {
            "model": {**_model_info(folder, built), **({} if folder == model_dir else {"swapped_in": True})},
            "cold_init_s": round(statistics.median(run["cold_init_s"] for run in cold[label]), 4),
            "warm_p50_ms": new["p50_ms"], "warm_p99_ms": new["p99_ms"],
            "outside_dynamodb_p50_ms": new["outside_dynamodb_p50_ms"], "cold_runs": cold[label], "warm": warm,
        }
    return measured, load_before


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cold_child:
        _cold_child()
        return 0
    with tempfile.TemporaryDirectory(prefix="lambda-bench-models-") as scratch:
        measured, load_before = _measure(args, Path(scratch))
    first = next(iter(measured.values()))  # the headline keys are the artifact's own model's
    result = {
        "benchmark": "lambda_handler", **{k: first[k] for k in ("model", "cold_init_s", "warm_p50_ms", "warm_p99_ms")},
        "goals": GOALS,
        "meets_goals": first["cold_init_s"] <= GOALS["cold_init_s"] and first["warm_p50_ms"] <= GOALS["warm_p50_ms"],
        "cold_runs": first["cold_runs"], "warm": first["warm"],
        "request": "POST /v1/infer, one text, Idempotency-Key header (keyed_new: a new key per call)",
        "backend": ("cold: serialised moto server over local HTTP (DynamoDB" + (", and S3 for the model)"
                    if args.s3 else "; the model from a local folder)") + "; warm: in-process moto (mock_aws)"),
        "machine": {**_machine(), "load_average_1m_before": load_before},
        "reset_every": args.reset_every, "caveat": CAVEAT,
    }
    if len(measured) > 1:
        result["variants"] = measured
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:  # one line per model
        for label, m in measured.items():
            print(f"{label}: cold init {m['cold_init_s']:.3f} s, warm p50 {m['warm_p50_ms']:.2f} ms "
                  f"(outside DynamoDB {m['outside_dynamodb_p50_ms']:.2f} ms), p99 {m['warm_p99_ms']:.2f} ms "
                  f"({m['model']['model_version']}, {m['model']['cloud_size_bytes'] / 1e6:.1f} MB)")
    return 0


CAVEAT = (
    "DynamoDB time is moto's, not AWS's (in-region DynamoDB is typically a few ms per call; a keyed new request "
    "makes 4 calls: idempotency put, charge transaction, status read, idempotency update); moto's "
    "TransactWriteItems copies the whole table, so the tables are emptied every reset_every requests outside "
    "the timed region; an S3 download from a local moto server is faster than from S3 in-region; Lambda at "
    "1024 MB gets about 0.6 vCPU, less than one core of this machine"
)


if __name__ == "__main__":
    if str(REPO_ROOT) not in sys.path:  # runnable as a plain script
        sys.path.insert(0, str(REPO_ROOT))
    raise SystemExit(main())
