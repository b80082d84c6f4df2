"""Structured L1 pruning keeps the largest channels' own weights, in a narrower student that runs."""

import numpy as np
import pytest

from model_build.config import StudentConfig
from model_build.student.cnn import build_student
from model_build.student.layers import build_vocab_map
from model_build.student.prune import keep_count, prune_student

CONFIG = StudentConfig(embed_dim=8, kernel_sizes=(1, 2), filters=10, hidden=(12,), dropout=0.0, embed_dropout=0.0)


def test_keep_count_rounds_and_keeps_at_least_one() -> None:
    assert keep_count(128, 0.3) == 90 and keep_count(256, 0.5) == 128 and keep_count(1, 0.9) == 1
    with pytest.raises(ValueError):
        keep_count(10, 1.0)


def test_pruning_keeps_the_filters_and_units_with_the_largest_l1_norms() -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 50, size=(20, 6)).astype(np.int32)
    vocab_map = build_vocab_map(ids)
    model = build_student(CONFIG, vocab_map=vocab_map, num_labels=4)
    model(ids)
    small, small_config = prune_student(model, CONFIG, 0.5, vocab_map=vocab_map, num_labels=4)
    assert (small_config.filters, small_config.hidden) == (5, (6,))
    (big_kernel,) = model.get_layer("conv2").get_weights()
    (kept_kernel,) = small.get_layer("conv2").get_weights()
    norms = np.abs(big_kernel).sum(axis=(0, 1))
    kept = np.sort(np.argsort(-norms)[:5])
    np.testing.assert_array_equal(kept_kernel, big_kernel[:, :, kept])
    assert np.abs(kept_kernel).sum() >= np.abs(big_kernel).sum() / 2  # the larger half of the mass
    np.testing.assert_array_equal(small.get_layer("embedding").get_weights()[0],
                                  model.get_layer("embedding").get_weights()[0])
    assert small.count_params() < model.count_params()
    out = np.asarray(small(ids))
    assert out.shape == (20, 4) and np.isfinite(out).all()


def test_pruning_nothing_but_rounding_gives_back_the_same_function() -> None:
    rng = np.random.default_rng(1)
    ids = rng.integers(1, 50, size=(8, 5)).astype(np.int32)
    vocab_map = build_vocab_map(ids)
    model = build_student(CONFIG, vocab_map=vocab_map, num_labels=3)
    small, _ = prune_student(model, CONFIG, 0.01, vocab_map=vocab_map, num_labels=3)  # keeps all 10 and 12
    np.testing.assert_allclose(np.asarray(small(ids)), np.asarray(model(ids)), atol=1e-5)
