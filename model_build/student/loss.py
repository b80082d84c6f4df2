"""The distillation loss every student trains with: KL on temperature-softened logits + cross-entropy, on
targets packed into one tensor (one-hot labels, then the teacher's logits)."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

class DistillationLoss(keras.losses.Loss):
    """alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(labels, student).

    Targets are one tensor [batch, 2 * num_labels]: one-hot labels then teacher logits (pack_targets).
    With alpha = 0 the teacher half is ignored (hard-label training)."""

    def __init__(self, temperature: float = 2.0, alpha: float = 0.5, name: str = "distillation", **kwargs):
        super().__init__(name=name, **kwargs)
        if temperature <= 0 or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"need temperature > 0 and 0 <= alpha <= 1, got {temperature}, {alpha}")
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    def call(self, y_true, y_pred):
        n = ops.shape(y_pred)[-1]
        one_hot, teacher = y_true[..., :n], y_true[..., n:]
        log_p = ops.log_softmax(y_pred, axis=-1)
        ce = -ops.sum(one_hot * log_p, axis=-1)
        if self.alpha == 0.0:
            return ce
        t = self.temperature
        teacher_log_p = ops.log_softmax(teacher / t, axis=-1)
        student_log_p = ops.log_softmax(y_pred / t, axis=-1)
        kl = ops.sum(ops.exp(teacher_log_p) * (teacher_log_p - student_log_p), axis=-1)
        return self.alpha * t * t * kl + (1.0 - self.alpha) * ce

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature, "alpha": self.alpha}


def distillation_loss(temperature: float = 2.0, alpha: float = 0.5) -> DistillationLoss:
    """Loss for model.compile; fit with y = pack_targets(labels, teacher_logits, num_labels)."""
    return DistillationLoss(temperature, alpha)


def pack_targets(labels: np.ndarray, teacher_logits: np.ndarray | None, num_labels: int) -> np.ndarray:
    """[batch, 2 * num_labels] float32: one-hot labels, then teacher logits (zeros when None)."""
    labels = np.asarray(labels)
    one_hot = np.eye(num_labels, dtype=np.float32)[labels]
    if teacher_logits is None:
        teacher_logits = np.zeros_like(one_hot)
    if np.shape(teacher_logits) != one_hot.shape:
        raise ValueError(f"teacher logits {np.shape(teacher_logits)} do not match {one_hot.shape}")
    return np.concatenate([one_hot, np.asarray(teacher_logits, dtype=np.float32)], axis=1)


def accuracy_from_packed(y_true, y_pred):
    """Accuracy metric for packed targets (argmax of the one-hot half)."""
    n = ops.shape(y_pred)[-1]
    return ops.cast(ops.equal(ops.argmax(y_true[..., :n], axis=-1), ops.argmax(y_pred, axis=-1)), "float32")

