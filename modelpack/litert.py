"""One TFLite model in one LiteRT interpreter. Not thread-safe: give each thread its own `LiteRTModel`."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelpack.errors import ArtifactError, RuntimeUnavailable
from modelpack.manifest import ModelEntry


def interpreter_class() -> type:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:  # legacy fallback: 3-5x slower (no XNNPACK), numpy<2; see README
            from tflite_runtime.interpreter import Interpreter  # type: ignore[no-redef]
        except ImportError:
            raise RuntimeUnavailable("install ai-edge-litert (or the legacy tflite-runtime)") from None
    return Interpreter


class ModelRunner:
    """One interpreter over a model with one [batch, seq] int32 id input and one output tensor: the raw output
    of a batch (`run`). What the classifiers' models and the cloud's embedder (`modelpack.nearest`) share."""

    def __init__(self, model_content: bytes, where: str, *, num_threads: int = 1):
        try:
            self._interp: Any = interpreter_class()(model_content=model_content, num_threads=num_threads)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ArtifactError(f"{where} is not a loadable TFLite model: {exc}") from exc
        inputs = self._interp.get_input_details()
        outputs = self._interp.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ArtifactError(f"{where}: expected one input and one output tensor")
        self.output = outputs[0]
        self._in, self._out = inputs[0]["index"], outputs[0]["index"]
        self._shape: tuple[int, ...] = tuple(inputs[0]["shape"])
        signature = inputs[0].get("shape_signature", inputs[0]["shape"])
        # A model exported with a fixed sequence length (e.g. the teacher) takes exactly that length.
        self.fixed_len: int | None = int(signature[1]) if len(signature) == 2 and signature[1] > 0 else None
        self._in_dtype = np.dtype(inputs[0]["dtype"])

    def run(self, ids: np.ndarray) -> np.ndarray:
        if ids.dtype != self._in_dtype:
            ids = ids.astype(self._in_dtype)
        if self.fixed_len is not None and ids.shape[1] != self.fixed_len:
            ids = fit_length(ids, self.fixed_len)
        if ids.shape != self._shape:
            # Resizing re-plans the graph (~tens of µs); batches reuse a few bucketed shapes.
            self._interp.resize_tensor_input(self._in, ids.shape, strict=False)
            self._interp.allocate_tensors()
            self._shape = ids.shape
        self._interp.set_tensor(self._in, ids)
        self._interp.invoke()
        return self._interp.get_tensor(self._out)


class LiteRTModel:
    """Runs a [batch, seq] int32 id matrix through the model and returns float32 logits (dequantized)."""

    def __init__(self, model_content: bytes, entry: ModelEntry, *, num_threads: int = 1):
        self.entry = entry
        self._runner = ModelRunner(model_content, entry.file, num_threads=num_threads)
        self.fixed_len = self._runner.fixed_len
        scale, zero_point = self._runner.output.get("quantization", (0.0, 0))
        if entry.output.dtype in ("int8", "uint8"):
            if not scale:
                raise ArtifactError(f"{entry.file}: output is quantized but carries no scale")
            self._dequant: tuple[float, int] | None = (float(scale), int(zero_point))
        else:
            self._dequant = None

    def logits(self, ids: np.ndarray) -> np.ndarray:
        out = self._runner.run(ids)
        if self._dequant is not None:
            scale, zero_point = self._dequant
            logits = (out.astype(np.float32) - zero_point) * scale
        else:
            logits = out.astype(np.float32, copy=False)
        if self.entry.appended_oos_logit is not None:  # the oos label's column the model has no output for
            column = np.full((logits.shape[0], 1), self.entry.appended_oos_logit, dtype=np.float32)
            logits = np.concatenate([logits, column], axis=1)
        return logits


def fit_length(ids: np.ndarray, length: int) -> np.ndarray:
    """`ids` cut or [PAD]-padded to exactly `length` tokens (a model exported with a fixed length)."""
    if ids.shape[1] > length:
        return np.ascontiguousarray(ids[:, :length])
    out = np.zeros((ids.shape[0], length), dtype=ids.dtype)  # 0 = [PAD]
    out[:, : ids.shape[1]] = ids
    return out
