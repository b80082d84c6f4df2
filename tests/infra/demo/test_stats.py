"""infra.demo.stats: the figures of a run, from hand-made outcomes whose answers are known."""

from __future__ import annotations

import pytest

from infra.demo.records import Outcome, Sample
from infra.demo.stats import percentile, summarise

SAMPLES = [Sample("a1", "a"), Sample("b1", "b"), Sample("o1", "oos"), Sample("a2", "a"), Sample("b2", "b")]


def answered(index: int, label: str, source: str, edge_label: str, latency_ms: float, reason: str = "confident"
             ) -> Outcome:
    return Outcome(index, True, index * 0.1, latency_ms, 200, None, label, source, reason, edge_label, "e1", "c1")


def test_accuracies_rates_cost_and_latency_of_a_small_run() -> None:
    # Given five texts: one kept by the edge, two answered by the cloud, one edge fallback, one failure
    outcomes = [
        answered(0, "a", "edge", "a", 1.0),
        answered(1, "b", "cloud", "a", 100.0),
        answered(2, "a", "edge_fallback", "a", 50.0, reason="deadline"),
        answered(3, "a", "cloud", "b", 200.0),
        Outcome(4, False, 0.4, 5.0, status=503, error="unavailable"),
    ]
    cloud_labels = ["a", "b", "oos", "a", "a"]  # the cloud-only pass: right on 4 of 5

    r = summarise(SAMPLES, outcomes, cloud_labels, oos_label="oos", pricing=(1, 1), spent=6, wall_s=2.0,
                  budget={"limit": 10, "spent": 6, "remaining": 4})

    assert (r["requests"], r["failed"], r["failures"]) == (5, 1, {"503": 1})
    assert r["edge_only_accuracy"] == 0.25  # a, a (gold b), a (gold oos), b (gold a): 1 of 4 right
    assert r["joint_accuracy"] == 0.75  # a, b, a(oos), a -> 3 of 4
    assert r["cloud_only_accuracy"] == 0.8
    assert r["routing_joint_accuracy"] == 1.0  # the fallback's text answered by the cloud: oos
    assert r["escalation_rate"] == 0.75 and r["cloud_answer_rate"] == 0.5 and r["fallback_rate"] == 0.25
    assert r["answers_by_source"] == {"edge": 1, "cloud": 2, "edge_fallback": 1}
    assert r["fallbacks_by_reason"] == {"deadline": 1}
    assert r["oos_recall"] == {"edge": 0.0, "cloud": 1.0, "joint": 0.0}
    assert r["in_scope_accuracy"]["joint"] == 1.0
    assert (r["cost"], r["cloud_only_cost"], r["cost_ratio"]) == (6, 10, 0.6)
    assert r["latency_ms_by_source"]["cloud"] == {"count": 2, "p50": 100.0, "p95": 200.0, "p99": 200.0}
    assert r["throughput_rps"] == 2.5 and r["model_versions"] == {"edge": ["e1"], "cloud": ["c1"]}


def test_without_an_oos_label_there_is_no_oos_recall() -> None:
    r = summarise(SAMPLES[:1], [answered(0, "a", "edge", "a", 1.0)], ["a"], oos_label=None, pricing=(1, 1),
                  spent=0, wall_s=0.0, budget={})

    assert r["oos_recall"] == {"edge": None, "cloud": None, "joint": None}
    assert r["throughput_rps"] is None


def test_refused_requests_are_counted_by_who_refused_them_and_why_with_examples() -> None:
    outcomes = [answered(2, "oos", "edge", "a", 1.0, reason="out_of_scope"),
                answered(0, "oos", "edge", "b", 1.0, reason="out_of_scope"),
                answered(1, "oos", "cloud", "a", 90.0, reason="low_confidence"),
                answered(3, "a", "edge", "a", 1.0)]

    r = summarise(SAMPLES, outcomes, ["oos", "oos", "oos", "a", "b"], oos_label="oos", pricing=(1, 1), spent=1,
                  wall_s=1.0, budget={})

    assert r["refused"] == {
        "edge/out_of_scope": {"texts": 2, "in_scope": 1,
                              "examples": [{"text": "o1", "gold": "oos"}, {"text": "a1", "gold": "a"}]},
        "cloud/low_confidence": {"texts": 1, "in_scope": 1, "examples": [{"text": "b1", "gold": "b"}]},
    }


@pytest.mark.parametrize(("q", "expected"), [(0, 1.0), (50, 2.0), (99, 4.0), (100, 4.0)])
def test_percentiles_are_nearest_rank(q: float, expected: float) -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], q) == expected
    assert percentile([], q) is None
