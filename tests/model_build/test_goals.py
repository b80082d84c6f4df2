"""Goals are judged on the numbers there are, gates name the promise broken: model_build.evaluate.goals."""

import math

from model_build.config import preset
from model_build.evaluate.goals import gate_result, goals
from model_build.evaluate.metrics import Int8Graph, ModelMetrics
from tests.model_build.hand_made import split_metrics, summary


def test_a_goal_without_a_number_is_neither_met_nor_missed() -> None:
    teacher = ModelMetrics(accuracy=0.97, in_scope_accuracy=0.97, ece=0.01)  # no oos texts: no recall

    out = goals(split_metrics(teacher_with_oos_rule=teacher, routing=summary(joint_over_teacher=0.99 - 1e-10)),
                None)

    assert out["teacher_with_oos_rule_oos_recall"].to_dict() == {"value": None, "target": ">= 0.80", "met": None}
    assert out["teacher_with_oos_rule_in_scope"].met is True
    assert out["joint_over_teacher"].met is True  # within the rounding slack of 0.99
    assert out["joint_oos_recall"].met is False and math.isnan(out["joint_oos_recall"].value)
    assert "int8_accuracy_drop" not in out and "int8_float_ops" not in out


def test_int8_goals_compare_against_the_float_student_and_the_graph() -> None:
    fp32 = ModelMetrics(accuracy=0.95, in_scope_accuracy=0.95, ece=0.01, latency_ms_b1=0.2, latency_ms_b32=2.0)
    int8 = ModelMetrics(accuracy=0.949, in_scope_accuracy=0.95, ece=0.01, latency_ms_b1=0.1, latency_ms_b32=3.0,
                        accuracy_drop_vs_fp32=0.001, weight_size_ratio_vs_fp32=0.25)

    out = goals(split_metrics(edge_int8=int8, edge_fp32=fp32), Int8Graph(("ADD", "DEQUANTIZE"), 5, ("DEQUANTIZE",)))

    assert out["int8_latency_b1"].to_dict() == {"value": 0.1, "target": "<= fp32 (0.2)", "met": True}
    assert out["int8_latency_b32"].met is False
    assert (out["int8_accuracy_drop"].met, out["int8_size_ratio"].met) == (True, True)
    assert out["int8_float_ops"].to_dict() == {"value": 1, "target": "0 (or shown to cost nothing)", "met": False}


def test_gates_name_each_broken_promise() -> None:
    fp32 = ModelMetrics(accuracy=0.95, in_scope_accuracy=0.95, ece=0.01)
    int8 = ModelMetrics(accuracy=0.94, in_scope_accuracy=0.94, ece=0.01, accuracy_drop_vs_fp32=0.01,
                        weight_size_ratio_vs_fp32=0.3)

    result = gate_result(preset("full"), split_metrics(edge_int8=int8, edge_fp32=fp32))

    assert not result.passed
    assert result.failures == (
        "int8 accuracy 0.9400 is more than 0.005 below the float student's 0.9500",
        "int8 weights are 30.0% of the fp32 weights (gate 26%)",
    )
    assert gate_result(preset("full"), split_metrics()).passed
