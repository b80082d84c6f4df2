"""The Markdown report renders every section it is given: model_build.report (with report_sections and
report_format)."""

from pathlib import Path
from typing import Any

import numpy as np

from model_build.calibrate.routing import apply_threshold
from model_build.report.markdown import render_report_md, write_report_md
from modelpack.scores import SCORES

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def routed_split(rate: float, joint: float, teacher: float, recall: float, in_scope: float) -> dict[str, Any]:
    return {
        "escalation_rate": rate,
        "joint_accuracy": joint,
        "teacher_accuracy": teacher,
        "joint_over_teacher": round(joint / teacher, 4),
        "joint_oos_recall": recall,
        "in_scope_accuracy": in_scope,
        "in_scope_escalation_rate": rate - 0.07,
    }


def edge_variant(size: int, b1: float, b32: float, accuracy: float) -> dict[str, Any]:
    return {"size_bytes": size, "latency_ms_b1": b1, "latency_ms_b32": b32, "accuracy": accuracy}


def score_choice(threshold: float, rate: float, joint: float) -> dict[str, Any]:
    return {"threshold": threshold, "escalation_rate": rate, "joint_accuracy": joint, "reachable": True}


def full_metrics() -> dict[str, Any]:
    return {
        "title": "Build 2025-01-02",
        "data": {
            "dataset": "clinc150",
            "variant": "full",
            "n_classes": 151,
            "oos_label": "oos",
            "splits": {
                "val": {"n": 3100, "oos_fraction": 0.0323},
                "test": {"n": 5500, "oos_fraction": 0.1818},
            },
        },
        "teacher": {
            "name": "minilm-l6 + logreg",
            "accuracy": 0.8912,
            "in_scope_accuracy": 0.9411,
            "oos_recall": 0.6633,
            "oos_threshold": 0.4125,
        },
        "edge": {
            "fp32": edge_variant(4_200_000, 3.1, 4.4, 0.8512),
            "int8": edge_variant(1_100_000, 1.2, 1.9, 0.8467),
        },
        "float_ops": {"count": 2, "ops": {"DEQUANTIZE": 1, "SOFTMAX": 1}},
        "calibration": {
            "temperature": 1.8731,
            "fit_split": "val",
            "eval_split": "test",
            "oos_fraction": 0.18,
            "ece_before": 0.0912,
            "ece_after": 0.0213,
        },
        "routing": {
            "score": "margin",
            "threshold": 0.4375,
            "target_ratio": 0.99,
            "oos_fraction": 0.18,
            "chosen_on": "val",
            "reachable": True,
            "splits": {
                "val": routed_split(0.2211, 0.9123, 0.9201, 0.7012, 0.9389),
                "test": routed_split(0.2633, 0.8854, 0.8912, 0.6521, 0.9377),
            },
            "scores": {
                "max_prob": score_choice(0.61, 0.2410, 0.9120),
                "margin": score_choice(0.4375, 0.2211, 0.9123),
            },
        },
        "escalation_table": {
            "score": "margin",
            "split": "test",
            "teacher_accuracy": 0.8912,
            "rows": [
                {"budget": 0.0, "escalation_rate": 0.0, "joint_accuracy": 0.8467, "threshold": float("-inf")},
                {"budget": 0.05, "escalation_rate": 0.0498, "joint_accuracy": 0.8655, "threshold": 0.1234},
            ],
        },
        "goals": [
            {"name": "joint / teacher", "value": 0.9935, "op": ">=", "target": 0.99, "unit": "x"},
            {"name": "escalation rate", "value": 0.2633, "op": "<=", "target": 0.2, "unit": "fraction"},
            {"name": "int8 accuracy drop", "value": None, "op": "<=", "target": 0.01, "unit": "pp"},
        ],
        "timings": {"data": 2.5, "teacher": 61.25, "student": 300.0},
    }


def test_report_contains_the_key_numbers_of_every_section(tmp_path: Path) -> None:
    reliability = tmp_path / "plots" / "reliability.png"
    curve = tmp_path / "plots" / "escalation.png"
    reliability.parent.mkdir()
    reliability.write_bytes(PNG_SIGNATURE)
    curve.write_bytes(PNG_SIGNATURE)

    path = write_report_md(full_metrics(), tmp_path, {"reliability": reliability, "escalation_curve": curve})
    text = path.read_text(encoding="utf-8")

    assert path == tmp_path / "report.md"
    assert text.startswith("# Build 2025-01-02\n")
    # data
    assert "| test | 5,500 | 18.18 % |" in text
    # teacher
    assert "| OOS recall | 66.33 % |" in text
    # edge: sizes, latencies, accuracy, and the derived comparison
    assert "| int8 | 1.0 MiB | 1.20 ms | 1.90 ms | 84.67 % |" in text
    assert "int8 is 3.82× smaller than fp32; accuracy change -0.45 pp." in text
    # float ops
    assert "| `DEQUANTIZE` | 1 |" in text and "2 float op(s) remain" in text
    # calibration
    assert "- Temperature: 1.8731" in text
    assert "| ECE | 0.0912 | 0.0213 |" in text
    # routing: choice, target, mix, and per-split figures incl. OOS and in-scope
    assert "- Chosen score: `margin`" in text
    assert "- Threshold (escalate iff score <): 0.4375" in text
    assert "joint accuracy ≥ 0.9900 × teacher" in text
    assert "- Assumed traffic mix (oos share): 18.0 % oos" in text
    assert "| escalation rate | 22.11 % | 26.33 % |" in text
    assert "| joint / teacher | 0.9915 | 0.9935 |" in text
    assert "| joint OOS recall | 70.12 % | 65.21 % |" in text
    assert "| in-scope joint accuracy | 93.89 % | 93.77 % |" in text
    assert "| `margin` **(chosen)** | 0.4375 | 22.11 % | 91.23 % | yes |" in text
    # escalation table
    assert "| 5 % | 4.98 % | 86.55 % | 0.9712 | 0.1234 |" in text
    assert "| 0 % | 0.00 % | 84.67 % | 0.9501 | -inf |" in text
    # goals: met, missed, and a missing number shown as n/a
    assert "1 met, 1 missed, 1 without a number (n/a)." in text
    assert "| joint / teacher | >= 0.9900× | 0.9935× | met |" in text
    assert "| escalation rate | <= 20.00 % | 26.33 % | **MISSED** |" in text
    assert "| int8 accuracy drop | <= +1.00 pp | n/a | n/a |" in text
    # timings
    assert "| student | 5 min 00.0 s |" in text
    assert "| **total (wall)** | 6 min 03.8 s |" in text
    # plots are linked relative to the report, in their sections
    assert "![reliability](plots/reliability.png)" in text
    assert text.index("![escalation_curve](plots/escalation.png)") > text.index("## Routing")
    assert "Sections without data" not in text


def test_report_renders_what_is_there_and_names_what_is_missing(tmp_path: Path) -> None:
    metrics = {"routing": {"score": "max_prob", "splits": {"test": {"escalation_rate": 0.3}}}}

    text = write_report_md(metrics, tmp_path, {"escalation_curve": tmp_path / "never-drawn.png"}).read_text()

    assert "## Routing" in text and "## Teacher" not in text
    assert "| escalation rate | 30.00 % |" in text
    # the routing section's key numbers that are absent are shown, not dropped
    assert "- Threshold (escalate iff score <): n/a" in text
    assert "| joint OOS recall | n/a |" in text
    assert "- Assumed traffic mix (oos share): n/a" in text
    assert "_Sections without data in this build: Data, Teacher (cloud)" in text
    assert "Goals" in text.split("Sections without data")[1]
    assert "_Plot `escalation_curve` is missing: no file at `never-drawn.png`._" in text


def test_report_states_an_unweighted_mix_and_an_unreachable_target() -> None:
    routing = {"score": "margin", "threshold": float("inf"), "oos_fraction": None, "reachable": False}
    metrics = {"routing": routing}

    text = render_report_md(metrics)

    assert "- Assumed traffic mix (oos share): split as is (no re-weighting)" in text
    assert "- Target reachable: **no**" in text
    assert "- Threshold (escalate iff score <): +inf" in text


def test_report_accepts_the_routing_dataclasses_and_a_flat_edge_layout(routed: dict[str, Any]) -> None:
    comparison = routed["comparison"]
    choice = comparison.best_choice
    test_metrics = apply_threshold(
        routed["edge"], routed["teacher"], routed["labels"], SCORES[choice.score_name](routed["probs"]),
        choice.threshold, oos_index=0,
    )
    metrics = {
        "routing": {"score": choice.score_name, "threshold": choice.threshold, "target_ratio": 0.99,
                    "oos_fraction": None, "splits": {"test": test_metrics}, "scores": comparison.choices},
        "edge_fp32": {"accuracy": 0.9},
        "edge_int8": {"accuracy": 0.88},
        "goals": {"joint / teacher": {"value": np.float64(test_metrics.joint_over_teacher), "op": ">=",
                                      "target": 0.99}},
    }

    text = render_report_md(metrics)

    assert f"| escalation rate | {100 * test_metrics.escalation_rate:.2f} % |" in text
    assert f"| joint OOS recall | {100 * test_metrics.joint_oos_recall:.2f} % |" in text
    assert f"| `{choice.score_name}` **(chosen)** |" in text
    assert "| int8 | n/a | n/a | n/a | 88.00 % |" in text
    assert "accuracy change -2.00 pp" in text
    assert "1 met, 0 missed, 0 without a number (n/a)." in text


def test_report_says_when_no_float_ops_remain_and_when_no_goals_were_set() -> None:
    text = render_report_md({"float_ops": {"count": 0, "ops": {}}, "goals": []})

    assert "None: every op in the int8 graph is integer." in text
    assert "No goals were recorded for this build." in text


def test_report_flags_a_goal_claimed_met_without_a_number() -> None:
    goal = {"name": "p95 latency", "met": True, "target": 20, "op": "<=", "unit": "ms"}

    text = render_report_md({"goals": [goal]})

    assert "| p95 latency | <= 20.00 ms | n/a | n/a |" in text
    assert "0 met, 0 missed, 1 without a number (n/a)." in text
