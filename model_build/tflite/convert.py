"""A Keras model -> TFLite bytes: fp32, dynamic-range or full int8 (the teacher's and the student's).

Conversion returns bytes; the caller decides where they go. What is inside the bytes: `tflite.graph`.
TensorFlow is imported inside the functions that convert: importing this module (the stages read
MIN_REPRESENTATIVE before any training) costs no TensorFlow.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from model_build.errors import ConversionError
from model_build.tflite.graph import float_ops

# Boundary ops that the int8 graph may legitimately keep. The int32 id input never needs a QUANTIZE
# (it is an index, not a real number) and the output is int8 (inference_output_type), so a correct
# full-int8 student has none of these; they stay a parameter so callers can allow a float output.
DEFAULT_ALLOWED_FLOAT_OPS: frozenset[str] = frozenset()
MIN_REPRESENTATIVE = 200  # real inputs for int8 calibration: fewer give unstable activation ranges


@contextlib.contextmanager
def _quiet_converter() -> Iterator[None]:
    """The converter's C++ (MLIR, absl) logging goes to fd 2 and ignores Python logging, and Keras prints
    its "Saved artifact at ..." export summary to stdout; silence both for the duration of a conversion.
    Errors still surface as exceptions (with the converter's message)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf  # here, not at the top: see the module's docstring

    tf.get_logger().setLevel("ERROR")
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (e.g. some embedded runners): just convert
        yield
        return
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(io.StringIO()):
            # Keras' export inside convert() prints the SavedModel signature to stdout: not ours to show.
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _convert(model, what: str, configure: Callable[[Any], None] = lambda converter: None) -> bytes:
    import tensorflow as tf  # here, not at the top: see the module's docstring

    try:
        with _quiet_converter():
            # from_keras_model, not from_concrete_functions: the latter drops Keras 3 weights (NaN output).
            converter = tf.lite.TFLiteConverter.from_keras_model(model)
            configure(converter)
            return bytes(converter.convert())
    except Exception as exc:  # the converter raises bare Exception / ConverterError with MLIR text
        raise ConversionError(f"{what} conversion failed: {exc}") from exc


def to_tflite_fp32(model) -> bytes:
    return _convert(model, "fp32")


def to_tflite_dynamic_range(model) -> bytes:
    """int8 weights, float activations (weights dequantized or hybrid kernels at run time)."""
    import tensorflow as tf  # here, not at the top: see the module's docstring

    def configure(converter) -> None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]

    return _convert(model, "dynamic-range", configure)


def to_tflite_int8(
    model,
    representative_ids: np.ndarray | Sequence[np.ndarray],
    *,
    allowed_float_ops: Iterable[str] = DEFAULT_ALLOWED_FLOAT_OPS,
) -> bytes:
    """Full-integer int8: int8 weights and activations, int8 output with scale/zero-point, int32 ids in.

    ``representative_ids``: int32 id matrices padded the way serving pads them — one [n, seq] array, or
    a list of arrays of different seq lengths so calibration sees every length bucket. At least 200 real
    sentences overall. Raises ConversionError if the graph keeps a float op not in ``allowed_float_ops``.
    """
    import tensorflow as tf  # here, not at the top: see the module's docstring

    batches = [representative_ids] if isinstance(representative_ids, np.ndarray) else list(representative_ids)
    batches = [np.asarray(b, dtype=np.int32) for b in batches]
    if any(b.ndim != 2 for b in batches):
        raise ConversionError("representative ids must be [n, seq] int32 matrices")
    total = sum(len(b) for b in batches)
    if total < MIN_REPRESENTATIVE:
        raise ConversionError(f"need >= {MIN_REPRESENTATIVE} representative sentences for calibration, got {total}")

    def dataset():
        for batch in batches:
            for row in batch:
                yield [row[None, :]]

    def configure(converter) -> None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_output_type = tf.int8  # the int32 ids input stays int32 whatever we ask

    tflite = _convert(model, "int8", configure)
    leftover = [op for op in float_ops(tflite) if op not in set(allowed_float_ops)]
    if leftover:
        raise ConversionError(f"int8 graph computes in float: {sorted(set(leftover))} (allowed: "
                              f"{sorted(set(allowed_float_ops))}); replace the layers that produce them")
    return tflite
