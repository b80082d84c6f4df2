"""The build's goals (what it aims for, reported met or missed) and gates (promises the int8 model must
keep: a broken one is recorded, and publish refuses the artifact without --allow-failed-gates)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from model_build.artifact import EDGE_FILE, EDGE_FP32_FILE
from model_build.config import BuildConfig, Gates
from model_build.evaluate.metrics import GateResult, Goal, Int8Graph, TestMetrics
from model_build.tflite.graph import size_metrics


def _goal(value: float | None, target: str, met_if: Callable[[float], bool]) -> Goal:
    return Goal(value, target, bool(met_if(value)) if value is not None else None)


def goals(metrics: TestMetrics, graph: Int8Graph | None) -> dict[str, Goal]:
    """Each goal of the build with its measured value and whether it is met."""
    t, tr, e, f, r = (metrics.teacher, metrics.teacher_with_oos_rule, metrics.edge_int8, metrics.edge_fp32,
                      metrics.routing)
    out = {
        "teacher_in_scope_accuracy": _goal(t.in_scope_accuracy, ">= 0.965", lambda v: v >= 0.965),
        "teacher_with_oos_rule_in_scope": _goal(tr.in_scope_accuracy, ">= 0.95", lambda v: v >= 0.95),
        "teacher_with_oos_rule_oos_recall": _goal(tr.oos_recall, ">= 0.80", lambda v: v >= 0.80),
        "edge_in_scope_accuracy": _goal(e.in_scope_accuracy, ">= 0.955", lambda v: v >= 0.955),
        "edge_oos_recall": _goal(e.oos_recall, ">= 0.50", lambda v: v >= 0.50),
        "edge_ece": _goal(e.ece, "<= 0.02", lambda v: v <= 0.02),
        "escalation_rate": _goal(r.escalation_rate, "<= 0.10", lambda v: v <= 0.10),
        "joint_over_teacher": _goal(r.joint_over_teacher, ">= 0.99", lambda v: v >= 0.99 - 1e-9),
        "joint_oos_recall": _goal(r.joint_oos_recall, ">= 0.70", lambda v: v >= 0.70),
        "joint_in_scope_accuracy": _goal(r.joint_in_scope_accuracy, ">= 0.95", lambda v: v >= 0.95),
    }
    if f is not None:
        out["int8_accuracy_drop"] = _goal(e.accuracy_drop_vs_fp32, "<= 0.005", lambda v: v <= 0.005)
        out["int8_size_ratio"] = _goal(e.weight_size_ratio_vs_fp32, "<= 0.26 (weights)", lambda v: v <= 0.26)
        out["int8_latency_b1"] = _goal(e.latency_ms_b1, f"<= fp32 ({f.latency_ms_b1})",
                                       lambda v: v <= (f.latency_ms_b1 or 0))
        out["int8_latency_b32"] = _goal(e.latency_ms_b32, f"<= fp32 ({f.latency_ms_b32})",
                                        lambda v: v <= (f.latency_ms_b32 or 0))
    if graph is not None:
        out["int8_float_ops"] = _goal(len(graph.float_ops), "0 (or shown to cost nothing)",
                                      lambda v: not graph.float_ops)
    return out


def gate_result(config: BuildConfig, metrics: TestMetrics) -> GateResult:
    """The promises the int8 model broke, each as one line (none: all kept)."""
    e, gates, failures = metrics.edge_int8, config.gates, []
    if e.accuracy_drop_vs_fp32 is not None and e.accuracy_drop_vs_fp32 > gates.max_int8_accuracy_drop:
        fp32 = metrics.edge_fp32.accuracy if metrics.edge_fp32 is not None else float("nan")
        failures.append(f"int8 accuracy {e.accuracy:.4f} is more than {gates.max_int8_accuracy_drop} "
                        f"below the float student's {fp32:.4f}")
    if e.weight_size_ratio_vs_fp32 is not None:
        failures += _size_failures(e.weight_size_ratio_vs_fp32, gates)
    return GateResult(tuple(failures))


def size_gate(config: BuildConfig, student_dir: Path) -> list[str]:
    """The int8 size gate, checked as soon as the student is converted (seconds, not after evaluation)."""
    ratio = size_metrics(student_dir / EDGE_FILE, student_dir / EDGE_FP32_FILE)["weight_size_ratio_vs_fp32"]
    return _size_failures(ratio, config.gates)


def _size_failures(ratio: float, gates: Gates) -> list[str]:
    if ratio > gates.max_int8_size_ratio:
        return [f"int8 weights are {ratio:.1%} of the fp32 weights (gate {gates.max_int8_size_ratio:.0%})"]
    return []


def warn(failures: list[str] | tuple[str, ...]) -> None:
    """Say each failed gate on stderr: a warning, unless the build is --strict (then the caller raises)."""
    for failure in failures:
        print(f"[build] WARNING: gate failed: {failure} (recorded; publish refuses the artifact "
              "without --allow-failed-gates; --strict makes it an error)", file=sys.stderr, flush=True)
