"""A calibrated text classifier over one model of an artifact: tokenizer + LiteRT model + temperature.

The one place the three are put together: the cloud's LiteRT backend, the edge runtime's interpreter
slots (`Classifier.load`), the build's checks and the tests all answer through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelpack.errors import ArtifactError
from modelpack.litert import LiteRTModel
from modelpack.manifest import (
    Manifest,
    ModelEntry,
    Tier,
    TokenizerEntry,
    load_manifest,
    verify_file,
    verify_files,
)
from modelpack.nearest import NeighbourOffset
from modelpack.scores import softmax
from modelpack.tokenizer import TextTokenizer


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    confidence: float  # calibrated max probability


def calibrated(logits: np.ndarray, entry: ModelEntry, oos_index: int | None) -> np.ndarray:
    """A manifest model's calibrated probabilities of its `logits`: softmax at its temperature, with its oos
    logit bias. What every runtime and the build's evaluation compute."""
    return softmax(logits, entry.temperature, oos_bias=entry.oos_logit_bias, oos_index=oos_index)


class Classifier:
    """Not thread-safe (one LiteRT interpreter): give each thread its own, e.g. from `Classifier.load`.

    Raises `ArtifactError` when the tokenizer or the model is there but cannot be loaded. `model_content`:
    the model's bytes, already read (and verified); by default they are read from the artifact folder.
    `neighbour_contents`: the neighbour offset's embedder and bank bytes, likewise (a cloud entry with
    `neighbours`: its logits then carry the offset, `modelpack.neighbours`).
    """

    def __init__(self, manifest: Manifest, folder: Path | str, tier: Tier, *, num_threads: int = 1,
                 model_content: bytes | None = None, neighbour_contents: tuple[bytes, bytes] | None = None):
        folder = Path(folder)
        self.manifest = manifest
        self.tier = tier
        self.entry: ModelEntry = manifest.model(tier)
        self.oos_index = manifest.oos_index
        self.tokenizer = _tokenizer(folder, manifest.tokenizer)
        if model_content is None:
            model_content = (folder / self.entry.file).read_bytes()
        self.model = _model(folder, self.entry, model_content, num_threads)
        self.neighbours: NeighbourOffset | None = None
        if self.entry.neighbours is not None:
            n = self.entry.neighbours
            embedder, bank = neighbour_contents or ((folder / n.embedder).read_bytes(), (folder / n.bank).read_bytes())
            self.neighbours = NeighbourOffset(n, embedder, bank, num_threads=num_threads)

    @classmethod
    def from_folder(cls, folder: Path | str, tier: Tier, *, num_threads: int = 1) -> Classifier:
        return cls(load_manifest(folder), folder, tier, num_threads=num_threads)

    @classmethod
    def load(cls, folder: Path | str, tier: Tier, *, copies: int = 1, num_threads: int = 1) -> list[Classifier]:
        """`copies` classifiers (one per thread) of `tier`, from an artifact whose manifest is valid and whose
        files of `tier` (the tokenizer, the model, a cloud's neighbour files) have their SHA-256: the other
        tier's files need not be there (a device fetches only its own). Each interpreter is built from exactly
        the model bytes whose digest was checked, and the tokenizer file is checked again once every copy has
        read it: a folder rewritten while it loads is refused, never served half old, half new. Blocking
        (seconds for a large model).
        """
        if copies < 1:
            raise ValueError("copies must be >= 1")
        folder = Path(folder)
        manifest = load_manifest(folder, verify=False)
        verify_files(manifest, folder, ("tokenizer",))  # the models' files: below, on the bytes loaded
        entry, tok = manifest.model(tier), manifest.tokenizer
        content = verify_file(folder / entry.file, entry.sha256)  # read again: these are the bytes we run
        n = entry.neighbours
        extra = None if n is None else (verify_file(folder / n.embedder, n.embedder_sha256),
                                        verify_file(folder / n.bank, n.bank_sha256))
        out = [cls(manifest, folder, tier, num_threads=num_threads, model_content=content, neighbour_contents=extra)
               for _ in range(copies)]
        verify_file(folder / tok.file, tok.sha256)
        return out

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        ids = self.tokenizer.encode(texts)
        logits = self.model.logits(ids)
        if self.neighbours is not None:  # the same constant on every logit of a text: its probabilities stay
            logits = logits + self.neighbours.offsets(ids)[:, None]
        return logits

    def calibrate(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of the model's `logits` (`calibrated`)."""
        return calibrated(logits, self.entry, self.oos_index)

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        return self.calibrate(self.logits(texts))

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        probs = self.probabilities(texts)
        idx = probs.argmax(axis=-1)
        labels = self.manifest.labels
        return [Prediction(labels[i], int(i), float(p[i])) for i, p in zip(idx, probs)]


def _tokenizer(folder: Path, tok: TokenizerEntry) -> TextTokenizer:
    try:
        return TextTokenizer(folder / tok.file, max_seq_len=tok.max_seq_len, length_buckets=tok.length_buckets,
                             pad_id=tok.pad_id)
    except Exception as exc:  # the tokenizers package raises plain Exception on a bad file
        raise ArtifactError(f"{folder / tok.file}: not a loadable tokenizer: {exc}") from exc


def _model(folder: Path, entry: ModelEntry, content: bytes, num_threads: int) -> LiteRTModel:
    try:
        return LiteRTModel(content, entry, num_threads=num_threads)
    except ArtifactError:
        raise
    except Exception as exc:  # the interpreter's errors are plain ValueError / RuntimeError
        raise ArtifactError(f"{folder / entry.file}: not a loadable TFLite model: {exc}") from exc
