"""One verified artifact version on the edge: its manifest and a pool of classifier slots.

A slot is a `modelpack.classifier.Classifier` (tokenizer + interpreter + temperature), the very one the
cloud and the build run. A LiteRT interpreter is not thread-safe, and `invoke()` releases the GIL: so each
worker thread borrows a slot of its own for one batch. With as many slots as worker threads, a borrow
never waits.
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

from modelpack.classifier import Classifier
from modelpack.errors import ModelNotRunnable
from modelpack.manifest import MANIFEST_NAME, Manifest

# Smoke texts cover every length bucket of the tiny and full artifacts, so warm-up plans each shape once.
_SMOKE_TEXTS = ("hello", "what is the weather going to be like in paris tomorrow morning",
                ("please set a timer for twenty minutes and then remind me to check on the oven "
                 "because the bread should be done by then and i do not want it to burn again"))


@dataclass(frozen=True, slots=True)
class EdgeOutput:
    probs: np.ndarray  # [n, labels] calibrated probabilities (temperature from the manifest)
    tokenize_s: float
    infer_s: float
    top: list[int]  # [n] each row's best label index
    confidence: list[float]  # [n] its probability


@dataclass(eq=False)
class EdgeModel:
    manifest: Manifest
    folder: Path
    manifest_sha256: str
    loaded_at: datetime
    _slots: queue.SimpleQueue[Classifier] = field(repr=False)

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
        classifiers = Classifier.load(folder, "edge", copies=slots, num_threads=1)
        manifest_sha = hashlib.sha256((folder / MANIFEST_NAME).read_bytes()).hexdigest()
        pool: queue.SimpleQueue[Classifier] = queue.SimpleQueue()
        model = cls(classifiers[0].manifest, folder, manifest_sha, datetime.now(UTC), pool)
        for slot in classifiers:
            model._smoke_test(slot)  # also warms the slot: every length bucket planned once
            pool.put(slot)
        return model

    def _smoke_test(self, slot: Classifier) -> None:
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

    def _infer(self, slot: Classifier, texts: Sequence[str]) -> EdgeOutput:
        t0 = time.perf_counter()
        ids = slot.tokenizer.encode(texts)  # padded to the smallest length bucket that fits the batch
        t1 = time.perf_counter()
        logits = slot.model.logits(ids)
        t2 = time.perf_counter()
        probs = slot.calibrate(logits)
        top = probs.argmax(axis=1)  # here, in the worker thread, once per batch: not per request on the loop
        return EdgeOutput(probs, t1 - t0, t2 - t1, top.tolist(), probs[np.arange(len(probs)), top].tolist())

    def describe(self) -> dict[str, object]:
        return {"model_version": self.version, "folder": str(self.folder), "manifest_sha256": self.manifest_sha256,
                "loaded_at": self.loaded_at.isoformat(timespec="seconds"), "labels": list(self.labels),
                "precision": self.manifest.edge.precision, "temperature": self.manifest.edge.temperature,
                "routing": {"score": self.manifest.routing.score, "threshold": self.manifest.routing.threshold}}

