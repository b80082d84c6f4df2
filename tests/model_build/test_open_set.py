"""Out-of-scope rejection for data without an oos label: the background class (model_build.data.
with_background) and the false-reject caps on both tiers (calibrate.thresholds.cap_false_reject, the band's
cap in model_build.calibrate.deferral.choose_deferral)."""

from __future__ import annotations

import numpy as np
import pytest

from model_build.calibrate.deferral import choose_deferral
from model_build.calibrate.thresholds import cap_false_reject
from model_build.data.background import with_background
from model_build.data.dataset import OOS_LABEL, Dataset, Split
from model_build.errors import DataError


def _dataset(oos: bool = False) -> Dataset:
    labels = ("alarm", "music") + ((OOS_LABEL,) if oos else ())
    train = Split(tuple(f"text {i}" for i in range(40)), np.arange(40) % 2)
    val = Split(tuple(f"val {i}" for i in range(18)), np.arange(18) % 2)
    test = Split(("play jazz", "wake me up"), np.array([1, 0]))
    return Dataset(name="d", labels=labels, oos_label=OOS_LABEL if oos else None, train=train, val=val, test=test,
                   source_sha256="x", source_path="d.csv")


def test_the_background_class_is_learnt_and_validated_on_but_the_test_split_stays_the_users() -> None:
    negatives = tuple(f"the river flows {i}" for i in range(100)) + ("text 3",)  # one equals a labelled text
    grown = with_background(_dataset(), negatives, seed=0)

    assert grown.labels == ("alarm", "music", OOS_LABEL) and grown.oos_index == 2
    assert (grown.train.labels == 2).sum() == 4  # a tenth of 40 training texts
    assert (grown.val.labels == 2).sum() == 2  # a tenth of the validation split: 2 of 20
    assert grown.test.texts == ("play jazz", "wake me up")
    added = [t for t, y in zip(grown.train.texts + grown.val.texts, np.r_[grown.train.labels, grown.val.labels])
             if y == 2]
    assert all(t.startswith("the river flows") for t in added) and len(set(added)) == len(added)
    assert with_background(_dataset(), negatives, seed=0).train.texts == grown.train.texts  # seeded
    assert grown.background and not _dataset().background


def test_data_with_an_oos_label_gains_training_negatives_only() -> None:
    given = _dataset(oos=True)
    grown = with_background(given, tuple(f"the river flows {i}" for i in range(10)), seed=0)

    assert grown.labels == given.labels and not grown.background
    assert (grown.train.labels == 2).sum() == 4 and grown.val.texts == given.val.texts  # its own oos validate


def test_your_own_off_topic_requests_are_all_drawn_before_the_generic_pool_and_shared_across_splits() -> None:
    own = tuple(f"can you book a plumber {i}" for i in range(4)) + ("text 5", "can you book a plumber 0")
    generic = tuple(f"the river flows {i}" for i in range(100)) + ("can you book a plumber 1",)
    grown = with_background(_dataset(), generic, seed=0, first=own)

    added = [t for t, y in zip(grown.train.texts + grown.val.texts, np.r_[grown.train.labels, grown.val.labels])
             if y == 2]
    assert len(added) == 6 and len(set(added)) == 6  # 4 train + 2 validation, no text twice
    assert sorted(t for t in added if "plumber" in t) == [f"can you book a plumber {i}" for i in range(4)]
    assert "text 5" not in added  # a labelled text is never a negative
    drawn = (with_background(_dataset(), generic, seed=seed, first=own) for seed in range(20))
    mixes = {tuple("plumber" in t for t in grown.val.texts[-2:]) for grown in drawn}
    assert len(mixes) > 1  # which split each of your own lands in is drawn, not fixed


def test_more_of_your_own_off_topic_requests_than_room_fills_the_class_with_them_alone() -> None:
    own = tuple(f"can you book a plumber {i}" for i in range(50))
    grown = with_background(_dataset(), (), seed=0, first=own)
    added = [t for t, y in zip(grown.train.texts + grown.val.texts, np.r_[grown.train.labels, grown.val.labels])
             if y == 2]
    assert len(added) == 6 and all(t.startswith("can you book a plumber") for t in added)
    with pytest.raises(DataError, match="--negatives and --off-topic: 2 usable texts; at least 6 are needed"):
        with_background(_dataset(), (), seed=0, first=("a", "b"))


def test_too_few_negatives_are_refused_naming_how_many_are_needed() -> None:
    with pytest.raises(DataError, match="at least 6 are needed"):
        with_background(_dataset(), ("a", "b", "text 1"), seed=0)


def test_the_clouds_oos_threshold_is_capped_at_the_false_reject_rate() -> None:
    # 100 in-scope rows with distinct max probabilities 0.505 .. 1.0 (one of them argmax on oos), 10 oos rows.
    top = np.linspace(0.505, 1.0, 100)
    probs = np.zeros((110, 3))
    probs[:100, 0], probs[:100, 1] = top, 1 - top
    probs[100:, 2] = 0.9
    probs[50] = [0.1, 0.1, 0.8]  # an in-scope text the cloud calls oos outright
    labels = np.r_[np.zeros(100, dtype=int), np.full(10, 2)]

    def refused(threshold: float, asked: np.ndarray) -> int:
        return int((((probs[:100].max(axis=1) < threshold) | (probs[:100].argmax(axis=1) == 2)) & asked).sum())

    everyone = np.ones(100, dtype=bool)
    capped = cap_false_reject(probs, labels, 2, 0.99, max_false_reject=0.05)
    assert refused(capped, everyone) == 5  # 4 below the threshold + the outright one
    assert cap_false_reject(probs, labels, 2, 0.3, max_false_reject=0.5) == 0.3  # within the cap: unchanged
    # Asked about the 20 least sure in-scope texts only (not the outright one), the cloud may refuse 5 of
    # all 100 among them: the share counts every in-scope text, as the cascade's refusals do
    asked = np.zeros(110, dtype=bool)
    asked[:20] = True
    among = cap_false_reject(probs, labels, 2, 0.99, max_false_reject=0.05, among=asked)
    assert refused(among, asked[:100]) == 5 and among > capped


def test_the_cloud_cap_cuts_any_score_it_is_given() -> None:
    # Energy-like scores in logit units (unbounded): the cap counts refusals on them, not on probabilities
    probs = np.tile([0.6, 0.3, 0.1], (100, 1))
    labels = np.zeros(100, dtype=int)
    energy = np.linspace(-3.0, 12.0, 100)
    cut = cap_false_reject(probs, labels, 2, 1e9, max_false_reject=0.03, score=energy)
    assert (energy < cut).sum() == 3 and energy[2] < cut < energy[3]  # midway, as every threshold is


def test_the_edges_band_holds_at_most_the_false_reject_rate_of_in_scope_texts() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[rng.integers(0, 5, 400), np.full(100, 9)]
    score = np.r_[rng.uniform(0.2, 1.0, 400), rng.uniform(0.0, 0.5, 100)]
    edge = np.where(score > 0.3, y, (y + 1) % 5)
    teacher = y.copy()
    free = choose_deferral(score, edge, teacher, y, 9, target_ratio=0.99)
    capped = choose_deferral(score, edge, teacher, y, 9, target_ratio=0.99, max_false_reject=0.01)

    in_band = lambda choice: score[:400] < choice.oos_threshold  # noqa: E731
    assert in_band(free).mean() > 0.01  # the uncapped search refuses more in-scope texts than allowed
    assert in_band(capped).mean() <= 0.01
    assert capped.reachable and capped.escalation_rate >= free.escalation_rate


def test_a_background_class_spends_half_the_budget_on_the_edges_band() -> None:
    from model_build.calibrate.fit import _Split, spend_band
    from modelpack.manifest import RoutingEntry

    rng = np.random.default_rng(1)
    y = np.r_[rng.integers(0, 3, 200), np.full(20, 3)]
    probs = rng.dirichlet(np.ones(4), size=220)
    entry = RoutingEntry(score="max_prob", threshold=0.5, target_joint_over_teacher=0.99, traffic_oos_fraction=None,
                         expected_escalation_rate=0.3)
    split = _Split(y, np.ones(220), 3, probs.argmax(axis=1), None)

    spent = spend_band(entry, probs, split, 0.02)
    best_intent = np.delete(probs, 3, axis=1).max(axis=1)
    assert spent.oos_score == "in_scope_max_prob"
    assert (best_intent[:200] < spent.oos_threshold).sum() == 4  # floor(2 % of 201): a conformal count
    assert spent.expected_edge_oos_rate == pytest.approx((best_intent < spent.oos_threshold).mean())
    # 2.5 %: floor(0.025 * 201) = 5 of them, so that a new in-scope text falls below with probability <= 2.5 %
    assert (best_intent[:200] < spend_band(entry, probs, split, 0.025).oos_threshold).sum() == 5
    # Under one text's worth of 201 places: no band can state that rate, so none is added
    assert spend_band(entry, probs, split, 0.004) == entry


def test_the_cloud_cap_refuses_nothing_when_the_split_is_too_small_for_its_rate() -> None:
    probs = np.tile([0.6, 0.3, 0.1], (30, 1))
    labels = np.zeros(30, dtype=int)
    energy = np.linspace(-3.0, 12.0, 30)
    assert cap_false_reject(probs, labels, 2, 1e9, max_false_reject=0.02, score=energy) is None  # 0.02 * 31 < 1
    cut = cap_false_reject(probs, labels, 2, 1e9, max_false_reject=0.04, score=energy)  # 0.04 * 31: one
    assert cut is not None and (energy < cut).sum() == 1
    # Outright refusals (argmax on oos) use the count up: no threshold refuses more
    outright = probs.copy()
    outright[0] = [0.1, 0.1, 0.8]
    assert cap_false_reject(outright, labels, 2, 1e9, max_false_reject=0.04, score=energy) is None


def test_a_missing_off_topic_file_is_one_line_before_anything_trains(tmp_path) -> None:
    import subprocess
    import sys

    from model_build.config import preset
    from model_build.errors import BuildError
    from tests.conftest import REPO

    with pytest.raises(BuildError, match=r"^--off-topic .*nowhere\.txt: no such file$"):
        preset("quick", off_topic=str(tmp_path / "nowhere.txt"))
    (tmp_path / "d.csv").write_text("text,label\nwake me up,alarm\nplay jazz,music\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "model_build", "build", "--data", str(tmp_path / "d.csv"),
                           "--off-topic", str(tmp_path / "nowhere.txt"), "--out", str(tmp_path / "out")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert "--off-topic" in done.stderr and "no such file" in done.stderr and not (tmp_path / "out").exists()
