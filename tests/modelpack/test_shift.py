"""The manifest's shift table: optional (older manifests load), strictly validated, round-trips, and its
operating point escalates more when more of the traffic is out of scope."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from modelpack.errors import ManifestError
from modelpack.manifest import (
    ESCALATE_ALL,
    ESCALATE_NONE,
    Manifest,
    ModelEntry,
    OutputSpec,
    RoutingEntry,
    TensorSpec,
    TokenizerEntry,
)
from modelpack.shift import ShiftGroup, ShiftTable

SHA = "0" * 64


def _model(file: str) -> ModelEntry:
    return ModelEntry(file=file, sha256=SHA, size_bytes=10, precision="fp32",
                      inputs=(TensorSpec("input_ids", "int32", (-1, -1)),),
                      output=OutputSpec("float32", (-1, 3), logits=True), temperature=1.0)


# In-scope texts are mostly right at the edge: little escalation buys the target. Out-of-scope texts need
# the cloud: the more of them, the higher the threshold must go.
TABLE = ShiftTable(
    split="val", oos_index=2, split_oos_fraction=0.05, thresholds=(ESCALATE_NONE, 0.3, 0.6, 0.9, ESCALATE_ALL),
    in_scope=ShiftGroup(n=190, cloud_accuracy=0.95, edge_oos_rate=0.01, escalation_rate=(0.0, 0.05, 0.1, 0.3, 0.99),
                        joint_accuracy=(0.93, 0.947, 0.95, 0.95, 0.95), mean_oos_probability=0.01),
    oos=ShiftGroup(n=10, cloud_accuracy=0.8, edge_oos_rate=0.5, escalation_rate=(0.0, 0.1, 0.2, 0.4, 0.5),
                   joint_accuracy=(0.5, 0.6, 0.7, 0.8, 0.8), mean_oos_probability=0.41),
    source_priors=(0.475, 0.475, 0.05), oos_log_bias=0.7,
)


def manifest(shift: ShiftTable | None = TABLE) -> Manifest:
    return Manifest(
        model_version="v1", created_at="2026-12-02T00:00:00+00:00", labels=("a", "b", "oos"), oos_label="oos",
        tokenizer=TokenizerEntry("tokenizer.json", SHA, 32, (8, 16, 32)),
        edge=_model("edge.tflite"), cloud=_model("cloud.tflite"),
        routing=RoutingEntry(score="max_prob", threshold=0.6, target_joint_over_teacher=0.99,
                             traffic_oos_fraction=0.05, expected_escalation_rate=0.1, oos_threshold=0.1,
                             expected_edge_oos_rate=0.03, oos_score="in_scope_max_prob", shift=shift),
    )


def test_a_manifest_with_a_shift_table_round_trips_through_json() -> None:
    m = manifest()
    again = Manifest.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again == m and again.routing.shift == TABLE
    # EM's source: the split's shares, the oos one divided by exp(oos_log_bias).
    assert again.routing.shift.em_source() == pytest.approx((0.475, 0.475, 0.05 * math.exp(-0.7)))


def test_a_manifest_without_one_reads_as_before_it_existed() -> None:
    raw = manifest(shift=None).to_dict()
    assert "shift" not in raw["routing"]
    assert Manifest.from_dict(raw).routing.shift is None
    raw["routing"]["shift"] = None  # an explicit null means the same
    assert Manifest.from_dict(raw).routing.shift is None


def _mutated(path: tuple[str, ...], value: object) -> dict:
    raw = json.loads(json.dumps(manifest().to_dict()))
    node = raw["routing"]["shift"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return raw


@pytest.mark.parametrize(("path", "value", "message"), [
    (("thresholds",), [0.6, 0.3, 0.9, 0.95, 0.99], "strictly increasing"),
    (("thresholds",), [0.1, 0.2, 0.3, 0.4, 7.0], r"numbers in \[0.0, 1.0\]"),
    (("in_scope", "escalation_rate"), [0.0, 0.1], "a list of 5 rates"),
    (("oos", "joint_accuracy"), [0.5, 0.6, 0.7, 0.8, 1.5], r"oos\.joint_accuracy\.4 must be a finite number"),
    (("source_priors",), [0.5, 0.5, 0.5], "summing to 1"),
    (("source_priors",), [0.5, 0.5, 0.0], "positive probabilities"),
    (("source_priors",), [0.5, 0.5], "a list of 3 rates"),
    (("oos_index",), 1, "oos_index is 1, but oos_label 'oos' is label 2"),
    (("oos_index",), 3, "not a label index"),
    (("in_scope", "n"), 0, r"in_scope\.n must be an integer >= 1"),
    (("oos_log_bias",), 50.0, r"oos_log_bias must be a finite number in \[-20.0, 20.0\]"),
])
def test_a_bad_table_is_refused_naming_the_field(path: tuple[str, ...], value: object, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        Manifest.from_dict(_mutated(path, value))


def test_the_threshold_rises_with_the_oos_share() -> None:
    low, high = TABLE.operating_point(0.02, 0.99), TABLE.operating_point(0.3, 0.99)
    assert low.reachable and high.reachable
    assert low.threshold < high.threshold and low.escalation_rate < high.escalation_rate
    assert low.joint_over_cloud >= 0.99 - 1e-9 and high.joint_over_cloud >= 0.99 - 1e-9
    # The cheapest: the grid point below it misses the target at that share.
    k = TABLE.thresholds.index(high.threshold)
    _, joint, cloud = TABLE.mix(0.3, k - 1)
    assert joint < 0.99 * cloud


def test_an_unreachable_target_escalates_the_most_and_says_so() -> None:
    point = TABLE.operating_point(0.9, 1.05)
    assert not point.reachable and point.threshold == ESCALATE_ALL
    with pytest.raises(ValueError, match="oos_share"):
        TABLE.operating_point(1.5, 0.99)


def test_the_table_is_a_frozen_value() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        TABLE.split = "test"  # type: ignore[misc]


def test_bbse_de_mixes_the_mean_oos_probability() -> None:
    assert TABLE.bbse_share(0.01) == 0.0 and TABLE.bbse_share(0.41) == 1.0
    assert TABLE.bbse_share(0.01 + 0.2 * 0.4) == pytest.approx(0.2)
    assert TABLE.bbse_share(0.9) == 1.0 and TABLE.bbse_share(0.0) == 0.0  # clipped to a share
    flat = dataclasses.replace(TABLE, oos=dataclasses.replace(TABLE.oos, mean_oos_probability=0.01))
    assert flat.bbse_share(0.2) is None  # the groups look alike: no estimate


def test_the_share_standard_error_matches_the_spread_of_repeated_estimates() -> None:
    # Groups whose `oos` probabilities are Beta-distributed; the table's means measured on n texts of each,
    # a window of 2,000 texts at a 20 % share: the formula's error against that of 3,000 repeated estimates.
    rng = np.random.default_rng(0)
    n_in, n_oos, window, share = 3000, 100, 2000, 0.2
    draw_in, draw_oos = (lambda k: rng.beta(0.3, 20.0, size=k)), (lambda k: rng.beta(1.2, 2.0, size=k))
    estimates, predicted = [], []
    for _ in range(3000):
        p_in, p_oos = draw_in(n_in), draw_oos(n_oos)
        table = dataclasses.replace(
            TABLE, in_scope=dataclasses.replace(TABLE.in_scope, n=n_in, mean_oos_probability=float(p_in.mean()),
                                                sd_oos_probability=float(p_in.std())),
            oos=dataclasses.replace(TABLE.oos, n=n_oos, mean_oos_probability=float(p_oos.mean()),
                                    sd_oos_probability=float(p_oos.std())))
        k = rng.binomial(window, share)
        rows = np.concatenate([draw_in(window - k), draw_oos(k)])
        estimate = table.bbse_share(float(rows.mean()))
        assert estimate is not None
        estimates.append(estimate)
        predicted.append(table.share_standard_error(estimate, float(rows.var()), window))
    spread = float(np.std(estimates))
    assert np.mean(predicted) == pytest.approx(spread, rel=0.1)
    # The table's 100 oos texts add about as much error as the window's 2,000 texts.
    window_only = dataclasses.replace(table, oos=dataclasses.replace(table.oos, sd_oos_probability=0.0),
                                      in_scope=dataclasses.replace(table.in_scope, sd_oos_probability=0.0))
    assert window_only.share_standard_error(0.2, float(rows.var()), window) < 0.8 * spread
    assert TABLE.share_standard_error(0.2, 0.01, 2000) > 0.0  # an older table (no spreads): the window's alone


def test_a_table_without_the_groups_spread_reads_as_zero() -> None:
    raw = json.loads(json.dumps(manifest().to_dict()))
    del raw["routing"]["shift"]["oos"]["sd_oos_probability"]
    assert Manifest.from_dict(raw).routing.shift.oos.sd_oos_probability == 0.0
    with pytest.raises(ManifestError, match=r"oos\.sd_oos_probability must be a finite number"):
        Manifest.from_dict(_mutated(("oos", "sd_oos_probability"), -0.1))
