"""Dynamic-range quantization of an fp32 flatbuffer gives the converter's own dynamic-range model.

Given a tiny teacher of the real teacher's shape (the encoder's own layers: embedding GATHER, EinsumDense
projections, attention, a classifier head), converted once to fp32 and once by the converter's
dynamic-range mode, `dynamic_range_from_fp32(fp32)` has the same ops at the same versions, the same int8
weights to the byte, and the same logits through LiteRT; int32 ids in, float logits out.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from model_build.errors import ConversionError  # noqa: E402
from model_build.tflite.dynamic_range import dynamic_range_from_fp32  # noqa: E402
from model_build.tflite.graph import (  # noqa: E402
    graph_ops,
    input_details,
    output_details,
    size_breakdown,
    unpack as _model,
)

pytestmark = pytest.mark.slow
VOCAB, SEQ, LABELS = 3000, 16, 5


def _tiny_teacher() -> Any:
    from model_build.teacher.encoder import Encoder, input_ids
    from model_build.teacher.encoder_layers import Embeddings, MeanPooling, PaddingMask, TransformerBlock
    from model_build.teacher.minilm import EncoderConfig

    keras.utils.set_random_seed(3)
    config = EncoderConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=128, max_position_embeddings=SEQ, layer_norm_eps=1e-12,
                           type_vocab_size=2)
    embed = Embeddings(config, name="embeddings")
    embed.build((None, None))
    blocks = []
    for index in range(config.num_hidden_layers):
        blocks.append(TransformerBlock(config, name=f"layer_{index}"))
        blocks[-1].build(((None, None, config.hidden_size), (None, None)))
    encoder = Encoder(config=config, mask=PaddingMask(), embed=embed, layers=tuple(blocks),
                      pool=MeanPooling(), pool_normalized=MeanPooling(normalize=True))
    ids = input_ids(SEQ)
    # A head of 64 x 5 = 320 weights: under the converter's 1,024-element floor, so it stays float.
    return keras.Model(ids, keras.layers.Dense(LABELS)(encoder.sentence_embedding(ids)))


@pytest.fixture(scope="module")
def converted() -> dict[str, bytes]:
    from model_build.tflite.convert import to_tflite_dynamic_range, to_tflite_fp32

    model = _tiny_teacher()
    return {"fp32": to_tflite_fp32(model), "converter": to_tflite_dynamic_range(model)}


def _op_codes(tflite: bytes) -> list[tuple[int, int]]:
    return sorted((max(c.builtinCode, c.deprecatedBuiltinCode), c.version) for c in _model(tflite).operatorCodes)


def _int8_constants(tflite: bytes) -> Counter[bytes]:
    model = _model(tflite)
    out: Counter[bytes] = Counter()
    for tensor in model.subgraphs[0].tensors:
        data = model.buffers[tensor.buffer].data
        if data is not None and tensor.type == 9:  # INT8
            scales = np.asarray(tensor.quantization.scale, dtype=np.float32).tobytes()
            out[bytes(np.asarray(data, dtype=np.uint8)) + scales] += 1
    return out


def _logits(tflite: bytes, ids: np.ndarray) -> np.ndarray:
    interpreter = Interpreter(model_content=tflite, num_threads=1)
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(inp["index"], ids.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], ids.astype(inp["dtype"]))
    interpreter.invoke()
    return interpreter.get_tensor(out["index"])


def test_it_is_the_converters_dynamic_range_model(converted: dict[str, bytes]) -> None:
    ours = dynamic_range_from_fp32(converted["fp32"])

    assert _op_codes(ours) == _op_codes(converted["converter"])
    assert Counter(op.name for op in graph_ops(ours)) == Counter(op.name for op in graph_ops(converted["converter"]))
    assert _int8_constants(ours) == _int8_constants(converted["converter"])
    assert len(_int8_constants(ours)) >= 2 * 6 + 1  # every projection of both blocks, and the table
    ids = np.random.default_rng(0).integers(1, VOCAB, size=(4, SEQ))
    ids[:, 10:] = 0
    np.testing.assert_array_equal(_logits(ours, ids), _logits(converted["converter"], ids))


def test_weights_shrink_and_the_interface_stays(converted: dict[str, bytes]) -> None:
    ours = dynamic_range_from_fp32(converted["fp32"])
    fp32, int8 = size_breakdown(converted["fp32"]), size_breakdown(ours)

    assert int8.quantized_weight_bytes + int8.float_weight_bytes < 0.27 * fp32.float_weight_bytes
    assert [(t.dtype, t.shape_signature) for t in input_details(ours)] == [("INT32", (-1, SEQ))]
    assert [t.dtype for t in output_details(ours)] == ["FLOAT32"]
    ids = np.random.default_rng(1).integers(1, VOCAB, size=(8, SEQ))
    np.testing.assert_allclose(_logits(ours, ids), _logits(converted["fp32"], ids), atol=0.05)


def test_a_shared_table_and_a_shared_weight_are_quantized_once_for_every_reader() -> None:
    """One embedding table read by two GATHERs and one Dense applied twice: both readers of each get the
    same int8 tensor and the logits are the converter's (which dequantizes a shared table once up front,
    where each lookup here dequantizes its own rows: the same numbers)."""
    from model_build.tflite.convert import to_tflite_dynamic_range, to_tflite_fp32

    keras.utils.set_random_seed(4)
    ids = keras.Input(shape=(SEQ,), dtype="int32")
    embed, dense = keras.layers.Embedding(VOCAB, 32), keras.layers.Dense(48)
    both = [keras.ops.mean(dense(embed(x)), axis=1) for x in (ids, keras.ops.flip(ids, axis=1))]
    model = keras.Model(ids, keras.layers.Dense(LABELS)(keras.ops.concatenate(both, axis=-1)))
    fp32, converter = to_tflite_fp32(model), to_tflite_dynamic_range(model)

    ours = dynamic_range_from_fp32(fp32)

    assert Counter(op.name for op in graph_ops(ours))["FULLY_CONNECTED"] == 3
    assert Counter(op.name for op in graph_ops(ours))["DEQUANTIZE"] == 2  # one per lookup
    assert _int8_constants(ours) == _int8_constants(converter)  # the table and the shared Dense kernel
    rows = np.random.default_rng(2).integers(1, VOCAB, size=(3, SEQ))
    np.testing.assert_array_equal(_logits(ours, rows), _logits(converter, rows))


def test_a_model_without_float_weights_is_refused(converted: dict[str, bytes]) -> None:
    with pytest.raises(ConversionError, match="no float FULLY_CONNECTED or GATHER weights"):
        dynamic_range_from_fp32(converted["converter"])
    with pytest.raises(ConversionError, match="not a TFLite flatbuffer"):
        dynamic_range_from_fp32(b"not a model")
