"""What a build measures, as frozen dataclasses, and their one serialisation: metrics.json.

:class:`TestMetrics` is the test-split part an artifact's files alone reproduce (``evaluate``);
:class:`BuildMetrics` adds what only the build knows (validation choices, goals, gates, curves, timings).
Each ``to_dict`` gives exactly metrics.json's keys and nesting; `model_build.jsonable` makes it JSON (NaN and
infinities become null).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_build.calibrate.curves import CurvePoint, SplitCurves, curve_at_rates
from model_build.calibrate.fit import ValidationReport
from model_build.calibrate.rejection import Rejection
from model_build.calibrate.thresholds import RoutingChoice
from model_build.jsonable import jsonable
from model_build.teacher.cloud_precision import PrecisionChoice

METRICS_FILE = "metrics.json"


@dataclass(frozen=True, kw_only=True)
class ModelMetrics:
    """One model (or one model with an answer rule) on the test split. A field that is None is absent
    from metrics.json: the split has no oos texts, or the figure is not measured for this model."""

    accuracy: float
    in_scope_accuracy: float
    oos_recall: float | None = None  # with oos texts in the split
    oos_auroc: float | None = None  # with oos and in-scope texts
    ece: float
    size_bytes: int | None = None
    size_ratio_vs_fp32: float | None = None
    weight_size_ratio_vs_fp32: float | None = None  # the int8 size gate's figure
    weight_bytes: int | None = None
    fixed_bytes: int | None = None
    accuracy_drop_vs_fp32: float | None = None
    latency_ms_b1: float | None = None
    latency_ms_b32: float | None = None
    ece_before: float | None = None  # the build's: before temperature scaling
    temperature: float | None = None  # the build's: the manifest's

    def to_dict(self) -> dict[str, Any]:
        return {f.name: v for f in dataclasses.fields(self) if (v := getattr(self, f.name)) is not None}


@dataclass(frozen=True, kw_only=True)
class RoutingSummary:
    """The manifest's routing rule applied to the test split (metrics.json ``routing``)."""

    score: str
    threshold: float
    oos_threshold: float | None
    oos_score: str | None
    edge_oos_rate: float
    target_joint_over_teacher: float
    traffic_oos_fraction: float | None
    escalation_rate: float
    joint_accuracy: float
    joint_over_teacher: float
    joint_oos_recall: float
    joint_in_scope_accuracy: float
    in_scope_escalation_rate: float
    oos_escalation_rate: float
    edge_only_accuracy: float
    cloud_only_accuracy: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class InScopeRouting:
    """The same rule on the test split's in-scope texts alone (metrics.json ``routing_in_scope``)."""

    escalation_rate: float
    joint_accuracy: float
    joint_over_teacher: float
    edge_only_accuracy: float
    cloud_only_accuracy: float
    edge_oos_rate: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class TestMetrics:
    """The test split measured through LiteRT with the manifest's temperatures and thresholds as they are."""

    __test__ = False  # not a pytest test class, whatever its name

    n: int
    oos_fraction: float
    teacher: ModelMetrics  # the argmax
    teacher_with_oos_rule: ModelMetrics  # as deployed: `oos` below its calibrated confidence
    edge_int8: ModelMetrics
    edge_int8_with_oos_rule: ModelMetrics | None = None  # with the edge's own `oos` band, when it has one
    edge_fp32: ModelMetrics | None = None  # the float student, when the folder holds it
    routing: RoutingSummary
    routing_in_scope: InScopeRouting | None = None  # when the split has oos texts
    rejection: Rejection | None = None  # each tier's rejection curve and shipped point, with oos texts

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "split": "test", "n": self.n, "oos_fraction": self.oos_fraction,
            "teacher": self.teacher.to_dict(), "teacher_with_oos_rule": self.teacher_with_oos_rule.to_dict(),
            "edge_int8": self.edge_int8.to_dict(),
        }
        if self.edge_int8_with_oos_rule is not None:
            out["edge_int8_with_oos_rule"] = self.edge_int8_with_oos_rule.to_dict()
        if self.edge_fp32 is not None:
            out["edge_fp32"] = self.edge_fp32.to_dict()
            out["student_float"] = {"accuracy": self.edge_fp32.accuracy}
        out["routing"] = self.routing.to_dict()
        if self.routing_in_scope is not None:
            out["routing_in_scope"] = self.routing_in_scope.to_dict()
        if self.rejection is not None:
            out["rejection"] = self.rejection.to_dict()
        return out

    def routing_point(self) -> RoutingChoice:
        """The shipped rule's operating point on this split, as a choice (the escalation plot's marker)."""
        r = self.routing
        return RoutingChoice(
            score_name=r.score, threshold=float(r.threshold), escalation_rate=r.escalation_rate,
            joint_accuracy=r.joint_accuracy, joint_over_teacher=r.joint_over_teacher,
            teacher_accuracy=r.cloud_only_accuracy, target_ratio=r.target_joint_over_teacher,
            reachable=True, n_escalated=int(round(r.escalation_rate * self.n)),
        )


@dataclass(frozen=True)
class Int8Graph:
    """The int8 edge model's op list, written by the student stage (graph.json)."""

    ops: tuple[str, ...]
    op_count: int
    float_ops: tuple[str, ...]  # one entry per op instance computing in float

    @classmethod
    def load(cls, path: Path) -> Int8Graph:
        raw = json.loads(path.read_text())
        return cls(tuple(raw["ops"]), int(raw["op_count"]), tuple(raw["float_ops"]))

    def to_dict(self) -> dict[str, Any]:
        return {"ops": list(self.ops), "op_count": self.op_count, "float_ops": list(self.float_ops)}


@dataclass(frozen=True)
class Goal:
    """One goal of the build: its measured value, the target as text, and whether it is met (None: no
    value to judge)."""

    value: float | None
    target: str
    met: bool | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class GateResult:
    """The promises the int8 model broke, one line each (none: every gate passed)."""

    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "failures": list(self.failures)}


@dataclass(frozen=True)
class SampledCurves:
    """The test split's escalation curves at the report's budgets (calibrate.curves.TABLE_RATES)."""

    by_score: Mapping[str, tuple[CurvePoint, ...]]
    in_scope: tuple[CurvePoint, ...] | None  # the shipped score on in-scope texts, when there is an oos label

    @classmethod
    def of(cls, curves: SplitCurves) -> SampledCurves:
        return cls({name: curve_at_rates(c) for name, c in curves.by_score.items()},
                   curve_at_rates(curves.in_scope) if curves.in_scope is not None else None)


@dataclass(frozen=True)
class BuildMetrics:
    """Everything metrics.json holds."""

    test: TestMetrics
    validation: ValidationReport
    int8_graph: Int8Graph
    goals: Mapping[str, Goal]
    gates: GateResult
    curves: SampledCurves
    timings_s: Mapping[str, float]
    machine: Mapping[str, Any]
    cached_stages: tuple[str, ...]
    cloud_precision: PrecisionChoice | None = None  # fp32 vs int8 teacher, and which ships

    def to_dict(self) -> dict[str, Any]:
        out = self.test.to_dict()
        if self.cloud_precision is not None:
            out["teacher"]["precision_choice"] = self.cloud_precision.to_dict()
        out["routing"]["curve"] = {name: _points(points) for name, points in self.curves.by_score.items()}
        if self.curves.in_scope is not None:
            out["routing"]["curve_in_scope"] = _points(self.curves.in_scope)
        out.update(
            validation=self.validation.to_dict(), int8_graph=self.int8_graph.to_dict(),
            goals={name: goal.to_dict() for name, goal in self.goals.items()}, gates=self.gates.to_dict(),
            timings_s=dict(self.timings_s), machine=dict(self.machine), cached_stages=list(self.cached_stages),
        )
        return out

    def write(self, folder: Path) -> Path:
        path = folder / METRICS_FILE
        path.write_text(json.dumps(jsonable(self.to_dict()), indent=2) + "\n")
        return path


def _points(points: tuple[CurvePoint, ...]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(p) for p in points]
