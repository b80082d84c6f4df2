"""A calibrated text classifier over one model of an artifact: tokenizer + LiteRT model + temperature."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from modelpack.litert import LiteRTModel
from modelpack.manifest import Manifest, ModelEntry, load_manifest
from modelpack.scores import softmax
from modelpack.tokenizer import TextTokenizer

Tier = Literal["edge", "cloud"]


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    confidence: float  # calibrated max probability


class Classifier:
    def __init__(self, manifest: Manifest, folder: Path | str, tier: Tier, *, num_threads: int = 1):
        folder = Path(folder)
        self.manifest = manifest
        self.tier = tier
        self.entry: ModelEntry = manifest.edge if tier == "edge" else manifest.cloud
        tok = manifest.tokenizer
        self.tokenizer = TextTokenizer(
            folder / tok.file, max_seq_len=tok.max_seq_len, length_buckets=tok.length_buckets, pad_id=tok.pad_id
        )
        self.model = LiteRTModel((folder / self.entry.file).read_bytes(), self.entry, num_threads=num_threads)

    @classmethod
    def from_folder(cls, folder: Path | str, tier: Tier, *, num_threads: int = 1) -> Classifier:
        return cls(load_manifest(folder), folder, tier, num_threads=num_threads)

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        return self.model.logits(self.tokenizer.encode(texts))

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        return softmax(self.logits(texts), self.entry.temperature)

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        probs = self.probabilities(texts)
        idx = probs.argmax(axis=-1)
        labels = self.manifest.labels
        return [Prediction(labels[i], int(i), float(p[i])) for i, p in zip(idx, probs)]
