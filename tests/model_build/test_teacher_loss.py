"""The teacher's fine-tuning loss (`model_build.teacher.finetune.classification_loss`): plain cross-entropy on
integer labels, or label-smoothed when `TeacherConfig.label_smoothing` asks for it."""

from __future__ import annotations

import numpy as np
import pytest

from model_build.teacher.finetune import classification_loss

LOGITS = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]], dtype=np.float32)
LABELS = np.array([0, 1])


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def cross_entropy(target: np.ndarray) -> float:
    return float(-(target * log_softmax(LOGITS)).sum(axis=1).mean())


def mean_loss(loss, labels: np.ndarray, logits: np.ndarray) -> float:
    """The batch's loss as Keras's compile reduces it: per-text losses averaged."""
    return float(np.mean(np.asarray(loss(labels, logits))))


def test_without_smoothing_it_is_cross_entropy_on_the_label() -> None:
    loss = classification_loss(0.0, 3)
    assert mean_loss(loss, LABELS, LOGITS) == pytest.approx(cross_entropy(np.eye(3)[LABELS]), rel=1e-5)


@pytest.mark.parametrize("smoothing", [0.1, 0.3])
def test_smoothing_spreads_that_share_of_the_target_over_every_label(smoothing: float) -> None:
    target = (1 - smoothing) * np.eye(3)[LABELS] + smoothing / 3
    loss = mean_loss(classification_loss(smoothing, 3), LABELS, LOGITS)
    assert loss == pytest.approx(cross_entropy(target), rel=1e-5)
    assert loss != pytest.approx(cross_entropy(np.eye(3)[LABELS]), rel=1e-3)
