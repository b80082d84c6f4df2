"""Models run through the real LiteRT interpreter on texts, as serving runs them: batched by length, each
batch padded to its length bucket. A bare .tflite file (`model_logits`: no manifest describes it yet), an
artifact's classifier (`classifier_logits`), and the median latency of one invoke."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from modelpack.classifier import Classifier
from modelpack.litert import LiteRTModel
from modelpack.tokenizer import TextTokenizer

def _batched(infer: Callable[[list[str]], np.ndarray], tokenizer: TextTokenizer, texts: Sequence[str], *,
             batch_size: int, desc: str) -> np.ndarray:
    """Logits for all texts, batched the way serving batches: sorted by length, padded to a bucket."""
    lengths = np.asarray(tokenizer.lengths(texts))
    order = np.argsort(lengths, kind="stable")
    out: np.ndarray | None = None
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc=desc or "infer", unit="batch", leave=False, disable=not desc):
        rows = order[start : start + batch_size]
        logits = infer([texts[i] for i in rows])
        if out is None:
            out = np.empty((len(texts), logits.shape[1]), dtype=np.float32)
        out[rows] = logits
    assert out is not None, "no texts"
    return out


def batched_outputs(infer: Callable[[list[str]], np.ndarray], tokenizer: TextTokenizer, texts: Sequence[str], *,
                    batch_size: int = 64, desc: str = "") -> np.ndarray:
    """Any per-text model output (`infer` on a list of texts) for all texts, batched as serving batches."""
    return _batched(infer, tokenizer, texts, batch_size=batch_size, desc=desc)


def model_logits(
    model: LiteRTModel, tokenizer: TextTokenizer, texts: Sequence[str], *, batch_size: int = 64, desc: str = ""
) -> np.ndarray:
    """A bare LiteRT model's logits (a file no manifest describes yet), batched as serving batches."""
    return _batched(lambda batch: model.logits(tokenizer.encode(batch)), tokenizer, texts,
                    batch_size=batch_size, desc=desc)


def classifier_logits(classifier: Classifier, texts: Sequence[str], *, batch_size: int = 64,
                      desc: str = "") -> np.ndarray:
    """An artifact model's raw logits (before its temperature), batched as serving batches."""
    return _batched(classifier.logits, classifier.tokenizer, texts, batch_size=batch_size, desc=desc)


def median_latency_ms(models: dict[str, LiteRTModel], ids: np.ndarray, *, repeats: int) -> dict[str, float]:
    """Median wall time of one invoke per model, interleaved so machine noise hits all models alike."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():  # warm-up: first invoke plans the graph
        model.logits(ids)
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model.logits(ids)
            times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: statistics.median(values) for name, values in times.items()}


def latency_inputs(tokenizer: TextTokenizer, texts: Sequence[str], batch: int) -> np.ndarray:
    """A real batch of `batch` texts at the bucket of the longest: what serving would invoke."""
    return tokenizer.encode(list(texts[:batch]))

