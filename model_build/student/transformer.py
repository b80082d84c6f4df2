"""The transformer edge student: blocks of the teacher's own pretrained MiniLM, rewritten for full-int8 LiteRT.

Same runtime contract as every student (model_build.student): one int32 input ``input_ids`` [batch, seq]
of full-vocabulary BERT ids (0 = pad), output ``logits`` [batch, num_labels]; the same pruned vocabulary
(a constant int16 id map, then a table of the kept ids' MiniLM word vectors).

What differs from the teacher's graph (model_build.teacher.encoder_layers), and why — each change is exact in
float unless it says otherwise:

* The attention scale 1/sqrt(h) is folded into the query kernel and bias: one op less per block.
* No key bias: q.(k + b) = q.k + q.b adds the same number to every key's score of a query, which softmax
  ignores. (An untrained near-zero bias also leaves an int8 ADD XNNPACK does not take.)
* No value bias: the attention probabilities sum to one, so W_o (sum_k p_k (v_k + b_v)) = W_o sum_k p_k v_k
  + W_o b_v; W_o b_v joins the output bias. A pruned head's W_o b_v stays there too.
* The pad mask is a constant GATHER of a two-row table indexed by min(row, 1): int8 from the start, no
  CAST to float. Pad keys get ``pad_score`` (-12, not -1e4: the int8 score tensor's range must cover it).
  Not exact: each pad key keeps ~exp(-12) of the weight; a logit moves by ~1e-4 between buckets.
* Layer norm is written out without eps: ``(x - mean) * rsqrt(var) * g + b``. MiniLM's eps is 1e-12, far
  below any token's variance here (pad positions carry their position vector, never an all-zero row); the
  ADD of a near-zero constant is one more op XNNPACK would not take in int8.
* Mean pooling multiplies by the 0/1 mask (again a constant gather) and by 1/length from a reciprocal
  table (model_build.student.layers.MaskedMean): no DIV, no MAXIMUM.
* Heads and feed-forward units may be pruned (largest weight norms kept): narrower blocks, same width 384.
* For conversion only (equalize): the residual stream is stored divided by a per-channel scale, because
  BERT's stream has a few channels far wider than the rest and int8 has one scale per tensor. Measured on
  MiniLM's first two blocks, untrained head: the int8 embedding norm's output had a relative error of 0.81
  plain and 0.09 equalised (the variance's squares had rounded to zero).

Importing this module imports Keras and TensorFlow: runtimes must not import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
from keras import ops

from model_build.config import TransformerStudentConfig
from model_build.student.layers import PAD_ID, PAD_ROW, UNK_ROW, MaskedMean, TokenRemap, gather

UNK_ID = 100  # [UNK] in the BERT uncased vocabulary: the UNK row starts as its vector


@keras.saving.register_keras_serializable(package="model_build")
class RowEmbedding(keras.layers.Layer):
    """Pruned word vectors plus position vectors: rows [B, L] -> [B, L, H]. The type-0 vector is folded
    into the position table (BERT adds it to every token)."""

    def __init__(self, rows: int, dim: int, max_len: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rows, self.dim, self.max_len = rows, dim, max_len

    def build(self, input_shape: Any) -> None:
        self.table = self.add_weight(name="table", shape=(self.rows, self.dim), initializer="zeros")
        self.positions = self.add_weight(name="positions", shape=(self.max_len, self.dim), initializer="zeros")

    def call(self, rows: Any) -> Any:
        length = ops.shape(rows)[1]
        return gather(self.table, rows) + self.positions[None, :length, :]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rows": self.rows, "dim": self.dim, "max_len": self.max_len}


@keras.saving.register_keras_serializable(package="model_build")
class RowMask(keras.layers.Layer):
    """rows [B, L] -> [B, L] float: ``pad`` on the pad row, ``real`` elsewhere, by a constant two-row
    gather (the converter quantizes the table; no float CAST enters the int8 graph)."""

    def __init__(self, pad: float, real: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pad, self.real = float(pad), float(real)

    def build(self, input_shape: Any) -> None:
        self.values = self.add_weight(
            name="values", shape=(2,), trainable=False,
            initializer=keras.initializers.Constant(np.array([self.pad, self.real], dtype=np.float32)),
        )

    def call(self, rows: Any) -> Any:
        return gather(self.values, ops.minimum(rows, 1))  # PAD_ROW is 0, every other row >= 1

    def compute_output_spec(self, rows: Any) -> Any:
        return keras.KerasTensor(rows.shape, dtype=self.compute_dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "pad": self.pad, "real": self.real}


@keras.saving.register_keras_serializable(package="model_build")
class PlainLayerNorm(keras.layers.Layer):
    """Layer norm over the last axis without eps (see the module docstring).

    With ``channels`` > 0 it normalises a channel-equalised input y = x / s (s: the ``scale`` weight, one
    positive number per channel) and returns the same numbers as the plain norm of x: mean and variance
    of x are means of s * y and (s * z)^2, and the centred tensor stays in y's units, z = y - mean / s. Its gamma holds s * g (see equalize)."""

    def __init__(self, channels: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.channels = channels
        self.record: list | None = None

    def build(self, input_shape: Any) -> None:
        h = input_shape[-1]
        self.gamma = self.add_weight(name="gamma", shape=(h,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(h,), initializer="zeros")
        if self.channels:
            self.scale = self.add_weight(name="scale", shape=(h,), initializer="ones", trainable=False)

    def call(self, x: Any) -> Any:
        if self.record is not None:  # equalize's probe, in eager mode: per-channel reach of input and output
            self.record.append(("in", np.abs(np.asarray(x)).max(axis=(0, 1))))
        if not self.channels:
            centred = x - ops.mean(x, axis=-1, keepdims=True)
            variance = ops.mean(ops.square(centred), axis=-1, keepdims=True)
            out = centred * ops.rsqrt(variance) * self.gamma + self.beta
        else:
            # Weighted means as one contraction each (FULLY_CONNECTED, int32 accumulation): an elementwise
            # s * y or s^2 * z^2 would bring the outlier channels' range back into one int8 tensor.
            h = float(self.channels)
            mean = ops.einsum("btd,do->bto", x, ops.expand_dims(self.scale / h, -1))
            centred = x - mean * (1.0 / self.scale)
            variance = ops.einsum("btd,do->bto", centred * centred, ops.expand_dims(ops.square(self.scale) / h, -1))
            out = centred * ops.rsqrt(variance) * self.gamma + self.beta
        if self.record is not None:
            self.record.append(("out", np.abs(np.asarray(out)).max(axis=(0, 1))))
        return out

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "channels": self.channels}


@keras.saving.register_keras_serializable(package="model_build")
class StudentBlock(keras.layers.Layer):
    """One post-LN BERT block, int8-friendly: (hidden [B, L, H], score bias [B, L]) -> hidden [B, L, H]."""

    def __init__(self, hidden: int, heads: int, head_size: int, intermediate: int, dropout: float = 0.0,
                 equalized: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hidden, self.heads, self.head_size = hidden, heads, head_size
        self.intermediate_size, self.rate, self.equalized = intermediate, dropout, equalized
        channels = hidden if equalized else 0

        def project(name: str, bias: str | None) -> keras.layers.EinsumDense:
            return keras.layers.EinsumDense("btd,dnh->btnh", output_shape=(None, heads, head_size),
                                            bias_axes=bias, name=name)

        self.query, self.key, self.value = project("query", "nh"), project("key", None), project("value", None)
        self.attention_output = keras.layers.EinsumDense("btnh,nhd->btd", output_shape=(None, hidden),
                                                         bias_axes="d", name="attention_output")
        self.attention_norm = PlainLayerNorm(channels, name="attention_norm")
        self.intermediate = keras.layers.EinsumDense("btd,df->btf", output_shape=(None, intermediate),
                                                     bias_axes="f", name="intermediate")
        self.output_dense = keras.layers.EinsumDense("btf,fd->btd", output_shape=(None, hidden),
                                                     bias_axes="d", name="output")
        self.output_norm = PlainLayerNorm(channels, name="output_norm")
        self.dropout = keras.layers.Dropout(dropout)

    def build(self, input_shape: Any) -> None:
        shape = (None, None, self.hidden)
        for projection in (self.query, self.key, self.value):
            projection.build(shape)
        self.attention_output.build((None, None, self.heads, self.head_size))
        self.attention_norm.build(shape)
        self.intermediate.build(shape)
        self.output_dense.build((None, None, self.intermediate_size))
        self.output_norm.build(shape)

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        hidden, score_bias = inputs
        bias = ops.expand_dims(ops.expand_dims(score_bias, 1), 1)  # [B, 1, 1, L]
        scores = ops.einsum("bqnh,bknh->bnqk", self.query(hidden), self.key(hidden)) + bias
        probs = self.dropout(ops.softmax(scores, axis=-1), training=training)
        context = ops.einsum("bnqk,bknh->bqnh", probs, self.value(hidden))
        attended = self.dropout(self.attention_output(context), training=training)
        hidden = self.attention_norm(hidden + attended)
        inner = keras.activations.gelu(self.intermediate(hidden), approximate=False)
        out = self.dropout(self.output_dense(inner), training=training)
        return self.output_norm(hidden + out)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return tuple(input_shape[0])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "hidden": self.hidden, "heads": self.heads, "head_size": self.head_size,
                "intermediate": self.intermediate_size, "dropout": self.rate, "equalized": self.equalized}


def build_transformer_student(config: TransformerStudentConfig, *, vocab_map: np.ndarray, num_labels: int,
                              encoder_config: Any, equalized: bool = False) -> keras.Model:
    """An uncompiled transformer student with zero weights: load them with init_from_pretrained (training)
    or equalize (export). ``encoder_config``: the checkpoint's EncoderConfig (model_build.teacher.encoder).
    ``equalized``: the residual stream is stored divided by a per-channel scale (see equalize)."""
    vocab_map = np.asarray(vocab_map)
    if vocab_map.ndim != 1 or vocab_map[PAD_ID] != PAD_ROW or vocab_map.min() < 0:
        raise ValueError("vocab_map must be 1-D, non-negative, with id 0 mapped to row 0")
    n_layers, heads_total = encoder_config.num_hidden_layers, encoder_config.num_attention_heads
    if not config.layers or any(not 0 <= i < n_layers for i in config.layers):
        raise ValueError(f"layers {config.layers} must be indices of the checkpoint's {n_layers} blocks")
    if not 1 <= config.heads <= heads_total or not 1 <= config.intermediate <= encoder_config.intermediate_size:
        raise ValueError(f"heads {config.heads} / intermediate {config.intermediate} exceed the checkpoint's "
                         f"{heads_total} / {encoder_config.intermediate_size}")
    hidden, size = encoder_config.hidden_size, encoder_config.head_size

    ids = keras.Input(shape=(None,), dtype="int32", name="input_ids")
    remap = TokenRemap(vocab_size=len(vocab_map), name="token_remap")
    row_ids = remap(ids)
    remap.vocab_map.assign(vocab_map.astype(np.int16))
    embedding = RowEmbedding(int(vocab_map.max()) + 1, hidden, config.seq_len, name="embedding")
    x = PlainLayerNorm(hidden if equalized else 0, name="embedding_norm")(embedding(row_ids))
    x = keras.layers.Dropout(config.dropout, name="embedding_dropout")(x)
    score_bias = RowMask(config.pad_score, 0.0, name="score_bias")(row_ids)
    for index in config.layers:
        x = StudentBlock(hidden, config.heads, size, config.intermediate, config.dropout, equalized,
                         name=f"block_{index}")((x, score_bias))
    x = x * ops.expand_dims(RowMask(0.0, 1.0, name="pool_mask")(row_ids), -1)
    pooled = MaskedMean(config.seq_len, name="masked_mean")([x, row_ids])
    pooled = keras.layers.Dropout(config.dropout, name="pooled_dropout")(pooled)
    logits = keras.layers.Dense(num_labels, name="logits")(pooled)
    return keras.Model(ids, logits, name="student_transformer")


def init_from_pretrained(model: keras.Model, config: TransformerStudentConfig, weights: Mapping[str, np.ndarray],
                         encoder_config: Any) -> None:
    """Give a plain student the pretrained MiniLM tensors ``weights`` (teacher.minilm.load_weights) for
    its kept rows, blocks, heads and units. The classifier keeps its fresh initialisation."""
    vocab_map = model.get_layer("token_remap").vocab_map.numpy().astype(np.int64)
    _assign_embeddings(model.get_layer("embedding"), model.get_layer("embedding_norm"), weights, vocab_map,
                       config.seq_len)
    for index in config.layers:
        _assign_block(model.get_layer(f"block_{index}"), weights, f"encoder.layer.{index}",
                      encoder_config.num_attention_heads, encoder_config.head_size, config)


def _norms(model: keras.Model, config: TransformerStudentConfig) -> list[PlainLayerNorm]:
    """The layer norms in the order the residual stream meets them."""
    norms = [model.get_layer("embedding_norm")]
    for index in config.layers:
        block = model.get_layer(f"block_{index}")
        norms += [block.attention_norm, block.output_norm]
    return norms


def stream_scales(model: keras.Model, config: TransformerStudentConfig, sample_ids: np.ndarray) -> list[np.ndarray]:
    """One per-channel divisor for each stretch of the residual stream (the embedding sum, then from each
    layer norm's output to the next one's input, then the last norm's output), from the largest magnitudes
    a float forward pass of ``sample_ids`` reaches: s = max(1, reach / median reach). BERT's stream has a
    few channels tens to hundreds of times wider than the rest (the position vectors already have two);
    with one int8 scale per tensor the rest would keep a handful of steps, and the squares a layer norm's
    variance needs would round to zero."""
    norms = _norms(model, config)
    for norm in norms:
        norm.record = []
    try:
        for start in range(0, len(sample_ids), 64):
            model(sample_ids[start:start + 64], training=False)
        reach = [np.max([r for kind, r in norm.record if kind == "in"], axis=0) for norm in norms]
        reach_out = [np.max([r for kind, r in norm.record if kind == "out"], axis=0) for norm in norms]
    finally:
        for norm in norms:
            norm.record = None
    stretches = [reach[0]] + [np.maximum(reach_out[k - 1], reach[k]) for k in range(1, len(norms))] + [reach_out[-1]]
    return [np.maximum(1.0, r / np.median(r)).astype(np.float32) for r in stretches]


def equalize(model: keras.Model, config: TransformerStudentConfig, encoder_config: Any,
             sample_ids: np.ndarray) -> keras.Model:
    """The same function as the trained plain student ``model`` (exactly, in float), rewritten for int8:
    the residual stream is stored as y = x / s, one s per stretch between layer norms (stream_scales over
    ``sample_ids``, real padded inputs). Every consumer folds s into its weights: projections read s * y
    (kernel rows times s), what is added to the stream is divided by s (kernel columns and bias), a layer
    norm reads its stretch's s and writes the next one's through gamma and beta, and the classifier reads
    the last."""
    scales = iter(stream_scales(model, config, sample_ids))
    vocab_map = model.get_layer("token_remap").vocab_map.numpy().astype(np.int64)
    out = build_transformer_student(config, vocab_map=vocab_map, num_labels=model.get_layer("logits").units,
                                    encoder_config=encoder_config, equalized=True)
    for name in ("token_remap", "score_bias", "pool_mask", "masked_mean"):
        out.get_layer(name).set_weights(model.get_layer(name).get_weights())
    s = next(scales)
    table, positions = model.get_layer("embedding").get_weights()
    out.get_layer("embedding").set_weights([table / s, positions / s])
    s = _fold_norm(model.get_layer("embedding_norm"), out.get_layer("embedding_norm"), s, next(scales))
    for index in config.layers:
        a, b = model.get_layer(f"block_{index}"), out.get_layer(f"block_{index}")
        for name in ("query", "key", "value"):
            weights = getattr(a, name).get_weights()
            getattr(b, name).set_weights([weights[0] * s[:, None, None], *weights[1:]])
        kernel, bias = a.attention_output.get_weights()
        b.attention_output.set_weights([kernel / s, bias / s])
        s = _fold_norm(a.attention_norm, b.attention_norm, s, next(scales))
        kernel, bias = a.intermediate.get_weights()
        b.intermediate.set_weights([kernel * s[:, None], bias])
        kernel, bias = a.output_dense.get_weights()
        b.output_dense.set_weights([kernel / s, bias / s])
        s = _fold_norm(a.output_norm, b.output_norm, s, next(scales))
    kernel, bias = model.get_layer("logits").get_weights()
    out.get_layer("logits").set_weights([kernel * s[:, None], bias])
    return out


def _fold_norm(plain: PlainLayerNorm, equalized: PlainLayerNorm, s_in: np.ndarray, s_out: np.ndarray) -> np.ndarray:
    """The equalized norm reads y = x / s_in and writes its output divided by s_out; returns s_out."""
    gamma, beta = plain.gamma.numpy(), plain.beta.numpy()
    equalized.gamma.assign(s_in * gamma / s_out)
    equalized.beta.assign(beta / s_out)
    equalized.scale.assign(s_in)
    return s_out


def _assign_embeddings(embedding: RowEmbedding, norm: PlainLayerNorm, weights: Mapping[str, np.ndarray],
                       vocab_map: np.ndarray, seq_len: int) -> None:
    words = np.asarray(weights["embeddings.word_embeddings.weight"], dtype=np.float32)
    if len(vocab_map) != len(words):
        raise ValueError(f"vocab_map covers {len(vocab_map)} ids, the checkpoint {len(words)}")
    table = np.zeros((int(vocab_map.max()) + 1, words.shape[1]), dtype=np.float32)
    kept = np.flatnonzero(vocab_map >= 2)
    table[vocab_map[kept]] = words[kept]
    table[UNK_ROW] = words[UNK_ID]
    table[PAD_ROW] = words[PAD_ID]  # masked everywhere; BERT's own [PAD] vector keeps its norm statistics
    embedding.table.assign(table)
    positions = np.asarray(weights["embeddings.position_embeddings.weight"], dtype=np.float32)[:seq_len]
    embedding.positions.assign(positions + np.asarray(weights["embeddings.token_type_embeddings.weight"])[0])
    norm.gamma.assign(weights["embeddings.LayerNorm.weight"])
    norm.beta.assign(weights["embeddings.LayerNorm.bias"])


def _kept(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the `n` largest scores, in their original order."""
    return np.sort(np.argsort(-scores, kind="stable")[:n])


def _assign_block(block: StudentBlock, weights: Mapping[str, np.ndarray], p: str, heads_total: int, size: int,
                  config: TransformerStudentConfig) -> None:
    def w(name: str) -> np.ndarray:
        return np.asarray(weights[f"{p}.{name}"], dtype=np.float32)

    hidden = block.hidden
    # torch Linear stores [out, in]; EinsumDense wants [in, heads, size].
    q, k, v = (w(f"attention.self.{n}.weight").T.reshape(hidden, heads_total, size) for n in ("query", "key", "value"))
    q_bias = w("attention.self.query.bias").reshape(heads_total, size)
    v_bias = w("attention.self.value.bias").reshape(heads_total, size)
    out = w("attention.output.dense.weight").T.reshape(heads_total, size, hidden)
    out_bias = w("attention.output.dense.bias") + np.einsum("nh,nhd->d", v_bias, out)  # every head's W_o b_v
    # A head matters by how much it can write: the norms of its value and output maps.
    heads = _kept(np.linalg.norm(v, axis=(0, 2)) * np.linalg.norm(out, axis=(1, 2)), config.heads)
    scale = 1.0 / np.sqrt(size)
    block.query.kernel.assign(q[:, heads] * scale)
    block.query.bias.assign(q_bias[heads] * scale)
    block.key.kernel.assign(k[:, heads])
    block.value.kernel.assign(v[:, heads])
    block.attention_output.kernel.assign(out[heads])
    block.attention_output.bias.assign(out_bias)
    block.attention_norm.gamma.assign(w("attention.output.LayerNorm.weight"))
    block.attention_norm.beta.assign(w("attention.output.LayerNorm.bias"))
    inner, inner_bias = w("intermediate.dense.weight").T, w("intermediate.dense.bias")  # [H, F], [F]
    outer = w("output.dense.weight").T  # [F, H]
    units = _kept(np.linalg.norm(inner, axis=0) * np.linalg.norm(outer, axis=1), config.intermediate)
    block.intermediate.kernel.assign(inner[:, units])
    block.intermediate.bias.assign(inner_bias[units])
    block.output_dense.kernel.assign(outer[units])
    block.output_dense.bias.assign(w("output.dense.bias"))
    block.output_norm.gamma.assign(w("output.LayerNorm.weight"))
    block.output_norm.beta.assign(w("output.LayerNorm.bias"))

