"""Keras student -> TFLite bytes (fp32, dynamic-range, full int8) and inspection of converted graphs.

Conversion returns bytes; the caller decides where they go. Graph inspection parses the flatbuffer with
the schema bundled in ai_edge_litert (no TensorFlow needed, no interpreter allocation).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from model_build.errors import ConversionError

# Boundary ops that the int8 graph may legitimately keep. The int32 id input never needs a QUANTIZE
# (it is an index, not a real number) and the output is int8 (inference_output_type), so a correct
# full-int8 student has none of these; they stay a parameter so callers can allow a float output.
DEFAULT_ALLOWED_FLOAT_OPS: frozenset[str] = frozenset()
_FLOAT_TYPES = frozenset({"FLOAT32", "FLOAT16", "FLOAT64"})
MIN_REPRESENTATIVE = 200  # real inputs for int8 calibration: fewer give unstable activation ranges


@dataclass(frozen=True)
class OpInfo:
    name: str
    input_dtypes: tuple[str, ...]
    output_dtypes: tuple[str, ...]


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape_signature: tuple[int, ...]
    scale: float
    zero_point: int


@contextlib.contextmanager
def _quiet_converter() -> Iterator[None]:
    """The converter's C++ (MLIR, absl) logging goes to fd 2 and ignores Python logging, and Keras prints
    its "Saved artifact at ..." export summary to stdout; silence both for the duration of a conversion.
    Errors still surface as exceptions (with the converter's message)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

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
    import tensorflow as tf

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
    import tensorflow as tf

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
    import tensorflow as tf

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


# --- inspection --------------------------------------------------------------------------------------

def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _enum_names(enum_cls) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def _model(tflite: bytes):
    schema = _schema()
    try:
        return schema.ModelT.InitFromPackedBuf(bytearray(tflite), 0)
    except Exception as exc:
        raise ConversionError(f"not a TFLite flatbuffer: {exc}") from exc


def _present(indices) -> list[int]:
    """Tensor indices of an op, without the -1 placeholders of omitted optional inputs."""
    return [i for i in (indices if indices is not None else []) if i >= 0]


def graph_ops(tflite: bytes) -> list[OpInfo]:
    """Ops of the main subgraph in execution order, with the dtypes of their (non-optional) tensors."""
    schema = _schema()
    op_names = _enum_names(schema.BuiltinOperator)
    type_names = _enum_names(schema.TensorType)
    model = _model(tflite)
    graph = model.subgraphs[0]

    def dtypes(indices) -> tuple[str, ...]:
        return tuple(type_names[graph.tensors[i].type] for i in _present(indices))

    result = []
    for op in graph.operators or []:
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        name = op_names.get(builtin, str(builtin))
        if name == "CUSTOM":
            name = f"CUSTOM:{code.customCode.decode() if code.customCode else '?'}"
        result.append(OpInfo(name, dtypes(op.inputs), dtypes(op.outputs)))
    return result


def float_ops(tflite: bytes) -> list[str]:
    """Names of ops (one entry per op instance) that compute in floating point.

    An op computes in float when any of its outputs is float, or any input is float — which catches
    DEQUANTIZE (int8 -> float) and QUANTIZE (float -> int8) too: they mark the border of a float island
    (or a float graph input/output), so in a full-int8 graph they are listed like any float op."""
    return [
        op.name
        for op in graph_ops(tflite)
        if _FLOAT_TYPES.intersection(op.output_dtypes) or _FLOAT_TYPES.intersection(op.input_dtypes)
    ]


def _tensor_info(graph, index: int, type_names) -> TensorInfo:
    t = graph.tensors[index]
    q = t.quantization
    scale = float(q.scale[0]) if q is not None and q.scale is not None and len(q.scale) else 0.0
    zero = int(q.zeroPoint[0]) if q is not None and q.zeroPoint is not None and len(q.zeroPoint) else 0
    sig = t.shapeSignature if t.shapeSignature is not None else t.shape
    name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
    return TensorInfo(name, type_names[t.type], tuple(int(s) for s in sig), scale, zero)


def input_details(tflite: bytes) -> list[TensorInfo]:
    schema = _schema()
    graph = _model(tflite).subgraphs[0]
    return [_tensor_info(graph, i, _enum_names(schema.TensorType)) for i in graph.inputs]


def output_details(tflite: bytes) -> list[TensorInfo]:
    schema = _schema()
    graph = _model(tflite).subgraphs[0]
    return [_tensor_info(graph, i, _enum_names(schema.TensorType)) for i in graph.outputs]


def output_quantization(tflite: bytes) -> tuple[float, int]:
    """(scale, zero_point) of the single output; (0.0, 0) for a float output."""
    outputs = output_details(tflite)
    if len(outputs) != 1:
        raise ConversionError(f"expected one output, found {len(outputs)}")
    return outputs[0].scale, outputs[0].zero_point


@dataclass(frozen=True)
class SizeBreakdown:
    """Where a .tflite file's bytes go. `float_weight_bytes` are constant float tensors (what int8
    quantization shrinks), `quantized_weight_bytes` constant int8/int16 tensors and the int32 biases of
    quantized ops, `other_constant_bytes` constants that no quantization touches (e.g. an int32 id map),
    `overhead_bytes` the rest: flatbuffer structure, quantization parameters, metadata."""

    file_bytes: int
    float_weight_bytes: int
    quantized_weight_bytes: int
    other_constant_bytes: int

    @property
    def overhead_bytes(self) -> int:
        return self.file_bytes - self.float_weight_bytes - self.quantized_weight_bytes - self.other_constant_bytes


def size_breakdown(tflite: bytes) -> SizeBreakdown:
    schema = _schema()
    type_names = _enum_names(schema.TensorType)
    model = _model(tflite)
    float_b = quant_b = other_b = 0
    seen: set[int] = set()
    for graph in model.subgraphs or []:
        for tensor in graph.tensors or []:
            buffer = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers or []) else None
            if buffer is None or tensor.buffer in seen:
                continue
            size = len(buffer.data) if buffer.data is not None else int(buffer.size or 0)
            if size == 0:
                continue
            seen.add(tensor.buffer)
            kind = type_names.get(tensor.type, "")
            q = tensor.quantization
            quantized = q is not None and q.scale is not None and len(q.scale) > 0
            if kind in _FLOAT_TYPES:
                float_b += size
            elif quantized:
                quant_b += size
            else:
                other_b += size
    return SizeBreakdown(len(tflite), float_b, quant_b, other_b)


def weight_size_ratio(int8: SizeBreakdown, fp32: SizeBreakdown) -> float:
    """Bytes of the weights int8 quantization was asked to shrink, after / before: the quantized
    weights (and whatever float weights were left) of the int8 file over the float weights of the fp32
    file. Fixed bytes (id maps, structure) are excluded: they do not shrink, and weigh more in a smaller
    model, which made a whole-file ratio fail on a smaller vocabulary though the weights were 4x smaller."""
    if fp32.float_weight_bytes <= 0:
        raise ConversionError("the fp32 model has no float weights to compare against")
    return (int8.quantized_weight_bytes + int8.float_weight_bytes) / fp32.float_weight_bytes
