"""The build: data -> teacher -> distilled student -> int8 -> calibrate -> route -> manifest -> report.

Training stages are cached by the digest of their inputs (data, config, upstream stage, code version), so a
re-run that changes only calibration or routing options reuses the teacher and the student.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_build import calibration, routing
from model_build.cache import StageCache, stage_key
from model_build.config import BuildConfig
from model_build.data import Dataset, default_data_path, load_dataset, subset
from model_build.errors import BuildError, DataError, GateError
from model_build.evaluate import EDGE_FP32_FILE, ArtifactRunner, test_metrics
from model_build.progress import StageTimer
from modelpack.manifest import (
    ESCALATE_ALL,
    ESCALATE_NONE,
    Manifest,
    ModelEntry,
    OutputSpec,
    RoutingEntry,
    TensorSpec,
    TokenizerEntry,
    sha256_file,
    write_manifest,
)
from modelpack.scores import SCORES, band_score, manifest_band_score, softmax
from modelpack.tokenizer import TextTokenizer

# Bump when a stage's logic changes in a way that changes its output: invalidates its cache entries.
TEACHER_CODE_VERSION = 3
STUDENT_CODE_VERSION = 3
TRANSFER_CODE_VERSION = 1
EDGE_FILE, CLOUD_FILE, TOKENIZER_FILE = "edge_int8.tflite", "cloud.tflite", "tokenizer.json"
EDGE_DYNAMIC_FILE = "edge_dynamic.tflite"


@dataclass(frozen=True)
class BuildResult:
    out_dir: Path
    manifest: Manifest
    metrics: dict[str, Any]


def build(
    config: BuildConfig,
    *,
    data_path: Path | str | None,
    out_dir: Path,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    model_version: str | None = None,
    strict: bool = False,
) -> BuildResult:
    """Write the artifact to `out_dir`. A failed gate is recorded (metrics, report, manifest) and warned
    about; with `strict` it raises GateError: at once for the cheap gates known right after training (the
    trained stages stay cached), after writing the artifact for the rest."""
    from model_build.teacher import minilm_dir

    started = time.perf_counter()
    timer = StageTimer()
    cache = StageCache(cache_dir, enabled=use_cache)
    final_dir = Path(out_dir)
    if final_dir.exists() and any(final_dir.iterdir()) and not (final_dir / "manifest.json").exists():
        raise BuildError(f"{final_dir} exists and is not an artifact folder; choose an empty or new folder")
    # Build into a staging folder renamed at the end: a failed build never leaves a half artifact.
    out_dir = final_dir.parent / f".{final_dir.name}.partial"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)

    data_path = Path(data_path or default_data_path())
    stages = train_stages(config, data_path, cache, timer)
    dataset, teacher_dir, student_dir = stages.dataset, stages.teacher_dir, stages.student_dir
    teacher_key, student_key = stages.teacher_key, stages.student_key
    early = _size_gate(config, student_dir)
    if early:
        if strict:
            raise GateError(f"{early[0]}; the trained models are cached, nothing else was built (--strict)")
        _warn(early)

    with timer.stage("calibrate"):
        for src, name in ((teacher_dir / CLOUD_FILE, CLOUD_FILE), (student_dir / EDGE_FILE, EDGE_FILE),
                          (student_dir / EDGE_FP32_FILE, EDGE_FP32_FILE),
                          (minilm_dir() / TOKENIZER_FILE, TOKENIZER_FILE)):
            shutil.copyfile(src, out_dir / name)
        draft = _manifest(config, dataset, data_path, out_dir, model_version or _version(teacher_key, student_key))
        runner = ArtifactRunner(out_dir, draft)
        fitted, val_report = _fit_on_validation(config, dataset, runner)
        manifest = dataclasses.replace(
            draft,
            edge=dataclasses.replace(draft.edge, temperature=fitted["edge_temperature"]),
            cloud=dataclasses.replace(
                draft.cloud, temperature=fitted["cloud_temperature"], oos_threshold=fitted["oos_threshold"]
            ),
            routing=fitted["routing"],
        )
        runner.manifest = manifest
        write_manifest(manifest, out_dir)

    with timer.stage("evaluate"):
        metrics, test_logits = test_metrics(runner, dataset, latency_repeats=config.latency_repeats)
        metrics["validation"] = val_report
        metrics["int8_graph"] = json.loads((student_dir / "graph.json").read_text())
        _test_calibration_and_curves(metrics, test_logits, dataset, manifest)
        metrics["goals"] = goals(metrics)
        failures = gate_failures(config, metrics)
        metrics["gates"] = {"passed": not failures, "failures": failures}
        manifest = dataclasses.replace(manifest, build={**manifest.build, "gates": metrics["gates"]})
        runner.manifest = manifest
        write_manifest(manifest, out_dir)

    with timer.stage("report"):
        from model_build import report

        plots = _plots(metrics, test_logits, dataset, manifest, out_dir)
        metrics["timings_s"] = {**timer.seconds, "total_s": round(time.perf_counter() - started, 2)}
        metrics["machine"] = machine()
        metrics["cached_stages"] = [k for k, v in timer.cached.items() if v]
        (out_dir / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=2) + "\n")
        report.write_report_md(_jsonable(report_view(metrics, manifest, dataset, config)), out_dir, plots)
    if final_dir.exists():
        shutil.rmtree(final_dir)
    out_dir.rename(final_dir)
    if failures:
        if strict:
            raise GateError(f"{'; '.join(failures)} (the artifact is in {final_dir}, its report says so)")
        _warn(failures)
    return BuildResult(out_dir=final_dir, manifest=manifest, metrics=metrics)


def _warn(failures: list[str]) -> None:
    import sys

    for failure in failures:
        print(f"[build] WARNING: gate failed: {failure} (recorded; publish refuses the artifact "
              "without --allow-failed-gates; --strict makes it an error)", file=sys.stderr, flush=True)


def _size_gate(config: BuildConfig, student_dir: Path) -> list[str]:
    """The int8 size gate, checked as soon as the student is converted (seconds, not after evaluation)."""
    from model_build.evaluate import size_metrics

    ratio = size_metrics(student_dir / EDGE_FILE, student_dir / EDGE_FP32_FILE)["weight_size_ratio_vs_fp32"]
    if ratio > config.gates.max_int8_size_ratio:
        return [f"int8 weights are {ratio:.1%} of the fp32 weights (gate {config.gates.max_int8_size_ratio:.0%})"]
    return []


# --- training stages ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stages:
    dataset: Dataset
    teacher_dir: Path  # cloud.tflite, train_logits.npy
    student_dir: Path  # edge_int8.tflite, edge_fp32.tflite, edge_dynamic.tflite, graph.json
    teacher_key: str
    student_key: str


def train_stages(config: BuildConfig, data_path: Path, cache: StageCache, timer: StageTimer) -> Stages:
    """Data, teacher and student: the expensive, cached part of a build (also used by bench/)."""
    from model_build.teacher import minilm_dir

    with timer.stage("data"):
        dataset = subset(load_dataset(data_path, seed=config.seed), config.subset_per_class, seed=config.seed)
        tokenizer = TextTokenizer(
            minilm_dir() / TOKENIZER_FILE, max_seq_len=config.max_seq_len, length_buckets=config.length_buckets
        )
        train_ids = tokenizer.encode(dataset.train.texts, pad_to=config.max_seq_len)
    data_digest = {"sha256": dataset.source_sha256, "subset_per_class": config.subset_per_class}

    teacher_key = stage_key(
        "teacher", data=data_digest, teacher=config.teacher, seq=config.max_seq_len,
        seed=config.seed, code=TEACHER_CODE_VERSION,
    )
    with timer.stage("teacher"):
        teacher_dir, hit = cache.cached(
            "teacher", teacher_key, lambda d: _train_teacher(config, dataset, tokenizer, train_ids, d)
        )
        timer.mark_cached("teacher", hit)

    extra: dict[str, Any] = {}
    transfer_dir: Path | None = None
    if config.transfer.augment_copies or config.unlabeled:
        from model_build.transfer import file_digest

        transfer_key = stage_key(
            "transfer", teacher=teacher_key, transfer=config.transfer, unlabeled=file_digest(config.unlabeled),
            seq=config.max_seq_len, seed=config.seed, code=TRANSFER_CODE_VERSION,
        )
        with timer.stage("transfer"):
            transfer_dir, hit = cache.cached(
                "transfer", transfer_key, lambda d: _label_transfer_set(config, dataset, tokenizer, teacher_dir, d)
            )
            timer.mark_cached("transfer", hit)
        extra["transfer"] = transfer_key  # absent without a transfer set: earlier cache entries stay valid
    if config.prune:
        extra["prune"] = (config.prune, config.prune_epochs)

    from model_build.convert import MIN_REPRESENTATIVE

    transferred = sum(json.loads((transfer_dir / "transfer.json").read_text())["counts"].values()) \
        if transfer_dir else 0
    available = len(train_ids) + transferred
    if available < MIN_REPRESENTATIVE:  # checked before training the student, not after
        raise DataError(f"{data_path}: {len(train_ids)} training texts; int8 calibration needs at least "
                        f"{MIN_REPRESENTATIVE} real inputs: add teacher-labelled ones with --augment N or "
                        "--unlabeled FILE")
    student_key = stage_key(
        "student", teacher=teacher_key, student=config.student, distill=config.distill,
        representative=config.representative_size, float_ops=config.gates.allowed_float_ops,
        code=STUDENT_CODE_VERSION, **extra,
    )
    with timer.stage("student"):
        student_dir, hit = cache.cached(
            "student", student_key,
            lambda d: _train_student(config, dataset, train_ids, np.load(teacher_dir / "train_logits.npy"), d,
                                     transfer_dir),
        )
        timer.mark_cached("student", hit)
    return Stages(dataset, teacher_dir, student_dir, teacher_key, student_key)


def _label_transfer_set(config: BuildConfig, dataset: Dataset, tokenizer: TextTokenizer, teacher_dir: Path,
                        folder: Path) -> None:
    """The teacher's logits on the transfer set (augmented and unlabelled texts), through LiteRT."""
    from model_build.evaluate import model_logits
    from model_build.transfer import build_transfer_set, load_unlabeled
    from modelpack.litert import LiteRTModel

    unlabeled = load_unlabeled(config.unlabeled) if config.unlabeled else ()
    transfer = build_transfer_set(
        config.transfer, dataset.train.texts, dataset.train.labels, unlabeled,
        exclude=tuple(dataset.val.texts) + tuple(dataset.test.texts), seed=config.seed,
    )
    entry = model_entry(teacher_dir, CLOUD_FILE, config.teacher.precision, dataset.num_labels)
    teacher = LiteRTModel((teacher_dir / CLOUD_FILE).read_bytes(), entry, num_threads=2)
    logits = model_logits(teacher, tokenizer, transfer.texts, batch_size=64, desc="teacher labels transfer set")
    np.save(folder / "ids.npy", tokenizer.encode(transfer.texts, pad_to=config.max_seq_len))
    np.save(folder / "logits.npy", logits)
    (folder / "transfer.json").write_text(json.dumps({"counts": transfer.counts(), "kinds": transfer.kinds}))


def _train_teacher(config: BuildConfig, dataset: Dataset, tokenizer: TextTokenizer, train_ids, folder: Path):
    from model_build.convert import to_tflite_dynamic_range, to_tflite_fp32
    from model_build.teacher import Teacher

    teacher = Teacher(config.teacher, dataset.num_labels, seed=config.seed)
    teacher.train(train_ids, np.asarray(dataset.train.labels))
    np.save(folder / "train_logits.npy", teacher.logits(train_ids))
    # A fixed sequence length keeps the whole float graph in XNNPACK (a dynamic one splits it in 13
    # pieces); runtimes pad the cloud model's input to it (the manifest says so in its input shape).
    model = teacher.export_model(config.max_seq_len)
    convert = to_tflite_dynamic_range if config.teacher.precision == "dynamic_range" else to_tflite_fp32
    (folder / CLOUD_FILE).write_bytes(convert(model))


def _train_student(config: BuildConfig, dataset: Dataset, train_ids, teacher_logits, folder: Path,
                   transfer_dir: Path | None = None):
    from model_build.convert import float_ops, graph_ops, to_tflite_dynamic_range, to_tflite_fp32, to_tflite_int8
    from model_build.distill import TransferData, distill_student

    transfer = None
    if transfer_dir is not None:
        kinds = json.loads((transfer_dir / "transfer.json").read_text())["kinds"]
        weights = np.array([config.transfer.unlabeled_weight if k == "unlabeled" else 1.0 for k in kinds],
                           dtype=np.float32)
        transfer = TransferData(np.load(transfer_dir / "ids.npy"), np.load(transfer_dir / "logits.npy"), weights)
    model = distill_student(config, dataset, train_ids, teacher_logits, transfer)
    rng = np.random.default_rng(config.seed)
    # Real inputs for int8 calibration: the training texts, and the transfer set's when they are too few.
    pool = train_ids if transfer is None or len(train_ids) >= config.representative_size \
        else np.concatenate([train_ids, transfer.ids.astype(train_ids.dtype)])
    pick = rng.choice(len(pool), size=min(config.representative_size, len(pool)), replace=False)
    int8 = to_tflite_int8(model, pool[pick], allowed_float_ops=config.gates.allowed_float_ops)
    (folder / EDGE_FILE).write_bytes(int8)
    (folder / EDGE_FP32_FILE).write_bytes(to_tflite_fp32(model))
    (folder / EDGE_DYNAMIC_FILE).write_bytes(to_tflite_dynamic_range(model))  # for bench/quantization.py
    ops = graph_ops(int8)
    (folder / "graph.json").write_text(json.dumps({
        "ops": sorted({op.name for op in ops}),
        "op_count": len(ops),
        "float_ops": float_ops(int8),
    }))


# --- calibration and routing -------------------------------------------------------------------------

def _traffic_fraction(config: BuildConfig, dataset: Dataset) -> float | None:
    mix = config.traffic_oos_fraction
    if mix == "val" or dataset.oos_index is None:
        return None
    if mix == "test":
        return float((np.asarray(dataset.test.labels) == dataset.oos_index).mean())
    return float(mix)


def _fit_on_validation(config: BuildConfig, dataset: Dataset, runner: ArtifactRunner):
    """Temperatures, the cloud's oos threshold and the routing threshold, all fit on validation data
    re-weighted to the traffic mix the build assumes (the test split's share of oos by default)."""
    val = dataset.val
    y = np.asarray(val.labels)
    oos = dataset.oos_index
    fraction = _traffic_fraction(config, dataset)
    is_oos = y == oos if oos is not None else np.zeros(len(y), dtype=bool)
    w = calibration.traffic_weights(is_oos, fraction if is_oos.any() else None)
    edge_logits, cloud_logits = runner.logits("edge", val), runner.logits("cloud", val)
    t_edge = calibration.fit_temperature(edge_logits, y, weights=w)
    t_cloud = calibration.fit_temperature(cloud_logits, y, weights=w)
    edge_probs, cloud_probs = softmax(edge_logits, t_edge), softmax(cloud_logits, t_cloud)
    cloud_pred = cloud_probs.argmax(axis=1)
    report: dict[str, Any] = {"traffic_oos_fraction": fraction, "edge_temperature": t_edge,
                              "cloud_temperature": t_cloud}
    oos_threshold = None
    if oos is not None and is_oos.any():
        choice = routing.choose_oos_threshold(
            cloud_probs, y, oos, min_in_scope_accuracy=config.cloud_min_in_scope_accuracy, weights=w
        )
        if choice.feasible and np.isfinite(choice.threshold):
            oos_threshold = float(choice.threshold)
            cloud_pred = routing.predict_with_oos(cloud_probs, oos_threshold, oos)
        report["cloud_oos"] = dataclasses.asdict(choice)
    comparison = routing.compare_scores(
        edge_probs, edge_probs.argmax(axis=1), cloud_pred, y, target_ratio=config.routing_target, weights=w
    )
    best = comparison.best_choice
    report["routing_choices"] = {name: dataclasses.asdict(c) for name, c in comparison.choices.items()}
    report["routing_best"] = comparison.best
    score_name, threshold, rate = comparison.best, best.threshold, best.escalation_rate
    band, band_rate, band_score_name = None, 0.0, None
    if config.edge_oos_band and oos is not None and is_oos.any():
        # The three-way rule for every escalation score, its band cut on the same score or on the best
        # in-scope probability; shipped when it escalates less than the best two-way rule.
        edge_pred = edge_probs.argmax(axis=1)
        deferrals = {}
        for name, fn in SCORES.items():
            for band_name in (None, "in_scope_max_prob"):
                deferrals[(name, band_name)] = routing.choose_deferral(
                    fn(edge_probs), edge_pred, cloud_pred, y, oos, target_ratio=config.routing_target, weights=w,
                    name=name, oos_score=None if band_name is None else band_score(band_name, edge_probs, oos))
        report["deferral_choices"] = {f"{name}/{band_name or name}": dataclasses.asdict(c)
                                      for (name, band_name), c in deferrals.items()}
        pick = min((key for key, c in deferrals.items() if c.reachable), default=None,
                   key=lambda key: (round(deferrals[key].escalation_rate, 9), -round(deferrals[key].joint_accuracy, 9)))
        chosen = deferrals[pick] if pick is not None else None
        if chosen is not None and chosen.escalation_rate < rate - 1e-12 and np.isfinite(chosen.oos_threshold):
            score_name, threshold, rate = chosen.score_name, chosen.threshold, chosen.escalation_rate
            band, band_rate, band_score_name = float(chosen.oos_threshold), chosen.edge_oos_rate, pick[1]
        report["deferral_shipped"] = band is not None
    threshold = threshold if np.isfinite(threshold) else (ESCALATE_ALL if threshold > 0 else ESCALATE_NONE)
    fitted = {
        "edge_temperature": t_edge,
        "cloud_temperature": t_cloud,
        "oos_threshold": oos_threshold,
        "routing": RoutingEntry(
            score=score_name,
            threshold=float(threshold),
            target_joint_over_teacher=config.routing_target,
            traffic_oos_fraction=fraction,
            expected_escalation_rate=rate,
            oos_threshold=band,
            expected_edge_oos_rate=band_rate,
            oos_score=band_score_name,
        ),
    }
    return fitted, report


def _test_calibration_and_curves(metrics, test_logits, dataset: Dataset, manifest: Manifest) -> None:
    y = np.asarray(dataset.test.labels)
    for key, which, entry in (("edge_int8", "edge", manifest.edge), ("teacher", "cloud", manifest.cloud)):
        metrics[key]["ece_before"] = calibration.ece(softmax(test_logits[which], 1.0), y, n_bins=15)
        metrics[key]["temperature"] = entry.temperature


def goals(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each goal of the build with its measured value and whether it is met."""
    t, e, f, r = (metrics.get(k, {}) for k in ("teacher", "edge_int8", "edge_fp32", "routing"))

    def goal(value, target, ok):
        return {"value": value, "target": target, "met": bool(ok) if value is not None else None}

    tr = metrics.get("teacher_with_oos_rule", {})
    out = {
        "teacher_in_scope_accuracy": goal(t.get("in_scope_accuracy"), ">= 0.965", t.get("in_scope_accuracy", 0) >= 0.965),
        "teacher_with_oos_rule_in_scope": goal(tr.get("in_scope_accuracy"), ">= 0.95",
                                               tr.get("in_scope_accuracy", 0) >= 0.95),
        "teacher_with_oos_rule_oos_recall": goal(tr.get("oos_recall"), ">= 0.80", tr.get("oos_recall", 0) >= 0.80),
        "edge_in_scope_accuracy": goal(e.get("in_scope_accuracy"), ">= 0.955", e.get("in_scope_accuracy", 0) >= 0.955),
        "edge_oos_recall": goal(e.get("oos_recall"), ">= 0.50", e.get("oos_recall", 0) >= 0.50),
        "edge_ece": goal(e.get("ece"), "<= 0.02", e.get("ece", 1) <= 0.02),
        "escalation_rate": goal(r.get("escalation_rate"), "<= 0.10", r.get("escalation_rate", 1) <= 0.10),
        "joint_over_teacher": goal(r.get("joint_over_teacher"), ">= 0.99", r.get("joint_over_teacher", 0) >= 0.99 - 1e-9),
        "joint_oos_recall": goal(r.get("joint_oos_recall"), ">= 0.70", r.get("joint_oos_recall", 0) >= 0.70),
        "joint_in_scope_accuracy": goal(r.get("joint_in_scope_accuracy"), ">= 0.95", r.get("joint_in_scope_accuracy", 0) >= 0.95),
    }
    if f:
        out["int8_accuracy_drop"] = goal(e.get("accuracy_drop_vs_fp32"), "<= 0.005", e.get("accuracy_drop_vs_fp32", 1) <= 0.005)
        out["int8_size_ratio"] = goal(e.get("weight_size_ratio_vs_fp32"), "<= 0.26 (weights)",
                                      e.get("weight_size_ratio_vs_fp32", 1) <= 0.26)
        for b in (1, 32):
            key = f"latency_ms_b{b}"
            out[f"int8_latency_b{b}"] = goal(e.get(key), f"<= fp32 ({f.get(key)})", e.get(key, 1e9) <= f.get(key, 0))
    graph = metrics.get("int8_graph", {})
    if graph:
        out["int8_float_ops"] = goal(len(graph["float_ops"]), "0 (or shown to cost nothing)", not graph["float_ops"])
    return out


def gate_failures(config: BuildConfig, metrics: dict[str, Any]) -> list[str]:
    """The promises the int8 model broke, each as one line (empty: all kept)."""
    e, failures = metrics["edge_int8"], []
    if "accuracy_drop_vs_fp32" in e and e["accuracy_drop_vs_fp32"] > config.gates.max_int8_accuracy_drop:
        failures.append(f"int8 accuracy {e['accuracy']:.4f} is more than {config.gates.max_int8_accuracy_drop} "
                        f"below the float student's {metrics['edge_fp32']['accuracy']:.4f}")
    if "weight_size_ratio_vs_fp32" in e and e["weight_size_ratio_vs_fp32"] > config.gates.max_int8_size_ratio:
        failures.append(f"int8 weights are {e['weight_size_ratio_vs_fp32']:.1%} of the fp32 weights "
                        f"(gate {config.gates.max_int8_size_ratio:.0%})")
    return failures


# --- artifact ----------------------------------------------------------------------------------------

def model_entry(folder: Path, file: str, precision: str, n_labels: int) -> ModelEntry:
    """The manifest entry of a .tflite file, read from the file itself (tensors, quantization, digest)."""
    from model_build.convert import input_details, output_details

    tflite = (folder / file).read_bytes()
    inputs = tuple(TensorSpec(t.name, t.dtype.lower(), t.shape_signature) for t in input_details(tflite))
    (out,) = output_details(tflite)
    dtype = out.dtype.lower()
    quantized = dtype in ("int8", "uint8")
    return ModelEntry(
        file=file,
        sha256=sha256_file(folder / file),
        size_bytes=len(tflite),
        precision=precision,
        inputs=inputs,
        output=OutputSpec(
            dtype=dtype, shape=(-1, n_labels), logits=True,
            scale=out.scale if quantized else None, zero_point=out.zero_point if quantized else None,
        ),
        temperature=1.0,
    )


def _manifest(config: BuildConfig, dataset: Dataset, data_path: Path, folder: Path, version: str) -> Manifest:
    n = dataset.num_labels
    return Manifest(
        model_version=version,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        labels=dataset.labels,
        oos_label=dataset.oos_label,
        tokenizer=TokenizerEntry(
            file=TOKENIZER_FILE, sha256=sha256_file(folder / TOKENIZER_FILE),
            max_seq_len=config.max_seq_len, length_buckets=config.length_buckets, pad_id=0,
        ),
        edge=model_entry(folder, EDGE_FILE, "int8", n),
        cloud=model_entry(folder, CLOUD_FILE, config.teacher.precision, n),
        routing=RoutingEntry(score="max_prob", threshold=0.0, target_joint_over_teacher=config.routing_target,
                             traffic_oos_fraction=None, expected_escalation_rate=0.0),
        data={
            "name": dataset.name, "path": str(data_path), "sha256": dataset.source_sha256,
            "sizes": {s: len(dataset.split(s)) for s in ("train", "val", "test")},
        },
        build={"preset": config.preset, "config": _jsonable(config.to_dict()), "git_commit": _git_commit()},
    )


def _version(teacher_key: str, student_key: str) -> str:
    day = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d")
    return f"{day}-{stage_key('version', t=teacher_key, s=student_key)[:8]}"


def machine() -> dict[str, Any]:
    """The CPU a build's timings were measured on: they mean nothing without it."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "arch": platform.machine()}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _plots(metrics, test_logits, dataset: Dataset, manifest: Manifest, out_dir: Path) -> dict[str, str]:
    from model_build import report

    y = np.asarray(dataset.test.labels)
    oos = manifest.oos_index
    edge_raw = test_logits["edge"]
    before = calibration.reliability_bins(softmax(edge_raw, 1.0), y, n_bins=15)
    after = calibration.reliability_bins(softmax(edge_raw, manifest.edge.temperature), y, n_bins=15)
    report.plot_reliability(before, after, out_dir / "reliability_edge.png", "Edge int8 model (test split)")
    edge_probs = softmax(edge_raw, manifest.edge.temperature)
    cloud_probs = softmax(test_logits["cloud"], manifest.cloud.temperature)
    cloud_pred = cloud_probs.argmax(axis=1)
    if oos is not None and manifest.cloud.oos_threshold is not None:
        cloud_pred = routing.predict_with_oos(cloud_probs, manifest.cloud.oos_threshold, oos)
    edge_pred = edge_probs.argmax(axis=1)
    curves = {
        name: routing.escalation_curve(edge_pred, cloud_pred, y, fn(edge_probs), name=name)
        for name, fn in SCORES.items()
    }
    chosen = curves[manifest.routing.score]
    metrics["routing"]["curve"] = {
        name: [dataclasses.asdict(p) for p in routing.curve_at_rates(c)] for name, c in curves.items()
    }
    in_scope = y != oos if oos is not None else np.ones(len(y), dtype=bool)
    if oos is not None:
        c_in = routing.escalation_curve(edge_pred[in_scope], cloud_pred[in_scope], y[in_scope],
                                        SCORES[manifest.routing.score](edge_probs[in_scope]), name="in-scope")
        metrics["routing"]["curve_in_scope"] = [dataclasses.asdict(p) for p in routing.curve_at_rates(c_in)]
    point = routing.apply_deferral(edge_pred, cloud_pred, y, SCORES[manifest.routing.score](edge_probs),
                                   manifest.routing.threshold, manifest.routing.oos_threshold, oos_index=oos,
                                   oos_score=manifest_band_score(edge_probs, manifest.routing, oos))
    marker = routing.RoutingChoice(
        score_name=manifest.routing.score, threshold=point.threshold, escalation_rate=point.escalation_rate,
        joint_accuracy=point.joint_accuracy, joint_over_teacher=point.joint_over_teacher,
        teacher_accuracy=point.teacher_accuracy, target_ratio=manifest.routing.target_joint_over_teacher,
        reachable=True, n_escalated=int(round(point.escalation_rate * point.n)),
    )
    report.plot_escalation_curve(curves, marker, chosen.teacher_accuracy, out_dir / "escalation_curve.png")
    return {"reliability": str(out_dir / "reliability_edge.png"), "escalation_curve": str(out_dir / "escalation_curve.png")}


def report_view(metrics: dict[str, Any], manifest: Manifest, dataset: Dataset, config: BuildConfig) -> dict:
    """metrics.json rearranged into the sections report.md renders."""
    t, e, r, v = metrics["teacher"], metrics["edge_int8"], metrics["routing"], metrics["validation"]
    oos = dataset.oos_index

    def share(split) -> float:
        return float((np.asarray(split.labels) == oos).mean()) if oos is not None else 0.0

    curve = r.get("curve", {}).get(manifest.routing.score, [])
    return {
        "title": f"Model build report: {manifest.model_version} ({config.preset} preset)",
        "data": {
            "dataset": dataset.name, "variant": config.preset, "n_classes": dataset.num_labels,
            "oos_label": dataset.oos_label,
            "splits": {s: {"n": len(dataset.split(s)), "oos_fraction": share(dataset.split(s))}
                       for s in ("train", "val", "test")},
        },
        "teacher": {
            "name": f"all-MiniLM-L6-v2 fine-tuned from layer {config.teacher.train_from_layer} "
                    f"({manifest.cloud.precision}, {manifest.cloud.size_bytes / 1e6:.1f} MB)",
            "split": "test", **{k: t.get(k) for k in ("accuracy", "in_scope_accuracy", "oos_recall")},
            "oos_threshold": manifest.cloud.oos_threshold, "temperature": manifest.cloud.temperature,
            "latency_ms": t.get("latency_ms_b1"), "ece_before": t.get("ece_before"), "ece_after": t.get("ece"),
            "with_oos_rule": metrics.get("teacher_with_oos_rule", {}),
        },
        "edge": {"split": "test", "fp32": metrics.get("edge_fp32", {}), "int8": e},
        "float_ops": {"count": len(metrics["int8_graph"]["float_ops"]), "ops": metrics["int8_graph"]["float_ops"],
                      "all_ops": metrics["int8_graph"]["ops"]},
        "calibration": {
            "model": "edge int8", "temperature": manifest.edge.temperature, "fit_split": "val",
            "eval_split": "test", "oos_fraction": v.get("traffic_oos_fraction"),
            "ece_before": e.get("ece_before"), "ece_after": e.get("ece"), "n_bins": 15,
        },
        "routing": {
            "score": manifest.routing.score, "threshold": manifest.routing.threshold,
            "oos_threshold": manifest.routing.oos_threshold,
            "oos_score": manifest.routing.oos_score or (manifest.routing.score if manifest.routing.oos_threshold
                                                        is not None else None),
            "two_way_escalation_rate": v["routing_choices"][v["routing_best"]]["escalation_rate"]
            if manifest.routing.oos_threshold is not None else None,
            "target_ratio": manifest.routing.target_joint_over_teacher,
            "oos_fraction": manifest.routing.traffic_oos_fraction, "chosen_on": "val (re-weighted)",
            "reachable": v["routing_choices"][manifest.routing.score]["reachable"],
            "splits": {"test": {
                "escalation_rate": r["escalation_rate"], "joint_accuracy": r["joint_accuracy"],
                "teacher_accuracy": r["cloud_only_accuracy"], "edge_accuracy": r["edge_only_accuracy"],
                "joint_over_teacher": r["joint_over_teacher"], "joint_oos_recall": r["joint_oos_recall"],
                "in_scope_accuracy": r["joint_in_scope_accuracy"],
                "in_scope_escalation_rate": r["in_scope_escalation_rate"],
                "oos_escalation_rate": r["oos_escalation_rate"], "edge_oos_rate": r.get("edge_oos_rate"),
            }, **({"test, in-scope only": {
                "escalation_rate": metrics["routing_in_scope"]["escalation_rate"],
                "joint_accuracy": metrics["routing_in_scope"]["joint_accuracy"],
                "teacher_accuracy": metrics["routing_in_scope"]["cloud_only_accuracy"],
                "edge_accuracy": metrics["routing_in_scope"]["edge_only_accuracy"],
                "joint_over_teacher": metrics["routing_in_scope"]["joint_over_teacher"],
                "edge_oos_rate": metrics["routing_in_scope"]["edge_oos_rate"],
            }} if "routing_in_scope" in metrics else {})},
            "scores": v["routing_choices"],
        },
        "escalation_table": {
            "score": manifest.routing.score, "split": "test", "teacher_accuracy": r["cloud_only_accuracy"],
            "rows": [dict(row, budget=b) for row, b in zip(curve, routing.TABLE_RATES)],
        },
        "escalation_table_in_scope": {
            "score": manifest.routing.score, "split": "test, in-scope only",
            "rows": [dict(row, budget=b) for row, b in zip(r.get("curve_in_scope", []), routing.TABLE_RATES)],
        },
        "gates": metrics.get("gates"),
        "goals": metrics["goals"],
        "timings": metrics.get("timings_s", {}),
    }


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if np.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
