"""The packaged teacher on LiteRT: the cloud's default backend."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING

import numpy as np

from cloud_functions.inference import BackendError, Inference
from cloud_functions.model_store import LocalModel
from modelpack.cloud_api import Answer, TextResult
from modelpack.errors import ArtifactError
from modelpack.routing import cloud_answer

if TYPE_CHECKING:
    from modelpack.classifier import Classifier


class LiteRTBackend:
    """The teacher of the artifact through `modelpack.Classifier` (calibrated by the manifest's
    temperature), with the cloud's out-of-scope rule: its oos score below `cloud.oos_threshold`, answer
    `oos_label`."""

    def __init__(self, classifier: Classifier, *, top_k: int = 3) -> None:
        if top_k < 1:
            raise ValueError("top_k must be >= 1")
        manifest = classifier.manifest
        self._classifier = classifier
        self._labels = manifest.labels
        self._model_version = manifest.model_version
        # The out-of-scope rule is the build's (modelpack.routing.cloud_answer): its threshold was fit
        # with it.
        self._oos_index = manifest.oos_index
        self._rule = manifest.cloud
        self._k = min(top_k, len(manifest.labels))

    @classmethod
    def load(cls, model: LocalModel, *, top_k: int = 3, num_threads: int = 1) -> LiteRTBackend:
        from modelpack.classifier import Classifier

        try:
            classifier = Classifier(model.manifest, model.folder, "cloud", num_threads=num_threads)
        except Exception as exc:  # tokenizers raises bare Exception; any failure here means "no model"
            raise BackendError(f"{model.source}: the cloud model cannot be loaded: {exc}") from exc
        return cls(classifier, top_k=top_k)

    @property
    def model_version(self) -> str:
        return self._model_version

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    def max_cost_usd(self, texts: Sequence[str]) -> Decimal:
        return Decimal(0)  # runs in the function: the fee (COST_PER_*) is its whole price

    def infer(self, texts: Sequence[str]) -> Inference:
        try:
            logits = self._classifier.logits(texts)
            probs = self._classifier.calibrate(logits)
        except (ArtifactError, ValueError, RuntimeError) as exc:
            raise BackendError(f"the cloud model failed: {exc}") from exc
        if probs.shape != (len(texts), len(self._labels)) or not np.isfinite(probs).all():
            raise BackendError(f"the cloud model returned unusable scores of shape {probs.shape}")
        answers = cloud_answer(probs, self._rule, self._oos_index, logits=logits)
        return Inference(tuple(self._result(row, int(i)) for row, i in zip(probs, answers)))

    def _result(self, probs: np.ndarray, answer: int) -> TextResult:
        order = np.argsort(-probs, kind="stable")[: self._k]
        top = tuple(Answer(self._labels[i], float(probs[i])) for i in order)
        return TextResult(self._labels[answer], top[0].confidence, top)
