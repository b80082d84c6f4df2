"""Dynamic-range quantization of an fp32 TFLite flatbuffer: int8 weights, float activations.

The converter's own dynamic-range mode (`convert.to_tflite_dynamic_range`) needs the Keras model, and the
teacher stage keeps only its fp32 .tflite: re-training a teacher to change how it is stored costs 25-60 min
on a 2-core machine. This module rewrites the fp32 flatbuffer the way the converter would have written it
(checked weight by weight against the converter in tests/model_build/test_dynamic_range.py):

- FULLY_CONNECTED with a constant float weight matrix: int8 weights, symmetric, one scale per output
  channel; `asymmetric_quantize_inputs` on (the hybrid kernel quantizes each input row at run time);
- GATHER on a constant float table (the embeddings): an int8 table with one scale, its int8 output then
  DEQUANTIZE-d to float for the ops after it. (A table several GATHERs share is dequantized per lookup
  here; the converter dequantizes it once up front. The numbers are the same.)

Constants of other ops (biases, layer-norm scales) and tensors under `MIN_ELEMENTS` stay float, as with the
converter; so do CONV_2D filters, which the converter would make hybrid too (the teacher has none). Like `convert`, it returns bytes and inspects with the schema bundled in ai_edge_litert.
"""

from __future__ import annotations

from typing import Any

import flatbuffers
import numpy as np

from model_build.tflite.graph import enum_names, litert_schema, unpack
from model_build.errors import ConversionError

MIN_ELEMENTS = 1024  # the converter's default floor: smaller weights stay float
# Op versions the converter writes for these kernels with int8 weights (per-channel hybrid FC, int8 GATHER,
# int8 DEQUANTIZE): the runtime refuses an op whose version it does not know, so they follow the converter.
_VERSIONS = {"FULLY_CONNECTED": 12, "GATHER": 2, "DEQUANTIZE": 2}
_FILE_IDENTIFIER = b"TFL3"


def dynamic_range_from_fp32(tflite: bytes) -> bytes:
    """The dynamic-range version of an fp32 model's bytes; raises ConversionError when nothing in it can
    be quantized (then it is no float model of the kind this handles)."""
    schema = litert_schema()
    model = unpack(tflite)
    if any(b.offset for b in model.buffers or []):
        raise ConversionError("buffers stored outside the flatbuffer (models > 2 GB) are not supported")
    rewriter = _Rewriter(model, schema)
    for graph in model.subgraphs or []:
        rewriter.rewrite(graph)
    if not rewriter.quantized:
        raise ConversionError("no float FULLY_CONNECTED or GATHER weights to quantize")
    rewriter.drop_unused_buffers()
    builder = flatbuffers.Builder(len(tflite) // 3)
    builder.Finish(model.Pack(builder), file_identifier=_FILE_IDENTIFIER)
    return bytes(builder.Output())


class _Rewriter:
    """One model's rewrite: the op codes it bumps and the buffers it replaces."""

    def __init__(self, model: Any, schema: Any):
        self.model, self.schema = model, schema
        self.op_names = enum_names(schema.BuiltinOperator)
        self.float32 = schema.TensorType.FLOAT32
        self.quantized = 0

    def _name(self, op: Any) -> str:
        code = self.model.operatorCodes[op.opcodeIndex]
        return self.op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "")

    def _constant(self, graph: Any, index: int) -> np.ndarray | None:
        """A constant float32 tensor's values, or None (an activation, another type, or too small)."""
        tensor = graph.tensors[index]
        data = self.model.buffers[tensor.buffer].data
        if tensor.type != self.float32 or data is None or len(data) < 4 * MIN_ELEMENTS:
            return None
        return np.frombuffer(np.asarray(data, dtype=np.uint8).tobytes(), dtype="<f4").reshape(tensor.shape)

    def rewrite(self, graph: Any) -> None:
        uses: dict[int, set[tuple[str, int]]] = {}  # tensor -> the kinds of (op, input slot) that read it
        for op in graph.operators or []:
            for slot, index in enumerate(op.inputs if op.inputs is not None else []):
                uses.setdefault(int(index), set()).add((self._name(op), slot))
        scales: dict[int, np.ndarray] = {}  # the tensors made int8, with their scales (a table may be shared)
        operators = []
        for op in graph.operators or []:
            operators.append(op)
            name = self._name(op)
            # Only a constant no other kind of reader needs in float (weights, tables), like the converter.
            slot = {"FULLY_CONNECTED": 1, "GATHER": 0}.get(name)
            if slot is None or len(op.inputs) <= slot or uses[int(op.inputs[slot])] != {(name, slot)}:
                continue
            index = int(op.inputs[slot])
            if index not in scales:
                values = self._constant(graph, index)
                if values is None or (name == "FULLY_CONNECTED" and values.ndim != 2):
                    continue
                quantized, scales[index] = _per_channel(values) if name == "FULLY_CONNECTED" else _per_tensor(values)
                self._set_int8(graph, index, quantized, scales[index])
            self._bump(op, name)
            if name == "FULLY_CONNECTED":
                if op.builtinOptions is not None:  # absent options read as the defaults: symmetric inputs
                    op.builtinOptions.asymmetricQuantizeInputs = True
            else:
                operators.append(self._dequantize_output(graph, op, scales[index]))
        graph.operators = operators

    def _set_int8(self, graph: Any, index: int, values: np.ndarray, scale: np.ndarray) -> None:
        """Point tensor `index` at a new buffer of int8 `values` (the old one may be shared)."""
        buffer = self.schema.BufferT()
        buffer.data = np.frombuffer(values.astype(np.int8).tobytes(), dtype=np.uint8)
        self.model.buffers.append(buffer)
        tensor = graph.tensors[index]
        tensor.buffer = len(self.model.buffers) - 1
        tensor.type = self.schema.TensorType.INT8
        tensor.quantization = _quantization(self.schema, scale)
        self.quantized += 1

    def _dequantize_output(self, graph: Any, op: Any, scale: np.ndarray) -> Any:
        """Make `op`'s output int8 (same scale as its table) and return a DEQUANTIZE op that gives the float
        tensor its readers used, under the same index: nothing downstream changes."""
        float_index = op.outputs[0]
        old = graph.tensors[float_index]
        int8 = self.schema.TensorT()
        int8.shape, int8.shapeSignature, int8.name = old.shape, old.shapeSignature, (old.name or b"") + b"_int8"
        int8.type, int8.quantization = self.schema.TensorType.INT8, _quantization(self.schema, scale)
        self.model.buffers.append(self.schema.BufferT())
        int8.buffer = len(self.model.buffers) - 1
        graph.tensors.append(int8)
        op.outputs = [len(graph.tensors) - 1]
        dequantize = self.schema.OperatorT()
        dequantize.opcodeIndex = self._opcode("DEQUANTIZE")
        dequantize.inputs, dequantize.outputs = [len(graph.tensors) - 1], [float_index]
        return dequantize

    def _bump(self, op: Any, name: str) -> None:
        code = self.model.operatorCodes[op.opcodeIndex]
        code.version = max(code.version, _VERSIONS[name])

    def _opcode(self, name: str) -> int:
        builtin = getattr(self.schema.BuiltinOperator, name)
        for i, code in enumerate(self.model.operatorCodes):
            if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
                code.version = max(code.version, _VERSIONS[name])
                return i
        code = self.schema.OperatorCodeT()
        code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), _VERSIONS[name]
        self.model.operatorCodes.append(code)
        return len(self.model.operatorCodes) - 1

    def drop_unused_buffers(self) -> None:
        """Empty the float buffers no tensor reads any more (indices stay: tensors refer to them by index)."""
        used = {t.buffer for g in self.model.subgraphs or [] for t in g.tensors or []}
        for i, buffer in enumerate(self.model.buffers):
            if i not in used:
                buffer.data = None


def _round(x: np.ndarray) -> np.ndarray:
    """Half away from zero, as the converter's std::round (numpy's rounds half to even)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _per_channel(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output channel (axis 0 of a [out, in] FULLY_CONNECTED matrix). The scale is
    computed in double and the values divided in double, as the converter does: then the int8 values are
    the converter's to the bit (float32 arithmetic moves a few by one step)."""
    peak = np.abs(weights).max(axis=1).astype(np.float64)
    scale = np.where(peak > 0, peak / 127.0, 1.0)
    return np.clip(_round(weights / scale[:, None]), -127, 127), scale.astype(np.float32)


def _per_tensor(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    peak = float(np.abs(weights).max())
    scale = peak / 127.0 if peak > 0 else 1.0
    return np.clip(_round(weights / scale), -127, 127), np.asarray([scale], dtype=np.float32)


def _quantization(schema: Any, scale: np.ndarray) -> Any:
    q = schema.QuantizationParametersT()
    q.scale = [float(s) for s in scale]
    q.zeroPoint = [0] * len(scale)
    q.quantizedDimension = 0
    return q
