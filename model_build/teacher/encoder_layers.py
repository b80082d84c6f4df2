"""The Keras layers of the BERT encoder port (`teacher.encoder`): embeddings, post-LN transformer blocks,
the padding mask and mean pooling.

The math is BERT's: post-LN blocks, exact (erf) GELU, scaled dot-product attention with an additive mask,
then sentence-transformers' mean pooling over non-pad tokens. [PAD] is id 0 and the padding mask is
derived in the graph. Projections are ``EinsumDense`` with heads as an explicit axis, never a Keras
``Dense`` on 3-D input. Layer norm is written by hand, ``(x - mean) * rsqrt(var + eps) * gamma + beta``,
which converts to plain arithmetic. Importing this module imports Keras and TensorFlow: runtimes must not
import it.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from model_build.teacher.minilm import EncoderConfig

PAD_ID = 0
# Added to attention scores of padded keys. exp(-1e4) underflows to exactly 0 in fp32, and unlike the
# dtype minimum it cannot overflow to -inf when added to a score.
MASK_NEGATIVE = -1e4


def _layer_norm(x: Any, gamma: Any, beta: Any, eps: float) -> Any:
    mean = ops.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    variance = ops.mean(ops.square(centred), axis=-1, keepdims=True)
    return centred * ops.rsqrt(variance + eps) * gamma + beta


class LayerNorm(keras.layers.Layer):
    """Layer norm over the last axis, written out (see module docstring)."""

    def __init__(self, eps: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.eps = eps

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.gamma = self.add_weight(name="gamma", shape=(input_shape[-1],), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(input_shape[-1],), initializer="zeros")

    def call(self, x: Any) -> Any:
        return _layer_norm(x, self.gamma, self.beta, self.eps)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "eps": self.eps}


class PaddingMask(keras.layers.Layer):
    """input_ids [B, L] int -> float mask [B, L]: 1.0 on real tokens, 0.0 on [PAD]."""

    def call(self, input_ids: Any) -> Any:
        return ops.cast(ops.not_equal(input_ids, PAD_ID), self.compute_dtype)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape


class Embeddings(keras.layers.Layer):
    """word + position + token-type-0 embeddings, then layer norm: input_ids [B, L] -> [B, L, H].

    The type-0 row is folded into the position table: one table, one ADD, same sum.
    """

    def __init__(self, config: EncoderConfig, dropout: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.words = keras.layers.Embedding(config.vocab_size, config.hidden_size, name="words")
        self.norm = LayerNorm(config.layer_norm_eps, name="norm")
        self.dropout = keras.layers.Dropout(dropout)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.words.build(input_shape)
        self.positions = self.add_weight(
            name="positions_type0",
            shape=(self.config.max_position_embeddings, self.config.hidden_size),
            initializer="zeros",
        )
        self.norm.build((*input_shape, self.config.hidden_size))

    def call(self, input_ids: Any, training: bool | None = None) -> Any:
        length = ops.shape(input_ids)[1]
        x = self.words(input_ids) + self.positions[None, :length, :]
        return self.dropout(self.norm(x), training=training)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*input_shape, self.config.hidden_size)


class TransformerBlock(keras.layers.Layer):
    """One post-LN BERT block: (hidden [B, L, H], mask [B, L]) -> hidden [B, L, H]."""

    def __init__(self, config: EncoderConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        heads, size, hidden = config.num_attention_heads, config.head_size, config.hidden_size
        self.config = config
        self.scale = 1.0 / float(np.sqrt(size))

        def project(name: str) -> keras.layers.EinsumDense:
            return keras.layers.EinsumDense(
                "btd,dnh->btnh", output_shape=(None, heads, size), bias_axes="nh", name=name
            )

        self.query, self.key, self.value = project("query"), project("key"), project("value")
        self.attention_output = keras.layers.EinsumDense(
            "btnh,nhd->btd", output_shape=(None, hidden), bias_axes="d", name="attention_output"
        )
        self.attention_norm = LayerNorm(config.layer_norm_eps, name="attention_norm")
        self.intermediate = keras.layers.EinsumDense(
            "btd,df->btf", output_shape=(None, config.intermediate_size), bias_axes="f", name="intermediate"
        )
        self.output_dense = keras.layers.EinsumDense(
            "btf,fd->btd", output_shape=(None, hidden), bias_axes="d", name="output"
        )
        self.output_norm = LayerNorm(config.layer_norm_eps, name="output_norm")
        self.attention_dropout = keras.layers.Dropout(config.attention_probs_dropout_prob)
        self.hidden_dropout = keras.layers.Dropout(config.hidden_dropout_prob)

    def build(self, input_shape: Any) -> None:
        hidden_shape = tuple(input_shape[0])
        heads_shape = (*hidden_shape[:2], self.config.num_attention_heads, self.config.head_size)
        for projection in (self.query, self.key, self.value):
            projection.build(hidden_shape)
        self.attention_output.build(heads_shape)
        self.attention_norm.build(hidden_shape)
        self.intermediate.build(hidden_shape)
        self.output_dense.build((*hidden_shape[:2], self.config.intermediate_size))
        self.output_norm.build(hidden_shape)

    def call(self, inputs: tuple[Any, Any], training: bool | None = None) -> Any:
        hidden, mask = inputs
        # [B, 1, 1, L]: 0 for real keys, MASK_NEGATIVE for [PAD] keys.
        bias = ops.expand_dims(ops.expand_dims((1.0 - mask) * MASK_NEGATIVE, 1), 1)
        # (q / sqrt(h)) . k == (q . k) / sqrt(h): one multiply on [B, L, n, h] rather than on [B, n, L, L].
        query = self.query(hidden) * self.scale
        key = self.key(hidden)
        value = self.value(hidden)
        scores = ops.einsum("bqnh,bknh->bnqk", query, key) + bias
        probs = self.attention_dropout(ops.softmax(scores, axis=-1), training=training)
        context = ops.einsum("bnqk,bknh->bqnh", probs, value)
        attended = self.hidden_dropout(self.attention_output(context), training=training)
        hidden = self.attention_norm(hidden + attended)
        inner = keras.activations.gelu(self.intermediate(hidden), approximate=False)
        out = self.hidden_dropout(self.output_dense(inner), training=training)
        return self.output_norm(hidden + out)

    def compute_output_shape(self, input_shape: Any) -> tuple[int | None, ...]:
        return tuple(input_shape[0])


class MeanPooling(keras.layers.Layer):
    """(hidden [B, L, H], mask [B, L]) -> [B, H]: mean over non-pad tokens, as sentence-transformers does.

    With ``normalize=True`` the result is L2-normalised, which is what all-MiniLM-L6-v2 publishes.
    """

    def __init__(self, normalize: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.normalize = normalize

    def call(self, inputs: tuple[Any, Any]) -> Any:
        hidden, mask = inputs
        summed = ops.sum(hidden * ops.expand_dims(mask, -1), axis=1)
        count = ops.maximum(ops.sum(mask, axis=1, keepdims=True), 1e-9)
        pooled = summed / count
        if self.normalize:
            norm = ops.sqrt(ops.sum(ops.square(pooled), axis=-1, keepdims=True))
            pooled = pooled / ops.maximum(norm, 1e-12)
        return pooled

    def compute_output_shape(self, input_shape: Any) -> tuple[int | None, ...]:
        hidden_shape = tuple(input_shape[0])
        return (hidden_shape[0], hidden_shape[2])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "normalize": self.normalize}
