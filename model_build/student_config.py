"""The student's architecture settings, apart from its Keras code: `model_build.config` (and whoever reads a
build's configuration) imports this without importing Keras."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Architecture = Literal["bag", "cnn", "transformer"]


@dataclass(frozen=True)
class StudentConfig:
    """Architecture of a student. ``bag``: masked mean of embeddings + MLP. ``cnn``: 1-D convolutions of
    several widths over the embeddings + global max pool + MLP. The defaults are the recommended student
    (bench/results/student_search.md): embed_dim 384 takes the teacher's word embeddings unprojected."""

    architecture: Architecture = "cnn"
    embed_dim: int = 384
    kernel_sizes: tuple[int, ...] = (1, 2, 3)  # cnn only
    filters: int = 128  # cnn only: channels per kernel size
    conv_layers: int = 1  # cnn only: stacked convs per branch (the extra ones are width 3)
    hidden: tuple[int, ...] = (256,)  # MLP widths after pooling
    dropout: float = 0.2  # before each Dense
    embed_dropout: float = 0.1  # drops whole token vectors of the embedded sequence
    seq_len: int = 32  # longest sequence served (tokenizer truncation); the bag's reciprocal table size
    max_tokens: int | None = None  # ids kept by build_vocab_map (None: every id seen in training)


@dataclass(frozen=True)
class TransformerStudentConfig:
    """A transformer student cut from the teacher's own pretrained MiniLM (model_build.transformer_student):
    ``layers`` of its 6 blocks in order, at its width (384), keeping ``heads`` of the 12 attention heads and
    ``intermediate`` of the 1,536 feed-forward units of each block (the ones with the largest weight norms).
    A class of its own, not more fields on StudentConfig: the CNN's student cache key (the config's repr)
    stays what it was."""

    architecture: Literal["transformer"] = "transformer"
    layers: tuple[int, ...] = (0, 1)
    heads: int = 12
    intermediate: int = 1536
    # Added to the attention scores of pad keys. Not BERT's -1e4: the int8 score tensor's range covers this
    # value, so a huge one would leave the real scores a handful of int8 steps. exp(-12) ~ 6e-6 per pad key.
    pad_score: float = -12.0
    dropout: float = 0.1  # attention probabilities, block outputs and the pooled sentence
    seq_len: int = 32  # longest sequence served (tokenizer truncation); the pooling's reciprocal table size
    max_tokens: int | None = None  # ids kept by build_vocab_map (None: every id seen in training)
