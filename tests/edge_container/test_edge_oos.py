"""The edge's own `oos` answer (the manifest's lowest band): hopeless texts are not paid for in the cloud."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from modelpack.errors import ManifestError
from modelpack.manifest import Manifest, load_manifest, write_manifest
from tests.edge_container.conftest import CONFIDENT, UNSURE, FakeCloud, edge_settings, serve_edge
from tests.fixtures.tiny_artifact import with_appended_oos_label


def with_band(tiny_artifact: Path, folder: Path, oos_threshold: float | None, oos_score: str | None = None) -> Path:
    shutil.copytree(tiny_artifact, folder)
    manifest = load_manifest(folder)
    routing = dataclasses.replace(manifest.routing, oos_threshold=oos_threshold, expected_edge_oos_rate=0.1,
                                  oos_score=oos_score)
    write_manifest(dataclasses.replace(manifest, routing=routing), folder)
    return folder


def outcomes(body: dict) -> list[tuple[str, str, str]]:
    return [(r["label"], r["source"], r["reason"]) for r in body["results"]]


def test_below_the_oos_band_the_edge_answers_oos_itself(tiny_artifact: Path, tmp_path: Path,
                                                        cloud: FakeCloud) -> None:
    folder = with_band(tiny_artifact, tmp_path / "band", 0.55)  # UNSURE scores ~0.48, CONFIDENT ~1.0
    with serve_edge(edge_settings(folder, cloud_url=cloud.url, cloud_api_key="k")) as (client, _):
        body = client.post("/v1/predict", json={"texts": [CONFIDENT, UNSURE]}).json()
        got = outcomes(body)
        assert got[0][1:] == ("edge", "confident")
        assert got[1] == ("oos", "edge", "out_of_scope")
        assert body["results"][1]["edge"]["confidence"] < 0.55  # its own best guess is still reported
        assert body["results"][1]["confidence"] == pytest.approx(1 - body["results"][1]["edge"]["confidence"])
        assert cloud.attempts == []  # nothing paid for
        # Forcing the cloud, or the baselines, ignore the band.
        forced = client.post("/v1/predict", json={"text": UNSURE, "route": "cloud"}).json()
        assert outcomes(forced)[0][1:] == ("cloud", "forced_cloud")


def test_between_the_two_thresholds_the_cloud_answers(tiny_artifact: Path, tmp_path: Path,
                                                      cloud: FakeCloud) -> None:
    folder = with_band(tiny_artifact, tmp_path / "band", 0.3)
    with serve_edge(edge_settings(folder, cloud_url=cloud.url, cloud_api_key="k")) as (client, _):
        got = outcomes(client.post("/v1/predict", json={"texts": [CONFIDENT, UNSURE]}).json())
        assert [g[1:] for g in got] == [("edge", "confident"), ("cloud", "low_confidence")]
        assert len(cloud.attempts) == 1


@pytest.mark.parametrize("policy, expected", [("edge_only", ("edge", "forced_edge")),
                                              ("cloud_only", ("cloud", "forced_cloud"))])
def test_the_baselines_ignore_the_band(tiny_artifact: Path, tmp_path: Path, cloud: FakeCloud, policy: str,
                                       expected: tuple[str, str]) -> None:
    folder = with_band(tiny_artifact, tmp_path / "band", 0.55)
    with serve_edge(edge_settings(folder, policy=policy, cloud_url=cloud.url, cloud_api_key="k")) as (client, _):
        got = outcomes(client.post("/v1/predict", json={"text": UNSURE}).json())
        assert got[0][1:] == expected


def test_a_band_above_the_escalation_threshold_or_without_an_oos_label_is_refused(tiny_artifact: Path) -> None:
    manifest = load_manifest(tiny_artifact)
    raw = manifest.to_dict()
    raw["routing"].update(oos_threshold=0.9, expected_edge_oos_rate=0.1)  # above threshold 0.6
    with pytest.raises(ManifestError, match="oos_threshold"):
        Manifest.from_dict(raw)
    raw["routing"]["oos_threshold"] = 0.2
    assert Manifest.from_dict(raw).routing.oos_threshold == 0.2
    raw["oos_label"] = None
    with pytest.raises(ManifestError, match="no oos_label"):
        Manifest.from_dict(raw)


def test_the_band_may_be_cut_on_the_best_in_scope_probability(tiny_artifact: Path, tmp_path: Path,
                                                              cloud: FakeCloud) -> None:
    """A band above the escalation threshold is fine on a score of its own: no intent is plausible."""
    folder = with_band(tiny_artifact, tmp_path / "band", 0.7, "in_scope_max_prob")
    assert load_manifest(folder).routing.oos_score == "in_scope_max_prob"
    with serve_edge(edge_settings(folder, cloud_url=cloud.url, cloud_api_key="k")) as (client, _):
        got = outcomes(client.post("/v1/predict", json={"texts": [CONFIDENT, UNSURE]}).json())
        assert got[0][1:] == ("edge", "confident") and got[1] == ("oos", "edge", "out_of_scope")
        assert cloud.attempts == []


def test_an_appended_oos_label_is_served_like_any_other(tiny_artifact: Path, tmp_path: Path,
                                                        cloud: FakeCloud) -> None:
    """A build on data without an oos label appends one that no model predicts (appended_oos_logit): the
    service answers it from the band, and the probabilities it reports give it nothing."""
    folder = with_appended_oos_label(tiny_artifact, tmp_path / "appended", routing={
        "oos_threshold": 0.55, "expected_edge_oos_rate": 0.1, "oos_score": "in_scope_max_prob"})
    with serve_edge(edge_settings(folder, cloud_url=cloud.url, cloud_api_key="k")) as (client, _):
        body = client.post("/v1/predict", json={"texts": [CONFIDENT, UNSURE]}).json()
        assert outcomes(body)[1] == ("none", "edge", "out_of_scope") and outcomes(body)[0][1:] == ("edge", "confident")
        confidences = client.post("/batch_predict", json={"texts": [CONFIDENT, UNSURE]}).json()["confidences"]
        assert all(len(row) == 6 and row[-1] == 0.0 for row in confidences)
        assert cloud.attempts == []
