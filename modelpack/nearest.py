"""The cloud's neighbour offset at run time (`models.cloud.neighbours`, `modelpack.neighbours` says what and
why): the embedder, the bank, each text's similarity to its nearest bank text and its offset."""

from __future__ import annotations

import io

import numpy as np

from modelpack.errors import ArtifactError
from modelpack.litert import ModelRunner
from modelpack.neighbours import NeighbourEntry

_CHUNK = 2048  # texts per similarity product: bounds the [texts, bank] matrix in memory


class Embedder:
    """The embedder TFLite model: token ids [batch, seq] -> its float32 embeddings [batch, dim]. Not
    thread-safe (one interpreter)."""

    def __init__(self, content: bytes, where: str, *, num_threads: int = 1) -> None:
        self._runner = ModelRunner(content, where, num_threads=num_threads)
        if len(self._runner.output["shape"]) != 2:
            raise ArtifactError(f"{where}: expected a [batch, dim] output tensor")
        self.width = int(self._runner.output["shape"][-1])

    def embed(self, ids: np.ndarray) -> np.ndarray:
        return self._runner.run(ids).astype(np.float32)


def nearest_similarity(embeddings: np.ndarray, bank_t: np.ndarray) -> np.ndarray:
    """Each row's largest dot product with the bank's (`bank_t`: the bank transposed, [dim, n])."""
    return np.concatenate([(embeddings[i:i + _CHUNK] @ bank_t).max(axis=1)
                           for i in range(0, len(embeddings), _CHUNK)])


class NeighbourOffset:
    """Each text's offset (`offsets`) from the embedder's and the bank's bytes. Not thread-safe (one
    interpreter), like the classifier that owns it."""

    def __init__(self, entry: NeighbourEntry, embedder: bytes, bank: bytes, *, num_threads: int = 1) -> None:
        self.entry = entry
        self.embedder = Embedder(embedder, entry.embedder, num_threads=num_threads)
        try:
            matrix = np.load(io.BytesIO(bank), allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ArtifactError(f"{entry.bank}: not a .npy array: {exc}") from exc
        if matrix.ndim != 2 or matrix.shape[0] < 1 or matrix.shape[1] != self.embedder.width:
            raise ArtifactError(f"{entry.bank}: shape {matrix.shape}, but the embedder gives "
                                f"{self.embedder.width} numbers a text")
        self._bank_t = np.ascontiguousarray(matrix.astype(np.float32).T)  # [dim, n]

    def similarity(self, ids: np.ndarray) -> np.ndarray:
        """Cosine similarity of each text (token ids [batch, seq]) to its nearest bank text."""
        return nearest_similarity(self.embedder.embed(ids), self._bank_t)

    def offsets(self, ids: np.ndarray) -> np.ndarray:
        """What to add to every logit of each text: scale × similarity + shift."""
        return (self.entry.scale * self.similarity(ids) + self.entry.shift).astype(np.float32)
