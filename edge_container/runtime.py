"""One verified artifact version on the edge: its manifest and a pool of (tokenizer, interpreter) slots.

A LiteRT interpreter is not thread-safe, and `invoke()` releases the GIL: so each worker thread borrows a
slot of its own for one batch. With as many slots as worker threads, a borrow never waits.
"""

from __future__ import annotations

import hashlib
import math
import queue
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from modelpack.errors import ArtifactError, ChecksumMismatch, ModelNotRunnable
from modelpack.litert import LiteRTModel
from modelpack.manifest import MANIFEST_NAME, Manifest, load_manifest
from modelpack.scores import softmax
from modelpack.tokenizer import TextTokenizer

# Smoke texts cover every length bucket of the tiny and full artifacts, so warm-up plans each shape once.
_SMOKE_TEXTS = ("hello", "what is the weather going to be like in paris tomorrow morning",
                ("please set a timer for twenty minutes and then remind me to check on the oven "
                 "because the bread should be done by then and i do not want it to burn again"))


@dataclass(frozen=True, slots=True)
class EdgeOutput:
    probs: np.ndarray  # [n, labels] calibrated probabilities (temperature from the manifest)
    tokenize_s: float
    infer_s: float


@dataclass(frozen=True, slots=True)
class _Slot:
    tokenizer: TextTokenizer
    model: LiteRTModel


@dataclass(eq=False)
class EdgeModel:
    manifest: Manifest
    folder: Path
    manifest_sha256: str
    loaded_at: datetime
    _slots: queue.SimpleQueue[_Slot] = field(repr=False)

    @property
    def version(self) -> str:
        return self.manifest.model_version

    @property
    def labels(self) -> tuple[str, ...]:
        return self.manifest.labels

    @classmethod
    def load(cls, folder: Path | str, *, slots: int) -> EdgeModel:
        """Verify (manifest, SHA-256 of every file), load `slots` interpreters, smoke-test and warm each one.

        Blocking (seconds for a large model): call it from a thread. Raises `ArtifactError` for any flaw of
        the artifact, whatever the interpreter or tokenizer raised (`ModelNotRunnable` when inference fails).
        """
        folder = Path(folder)
        manifest = load_manifest(folder, verify=True)
        entry, tok = manifest.edge, manifest.tokenizer
        # Re-check the bytes we actually load: the folder may be rewritten while we read it.
        model_bytes = _read_verified(folder / entry.file, entry.sha256)
        manifest_sha = hashlib.sha256((folder / MANIFEST_NAME).read_bytes()).hexdigest()
        pool: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        model = cls(manifest, folder, manifest_sha, datetime.now(UTC), pool)
        for _ in range(slots):
            try:
                tokenizer = TextTokenizer(folder / tok.file, max_seq_len=tok.max_seq_len,
                                          length_buckets=tok.length_buckets, pad_id=tok.pad_id)
            except Exception as exc:  # the tokenizers package raises plain Exception on a bad file
                raise ArtifactError(f"{folder / tok.file}: not a loadable tokenizer: {exc}") from exc
            try:
                interpreter = LiteRTModel(model_bytes, entry, num_threads=1)
            except ArtifactError:
                raise
            except Exception as exc:  # the interpreter's errors are plain ValueError / RuntimeError
                raise ArtifactError(f"{folder / entry.file}: not a loadable TFLite model: {exc}") from exc
            slot = _Slot(tokenizer, interpreter)
            model._smoke_test(slot)  # also warms the slot: every length bucket planned once
            pool.put(slot)
        _read_verified(folder / tok.file, tok.sha256)
        return model

    def _smoke_test(self, slot: _Slot) -> None:
        for n in (1, 2):
            for text in _SMOKE_TEXTS:
                try:
                    probs = self._infer(slot, [text] * n).probs
                except Exception as exc:  # a model that loads can still fail to resize or invoke
                    raise ModelNotRunnable(f"{self.version}: smoke inference on {n} x {len(text)} chars "
                                           f"failed: {type(exc).__name__}: {exc}") from exc
                if probs.shape != (n, len(self.labels)) or not np.isfinite(probs).all():
                    raise ModelNotRunnable(f"{self.version}: smoke inference gave {probs.shape} "
                                           "or non-finite output")
                if not math.isclose(float(probs[0].sum()), 1.0, abs_tol=1e-3):
                    raise ModelNotRunnable(f"{self.version}: smoke inference probabilities do not sum to 1")

    def run(self, texts: Sequence[str]) -> EdgeOutput:
        """Tokenize and infer one batch. Thread-safe; blocking (call it from a worker thread)."""
        slot = self._slots.get()
        try:
            return self._infer(slot, texts)
        finally:
            self._slots.put(slot)

    def _infer(self, slot: _Slot, texts: Sequence[str]) -> EdgeOutput:
        t0 = time.perf_counter()
        ids = slot.tokenizer.encode(texts)  # padded to the smallest length bucket that fits the batch
        t1 = time.perf_counter()
        logits = slot.model.logits(ids)
        t2 = time.perf_counter()
        return EdgeOutput(softmax(logits, self.manifest.edge.temperature), t1 - t0, t2 - t1)

    def describe(self) -> dict[str, object]:
        return {"model_version": self.version, "folder": str(self.folder), "manifest_sha256": self.manifest_sha256,
                "loaded_at": self.loaded_at.isoformat(timespec="seconds"), "labels": list(self.labels),
                "precision": self.manifest.edge.precision, "temperature": self.manifest.edge.temperature,
                "routing": {"score": self.manifest.routing.score, "threshold": self.manifest.routing.threshold}}


def _read_verified(path: Path, sha256: str) -> bytes:
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ChecksumMismatch(f"{path}: SHA-256 {actual} does not match the manifest's {sha256} (changed while loading?)")
    return data
