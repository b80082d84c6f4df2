"""edge_container.metrics: the device metrics beside the service's (memory, CPU temperature, cloud bytes)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from edge_container.metrics import Metrics, cpu_temperature_c
from edge_container.reload import ModelManager
from tests.edge_container.conftest import CONFIDENT, UNSURE, FakeCloud, edge_settings, serve_edge


def value(metrics: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", metrics, re.MULTILINE)
    assert match, f"{name} not exposed"
    return float(match[1])


def test_the_hottest_readable_thermal_zone_in_celsius(tmp_path: Path) -> None:
    for zone, text in (("thermal_zone0", "45000\n"), ("thermal_zone1", "61500\n"), ("thermal_zone2", "n/a\n")):
        (tmp_path / zone).mkdir()
        (tmp_path / zone / "temp").write_text(text)
    assert cpu_temperature_c(tmp_path) == 61.5
    assert cpu_temperature_c(tmp_path / "absent") is None


def test_memory_and_the_bytes_exchanged_with_the_cloud_are_exposed(tiny_artifact: Path, cloud: FakeCloud) -> None:
    with serve_edge(edge_settings(tiny_artifact, cloud_url=cloud.url, cloud_api_key="k")) as (client, _):
        client.post("/v1/predict", json={"texts": [CONFIDENT]})
        before = client.get("/metrics").text
        client.post("/v1/predict", json={"texts": [UNSURE, UNSURE]})
        after = client.get("/metrics").text
    assert value(after, "process_resident_memory_bytes") > 10 * 2**20
    [attempt] = cloud.attempts  # one escalation call, its body exactly as sent
    sent = len(json.dumps(attempt.body, separators=(",", ":")).encode())
    assert value(after, 'edge_cloud_bytes_total{direction="sent"}') == sent
    assert value(after, 'edge_cloud_bytes_total{direction="received"}') > 100
    assert 'edge_cloud_bytes_total{direction="sent"}' not in before or \
        value(before, 'edge_cloud_bytes_total{direction="sent"}') == 0
    assert "edge_stage_duration_seconds_bucket" in after  # latency histograms, for P95/P99


def test_the_last_reload_error_is_one_series_per_reason_and_its_time_a_gauge() -> None:
    """A timestamp label would start a new series with every failure (and leave the old ones behind)."""
    metrics = Metrics()
    manager = ModelManager(lambda folder: None, metrics=metrics)  # type: ignore[arg-type, return-value]
    for n in range(3):
        manager.refused(f"/models/candidate-{n}", "folder", OSError("unreadable"))
    families = {f.name: f for f in metrics.registry.collect()}
    [sample] = families["edge_reload_last_error"].samples
    assert sample.labels == {"reason": "io", "source": "folder"}
    [stamp] = families["edge_reload_last_error_timestamp_seconds"].samples
    assert abs(stamp.value - time.time()) < 60
