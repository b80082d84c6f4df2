"""Prometheus metrics of one app instance, in a registry of its own (two apps in one process never clash)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_STAGE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self._requests(r)
        self._routing(r)
        self._cloud(r)
        self._model(r)
        self._device(r)
        self._feedback(r)
        # Pre-bound children for the per-request hot path (a .labels() lookup costs a lock and a dict).
        self.stage = {s: self.stage_seconds.labels(s) for s in ("queue", "tokenize", "infer", "cloud")}

    def _requests(self, r: CollectorRegistry) -> None:
        """What the HTTP API answers, how long each stage takes, and its listeners' connections."""
        self.request_seconds = Histogram(
            "edge_request_duration_seconds", "Request latency by endpoint and answer source",
            ["endpoint", "source"], buckets=_LATENCY_BUCKETS, registry=r)
        self.errors = Counter("edge_http_errors_total", "Error responses by endpoint and code",
                              ["endpoint", "code"], registry=r)
        self.stage_seconds = Histogram("edge_stage_duration_seconds", "Time spent per stage",
                                       ["stage"], buckets=_STAGE_BUCKETS, registry=r)
        self.batch_size = Histogram("edge_batch_size", "Texts per model batch", buckets=_BATCH_BUCKETS, registry=r)
        self.texts = Counter("edge_texts_total", "Texts answered by source", ["source"], registry=r)
        self.queue_depth = Gauge("edge_queue_depth", "Requests waiting for an interpreter", registry=r)
        self.listeners = _Listeners()  # edge_http_connections, edge_http_rejected_total: read at scrape time
        r.register(self.listeners)

    def _routing(self, r: CollectorRegistry) -> None:
        """What the routing sends up, and what comes back answered by the edge instead."""
        self.escalations = Counter("edge_escalations_total", "Texts sent to the cloud by routing reason",
                                   ["reason"], registry=r)
        self.priority_escalations = Counter("edge_escalations_by_priority_total",
                                            "Texts sent to the cloud by request priority", ["priority"], registry=r)
        self.fallbacks = Counter("edge_fallbacks_total", "Escalated texts answered by the edge, by reason",
                                 ["reason"], registry=r)
        self.recent_escalation = Gauge("edge_recent_escalation_ratio",
                                       "Share of the last ~1,000 auto-routed texts sent to the cloud", registry=r)
        self.estimated_oos_share = Gauge(
            "edge_estimated_oos_share", "Out-of-scope share of recent traffic, estimated by EM from the edge's "
            "calibrated outputs (EDGE_POLICY=shift_aware); NaN until estimated or under another policy", registry=r)
        self.estimated_oos_share.set_function(lambda: float("nan"))

    def _cloud(self, r: CollectorRegistry) -> None:
        """The calls to the cloud, its circuit breaker and the budget it last reported."""
        self.cloud_errors = Counter("edge_cloud_errors_total", "Failed cloud attempts by kind", ["kind"], registry=r)
        self.cloud_calls = Counter("edge_cloud_calls_total", "Cloud calls by outcome", ["outcome"], registry=r)
        self.circuit = Enum("edge_cloud_circuit_state", "Circuit breaker state towards the cloud",
                            states=["closed", "open", "half_open"], registry=r)
        self.budget_remaining = Gauge("edge_cloud_budget_remaining", "Budget units left, as last reported",
                                      registry=r)
        self.budget_limit = Gauge("edge_cloud_budget_limit", "Budget units per period, as last reported",
                                  registry=r)
        self.cloud_bytes = Counter("edge_cloud_bytes_total", "Body bytes sent to / received from the cloud",
                                   ["direction"], registry=r)

    def _model(self, r: CollectorRegistry) -> None:
        """The model served, its loads and reload failures, and a rollback's pin."""
        self.model_info = Info("edge_model", "The edge model version being served", registry=r)
        # Its labels name the failure, not the moment: a timestamp label would make a new series per failure.
        self.last_reload_error = Info("edge_reload_last_error",
                                      "The last reload failure (reason none after a successful load)", registry=r)
        self.last_reload_error_at = Gauge("edge_reload_last_error_timestamp_seconds",
                                          "When the last reload failure happened (0: none since start)", registry=r)
        self.model_pinned = Gauge("edge_model_pinned", "1 while a rollback pins the version serving: the model "
                                  "watchers install nothing until POST /admin/reload or a newly published version",
                                  registry=r)
        self.model_loaded = Gauge("edge_model_loaded_timestamp_seconds", "When the served model was loaded",
                                  registry=r)
        self.reloads = Counter("edge_model_reloads_total", "Model load attempts by outcome", ["outcome"],
                               registry=r)
        self.reload_failures = Counter(
            "edge_reload_failures_total", "Candidate models refused or not fetched, by reason "
            "(manifest, checksum, load, smoke, io, internal: refused; unavailable: retried later)",
            ["reason"], registry=r)

    def _device(self, r: CollectorRegistry) -> None:
        # `device_id`, not `device`: the scrape config labels each target `device`, and Prometheus would rename
        # a clashing label of the metric's own to `exported_device`.
        self.device = Info("edge_device", "This device's rollout id (device_id), cohort (stable/canary) and target "
                           "version", registry=r)
        # The device: memory and CPU of this process (process_* on Linux), and the CPU temperature where
        # the kernel exposes one (/sys/class/thermal); NaN where it does not (most containers and VMs).
        ProcessCollector(registry=r)
        self.cpu_temperature = Gauge("edge_cpu_temperature_celsius", "Hottest thermal zone (/sys/class/thermal); "
                                     "NaN when the device exposes none", registry=r)
        self.cpu_temperature.set_function(lambda: _or_nan(cpu_temperature_c()))

    def _feedback(self, r: CollectorRegistry) -> None:
        """The feedback store's writes and its shipping to S3."""
        self.feedback_shipped = Counter("edge_feedback_shipped_total", "Feedback records shipped to S3 (shipped), "
                                        "failed shipping rounds (error)", ["outcome"], registry=r)
        self.feedback_records = Counter(
            "edge_feedback_records_total", "Feedback records by outcome: ok (written), error (a write that failed), "
            "dropped (not tried: the store is failing and backing off)", ["outcome"], registry=r)
        self.feedback_write_errors = Counter("edge_feedback_write_errors_total",
                                             "Feedback store writes that failed (a full disk, an I/O error)", registry=r)
        self.feedback_store_healthy = Gauge("edge_feedback_store_healthy", "1 while the feedback store takes writes, "
                                            "0 while it fails (backing off); NaN with no store", registry=r)
        self.feedback_store_healthy.set(float("nan"))

    def watch_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))

    def watch_oos_share(self, share: Callable[[], float | None]) -> None:
        """Read at scrape time: nothing on the request path."""
        self.estimated_oos_share.set_function(lambda: _or_nan(share()))

    def watch_listener(self, name: str, connections: Callable[[], int],
                       refusals: Callable[[], Mapping[str, int]]) -> None:
        """An HTTP listener's open connections and refusals by reason (edge_container.http_limits keeps them
        as plain integers: the protocol never calls into prometheus_client)."""
        self.listeners.sources[name] = (connections, refusals)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Listeners(Collector):
    def __init__(self) -> None:
        self.sources: dict[str, tuple[Callable[[], int], Callable[[], Mapping[str, int]]]] = {}

    def collect(self) -> Iterator[Metric]:
        connections = GaugeMetricFamily("edge_http_connections", "Open client connections, by listener (api, debug)",
                                        labels=["listener"])
        rejected = CounterMetricFamily(
            "edge_http_rejected", "Connections refused or closed by the HTTP limits, by listener and reason "
            "(header_too_large, too_many_headers: 431; head_timeout, body_timeout: 408; no_request: closed "
            "unanswered; connection_limit, client_connection_limit: 503 at accept)", labels=["listener", "reason"])
        for name, (open_now, refusals) in self.sources.items():
            connections.add_metric([name], open_now())
            for reason, count in refusals().items():
                rejected.add_metric([name, reason], count)
        yield connections
        yield rejected


def cpu_temperature_c(root: Path = Path("/sys/class/thermal")) -> float | None:
    """The hottest thermal zone in °C, or None where the kernel exposes none (or none can be read)."""
    readings = []
    for zone in sorted(root.glob("thermal_zone*/temp")):
        try:
            readings.append(int(zone.read_text().strip()) / 1000.0)  # millidegrees
        except (OSError, ValueError):
            continue
    return max(readings) if readings else None


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value
