"""infra.demo.report: the markdown page of a report, and its notes."""

from __future__ import annotations

import argparse
from typing import Any

from infra.demo.records import Event, Outcome, Run
from infra.demo.report import explain, render_markdown


def report(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "scenario": "normal", "requests": 10, "failed": 0, "failures": {}, "edge_only_accuracy": 0.8,
        "cloud_only_accuracy": 0.9, "joint_accuracy": 0.9, "joint_over_cloud": 1.0, "routing_joint_accuracy": 0.9,
        "escalation_rate": 0.2, "cloud_answer_rate": 0.2, "fallback_rate": 0.0,
        "answers_by_source": {"edge": 8, "cloud": 2, "edge_fallback": 0}, "fallbacks_by_reason": {},
        "oos_recall": {"edge": 0.5, "cloud": 1.0, "joint": 1.0},
        "in_scope_accuracy": {"edge": 0.9, "cloud": 0.9, "joint": 0.9}, "cost": 4, "cloud_only_cost": 20,
        "cost_ratio": 0.2, "pricing": {"units_per_call": 1, "units_per_text": 1},
        "budget": {"limit": 20, "spent": 4, "remaining": 16}, "p50_ms": 1.0, "p95_ms": 90.0, "p99_ms": 120.0,
        "latency_ms_by_source": {"edge": {"count": 8, "p50": 1.0, "p95": 2.0, "p99": 2.0},
                                 "cloud": {"count": 2, "p50": 90.0, "p95": 120.0, "p99": 120.0},
                                 "edge_fallback": {"count": 0, "p50": None, "p95": None, "p99": None}},
        "wall_s": 1.0, "throughput_rps": 10.0, "timeline": [], "phases": [], "notes": [],
        "config": {"concurrency": 16, "cloud_concurrency": 4, "model_version": "v1", "model_dir": "/m",
                   "expected_escalation_rate": 0.2, "tenant": "demo", "command": "python -m infra.demo"},
    }
    return {**base, **changes}


PLOTS = {"latency": "demo_latency_by_source.png", "timeline": "demo_sources_over_time.png"}


def test_the_page_has_the_figures_the_plots_and_how_to_reproduce_it() -> None:
    page = render_markdown(report(), PLOTS)

    assert page.startswith("# Local stack demo: `normal` scenario\n")
    assert "the local API adapter (4 Lambda execution environments)" in page
    assert "| joint / cloud-only | 100.00 % |" in page
    assert "| cloud | 2 | 90.0 | 120.0 | 120.0 |" in page and "| edge_fallback | 0 | n/a | n/a | n/a |" in page
    assert "No escalation fell back to the edge." in page
    assert "![latency by source](demo_latency_by_source.png)" in page
    assert "## Timeline" not in page and "## Notes" not in page
    assert page.endswith("Reproduce: `python -m infra.demo`\n")
    assert "No request was answered `oos`." in page


def test_refused_requests_are_shown_with_who_refused_them_and_examples() -> None:
    refused = {"edge/out_of_scope": {"texts": 3, "in_scope": 1,
                                     "examples": [{"text": "tell me a joke", "gold": "oos"}]}}
    page = render_markdown(report(refused=refused), PLOTS)

    assert "| edge/out_of_scope | 3 | 1 |" in page
    assert '- "tell me a joke" (gold: oos)' in page


def test_a_fault_run_shows_its_timeline_phases_and_fallbacks() -> None:
    page = render_markdown(report(
        scenario="faults", fallbacks_by_reason={"circuit_open": 3},
        timeline=[{"at_s": 1.5, "what": "cloud killed", "detail": "SIGKILL"}],
        phases=[{"from_s": 0.0, "to_s": 1.5, "after": "start", "requests": 5, "answers": {"edge": 5}}],
        notes=["a note"]), PLOTS)

    assert "| circuit_open | 3 |" in page
    assert "| 1 | 1.50 | cloud killed | SIGKILL |" in page
    assert "| 0.00 | 1.50 | start | 5 | edge 5 |" in page
    assert "- a note" in page


class _Routing:
    target_joint_over_teacher = 0.99


class _Manifest:
    routing = _Routing()


def test_the_notes_explain_a_slow_cloud_and_a_restored_budget_the_edge_did_not_use() -> None:
    slow = report(latency_ms_by_source={**report()["latency_ms_by_source"],
                                        "cloud": {"count": 2, "p50": 900.0, "p95": 1.0, "p99": 1.0}})
    fallback = Outcome(0, True, 5.0, 1.0, 200, None, "a", "edge_fallback", "budget_exhausted", "a", "e", "c")
    run = Run([fallback], [], "c", [Event(4.0, "budget restored")], 6.0, 0, {}, (1, 1), "demo")
    args = argparse.Namespace(scenario="faults", concurrency=16, cloud_concurrency=1)

    notes = explain(slow, args, _Manifest(), run)

    assert any("900 ms at the median" in n and "runs 1 invocation(s) at a time" in n for n in notes), notes
    assert any("after the budget was restored" in n for n in notes), notes
