"""The transformer student: the teacher's own MiniLM blocks, an exact int8-friendly rewrite of them, and a
full-int8 file whose interpreter answers match the float model.

Tolerances: the equalised rewrite is exact in float (float32 round-off, 1e-4); through int8 a tiny random
transformer's logits stay within 10 % of their own range of the float model's, and the argmax agrees on
at least 90 % of sentences (measured on these fixtures: see the asserts' messages)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from model_build.config import TransformerStudentConfig  # noqa: E402
from model_build.student.layers import BERT_VOCAB_SIZE, build_vocab_map  # noqa: E402
from model_build.student.transformer import (  # noqa: E402
    build_transformer_student,
    equalize,
    init_from_pretrained,
)
from model_build.teacher.minilm import EncoderConfig  # noqa: E402
from model_build.tflite.convert import to_tflite_fp32, to_tflite_int8  # noqa: E402
from model_build.tflite.graph import float_ops, graph_ops  # noqa: E402
from modelpack.litert import LiteRTModel  # noqa: E402
from modelpack.manifest import ModelEntry, OutputSpec  # noqa: E402

TINY = EncoderConfig(vocab_size=BERT_VOCAB_SIZE, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, layer_norm_eps=1e-12, type_vocab_size=2)
CONFIG = TransformerStudentConfig(layers=(0, 1), heads=4, intermediate=64, dropout=0.0, seq_len=16)
LABELS = 5


def _sentences(n: int, seed: int, width: int = 16) -> np.ndarray:
    """[n, width] BERT-like ids: [CLS] words [SEP], then pads; lengths 3..width."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, width), dtype=np.int32)
    for i, length in enumerate(rng.integers(3, width + 1, n)):
        ids[i, 0], ids[i, length - 1] = 101, 102
        ids[i, 1:length - 1] = rng.integers(2000, 2300, length - 2)
    return ids


def _random_student(seed: int = 0) -> keras.Model:
    """A tiny plain student with random weights, and outlier channels in its stream like BERT's (two
    position channels and one layer norm's output channel 30x wider than the rest)."""
    vocab_map = build_vocab_map(_sentences(300, seed=1))
    model = build_transformer_student(CONFIG, vocab_map=vocab_map, num_labels=LABELS, encoder_config=TINY)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.name in ("token_remap", "score_bias", "pool_mask", "masked_mean"):
            continue
        for weight in layer.trainable_weights:
            shape = tuple(weight.shape)
            if weight.path.endswith("gamma"):
                value = 1.0 + 0.1 * rng.normal(size=shape)
            else:
                value = rng.normal(size=shape) * (0.5 if len(shape) == 1 else 1.0 / np.sqrt(shape[0]))
            weight.assign(value.astype(np.float32))
    embedding = model.get_layer("embedding")
    positions = embedding.positions.numpy()
    positions[:, :2] *= 30.0
    embedding.positions.assign(positions)
    norm = model.get_layer("block_0").attention_norm
    beta = norm.beta.numpy()
    beta[3] = 15.0
    norm.beta.assign(beta)
    return model


def _run(tflite: bytes, ids: np.ndarray) -> np.ndarray:
    """Logits through the edge runtime's own loader (modelpack.litert), as the edge would read them."""
    from model_build.tflite.graph import output_details

    (out,) = output_details(tflite)
    quantized = out.dtype.lower() == "int8"
    entry = ModelEntry(file="edge.tflite", sha256="0" * 64, size_bytes=len(tflite), precision="int8",
                       inputs=(), output=OutputSpec(dtype=out.dtype.lower(), shape=(-1, LABELS), logits=True,
                                                    scale=out.scale if quantized else None,
                                                    zero_point=out.zero_point if quantized else None),
                       temperature=1.0)
    return LiteRTModel(tflite, entry).logits(ids)


@pytest.fixture(scope="module")
def tiny():
    model = _random_student()
    calibration = [_sentences(120, seed=2, width=w)[:, :w] for w in (8, 16)]
    equalized = equalize(model, CONFIG, TINY, calibration[1])
    return model, equalized, to_tflite_int8(equalized, calibration)


def test_the_equalised_rewrite_is_the_same_function_in_float(tiny):
    model, equalized, _ = tiny
    ids = _sentences(64, seed=3)
    expected = model.predict(ids, verbose=0)
    np.testing.assert_allclose(equalized.predict(ids, verbose=0), expected, atol=1e-4 * np.abs(expected).max())


def test_int8_graph_has_no_float_op_and_keeps_attention_in_its_own_ops(tiny):
    _, _, int8 = tiny
    assert float_ops(int8) == []
    names = {op.name for op in graph_ops(int8)}
    # The ops XNNPACK leaves to the built-in int8 kernels, all of them expected here (their cost is in
    # bench/results/student_search.md): two attention matmuls and a softmax per block, a layer norm's RSQRT.
    assert {"BATCH_MATMUL", "SOFTMAX", "RSQRT", "GELU"} <= names
    assert not names & {"DIV", "MAXIMUM", "DEQUANTIZE", "QUANTIZE", "LAYER_NORM"}


def test_int8_answers_match_the_float_model(tiny):
    model, _, int8 = tiny
    ids = _sentences(200, seed=4)
    expected = model.predict(ids, verbose=0)
    got = _run(int8, ids)
    spread = expected.max() - expected.min()
    worst = np.abs(got - expected).max()
    agree = (got.argmax(axis=1) == expected.argmax(axis=1)).mean()
    assert worst <= 0.10 * spread, f"int8 logits off by {worst:.3f} on a range of {spread:.3f}"
    assert agree >= 0.90, f"int8 argmax agrees on {agree:.1%}"


def test_logits_do_not_depend_on_the_padding_bucket(tiny):
    model, _, int8 = tiny
    short = _sentences(32, seed=5, width=8)
    padded = np.zeros((32, 16), dtype=np.int32)
    padded[:, :8] = short
    fp32 = to_tflite_fp32(model)
    # Each pad key keeps ~exp(pad_score) = 6e-6 of its query's attention weight: 8 more pads move a logit
    # by ~1e-4 in float. In int8 most sentences do not move at all; a few move by up to 4 output steps
    # (measured here: rounding of the attention's int8 tensors).
    np.testing.assert_allclose(_run(fp32, padded), _run(fp32, short), atol=1e-3)
    moved = np.abs(_run(int8, padded) - _run(int8, short)).max(axis=1) / _output_step(int8)
    assert np.median(moved) < 0.5 and moved.max() <= 6, moved


def _output_step(tflite: bytes) -> float:
    from model_build.tflite.graph import output_quantization

    return output_quantization(tflite)[0]


def test_pretrained_blocks_reproduce_the_teachers_encoder():
    """Whole heads and units kept: the student's pooled sentence equals MiniLM's after the same blocks."""
    from model_build.teacher.encoder import build_encoder
    from model_build.teacher.minilm import load_weights, minilm_dir

    folder = minilm_dir()
    encoder_config = EncoderConfig.from_dir(folder)
    weights = load_weights(folder)
    ids = _sentences(16, seed=6)
    config = dataclasses.replace(TransformerStudentConfig(layers=(0,)), seq_len=16)
    student = build_transformer_student(config, vocab_map=build_vocab_map(ids), num_labels=LABELS,
                                        encoder_config=encoder_config)
    init_from_pretrained(student, config, weights, encoder_config)
    pooled = keras.Model(student.input, student.get_layer("masked_mean").output).predict(ids, verbose=0)

    encoder = build_encoder(encoder_config, weights)
    inputs = keras.Input((None,), dtype="int32")
    reference = keras.Model(inputs, encoder.pool((encoder.hidden_states(inputs, stop=1), encoder.mask(inputs))))
    np.testing.assert_allclose(pooled, reference.predict(ids, verbose=0), atol=1e-4)


@pytest.mark.slow
@pytest.mark.xdist_group("quick_clinc")  # on the worker that trained the session's quick teacher
def test_quick_preset_builds_with_the_transformer_student(tmp_path, quick_clinc_cache):
    """`build --preset quick --student transformer` on real CLINC150 (the quick teacher from the session's
    cache when test_build_quick.py trained it): the manifest records the architecture, the int8 file has no
    float op and keeps the gate, and the edge runtime's reader loads it unchanged and answers."""
    import json

    from model_build.config import preset
    from model_build.pipeline import build
    from modelpack.classifier import Classifier
    from tests.conftest import CLINC

    if not CLINC.exists():
        pytest.fail(f"{CLINC} is missing: run `make data` (or .ci/run, which copies it)")
    # The quick teacher (58 steps) is worse than this student: the three-way fit escalates nothing and keeps
    # the edge's band above the escalate-none threshold, which the manifest accepts
    config = preset("quick", student="transformer")
    result = build(config, data_path=CLINC, out_dir=tmp_path / "artifact", cache_dir=quick_clinc_cache)

    assert result.manifest.build["config"]["student"]["architecture"] == "transformer"
    metrics = json.loads((result.out_dir / "metrics.json").read_text())
    assert metrics["int8_graph"]["float_ops"] == []
    assert metrics["edge_int8"]["accuracy_drop_vs_fp32"] <= 0.005
    edge = Classifier.load(result.out_dir, "edge")[0]
    texts = ["what is my bank balance", "set a timer for ten minutes", "how do i make pancakes"]
    probs = edge.calibrate(edge.logits(texts))
    assert probs.shape == (3, len(result.manifest.labels)) and np.allclose(probs.sum(axis=1), 1.0)
