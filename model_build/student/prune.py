"""Structured L1 pruning of the CNN student: drop the convolution filters and hidden units with the smallest
L1 norms, copy what is kept into a narrower student, then fine-tune it with the same distillation loss.

Channels, not single weights: a narrower model is smaller *and* faster under XNNPACK, where sparse weights
would be neither. Per convolution branch the filters with the largest L1 norm of their kernel are kept (the
same share in every branch); per hidden layer the units with the largest L1 norm of their incoming weights.
The embedding table, its id map and the classifier's width are untouched.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from model_build.config import StudentConfig
from model_build.student.cnn import build_student


def keep_count(n: int, fraction: float) -> int:
    """How many of `n` channels survive pruning `fraction` of them (at least one)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"a pruned fraction must be in [0, 1), got {fraction}")
    return max(1, int(round(n * (1.0 - fraction))))


def prune_student(model, config: StudentConfig, fraction: float, *, vocab_map: np.ndarray, num_labels: int):
    """A new, narrower student holding the kept channels' weights of `model` (a trained CNN student with one
    convolution per branch). Returns (pruned model, its StudentConfig)."""
    if config.architecture != "cnn" or config.conv_layers != 1:
        raise ValueError("structured pruning is implemented for the CNN student with one convolution per branch")
    filters = keep_count(config.filters, fraction)
    hidden = tuple(keep_count(h, fraction) for h in config.hidden)
    small_config = dataclasses.replace(config, filters=filters, hidden=hidden)
    small = build_student(small_config, vocab_map=vocab_map, num_labels=num_labels)

    small.get_layer("token_remap").set_weights(model.get_layer("token_remap").get_weights())
    small.get_layer("embedding").set_weights(model.get_layer("embedding").get_weights())
    # Rows of the first hidden layer's kernel follow the concatenated branches' filters.
    incoming: list[np.ndarray] = []
    for b, k in enumerate(config.kernel_sizes):
        (kernel,) = model.get_layer(f"conv{k}").get_weights()  # [k, embed, filters], no bias
        kept = np.sort(np.argsort(-np.abs(kernel).sum(axis=(0, 1)), kind="stable")[:filters])
        small.get_layer(f"conv{k}").set_weights([kernel[:, :, kept]])
        incoming.append(b * config.filters + kept)
    rows = np.concatenate(incoming)
    for i, width in enumerate(config.hidden):
        kernel, bias = model.get_layer(f"hidden_{i}").get_weights()  # [in, width]
        kernel = kernel[rows]
        units = np.sort(np.argsort(-np.abs(kernel).sum(axis=0), kind="stable")[:hidden[i]])
        small.get_layer(f"hidden_{i}").set_weights([kernel[:, units], bias[units]])
        rows = units
    kernel, bias = model.get_layer("logits").get_weights()
    small.get_layer("logits").set_weights([kernel[rows], bias])
    return small, small_config
