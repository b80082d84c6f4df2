"""Distil the teacher into the edge student (KL on temperature-softened logits + cross-entropy).

Importing this module imports Keras and TensorFlow: the student stage imports it when it trains.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import keras
import numpy as np
from tqdm.auto import tqdm

from model_build.config import BuildConfig
from model_build.data.dataset import Dataset
from model_build.progress import keras_progress
from model_build.student.cnn import build_student
from model_build.student.layers import build_vocab_map, embedding_init, load_word_embeddings
from model_build.student.loss import distillation_loss, pack_targets
from model_build.student.prune import prune_student
from model_build.student.transformer import build_transformer_student, init_from_pretrained
from model_build.teacher.minilm import EncoderConfig, load_weights, minilm_dir


@dataclass(frozen=True)
class TransferData:
    """Teacher-labelled texts beyond the training set (student.transfer): padded ids, the teacher's
    logits, a loss weight each. Their hard label is the teacher's argmax."""

    ids: np.ndarray
    logits: np.ndarray
    weights: np.ndarray


def distill_student(config: BuildConfig, dataset: Dataset, train_ids: np.ndarray, teacher_logits: np.ndarray,
                    transfer: TransferData | None = None):
    """A trained float Keras student. `train_ids` are padded BERT ids, `teacher_logits` the teacher's on them.
    The vocabulary is pruned to the labelled training texts' tokens: transfer texts cannot grow the model."""
    keras.utils.set_random_seed(config.seed)
    cfg, d = config.student, config.distill
    if cfg.architecture == "transformer":
        return _distill_transformer(config, dataset, train_ids, teacher_logits, transfer)
    vocab_map = build_vocab_map(train_ids, max_tokens=cfg.max_tokens)
    model = build_student(cfg, vocab_map=vocab_map, num_labels=dataset.num_labels)
    # Start from the teacher's word embeddings (PCA-projected): rare tokens get a sensible vector.
    words = load_word_embeddings(minilm_dir())
    model.get_layer("embedding").set_table(embedding_init(words, vocab_map, cfg.embed_dim))
    ids, logits, labels, weights = _training_set(config, dataset, train_ids, teacher_logits, transfer)
    # The recipe measured in bench/results/student_search.md: AdamW, half an epoch of warm-up, cosine decay.
    per_epoch = int(np.ceil(len(ids) / d.batch_size))
    warmup = per_epoch // 2
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=per_epoch * d.epochs - warmup, warmup_target=d.learning_rate, warmup_steps=warmup
    )
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=d.weight_decay)
    model.compile(optimizer=optimizer, loss=distillation_loss(d.temperature, d.alpha))
    targets = pack_targets(labels, logits, dataset.num_labels)
    model.fit(
        ids,
        targets,
        sample_weight=weights,
        batch_size=d.batch_size,
        epochs=d.epochs,
        shuffle=True,
        verbose=0,
        callbacks=[keras_progress("student", d.epochs)],
    )
    if config.prune:
        model = _prune_and_fine_tune(model, config, vocab_map, dataset.num_labels, ids, targets, weights)
    return model


def _training_set(config: BuildConfig, dataset: Dataset, train_ids: np.ndarray, teacher_logits: np.ndarray,
                  transfer: TransferData | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ids, teacher logits, hard labels and loss weights: the labelled training texts, then the transfer set."""
    labels = np.asarray(dataset.train.labels)
    weights = np.ones(len(labels), dtype=np.float32)
    if dataset.oos_index is not None:
        weights[labels == dataset.oos_index] = config.distill.oos_weight
    if transfer is None or not len(transfer.ids):
        return train_ids, teacher_logits, labels, weights
    return (np.concatenate([train_ids, transfer.ids.astype(train_ids.dtype)]),
            np.concatenate([teacher_logits, transfer.logits]),
            np.concatenate([labels, transfer.logits.argmax(axis=1)]),
            np.concatenate([weights, transfer.weights]))


def _prune_and_fine_tune(model, config: BuildConfig, vocab_map, num_labels: int, ids: np.ndarray,
                         targets: np.ndarray, weights: np.ndarray):
    """Structured pruning, then distillation fine-tuning of the narrower student with the same loss, at a
    tenth of the rate, constant."""
    d = config.distill
    model, _ = prune_student(model, config.student, config.prune, vocab_map=vocab_map, num_labels=num_labels)
    model.compile(optimizer=keras.optimizers.AdamW(d.learning_rate / 10, weight_decay=d.weight_decay),
                  loss=distillation_loss(d.temperature, d.alpha))
    model.fit(ids, targets, sample_weight=weights, batch_size=d.batch_size, epochs=config.prune_epochs,
              shuffle=True, verbose=0, callbacks=[keras_progress("student (pruned)", config.prune_epochs)])
    return model


def _distill_transformer(config: BuildConfig, dataset: Dataset, train_ids: np.ndarray, teacher_logits: np.ndarray,
                         transfer: TransferData | None):
    """The transformer student (model_build.student.transformer), started from the teacher's pretrained MiniLM
    blocks, trained with the same loss on the same texts. Batches are drawn from one length bucket each and
    cut to it: most texts are short, and a block's cost grows with the padded length (its attention with
    the square)."""
    cfg, d = config.student, config.distill
    folder = minilm_dir()
    encoder_config = EncoderConfig.from_dir(folder)
    vocab_map = build_vocab_map(train_ids, max_tokens=cfg.max_tokens)
    model = build_transformer_student(cfg, vocab_map=vocab_map, num_labels=dataset.num_labels,
                                      encoder_config=encoder_config)
    init_from_pretrained(model, cfg, load_weights(folder), encoder_config)
    ids, logits, labels, weights = _training_set(config, dataset, train_ids, teacher_logits, transfer)
    targets = pack_targets(labels, logits, dataset.num_labels)
    groups = bucket_rows(ids, config.length_buckets)
    rng = np.random.default_rng(config.seed)
    per_epoch = sum(-(-len(rows) // d.batch_size) for _, rows in groups)
    steps = per_epoch * d.epochs
    warmup = max(1, int(0.06 * steps))
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=steps - warmup, warmup_target=d.learning_rate, warmup_steps=warmup
    )
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=d.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    model.compile(optimizer=optimizer, loss=distillation_loss(d.temperature, d.alpha))
    # A loop over train_on_batch, as the teacher's: fit() wants one input shape, and the buckets have several.
    with tqdm(total=steps, desc="student", unit="step", leave=False, file=sys.stderr) as bar:
        for epoch in range(d.epochs):
            losses = []
            for g, rows in _bucket_plan(groups, d.batch_size, rng):
                width = groups[g][0]
                loss = model.train_on_batch(ids[rows, :width], targets[rows], sample_weight=weights[rows])
                losses.append(float(np.asarray(loss).ravel()[0]))
                bar.update(1)
                if len(losses) % 50 == 0:
                    bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
            bar.write(f"[student] epoch {epoch + 1}/{d.epochs}: loss={np.mean(losses):.4f}", file=sys.stderr)
    return model


def bucket_rows(ids: np.ndarray, buckets: tuple[int, ...]) -> list[tuple[int, np.ndarray]]:
    """(width, row indices) per length bucket: the rows whose text fits the bucket and no smaller one;
    texts longer than the last bucket fall in it (they are truncated to it already)."""
    lengths = (np.asarray(ids) != 0).sum(axis=1)
    widths = sorted(w for w in buckets if w <= ids.shape[1]) or [ids.shape[1]]
    out, low = [], 0
    for i, width in enumerate(widths):
        last = i == len(widths) - 1
        rows = np.flatnonzero((lengths > low) & ((lengths <= width) | last))
        if len(rows):
            out.append((width, rows))
        low = width
    return out


def _bucket_plan(groups: list[tuple[int, np.ndarray]], batch_size: int,
                 rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
    """One epoch of shuffled batches, each drawn from a single length bucket."""
    plan = []
    for g, (_, rows) in enumerate(groups):
        order = rng.permutation(rows)
        plan += [(g, order[i:i + batch_size]) for i in range(0, len(order), batch_size)]
    return [plan[i] for i in rng.permutation(len(plan))]
