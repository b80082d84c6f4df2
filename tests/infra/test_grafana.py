"""infra/grafana/edge_dashboard.json against what the edge really exports and how Prometheus scrapes it.

The metric names come from the edge's own registry (`edge_container.metrics.Metrics`, instantiated, and the
labels it is given when the service is wired), the target labels from infra/prometheus.yml: a panel that
queries a metric the edge does not export, plots it on the wrong unit, or averages probes into the request
latency fails here, not on a dashboard nobody looks at until an incident."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from edge_container.app import create_app
from edge_container.metrics import Metrics
from edge_container.settings import Settings
from edge_container.wiring import EdgeStack

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((REPO / "infra" / "grafana" / "edge_dashboard.json").read_text())
SCRAPE = yaml.safe_load((REPO / "infra" / "prometheus.yml").read_text())
# Series names a family of each type exposes (prometheus_client's text format).
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum", "_created"),
            "summary": ("", "_count", "_sum", "_created"), "info": ("_info",), "stateset": ("",), "unknown": ("",)}
# Routes that are not requests for an answer: scrapes and probes (their latency says nothing of the model's).
PROBES = {"metrics", "healthz", "readyz", "health", "v2_live", "v2_ready", "v2_model_ready"}
BYTES, TIME = {"bytes", "decbytes", "Bps", "binBps"}, {"s", "ms"}
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
                "group_right", "inf", "nan"}


def target_labels() -> set[str]:
    """Labels Prometheus attaches to every scraped series: a metric's own label of the same name is renamed
    `exported_<name>` (honor_labels is off), so the dashboard's selectors on it would match nothing."""
    labels = {"job", "instance"}
    for job in SCRAPE["scrape_configs"]:
        for static in job.get("static_configs", []):
            labels |= set(static.get("labels", {}))
    return labels


@pytest.fixture(scope="module")
def wired(tmp_path_factory: pytest.TempPathFactory) -> EdgeStack:
    """The edge's stack as `serve` builds it (nothing loaded or started), with one refused model: its metrics
    carry the labels the wiring and the reload path give them (the device's info, the last reload error)
    beside the registry's own families."""
    stack = EdgeStack.create(Settings(model_dir=tmp_path_factory.mktemp("models"), workers=0))
    stack.models.refused("/models/next", "folder", ValueError("a test's refusal"))
    return stack


def exported(metrics: Metrics) -> dict[str, set[str]]:
    """Every series name the registry exposes, with the label names it can carry."""
    labels: dict[str, set[str]] = {}
    wrapper_labels = {m._name: set(m._labelnames) for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}
    for family in metrics.registry.collect():
        own = wrapper_labels.get(family.name, set())
        for suffix in SUFFIXES[family.type]:
            labels.setdefault(family.name + suffix, set()).update(own | ({"le"} if suffix == "_bucket" else set()))
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


def panels() -> Iterator[dict[str, Any]]:
    yield from DASHBOARD["panels"]


def queries() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in panels():
        for target in panel.get("targets", []):
            yield panel, target


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(metric name, [(label, operator, value)]) for every series selector in a PromQL expression."""
    found = []
    for match in re.finditer(r'([A-Za-z_:][A-Za-z0-9_:]*)?\s*(\{(?:[^{}"]|"(?:[^"\\]|\\.)*")*\})', expr):
        matchers = [(m[1], m[2], json.loads(m[3])) for m in
                    re.finditer(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*")', match[2])]
        if match[1] and match[1] not in PROMQL_WORDS:
            found.append((match[1], matchers))
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: identifiers that are not functions, keywords, labels or strings."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    bare = re.sub(r"\{[^}]*\}", "", bare)
    bare = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", bare)
    bare = re.sub(r"\[[^\]]*\]", "", bare)
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", bare):
        if not match[2] and match[1] not in PROMQL_WORDS:
            names.add(match[1])
    return names


def selects(op: str, pattern: str, value: str) -> bool:
    """Prometheus matcher semantics (regular expressions are anchored)."""
    if op in ("=", "!="):
        return (value == pattern) == (op == "=")
    return bool(re.fullmatch(pattern, value)) == (op == "=~")


def unit_of(panel: dict[str, Any], ref_id: str) -> str | None:
    config = panel.get("fieldConfig", {})
    unit = config.get("defaults", {}).get("unit")
    for override in config.get("overrides", []):
        if override["matcher"] == {"id": "byFrameRefID", "options": ref_id}:
            unit = next((p["value"] for p in override["properties"] if p["id"] == "unit"), unit)
    return unit


def expected_units(expr: str, names: set[str]) -> set[str] | None:
    """The units a query's values are in, from the metric names' base-unit suffixes (None: any)."""
    if any(n.endswith("_celsius") for n in names):
        return {"celsius"}
    if any(n.endswith(("_bytes", "_bytes_total")) for n in names):
        return BYTES
    if "histogram_quantile" in expr and any(n.endswith("_seconds_bucket") for n in names):
        return TIME
    if any(n.endswith("_ratio") for n in names):
        return {"percentunit"}
    return None


# --------------------------------------------------------------------------- tests


def test_the_query_parser_reads_names_labels_and_matchers() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, source) (rate(edge_request_duration_seconds_bucket'
            '{device=~"$device", endpoint!~"metrics|healthz"}[5m]))) / scalar(up)')
    assert metric_names(expr) == {"edge_request_duration_seconds_bucket", "up"}
    assert selectors(expr) == [("edge_request_duration_seconds_bucket",
                                [("device", "=~", "$device"), ("endpoint", "!~", "metrics|healthz")])]
    assert selects("!~", "metrics|healthz", "predict") and not selects("!~", "metrics|healthz", "metrics")


def test_every_query_names_a_metric_the_edge_exports(wired: EdgeStack) -> None:
    names = exported(wired.metrics)
    assert "edge_texts_total" in names and "edge_request_duration_seconds_bucket" in names  # the parser works
    used = {(panel["title"], name) for panel, target in queries() for name in metric_names(target["expr"])}
    for variable in DASHBOARD["templating"]["list"]:
        if variable["type"] == "query":
            used |= {(f"${variable['name']}", name) for name in re.findall(r"label_values\((\w+)", variable["definition"])}
    unknown = sorted((where, name) for where, name in used if name not in names)
    assert not unknown, f"queries name metrics the edge does not export: {unknown}"


def test_every_selector_names_labels_the_series_carry(wired: EdgeStack) -> None:
    names, scraped = exported(wired.metrics), target_labels()
    wrong = [(panel["title"], metric, label) for panel, target in queries()
             for metric, matchers in selectors(target["expr"]) for label, _, _ in matchers
             if label not in names.get(metric, set()) | scraped]
    assert not wrong, f"selectors on labels these series never carry: {wrong}"


def test_no_metric_label_clashes_with_a_label_the_scrape_adds(wired: EdgeStack) -> None:
    """A clash is renamed exported_<label> by Prometheus: `device=~"$device"` would then select the scrape
    target, not what the edge said about itself."""
    clashes = sorted((name, label) for name, labels in exported(wired.metrics).items()
                     for label in labels & target_labels())
    assert not clashes, f"metric labels that clash with the scrape's target labels: {clashes}"


def test_each_query_is_plotted_in_the_unit_of_its_metric() -> None:
    wrong = []
    for panel, target in queries():
        names, unit = metric_names(target["expr"]), unit_of(panel, target["refId"])
        expected = expected_units(target["expr"], names)
        if expected is not None and unit not in expected:
            wrong.append((panel["title"], target["refId"], unit, sorted(expected)))
        # and the other way: a dimensioned axis only carries values of that dimension
        for units, suffixes in ((BYTES, ("_bytes", "_bytes_total")), ({"celsius"}, ("_celsius",)),
                                (TIME, ("_seconds_bucket",))):
            if unit in units and not all(n.endswith(suffixes) for n in names):
                wrong.append((panel["title"], target["refId"], unit, sorted(names)))
    assert not wrong, f"queries on the wrong unit: {wrong}"


def test_request_latency_percentiles_leave_out_scrapes_and_probes(wired: EdgeStack) -> None:
    routes = {route.name for route in create_app(stack=wired).routes}
    assert PROBES <= routes, f"probe routes the test names but the app does not have: {PROBES - routes}"
    checked = 0
    for panel, target in queries():
        for metric, matchers in selectors(target["expr"]):
            if metric != "edge_request_duration_seconds_bucket" or "by (le, endpoint" in target["expr"]:
                continue
            endpoint = [(op, value) for label, op, value in matchers if label == "endpoint"]
            chosen = {r for r in routes if all(selects(op, value, r) for op, value in endpoint)}
            assert not chosen & PROBES, f"{panel['title']} ({target['refId']}) includes {sorted(chosen & PROBES)}"
            assert "predict" in chosen, f"{panel['title']} ({target['refId']}) leaves out /v1/predict"
            checked += 1
    assert checked >= 3  # the p50/p99 by source panel and the P95/P99 one


def test_the_last_reload_error_is_on_a_panel() -> None:
    """The README's promise: a canary's failed reloads show on the dashboard."""
    shown = [panel["title"] for panel, target in queries()
             if "edge_reload_last_error_info" in metric_names(target["expr"])]
    assert shown


def test_panels_do_not_overlap_and_have_unique_ids() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in panels():
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids))
