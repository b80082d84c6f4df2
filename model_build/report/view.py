"""A build's metrics arranged into the sections report.md renders (model_build.report)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from model_build.calibrate.curves import TABLE_RATES, CurvePoint
from model_build.config import BuildConfig
from model_build.data.dataset import Dataset, Split
from model_build.evaluate.metrics import BuildMetrics
from model_build.jsonable import jsonable
from model_build.teacher.cloud_precision import PrecisionChoice
from modelpack.manifest import Manifest


def report_view(metrics: BuildMetrics, manifest: Manifest, dataset: Dataset, config: BuildConfig) -> dict:
    """metrics.json rearranged into the sections report.md renders (JSON-able)."""
    test, graph = metrics.test, metrics.int8_graph
    e = test.edge_int8
    return jsonable({
        "title": f"Model build report: {manifest.model_version} ({config.preset} preset)",
        "data": _data(dataset, config),
        "teacher": _teacher(metrics, manifest, config),
        "edge": {"split": "test", "fp32": test.edge_fp32.to_dict() if test.edge_fp32 is not None else {},
                 "int8": e.to_dict()},
        "float_ops": {"count": len(graph.float_ops), "ops": list(graph.float_ops), "all_ops": list(graph.ops)},
        "calibration": {
            "model": "edge int8", "temperature": manifest.edge.temperature,
            "oos_logit_bias": manifest.edge.oos_logit_bias, "fit_split": "val",
            "eval_split": "test", "oos_fraction": metrics.validation.traffic_oos_fraction,
            "ece_before": e.ece_before, "ece_after": e.ece, "n_bins": 15,
        },
        "routing": _routing(metrics, manifest),
        "escalation_table": {
            "score": manifest.routing.score, "split": "test",
            "teacher_accuracy": test.routing.cloud_only_accuracy,
            "rows": _rows(metrics.curves.by_score.get(manifest.routing.score, ())),
        },
        "escalation_table_in_scope": {
            "score": manifest.routing.score, "split": "test, in-scope only",
            "rows": _rows(metrics.curves.in_scope or ()),
        },
        "rejection": _rejection(metrics, dataset),
        "gates": metrics.gates.to_dict(),
        "goals": {name: goal.to_dict() for name, goal in metrics.goals.items()},
        "timings": dict(metrics.timings_s),
    })


def _data(dataset: Dataset, config: BuildConfig) -> dict[str, Any]:
    oos = dataset.oos_index

    def share(split: Split) -> float:
        return float((np.asarray(split.labels) == oos).mean()) if oos is not None else 0.0

    return {
        "dataset": dataset.name, "variant": config.preset, "n_classes": dataset.num_labels,
        "oos_label": dataset.oos_label,
        "splits": {s: {"n": len(dataset.split(s)), "oos_fraction": share(dataset.split(s))}
                   for s in ("train", "val", "test")},
    }


def _teacher(metrics: BuildMetrics, manifest: Manifest, config: BuildConfig) -> dict[str, Any]:
    t = metrics.test.teacher
    out = {
        "name": f"all-MiniLM-L6-v2 fine-tuned from layer {config.teacher.train_from_layer} "
                f"({manifest.cloud.precision}, {manifest.cloud.size_bytes / 1e6:.1f} MB)",
        "split": "test", "accuracy": t.accuracy, "in_scope_accuracy": t.in_scope_accuracy,
        "oos_recall": t.oos_recall, "oos_threshold": manifest.cloud.oos_threshold,
        "oos_score": (manifest.cloud.oos_score or "max_prob") if manifest.cloud.oos_threshold is not None else None,
        "temperature": manifest.cloud.temperature, "latency_ms": t.latency_ms_b1, "ece_before": t.ece_before,
        "ece_after": t.ece, "with_oos_rule": metrics.test.teacher_with_oos_rule.to_dict(),
    }
    if metrics.cloud_precision is not None:
        out["precision"] = _precision(metrics.cloud_precision)
    return out


def _precision(choice: PrecisionChoice) -> str:
    """One line: which teacher file ships, and the fp32 vs int8 figures it was chosen on."""
    if choice.fp32 is None or choice.dynamic_range is None:
        return f"{choice.chosen} ({choice.reason})"
    f, q = choice.fp32, choice.dynamic_range
    return (f"{choice.chosen} ships ({choice.reason}); accuracy int8 vs fp32: validation "
            f"{q.val_accuracy * 100:.2f} % vs {f.val_accuracy * 100:.2f} %, test {q.test_accuracy * 100:.2f} % vs "
            f"{f.test_accuracy * 100:.2f} %; {q.size_bytes / 1e6:.1f} MB vs {f.size_bytes / 1e6:.1f} MB")


def _routing(metrics: BuildMetrics, manifest: Manifest) -> dict[str, Any]:
    m, v, r = manifest.routing, metrics.validation, metrics.test.routing
    splits: dict[str, Any] = {"test": {
        "escalation_rate": r.escalation_rate, "joint_accuracy": r.joint_accuracy,
        "teacher_accuracy": r.cloud_only_accuracy, "edge_accuracy": r.edge_only_accuracy,
        "joint_over_teacher": r.joint_over_teacher, "joint_oos_recall": r.joint_oos_recall,
        "in_scope_accuracy": r.joint_in_scope_accuracy, "in_scope_escalation_rate": r.in_scope_escalation_rate,
        "oos_escalation_rate": r.oos_escalation_rate, "edge_oos_rate": r.edge_oos_rate,
    }}
    inside = metrics.test.routing_in_scope
    if inside is not None:
        splits["test, in-scope only"] = {
            "escalation_rate": inside.escalation_rate, "joint_accuracy": inside.joint_accuracy,
            "teacher_accuracy": inside.cloud_only_accuracy, "edge_accuracy": inside.edge_only_accuracy,
            "joint_over_teacher": inside.joint_over_teacher, "edge_oos_rate": inside.edge_oos_rate,
        }
    banded = m.oos_threshold is not None
    return {
        "score": m.score, "threshold": m.threshold, "oos_threshold": m.oos_threshold,
        "oos_score": m.oos_score or (m.score if banded else None),
        "two_way_escalation_rate": v.routing_choices[v.routing_best].escalation_rate if banded else None,
        "target_ratio": m.target_joint_over_teacher, "oos_fraction": m.traffic_oos_fraction,
        "chosen_on": "val (re-weighted)", "reachable": v.routing_choices[m.score].reachable,
        "splits": splits, "scores": {name: dataclasses.asdict(c) for name, c in v.routing_choices.items()},
    }


def _rejection(metrics: BuildMetrics, dataset: Dataset) -> dict[str, Any]:
    """Each tier's rejection on validation and test (those with out-of-scope texts), and where the
    out-of-scope texts come from: the data's own `oos` rows, the `--negatives` (a background class) or
    nowhere."""
    found = (metrics.validation.rejection, metrics.test.rejection)
    source = "negatives" if dataset.background else "appended" if dataset.oos_appended else \
        ("data" if dataset.oos_label is not None else None)
    return {"oos_source": source, "splits": {r.split: r.to_dict() for r in found if r is not None}}


def _rows(points: tuple[CurvePoint, ...]) -> list[dict[str, Any]]:
    """The escalation table's rows: the sampled curve points with the budget each was sampled at."""
    return [dict(dataclasses.asdict(point), budget=budget) for point, budget in zip(points, TABLE_RATES)]
