"""The artifact's WordPiece tokenizer (a `tokenizer.json` for the `tokenizers` package)."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer


class TextTokenizer:
    """Encodes texts to int32 id matrices padded to a length bucket, the shape the models take."""

    def __init__(self, path: Path | str, *, max_seq_len: int, length_buckets: Sequence[int], pad_id: int = 0):
        self._tok = Tokenizer.from_file(str(path))
        # The bundled file presets padding/truncation to 128: we pad ourselves, to buckets.
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=max_seq_len)
        self.max_seq_len = max_seq_len
        self.buckets = tuple(length_buckets)
        self.pad_id = pad_id

    def bucket_for(self, length: int) -> int:
        return self.buckets[min(bisect.bisect_left(self.buckets, length), len(self.buckets) - 1)]

    def encode(self, texts: Sequence[str], *, pad_to: int | None = None) -> np.ndarray:
        """[len(texts), L] int32 where L is `pad_to` or the smallest bucket that fits the longest text."""
        encodings = self._tok.encode_batch(list(texts))
        longest = max((len(e.ids) for e in encodings), default=1)
        width = pad_to or self.bucket_for(longest)
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int32)
        for row, enc in enumerate(encodings):
            n = min(len(enc.ids), width)
            ids[row, :n] = enc.ids[:n]
        return ids

    def lengths(self, texts: Sequence[str]) -> list[int]:
        return [len(e.ids) for e in self._tok.encode_batch(list(texts))]
