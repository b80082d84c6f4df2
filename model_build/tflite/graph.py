"""What is inside a .tflite file, read from the flatbuffer with the schema bundled in ai_edge_litert (no
TensorFlow, no interpreter allocation): its ops and their dtypes, its input and output tensors, where its
bytes go, and the int8 size gate's figure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from model_build.errors import ConversionError

FLOAT_TYPES = frozenset({"FLOAT32", "FLOAT16", "FLOAT64"})


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


def litert_schema():
    """ai_edge_litert's generated flatbuffer schema: a large module, loaded on the first read of a file, not
    when the build (or `--help`) imports this one."""
    from ai_edge_litert import schema_py_generated as schema

    return schema


def enum_names(enum_cls) -> dict[int, str]:
    """A schema enum's values -> their names."""
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def unpack(tflite: bytes):
    """The flatbuffer as the schema's object tree (ModelT)."""
    schema = litert_schema()
    try:
        return schema.ModelT.InitFromPackedBuf(bytearray(tflite), 0)
    except Exception as exc:
        raise ConversionError(f"not a TFLite flatbuffer: {exc}") from exc


def _present(indices) -> list[int]:
    """Tensor indices of an op, without the -1 placeholders of omitted optional inputs."""
    return [i for i in (indices if indices is not None else []) if i >= 0]


def graph_ops(tflite: bytes) -> list[OpInfo]:
    """Ops of the main subgraph in execution order, with the dtypes of their (non-optional) tensors."""
    schema = litert_schema()
    op_names = enum_names(schema.BuiltinOperator)
    type_names = enum_names(schema.TensorType)
    model = unpack(tflite)
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
        if FLOAT_TYPES.intersection(op.output_dtypes) or FLOAT_TYPES.intersection(op.input_dtypes)
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
    schema = litert_schema()
    graph = unpack(tflite).subgraphs[0]
    return [_tensor_info(graph, i, enum_names(schema.TensorType)) for i in graph.inputs]


def output_details(tflite: bytes) -> list[TensorInfo]:
    schema = litert_schema()
    graph = unpack(tflite).subgraphs[0]
    return [_tensor_info(graph, i, enum_names(schema.TensorType)) for i in graph.outputs]


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
    schema = litert_schema()
    type_names = enum_names(schema.TensorType)
    model = unpack(tflite)
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
            if kind in FLOAT_TYPES:
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


def size_metrics(int8_file: Path, fp32_file: Path) -> dict[str, float]:
    """The int8 gate's figure, the quantized weights against the float ones, and the fixed bytes beside it."""
    int8, fp32 = size_breakdown(int8_file.read_bytes()), size_breakdown(fp32_file.read_bytes())
    return {"weight_size_ratio_vs_fp32": weight_size_ratio(int8, fp32),
            "weight_bytes": int8.quantized_weight_bytes + int8.float_weight_bytes,
            "fixed_bytes": int8.other_constant_bytes + int8.overhead_bytes}

