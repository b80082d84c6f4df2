"""Distil the teacher into the edge student (KL on temperature-softened logits + cross-entropy)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model_build.config import BuildConfig
from model_build.data import Dataset
from model_build.progress import keras_progress


@dataclass(frozen=True)
class TransferData:
    """Teacher-labelled texts beyond the training set (model_build.transfer): padded ids, the teacher's
    logits, a loss weight each. Their hard label is the teacher's argmax."""

    ids: np.ndarray
    logits: np.ndarray
    weights: np.ndarray


def distill_student(config: BuildConfig, dataset: Dataset, train_ids: np.ndarray, teacher_logits: np.ndarray,
                    transfer: TransferData | None = None):
    """A trained float Keras student. `train_ids` are padded BERT ids, `teacher_logits` the teacher's on them.
    The vocabulary is pruned to the labelled training texts' tokens: transfer texts cannot grow the model."""
    import keras

    from model_build.student import (
        build_student,
        build_vocab_map,
        distillation_loss,
        embedding_init,
        load_word_embeddings,
        pack_targets,
    )
    from model_build.teacher import minilm_dir

    keras.utils.set_random_seed(config.seed)
    cfg, d = config.student, config.distill
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
    import keras

    from model_build.prune import prune_student
    from model_build.student import distillation_loss

    d = config.distill
    model, _ = prune_student(model, config.student, config.prune, vocab_map=vocab_map, num_labels=num_labels)
    model.compile(optimizer=keras.optimizers.AdamW(d.learning_rate / 10, weight_decay=d.weight_decay),
                  loss=distillation_loss(d.temperature, d.alpha))
    model.fit(ids, targets, sample_weight=weights, batch_size=d.batch_size, epochs=config.prune_epochs,
              shuffle=True, verbose=0, callbacks=[keras_progress("student (pruned)", config.prune_epochs)])
    return model
