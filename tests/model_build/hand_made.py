"""Small hand-made inputs the model_build tests share."""

import math

import numpy as np

from model_build.evaluate.metrics import ModelMetrics, RoutingSummary, TestMetrics

# Five requests. The edge is wrong on #1 and #3, the teacher on #2; #1 and #3 tie on the score.
LABELS = np.array([0, 1, 2, 3, 4])
EDGE = np.array([0, 9, 2, 9, 4])
TEACHER = np.array([0, 1, 9, 3, 4])
SCORE = np.array([0.9, 0.2, 0.5, 0.2, 0.8])


def summary(**changes: object) -> RoutingSummary:
    """A test-split routing summary (no oos texts, no band), with `changes`."""
    fields = dict(
        score="max_prob", threshold=0.5, oos_threshold=None, oos_score=None, edge_oos_rate=0.0,
        target_joint_over_teacher=0.99, traffic_oos_fraction=None, escalation_rate=0.2, joint_accuracy=0.9,
        joint_over_teacher=0.99, joint_oos_recall=math.nan, joint_in_scope_accuracy=0.9,
        in_scope_escalation_rate=0.2, oos_escalation_rate=math.nan, edge_only_accuracy=0.8,
        cloud_only_accuracy=0.91,
    )
    return RoutingSummary(**{**fields, **changes})


def split_metrics(**changes: object) -> TestMetrics:
    """Test-split metrics of a 10-text split without oos texts, with `changes`."""
    model = ModelMetrics(accuracy=0.9, in_scope_accuracy=0.9, ece=0.02)
    fields = dict(n=10, oos_fraction=0.0, teacher=model, teacher_with_oos_rule=model, edge_int8=model,
                  routing=summary())
    return TestMetrics(**{**fields, **changes})
