"""EDGE_POLICY=shift_aware: EM recovers a known prior shift from calibrated rows alone, the threshold follows
the estimated oos share the right way, and the edge serves with it (the estimate a metric)."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_container.errors import ConfigurationError
from edge_container.policies import ShiftAwarePolicy, ThresholdPolicy, make_policy
from edge_container.priors import RowWindow, em_priors
from edge_container.settings import Settings
from modelpack.manifest import ESCALATE_ALL, ESCALATE_NONE, RoutingEntry, load_manifest, write_manifest
from modelpack.shift import ShiftGroup, ShiftTable
from tests.edge_container.conftest import ADMIN_TOKEN, edge_settings, serve_edge

SOURCE = np.array([0.32, 0.32, 0.32, 0.04])  # three intents and `oos` (index 3), as calibrated
MEANS = np.array([[3.0, 0.0], [0.0, 3.0], [-3.0, 0.0], [0.0, -1.0]])


def labelled_rows(priors: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Texts drawn with `priors`, scored by the exact posterior under SOURCE (calibrated for the source), and
    their labels."""
    rng = np.random.default_rng(seed)
    y = rng.choice(len(priors), size=n, p=priors)
    x = MEANS[y] + rng.normal(size=(n, 2))
    log_lik = -0.5 * ((x[:, None, :] - MEANS[None, :, :]) ** 2).sum(axis=2)
    joint = np.exp(log_lik - log_lik.max(axis=1, keepdims=True)) * SOURCE
    return joint / joint.sum(axis=1, keepdims=True), y


def calibrated_rows(priors: np.ndarray, n: int, seed: int) -> np.ndarray:
    return labelled_rows(priors, n, seed)[0]


def test_em_recovers_a_known_prior_shift() -> None:
    target = np.array([0.27, 0.27, 0.27, 0.19])
    rows = calibrated_rows(target, 20_000, seed=1)
    naive = rows[:, 3].mean()  # the mean posterior is pulled towards the source's 4 %
    estimate = em_priors(rows, SOURCE, max_iterations=500, tolerance=1e-8)
    assert estimate.converged and estimate.n == 20_000
    assert abs(estimate.priors[3] - 0.19) < 0.015 < abs(naive - 0.19)
    assert np.abs(estimate.priors - target).max() < 0.02 and estimate.priors.sum() == pytest.approx(1.0)


def test_em_on_source_like_traffic_stays_at_the_source() -> None:
    estimate = em_priors(calibrated_rows(SOURCE, 20_000, seed=2), SOURCE, max_iterations=500)
    assert abs(estimate.priors[3] - 0.04) < 0.01
    with pytest.raises(ValueError, match="3 priors for 4 labels"):
        em_priors(np.full((2, 4), 0.25), SOURCE[:3])


def test_the_window_keeps_the_last_rows() -> None:
    window = RowWindow(5)
    window.add(np.arange(12, dtype=float).reshape(3, 4))
    window.add(np.arange(100, 116, dtype=float).reshape(4, 4))
    assert len(window) == 5
    assert sorted(window.rows()[:, 0].tolist()) == [8.0, 100.0, 104.0, 108.0, 112.0]
    window.add(np.ones((2, 3)))  # another model's labels: start over
    assert len(window) == 2 and window.rows().shape == (2, 3)


# In-scope texts are mostly right at the edge; out-of-scope ones need the cloud: more oos, higher threshold.
TABLE = ShiftTable(
    split="val", oos_index=3, split_oos_fraction=0.04, thresholds=(ESCALATE_NONE, 0.3, 0.6, 0.9, ESCALATE_ALL),
    in_scope=ShiftGroup(n=960, cloud_accuracy=0.95, edge_oos_rate=0.0, escalation_rate=(0.0, 0.05, 0.1, 0.3, 1.0),
                        joint_accuracy=(0.93, 0.947, 0.95, 0.95, 0.95)),
    oos=ShiftGroup(n=40, cloud_accuracy=0.8, edge_oos_rate=0.0, escalation_rate=(0.0, 0.1, 0.2, 0.4, 1.0),
                   joint_accuracy=(0.5, 0.6, 0.7, 0.8, 0.8)),
    source_priors=tuple(SOURCE.tolist()),
)
ROUTING = RoutingEntry(score="max_prob", threshold=0.3, target_joint_over_teacher=0.99, traffic_oos_fraction=0.04,
                       expected_escalation_rate=0.05, shift=TABLE)


def with_group_means(table: ShiftTable) -> ShiftTable:
    """TABLE with the groups' mean `oos` probability measured on source-like rows (what the build records)."""
    rows, y = labelled_rows(SOURCE, 20_000, seed=11)
    means = {g: float(rows[(y == 3) == g, 3].mean()) for g in (False, True)}
    return dataclasses.replace(
        table, in_scope=dataclasses.replace(table.in_scope, mean_oos_probability=means[False]),
        oos=dataclasses.replace(table.oos, mean_oos_probability=means[True]))


def feed(policy: ShiftAwarePolicy, routing: RoutingEntry, rows: np.ndarray, batch: int = 50) -> None:
    for start in range(0, len(rows), batch):
        policy.escalate(rows[start: start + batch], routing)


def test_the_threshold_rises_when_the_oos_share_does() -> None:
    policy = ShiftAwarePolicy(1000, every=100, min_samples=250)
    feed(policy, ROUTING, calibrated_rows(SOURCE, 200, seed=3))
    assert policy.threshold_for(ROUTING) == 0.3 and policy.estimated_oos_share() is None  # too few texts yet
    feed(policy, ROUTING, calibrated_rows(SOURCE, 1000, seed=4))
    calm_share, calm = policy.estimated_oos_share(), policy.threshold_for(ROUTING)
    feed(policy, ROUTING, calibrated_rows(np.array([0.24, 0.23, 0.23, 0.3]), 1000, seed=5))
    busy_share, busy = policy.estimated_oos_share(), policy.threshold_for(ROUTING)
    assert calm_share is not None and busy_share is not None
    assert abs(calm_share - 0.04) < 0.03 and abs(busy_share - 0.3) < 0.05
    assert (calm, busy) == (0.6, 0.9)  # the table's cheapest thresholds at ~4 % and ~30 %
    assert policy.describe()["estimated_oos_share"] == round(busy_share, 4)
    rows = calibrated_rows(SOURCE, 50, seed=6)
    assert policy.escalate(rows, ROUTING).tolist() == (rows.max(axis=1) < 0.9).tolist()


@pytest.mark.parametrize("estimator", ["em", "bbse"])
def test_both_estimators_follow_the_share(estimator: str) -> None:
    routing = dataclasses.replace(ROUTING, shift=with_group_means(TABLE))
    policy = ShiftAwarePolicy(2000, every=200, min_samples=500, estimator=estimator)  # type: ignore[arg-type]
    feed(policy, routing, calibrated_rows(SOURCE, 2000, seed=8))
    calm = policy.estimated_oos_share()
    feed(policy, routing, calibrated_rows(np.array([0.24, 0.23, 0.23, 0.3]), 2000, seed=9))
    busy = policy.estimated_oos_share()
    assert calm is not None and busy is not None
    assert abs(calm - 0.04) < 0.02 and abs(busy - 0.3) < 0.04
    assert policy.describe()["estimator"] == estimator
    assert (policy.describe()["em_iterations"] is None) == (estimator == "bbse")


def test_without_a_table_or_after_a_reload_it_is_the_manifest_threshold(caplog: pytest.LogCaptureFixture) -> None:
    policy = ShiftAwarePolicy(1000, every=100, min_samples=250)
    plain = dataclasses.replace(ROUTING, shift=None)
    rows = calibrated_rows(np.array([0.1, 0.1, 0.1, 0.7]), 1000, seed=7)
    with caplog.at_level("WARNING", logger="edge_container.policies"):
        feed(policy, plain, rows)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "no shift table" in said[0] and "fixed threshold 0.3" in said[0]  # once per version
    assert policy.threshold_for(plain) == 0.3 and policy.estimated_oos_share() is None
    assert policy.escalate(rows, plain).tolist() == ThresholdPolicy().escalate(rows, plain).tolist()
    feed(policy, ROUTING, rows)
    assert policy.threshold_for(ROUTING) == 0.9
    reloaded = dataclasses.replace(ROUTING)  # a new version: a fresh window, the manifest's threshold until then
    feed(policy, reloaded, rows[:50])
    assert policy.threshold_for(reloaded) == 0.3 and policy.estimated_oos_share() is None


def test_settings_and_make_policy() -> None:
    settings = Settings.from_env({"EDGE_POLICY": "shift_aware", "EDGE_SHIFT_WINDOW": "500"})
    policy = make_policy(settings.policy, settings)
    assert isinstance(policy, ShiftAwarePolicy) and policy.describe()["window"] == 500 and policy.every == 50
    with pytest.raises(ConfigurationError, match="EDGE_SHIFT_WINDOW"):
        Settings.from_env({"EDGE_SHIFT_WINDOW": "10"})
    bbse = Settings.from_env({"EDGE_POLICY": "shift_aware", "EDGE_SHIFT_ESTIMATOR": "bbse"})
    assert make_policy(bbse.policy, bbse).estimator == "bbse"  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match="EDGE_SHIFT_ESTIMATOR"):
        Settings.from_env({"EDGE_SHIFT_ESTIMATOR": "guess"})


@pytest.fixture(scope="module")
def artifact_with_table(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny artifact with a shift table the build's own function made from its models and texts."""
    from model_build.calibrate.shift_table import shift_table
    from modelpack.classifier import Classifier
    from modelpack.routing import cloud_answer
    from tests.fixtures.tiny_artifact import LABELS, TEXTS

    folder = tmp_path_factory.mktemp("shift") / "tiny"
    shutil.copytree(tiny_artifact, folder)
    manifest = load_manifest(folder)
    texts = [t for label in LABELS for t in TEXTS[label]]
    labels = np.array([LABELS.index(label) for label in LABELS for _ in TEXTS[label]])
    edge = Classifier(manifest, folder, "edge").probabilities(texts)
    cloud_model = Classifier(manifest, folder, "cloud")
    cloud_logits = cloud_model.logits(texts)
    cloud = cloud_answer(cloud_model.calibrate(cloud_logits), manifest.cloud, manifest.oos_index,
                         logits=cloud_logits)
    table = shift_table(edge, cloud, labels, manifest.oos_index, manifest.routing, split="fixture")
    write_manifest(dataclasses.replace(manifest, routing=dataclasses.replace(manifest.routing, shift=table)), folder)
    return folder


def _gauge(metrics: str) -> float:
    line = next(line for line in metrics.splitlines() if line.startswith("edge_estimated_oos_share "))
    return float(line.split()[1])


def test_the_edge_serves_with_shift_aware_and_exposes_its_estimate(artifact_with_table: Path) -> None:
    texts = ["how do i bake bread", "what's the weather today", "set a timer for five minutes", "hello there"]
    with serve_edge(edge_settings(artifact_with_table, policy="shift_aware", shift_window=100)) as (client, _):
        assert math.isnan(_gauge(client.get("/metrics").text))  # nothing estimated yet
        for _ in range(10):
            response = client.post("/v1/predict", json={"texts": texts * 4})
            assert response.status_code == 200 and len(response.json()["results"]) == 16
        share = _gauge(client.get("/metrics").text)
        status = client.get("/admin/model", headers={"x-admin-token": ADMIN_TOKEN}).json()
    assert 0.0 <= share <= 1.0
    assert status["policy"]["name"] == "shift_aware" and status["policy"]["estimated_oos_share"] == round(share, 4)


def test_an_artifact_without_a_table_serves_as_threshold(tiny_artifact: Path) -> None:
    with serve_edge(edge_settings(tiny_artifact, policy="shift_aware", shift_window=100)) as (client, _):
        for _ in range(10):
            assert client.post("/v1/predict", json={"texts": ["hello there"] * 16}).status_code == 200
        assert math.isnan(_gauge(client.get("/metrics").text))


def _with_spreads(table: ShiftTable) -> ShiftTable:
    rows, y = labelled_rows(SOURCE, 20_000, seed=11)
    sds = {g: float(rows[(y == 3) == g, 3].std()) for g in (False, True)}
    return dataclasses.replace(table, in_scope=dataclasses.replace(table.in_scope, sd_oos_probability=sds[False]),
                               oos=dataclasses.replace(table.oos, sd_oos_probability=sds[True]))


def test_a_confidence_bound_takes_the_threshold_for_a_higher_share() -> None:
    routing = dataclasses.replace(ROUTING, shift=_with_spreads(with_group_means(TABLE)))
    rows = calibrated_rows(np.array([0.25, 0.25, 0.25, 0.25]), 2000, seed=12)
    at_estimate = ShiftAwarePolicy(2000, every=200, min_samples=500, estimator="bbse")
    bounded = ShiftAwarePolicy(2000, every=200, min_samples=500, estimator="bbse", confidence=0.99)
    feed(at_estimate, routing, rows)
    feed(bounded, routing, rows)
    share, info = bounded.estimated_oos_share(), bounded.describe()
    assert share is not None and share == at_estimate.estimated_oos_share()  # the metric is the estimate
    # The table's 40 oos texts make the bound clearly higher; its threshold is the table's at the bound.
    assert info["confidence"] == 0.99 and info["oos_share_bound"] > round(share, 4) + 0.05
    assert at_estimate.describe()["oos_share_bound"] == round(share, 4)
    expected = routing.shift.operating_point(info["oos_share_bound"], routing.target_joint_over_teacher)
    assert bounded.threshold_for(routing) == expected.threshold
    assert bounded.threshold_for(routing) >= at_estimate.threshold_for(routing)
    with pytest.raises(ValueError, match="confidence must be in"):
        ShiftAwarePolicy(confidence=0.3)


def test_the_confidence_setting() -> None:
    settings = Settings.from_env({"EDGE_POLICY": "shift_aware", "EDGE_SHIFT_CONFIDENCE": "0.9"})
    assert make_policy(settings.policy, settings).describe()["confidence"] == 0.9
    assert Settings().shift_confidence == 0.5
    with pytest.raises(ConfigurationError, match="EDGE_SHIFT_CONFIDENCE"):
        Settings.from_env({"EDGE_SHIFT_CONFIDENCE": "0.3"})
