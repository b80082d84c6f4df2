"""The teacher (cloud model): all-MiniLM-L6-v2 with a classification head, fine-tuned.

Layers below `train_from_layer` stay frozen, so their outputs are computed once and the top layers are
trained on those cached hidden states: the expensive part of each step disappears (measured in the README).
The trained pieces are then composed into one end-to-end ids -> logits model for TFLite export.
Importing this module imports Keras and TensorFlow: the teacher stage imports it when it trains.
"""

from __future__ import annotations

import dataclasses
import math
import sys

import keras
import numpy as np
from tqdm.auto import tqdm

from model_build.config import TeacherConfig
from model_build.teacher.encoder import build_encoder, hidden_input, input_ids
from model_build.teacher.minilm import EncoderConfig, load_weights, minilm_dir


class Teacher:
    """Owns the Keras pieces; `train` then `export_model` / `logits`."""

    def __init__(self, config: TeacherConfig, num_labels: int, *, seed: int = 0):
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
        self.num_labels = num_labels

    def _upper(self, seq_len: int):
        k = self.config.train_from_layer
        hidden, ids = hidden_input(self.encoder.config, seq_len), input_ids(seq_len)
        pooled = self.encoder.pooled(hidden, ids, start=k)
        return keras.Model([hidden, ids], self.head(self.dropout(pooled)), name="teacher_upper")

    def export_model(self, seq_len: int | None = None):
        """ids [B, L] -> logits [B, C], end to end; dynamic batch and length when `seq_len` is None."""
        ids = input_ids(seq_len)
        return keras.Model(ids, self.head(self.encoder.sentence_embedding(ids)), name="teacher")

    def lower_states(self, ids: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        lower = self.encoder.lower_model(self.config.train_from_layer, seq_len=ids.shape[1])
        return np.asarray(lower.predict(ids, batch_size=batch_size, verbose=0), dtype=np.float32)

    def train(self, ids: np.ndarray, labels: np.ndarray, *, group_widths: tuple[int, ...] = (16,),
              jit_compile: bool = False):
        """Fine-tune the layers from `train_from_layer` up and the head on cached lower-layer states.

        Texts are split into length groups (<= each of `group_widths` tokens, then the rest) and every batch
        is drawn from one group, padded to the group's width: most CLINC-like texts are short, so this cuts
        the work per epoch at the same result (pads are masked, so a text's states do not depend on how far
        it is padded). bench/teacher_speed.py measures the widths and XLA (`jit_compile`)."""
        cfg = self.config
        lengths = (ids != 0).sum(axis=1)
        groups = []
        low = 0
        for width in (*[w for w in group_widths if w < ids.shape[1]], ids.shape[1]):
            mask = (lengths > low) & (lengths <= width) if low else lengths <= width
            low = width
            if mask.any():
                group_ids = np.ascontiguousarray(ids[mask, :width])
                groups.append((self.lower_states(group_ids), group_ids, np.asarray(labels)[mask]))
        rng = np.random.default_rng(0)
        steps_per_epoch = sum(math.ceil(len(g[1]) / cfg.batch_size) for g in groups)
        total = steps_per_epoch * cfg.epochs
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps)
        warmup = int(total * cfg.warmup_fraction)
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=max(1, total - warmup), warmup_target=cfg.learning_rate, warmup_steps=warmup
        )
        optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=cfg.weight_decay)
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
        model = self._upper(None)
        model.compile(
            optimizer=optimizer,
            loss=classification_loss(cfg.label_smoothing, self.num_labels),
            metrics=["accuracy"],
            jit_compile=jit_compile,
        )
        # A plain loop over train_on_batch: fit() wants one input shape, and the groups have several.
        with tqdm(total=total, desc="teacher", unit="step", leave=False, file=sys.stderr) as bar:
            step = 0
            for epoch in range(math.ceil(total / steps_per_epoch)):
                model.reset_metrics()
                logs: dict = {}
                for g, rows in _length_grouped_plan(groups, cfg.batch_size, rng):
                    if step == total:
                        break
                    hidden, group_ids, group_labels = groups[g]
                    logs = model.train_on_batch((hidden[rows], group_ids[rows]), group_labels[rows],
                                                return_dict=True)
                    step += 1
                    bar.update(1)
                    if step % 20 == 0:
                        bar.set_postfix({k: f"{float(v):.3f}" for k, v in logs.items()})
                shown = ", ".join(f"{k}={float(v):.4f}" for k, v in logs.items())
                bar.write(f"[teacher] epoch {epoch + 1}: {shown}", file=sys.stderr)
        return model

    def logits(self, ids: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        model = self.export_model(ids.shape[1])
        return np.asarray(model.predict(ids, batch_size=batch_size, verbose=0), dtype=np.float32)


def classification_loss(label_smoothing: float, num_labels: int):
    """Cross-entropy on the head's logits for integer labels; with `label_smoothing` > 0 the target is
    (1 - s) x the label's one-hot + s / num_labels on every label (`TeacherConfig.label_smoothing`)."""
    if not label_smoothing:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def smoothed(y_true, y_pred):
        target = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"), num_labels)
        return keras.losses.categorical_crossentropy(target, y_pred, from_logits=True,
                                                     label_smoothing=label_smoothing)

    return smoothed


def _length_grouped_plan(groups, batch_size: int, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
    """One epoch of shuffled batches, each drawn from a single length group."""
    plan = []
    for g, (_, ids, _) in enumerate(groups):
        order = rng.permutation(len(ids))
        plan += [(g, order[i : i + batch_size]) for i in range(0, len(order), batch_size)]
    return [plan[i] for i in rng.permutation(len(plan))]
