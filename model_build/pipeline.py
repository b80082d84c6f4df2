"""The build: data -> teacher -> distilled student -> int8 -> calibrate -> route -> manifest -> report.

This module only orchestrates (model_build/README.md: the rooms it goes through): the trained stages are
in `stages` (cached), the cloud model's precision (fp32 or int8, measured once per teacher) in
`teacher.cloud_precision`, the fitting on validation data in `calibrate.fit`, the test-split measurements in
`evaluate.measure`, goals and gates in `evaluate.goals`, the typed results in `evaluate.metrics`, the plots
in `report.plots` and the report in `report.view` / `report.markdown`.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_build.artifact import (
    CLOUD_FILE,
    EDGE_FILE,
    EDGE_FP32_FILE,
    TOKENIZER_FILE,
    ArtifactRunner,
    default_version,
    draft_manifest,
    machine,
)
from model_build.cache import StageCache
from model_build.calibrate.curves import SplitCurves
from model_build.calibrate.fit import EDGE_BUDGET_SHARE, Fitted, fit_on_validation
from model_build.config import BuildConfig
from model_build.data.background import with_appended_oos
from model_build.data.dataset import Dataset, default_data_path
from model_build.errors import BuildError, GateError
from model_build.evaluate.goals import gate_result, goals, size_gate, warn
from model_build.evaluate.measure import (
    EdgeReliability,
    edge_reliability,
    routing_curves,
    test_metrics,
    with_calibration,
)
from model_build.evaluate.metrics import BuildMetrics, GateResult, Goal, Int8Graph, SampledCurves, TestMetrics
from model_build.progress import StageTimer
from model_build.report.markdown import write_report_md
from model_build.report.plots import draw_build_plots
from model_build.report.view import report_view
from model_build.stages import Stages, train_stages
from model_build.teacher.cloud_precision import PrecisionChoice, choose, measure_stage
from model_build.teacher.neighbours import embedder_stage, with_neighbours
from model_build.teacher.minilm import minilm_dir
from modelpack.manifest import Manifest, write_manifest


@dataclass(frozen=True)
class BuildResult:
    out_dir: Path
    manifest: Manifest
    metrics: BuildMetrics


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
    started = time.perf_counter()
    timer = StageTimer()
    cache = StageCache(cache_dir, enabled=use_cache)
    final_dir = Path(out_dir)
    staging = _staging_folder(final_dir)

    data_path = Path(data_path or default_data_path())
    stages = train_stages(config, data_path, cache, timer)
    if config.false_reject_budget(True):  # data without an oos label still gets a rule (none: --max-false-reject 0)
        stages = dataclasses.replace(stages, dataset=with_appended_oos(stages.dataset))
    early = size_gate(config, stages.student_dir)
    if early:
        if strict:
            raise GateError(f"{early[0]}; the trained models are cached, nothing else was built (--strict)")
        warn(early)
    measured = measure_stage(config, stages.dataset, stages.teacher_dir, stages.teacher_key, cache, timer)
    cloud = choose(config, stages.teacher_dir, measured)
    has_rule = config.neighbours and stages.dataset.oos_label is not None  # an offset needs an oos rule to move
    embedder = embedder_stage(config, cache, timer) if has_rule else None

    with timer.stage("calibrate"):
        fitted, manifest = _calibrate(config, stages, cloud, data_path, staging, model_version, embedder)
    with timer.stage("evaluate"):
        evaluation = _evaluate(config, stages, manifest, staging)
        manifest = dataclasses.replace(manifest, build={**manifest.build, "gates": evaluation.gates.to_dict()})
        write_manifest(manifest, staging)
    with timer.stage("report"):
        metrics = BuildMetrics(
            test=evaluation.test, validation=fitted.validation, int8_graph=evaluation.graph,
            goals=evaluation.goals, gates=evaluation.gates, curves=SampledCurves.of(evaluation.curves),
            timings_s={**timer.seconds, "total_s": round(time.perf_counter() - started, 2)},
            machine=machine(), cached_stages=tuple(k for k, v in timer.cached.items() if v),
            cloud_precision=cloud,
        )
        _write_results(metrics, evaluation, manifest, stages.dataset, config, staging)
    if final_dir.exists():
        shutil.rmtree(final_dir)
    staging.rename(final_dir)
    if evaluation.gates.failures:
        if strict:
            raise GateError(f"{'; '.join(evaluation.gates.failures)} (the artifact is in {final_dir}, "
                            "its report says so)")
        warn(evaluation.gates.failures)
    return BuildResult(out_dir=final_dir, manifest=manifest, metrics=metrics)


def _staging_folder(final_dir: Path) -> Path:
    """An empty folder beside `final_dir`, renamed to it at the end: a failed build never leaves a half
    artifact."""
    if final_dir.exists() and any(final_dir.iterdir()) and not (final_dir / "manifest.json").exists():
        raise BuildError(f"{final_dir} exists and is not an artifact folder; choose an empty or new folder")
    staging = final_dir.parent / f".{final_dir.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def _calibrate(config: BuildConfig, stages: Stages, cloud: PrecisionChoice, data_path: Path, folder: Path,
               model_version: str | None, embedder: Path | None) -> tuple[Fitted, Manifest]:
    """Copy the trained models (the cloud one of the chosen precision) and the tokenizer into `folder`,
    fit temperatures and thresholds on validation data, and write the manifest that carries them."""
    shutil.copyfile(cloud.source, folder / CLOUD_FILE)
    for src in (stages.student_dir / EDGE_FILE, stages.student_dir / EDGE_FP32_FILE, minilm_dir() / TOKENIZER_FILE):
        shutil.copyfile(src, folder / src.name)
    version = model_version or default_version(stages.teacher_key, stages.student_key)
    draft = draft_manifest(config, stages.dataset, data_path, folder, version, cloud_precision=cloud.chosen)
    if embedder is not None:  # before the fit: the cloud's oos threshold is cut on its energy with the offset
        draft = with_neighbours(draft, stages.dataset, folder, embedder)
    fitted = fit_on_validation(config, stages.dataset, ArtifactRunner(folder, draft))
    manifest = fitted.apply(draft)
    write_manifest(manifest, folder)
    if stages.dataset.oos_appended and manifest.routing.oos_threshold is None and manifest.cloud.oos_threshold is None:
        _say_too_few_to_refuse(config, stages.dataset)
    return fitted, manifest


def _say_too_few_to_refuse(config: BuildConfig, dataset: Dataset) -> None:
    """Data without an oos label whose validation split is too small to refuse any text at the rate asked
    (a conformal count: n + 1 >= 1 / rate): the artifact answers every request with an intent. Say so."""
    rate = config.false_reject_budget(True) * EDGE_BUDGET_SHARE
    n = len(dataset.val)
    print(f"[build] note: {n} validation texts are too few to refuse any out-of-scope request at "
          f"--max-false-reject {config.false_reject_budget(True):g} (the edge's share needs "
          f"{math.ceil(1 / rate) - 1}): every request gets an intent. Give more validation texts, a larger "
          "--max-false-reject, or --negatives.", file=sys.stderr, flush=True)


@dataclass(frozen=True, eq=False)
class _Evaluation:
    """The test split through the calibrated artifact: the metrics, and the data the plots draw."""

    test: TestMetrics
    graph: Int8Graph
    goals: dict[str, Goal]
    gates: GateResult
    curves: SplitCurves
    reliability: EdgeReliability


def _evaluate(config: BuildConfig, stages: Stages, manifest: Manifest, folder: Path) -> _Evaluation:
    """The test split through the calibrated artifact in `folder`: metrics, goals, gates, and the curves
    and reliability bins the plots draw."""
    dataset = stages.dataset
    y = np.asarray(dataset.test.labels)
    runner = ArtifactRunner(folder, manifest)
    test, logits = test_metrics(runner, dataset, latency_repeats=config.latency_repeats)
    test = with_calibration(test, logits, y, manifest)
    graph = Int8Graph.load(stages.student_dir / "graph.json")
    return _Evaluation(test=test, graph=graph, goals=goals(test, graph), gates=gate_result(config, test),
                       curves=routing_curves(logits, y, manifest),
                       reliability=edge_reliability(logits, y, manifest))


def _write_results(metrics: BuildMetrics, evaluation: _Evaluation, manifest: Manifest, dataset: Dataset,
                   config: BuildConfig, folder: Path) -> None:
    """The plots (drawn from the evaluation's data), metrics.json and report.md."""
    chosen = evaluation.test.routing_point()
    plots = draw_build_plots(folder, evaluation.reliability, evaluation.curves, chosen)
    metrics.write(folder)
    write_report_md(report_view(metrics, manifest, dataset, config), folder, plots)
