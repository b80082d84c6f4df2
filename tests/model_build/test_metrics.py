"""metrics.json's layout comes from the typed results alone: model_build.evaluate.metrics."""

import json
import math
from pathlib import Path

from model_build.calibrate.curves import CurvePoint
from model_build.calibrate.fit import ValidationReport
from model_build.calibrate.thresholds import RoutingChoice
from model_build.evaluate.metrics import (
    BuildMetrics,
    GateResult,
    Goal,
    InScopeRouting,
    Int8Graph,
    ModelMetrics,
    SampledCurves,
)
from model_build.jsonable import jsonable
from tests.model_build.hand_made import split_metrics, summary


def test_a_model_lists_its_figures_in_metrics_json_order_without_the_absent_ones() -> None:
    model = ModelMetrics(accuracy=0.9, in_scope_accuracy=0.92, ece=0.03, oos_recall=0.5, latency_ms_b1=0.1,
                         size_bytes=1000, temperature=1.5)

    assert list(model.to_dict()) == ["accuracy", "in_scope_accuracy", "oos_recall", "ece", "size_bytes",
                                     "latency_ms_b1", "temperature"]


def test_the_test_part_nests_as_metrics_json_does() -> None:
    fp32 = ModelMetrics(accuracy=0.95, in_scope_accuracy=0.95, ece=0.01)
    inside = InScopeRouting(escalation_rate=0.1, joint_accuracy=0.9, joint_over_teacher=0.98,
                            edge_only_accuracy=0.8, cloud_only_accuracy=0.92, edge_oos_rate=0.0)

    out = split_metrics(edge_fp32=fp32, routing_in_scope=inside).to_dict()

    assert list(out) == ["split", "n", "oos_fraction", "teacher", "teacher_with_oos_rule", "edge_int8",
                         "edge_fp32", "student_float", "routing", "routing_in_scope"]
    assert out["student_float"] == {"accuracy": 0.95}
    # A rule's missing threshold is a statement (null), not an absent key.
    assert out["routing"]["oos_threshold"] is None and "oos_threshold" in out["routing"]
    assert "edge_int8_with_oos_rule" not in split_metrics().to_dict()


def test_the_shipped_point_is_the_escalation_plot_marker() -> None:
    point = split_metrics(routing=summary(escalation_rate=0.3)).routing_point()

    assert point == RoutingChoice(score_name="max_prob", threshold=0.5, escalation_rate=0.3, joint_accuracy=0.9,
                                  joint_over_teacher=0.99, teacher_accuracy=0.91, target_ratio=0.99,
                                  reachable=True, n_escalated=3)


def test_build_metrics_serialise_once_with_undefined_numbers_as_null(tmp_path: Path) -> None:
    point = CurvePoint(threshold=-math.inf, escalation_rate=0.0, joint_accuracy=0.8, n_escalated=0)
    choice = RoutingChoice("max_prob", 0.5, 0.2, 0.9, 0.99, 0.91, 0.99, True, 2)
    metrics = BuildMetrics(
        test=split_metrics(),
        validation=ValidationReport(traffic_oos_fraction=None, edge_temperature=1.2, cloud_temperature=0.9,
                                    cloud_oos=None, routing_choices={"max_prob": choice}, routing_best="max_prob"),
        int8_graph=Int8Graph(ops=("ADD",), op_count=3, float_ops=()),
        goals={"edge_ece": Goal(0.02, "<= 0.02", True)},
        gates=GateResult(("int8 weights are too big",)),
        curves=SampledCurves({"max_prob": (point,)}, None),
        timings_s={"data": 1.0, "total_s": 2.0}, machine={"cpu": "x"}, cached_stages=("teacher",),
    )

    on_disk = json.loads(metrics.write(tmp_path).read_text())

    assert on_disk == jsonable(metrics.to_dict())
    assert list(on_disk)[-7:] == ["validation", "int8_graph", "goals", "gates", "timings_s", "machine",
                                  "cached_stages"]
    assert on_disk["routing"]["curve"] == {"max_prob": [{"threshold": None, "escalation_rate": 0.0,
                                                         "joint_accuracy": 0.8, "n_escalated": 0}]}
    assert "curve_in_scope" not in on_disk["routing"]
    assert on_disk["routing"]["joint_oos_recall"] is None  # NaN in memory
    assert on_disk["gates"] == {"passed": False, "failures": ["int8 weights are too big"]}
    assert list(on_disk["validation"]) == ["traffic_oos_fraction", "edge_temperature", "cloud_temperature",
                                           "routing_choices", "routing_best"]
