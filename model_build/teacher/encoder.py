"""Keras 3 port of a BERT encoder (all-MiniLM-L6-v2) with pretrained weights, split-able at a layer boundary.

The graph takes one int32 input, ``input_ids`` [batch, seq]; [PAD] is id 0 and the padding mask is derived
in the graph, token types are all 0. The math is BERT's: post-LN blocks, exact (erf) GELU, scaled
dot-product attention with an additive mask, then sentence-transformers' mean pooling over non-pad tokens
(the layers are in `teacher.encoder_layers`; this module assembles them and assigns the pretrained
weights that `teacher.minilm` reads).

Why it is built from pieces: teacher training runs ``lower_model(k)`` once over the data set, caches its
hidden states, and fine-tunes only ``upper_model(k)`` (layers [k, n) + pooling) on the cache; export
composes the *same layer objects* into one end-to-end model. Usage::

    config = EncoderConfig.from_dir(model_dir)
    encoder = build_encoder(config, load_weights(model_dir), trainable_from_layer=4)
    cache = encoder.lower_model(4, seq_len=32).predict(ids)          # [N, 32, H], frozen part, once
    hidden, ids_in = hidden_input(config, 32), input_ids(32)
    trainer = keras.Model([hidden, ids_in], head(encoder.pooled(hidden, ids_in, start=4)))
    trainer.fit([cache, ids], labels)                                # trains layers 4, 5 and the head
    ids_in = input_ids(32)
    exported = keras.Model(ids_in, head(encoder.sentence_embedding(ids_in)))   # same layers, end to end

Projections are ``EinsumDense`` with heads as an explicit axis, never a Keras ``Dense`` on 3-D input.
Export with a fixed ``seq_len`` (length buckets): then every reshape in the TFLite graph is static and
XNNPACK takes all float ops in 2 pieces (only the integer lookup/mask ops stay outside). With
``seq_len=None`` the einsum lowering adds SHAPE-fed RESHAPEs that split it into 13 pieces.
Importing this module imports Keras and TensorFlow: runtimes must not import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from model_build.errors import BuildError
from model_build.teacher.encoder_layers import Embeddings, LayerNorm, MeanPooling, PaddingMask, TransformerBlock
from model_build.teacher.minilm import EncoderConfig


def input_ids(seq_len: int | None = None, name: str = "input_ids") -> Any:
    """The encoder's symbolic input: int32 [batch, seq_len]; ``None`` leaves the length dynamic."""
    return keras.Input(shape=(seq_len,), dtype="int32", name=name)


def hidden_input(config: EncoderConfig, seq_len: int | None = None, name: str = "hidden") -> Any:
    """Symbolic input for cached hidden states: float32 [batch, seq_len, hidden_size]."""
    return keras.Input(shape=(seq_len, config.hidden_size), dtype="float32", name=name)


@dataclass(frozen=True)
class Encoder:
    """The pieces of one encoder. Every model made from it shares these layer objects (and weights)."""

    config: EncoderConfig
    mask: PaddingMask
    embed: Embeddings
    layers: tuple[TransformerBlock, ...]
    pool: MeanPooling
    pool_normalized: MeanPooling

    def _check_split(self, k: int) -> None:
        if not 0 <= k <= len(self.layers):
            raise BuildError(f"layer boundary {k} is outside 0..{len(self.layers)}")

    def hidden_states(self, ids: Any, *, stop: int | None = None) -> Any:
        """Symbolic: ids -> output of layer ``stop - 1`` (embeddings + layers [0, stop)); default all."""
        stop = len(self.layers) if stop is None else stop
        self._check_split(stop)
        mask = self.mask(ids)
        hidden = self.embed(ids)
        for block in self.layers[:stop]:
            hidden = block((hidden, mask))
        return hidden

    def pooled(self, hidden: Any, ids: Any, *, start: int = 0, normalize: bool = False) -> Any:
        """Symbolic: hidden states entering layer ``start`` -> layers [start, n) -> pooled [B, H]."""
        self._check_split(start)
        mask = self.mask(ids)
        for block in self.layers[start:]:
            hidden = block((hidden, mask))
        return (self.pool_normalized if normalize else self.pool)((hidden, mask))

    def sentence_embedding(self, ids: Any, *, normalize: bool = False) -> Any:
        """Symbolic: ids -> pooled [B, H] through all layers. Compose a head on top of this for export."""
        return self.pooled(self.embed(ids), ids, start=0, normalize=normalize)

    def lower_model(self, k: int, seq_len: int | None = None) -> keras.Model:
        """input_ids -> hidden states after layers [0, k) ([B, L, H]). k = 0 gives the embeddings."""
        ids = input_ids(seq_len)
        return keras.Model(ids, self.hidden_states(ids, stop=k), name=f"encoder_lower_{k}")

    def upper_model(self, k: int, seq_len: int | None = None, *, normalize: bool = False) -> keras.Model:
        """(hidden [B, L, H] from ``lower_model(k)``, input_ids) -> layers [k, n) + pooling -> [B, H]."""
        hidden, ids = hidden_input(self.config, seq_len), input_ids(seq_len)
        return keras.Model(
            [hidden, ids], self.pooled(hidden, ids, start=k, normalize=normalize), name=f"encoder_upper_{k}"
        )

    def full_model(self, seq_len: int | None = None, *, normalize: bool = False) -> keras.Model:
        """input_ids -> pooled sentence embedding [B, H], end to end (what gets exported)."""
        ids = input_ids(seq_len)
        return keras.Model(ids, self.sentence_embedding(ids, normalize=normalize), name="encoder")


def build_encoder(
    config: EncoderConfig,
    weights: Mapping[str, np.ndarray],
    *,
    trainable_from_layer: int = 0,
    train_embeddings: bool = False,
) -> Encoder:
    """The encoder with pretrained weights assigned.

    Layers with index >= ``trainable_from_layer`` are trainable, earlier ones frozen. The embeddings
    (11.7 M of all-MiniLM-L6-v2's 22.7 M parameters) are frozen unless ``train_embeddings``.
    Dropout rates come from ``config``; pass ``dataclasses.replace(config, hidden_dropout_prob=0.0, ...)``
    to turn dropout off.
    """
    n = config.num_hidden_layers
    if not 0 <= trainable_from_layer <= n:
        raise BuildError(f"trainable_from_layer {trainable_from_layer} is outside 0..{n}")
    embed = Embeddings(config, dropout=config.hidden_dropout_prob, name="embeddings")
    embed.build((None, None))
    blocks = []
    for index in range(n):
        block = TransformerBlock(config, name=f"layer_{index}")
        block.build(((None, None, config.hidden_size), (None, None)))
        blocks.append(block)
    encoder = Encoder(
        config=config,
        mask=PaddingMask(name="padding_mask"),
        embed=embed,
        layers=tuple(blocks),
        pool=MeanPooling(name="mean_pooling"),
        pool_normalized=MeanPooling(normalize=True, name="mean_pooling_l2"),
    )
    _assign_pretrained(encoder, weights)
    embed.trainable = train_embeddings
    for index, block in enumerate(blocks):
        block.trainable = index >= trainable_from_layer
    return encoder


def _assign_pretrained(encoder: Encoder, weights: Mapping[str, np.ndarray]) -> None:
    config = encoder.config
    heads, size, hidden = config.num_attention_heads, config.head_size, config.hidden_size
    used: set[str] = set()

    def take(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in weights:
            raise BuildError(f"pretrained weights have no tensor {name!r}")
        value = np.asarray(weights[name], dtype=np.float32)
        if value.shape != shape:
            raise BuildError(f"pretrained tensor {name!r} has shape {value.shape}, expected {shape}")
        used.add(name)
        return value

    def set_norm(norm: LayerNorm, prefix: str) -> None:
        norm.gamma.assign(take(f"{prefix}.weight", (hidden,)))
        norm.beta.assign(take(f"{prefix}.bias", (hidden,)))

    embed = encoder.embed
    embed.words.embeddings.assign(take("embeddings.word_embeddings.weight", (config.vocab_size, hidden)))
    positions = take("embeddings.position_embeddings.weight", (config.max_position_embeddings, hidden))
    token_types = take("embeddings.token_type_embeddings.weight", (config.type_vocab_size, hidden))
    embed.positions.assign(positions + token_types[0])
    set_norm(embed.norm, "embeddings.LayerNorm")

    for index, block in enumerate(encoder.layers):
        p = f"encoder.layer.{index}"
        # torch Linear stores [out, in]; EinsumDense wants [in, ...out].
        for projection, name in ((block.query, "query"), (block.key, "key"), (block.value, "value")):
            kernel = take(f"{p}.attention.self.{name}.weight", (hidden, hidden)).T
            projection.kernel.assign(kernel.reshape(hidden, heads, size))
            projection.bias.assign(take(f"{p}.attention.self.{name}.bias", (hidden,)).reshape(heads, size))
        kernel = take(f"{p}.attention.output.dense.weight", (hidden, hidden)).T
        block.attention_output.kernel.assign(kernel.reshape(heads, size, hidden))
        block.attention_output.bias.assign(take(f"{p}.attention.output.dense.bias", (hidden,)))
        set_norm(block.attention_norm, f"{p}.attention.output.LayerNorm")
        block.intermediate.kernel.assign(
            take(f"{p}.intermediate.dense.weight", (config.intermediate_size, hidden)).T
        )
        block.intermediate.bias.assign(take(f"{p}.intermediate.dense.bias", (config.intermediate_size,)))
        block.output_dense.kernel.assign(
            take(f"{p}.output.dense.weight", (hidden, config.intermediate_size)).T
        )
        block.output_dense.bias.assign(take(f"{p}.output.dense.bias", (hidden,)))
        set_norm(block.output_norm, f"{p}.output.LayerNorm")

    # The BERT pooler (CLS dense + tanh) is not part of a mean-pooled sentence embedding.
    accounted = used | {"embeddings.position_ids"}
    unused = sorted(k for k in weights if k not in accounted and not k.startswith("pooler."))
    if unused:
        raise BuildError(
            f"pretrained weights hold tensors this encoder does not use: {', '.join(unused[:5])}"
        )
