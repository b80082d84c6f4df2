"""The CNN student (and the bag-of-embeddings one): the shared id remap and zero-pad embedding
(`student.layers`), then 1-D convolutions of several widths with a max over the sequence (or a masked mean),
then an MLP. Every op after the lookup runs in int8 inside XNNPACK (bench/results/student_search.md)."""

from __future__ import annotations

import keras
import numpy as np

from model_build.config import StudentConfig
from model_build.student.layers import PAD_ID, PAD_ROW, MaskedMean, TokenRemap, ZeroPadEmbedding

def build_student(config: StudentConfig, *, vocab_map: np.ndarray, num_labels: int) -> keras.Model:
    """Build an uncompiled student. ``vocab_map`` comes from build_vocab_map; the embedding table has
    ``vocab_map.max() + 1`` rows."""
    vocab_map = np.asarray(vocab_map)
    if vocab_map.ndim != 1 or vocab_map[PAD_ID] != PAD_ROW or vocab_map.min() < 0:
        raise ValueError("vocab_map must be 1-D, non-negative, with id 0 mapped to row 0")
    rows = int(vocab_map.max()) + 1
    ids = keras.Input(shape=(None,), dtype="int32", name="input_ids")
    remap = TokenRemap(vocab_size=len(vocab_map), name="token_remap")
    row_ids = remap(ids)
    remap.vocab_map.assign(vocab_map.astype(np.int16))
    embedding = ZeroPadEmbedding(rows, config.embed_dim, name="embedding")
    x = embedding(row_ids)
    if config.embed_dropout:
        # Noise shape drops whole token vectors; a dropped vector is zero, like a pad.
        x = keras.layers.Dropout(config.embed_dropout, noise_shape=(None, None, 1), name="embed_dropout")(x)

    if config.architecture == "bag":
        x = MaskedMean(config.seq_len, name="masked_mean")([x, row_ids])
    elif config.architecture == "cnn":
        x = _cnn_features(x, config)
    else:
        raise ValueError(f"unknown architecture {config.architecture!r}")

    for i, width in enumerate(config.hidden):
        x = keras.layers.Dropout(config.dropout, name=f"dropout_{i}")(x)
        x = keras.layers.Dense(width, activation="relu", name=f"hidden_{i}")(x)
    x = keras.layers.Dropout(config.dropout, name="dropout_out")(x)
    logits = keras.layers.Dense(num_labels, name="logits")(x)
    return keras.Model(ids, logits, name=f"student_{config.architecture}")


def _cnn_features(x, config: StudentConfig):
    """Convolutions without bias, ReLU, then a max over the sequence.

    Padding independence, exactly: every window *starts* at a position and looks ahead (k-1 zeros are
    padded on the right, then a 'valid' convolution). A window starting at a sentence token sees the
    same values at any padding length (pad embeddings and the explicit padding are both zero); a window
    starting at a pad position sees only zeros and, without bias, gives exactly 0 after the ReLU, which
    never beats the max of ReLU outputs (>= 0). Centred 'same' windows would break this: a window
    centred on the first pad position still sees the last token, and exists only if the batch is longer
    than the sentence. The bias a convolution would have is applied after the pooling (Dense below)."""
    pooled = []
    for k in config.kernel_sizes:
        h = x
        for j in range(config.conv_layers):
            width = k if j == 0 else 3
            suffix = "" if j == 0 else f"_{j}"
            if width > 1:
                h = keras.layers.ZeroPadding1D((0, width - 1), name=f"lookahead{k}{suffix}")(h)
            h = keras.layers.Conv1D(
                config.filters, width, use_bias=False, activation="relu", name=f"conv{k}{suffix}"
            )(h)  # padding="valid" (the default): the look-ahead zeros are already there
        pooled.append(keras.layers.GlobalMaxPooling1D(name=f"maxpool{k}")(h))
    return pooled[0] if len(pooled) == 1 else keras.layers.Concatenate(name="concat")(pooled)

