"""The student's transfer set: augmented training texts and unlabelled texts, never a validation or test text."""

from pathlib import Path

import pytest

from model_build.config import TransferConfig
from model_build.data.unlabeled import load_unlabeled
from model_build.errors import DataError
from model_build.student.transfer import build_transfer_set

TRAIN = ("set a timer for ten minutes", "what is my bank balance", "play some jazz music", "wake me up at six")
LABELS = (0, 1, 2, 3)


def test_unlabelled_texts_from_txt_csv_and_jsonl(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("the river flows north\n\n  the river flows north \nparis is a city\n")
    (tmp_path / "b.csv").write_text("id,text\n1,the river flows north\n2,paris is a city\n")
    (tmp_path / "c.jsonl").write_text('{"text": "the river flows north"}\n\n{"text": "paris is a city"}\n')
    for name in ("a.txt", "b.csv", "c.jsonl"):
        assert load_unlabeled(tmp_path / name) == ("the river flows north", "paris is a city"), name


@pytest.mark.parametrize("name, content, words", [
    ("x.csv", "id,body\n1,hello\n", "'text' column"),
    ("x.jsonl", '{"text": "ok"}\n{"text": 3}\n', "x.jsonl:2"),
    ("x.jsonl", '{"text": "ok"}\nnot json\n', "x.jsonl:2: not valid JSON"),
    ("x.txt", "\n\n", "no texts"),
])
def test_bad_unlabelled_files_fail_naming_the_file_and_line(tmp_path: Path, name: str, content: str,
                                                             words: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=words):
        load_unlabeled(tmp_path / name)


def test_non_utf8_and_missing_files_are_data_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(DataError, match="not UTF-8"):
        load_unlabeled(tmp_path / "bad.txt")
    with pytest.raises(DataError, match="no such file"):
        load_unlabeled(tmp_path / "missing.txt")


def test_augmented_copies_are_dropouts_and_splices_of_training_texts() -> None:
    config = TransferConfig(augment_copies=3, word_dropout=0.3, splice_share=0.5)
    transfer = build_transfer_set(config, TRAIN, LABELS, (), exclude=(), seed=1)
    counts = transfer.counts()
    assert counts["unlabeled"] == 0 and counts["dropout"] + counts["splice"] == len(transfer.texts) > 0
    assert counts["splice"] > 0 and counts["dropout"] > 0
    vocab = {w for t in TRAIN for w in t.split()}
    for text, kind in zip(transfer.texts, transfer.kinds):
        assert text and set(text.split()) <= vocab
        assert text not in TRAIN  # an unchanged copy teaches nothing new
    # Deterministic for a seed.
    assert build_transfer_set(config, TRAIN, LABELS, (), exclude=(), seed=1) == transfer


def test_splices_join_halves_of_texts_with_different_labels() -> None:
    config = TransferConfig(augment_copies=4, splice_share=1.0)
    transfer = build_transfer_set(config, TRAIN, LABELS, (), exclude=(), seed=0)
    starts = {" ".join(t.split()[: len(t.split()) // 2]): i for i, t in enumerate(TRAIN)}
    for text, kind in zip(transfer.texts, transfer.kinds):
        if kind == "splice":
            owners = {i for head, i in starts.items() if text.startswith(head + " ")}
            assert owners, text
            assert not any(text == TRAIN[i] for i in owners)


def test_texts_of_the_validation_or_test_split_never_enter_the_transfer_set() -> None:
    unlabeled = ("the river flows north", "what is my bank balance", "a sentence from the test split")
    transfer = build_transfer_set(TransferConfig(), TRAIN, LABELS, unlabeled,
                                  exclude=("a sentence from the test split",), seed=0)
    assert transfer.texts == ("the river flows north",)  # the test text and the training text are dropped
    assert transfer.kinds == ("unlabeled",)


def test_max_unlabeled_keeps_a_seeded_sample() -> None:
    pool = tuple(f"sentence number {i}" for i in range(100))
    config = TransferConfig(max_unlabeled=10)
    a = build_transfer_set(config, TRAIN, LABELS, pool, exclude=(), seed=3)
    assert len(a.texts) == 10 and set(a.texts) <= set(pool)
    assert a == build_transfer_set(config, TRAIN, LABELS, pool, exclude=(), seed=3)


@pytest.mark.parametrize("bad", [{"augment_copies": -1}, {"word_dropout": 1.0}, {"splice_share": 1.5},
                                 {"unlabeled_weight": -0.1}, {"max_unlabeled": 0}])
def test_bad_settings_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        TransferConfig(**bad)


def test_feedback_texts_join_the_transfer_set_deduplicated_and_hash_only_records_are_counted(
        tmp_path: Path) -> None:
    from edge_container.feedback import FeedbackRecord, FeedbackStore
    from model_build.data.unlabeled import load_feedback

    def rec(text: str) -> FeedbackRecord:
        return FeedbackRecord(text, "a", 0.4, {}, "b", 0.9, "e", "c", "low_confidence")

    with FeedbackStore.open(tmp_path / "dev1" / "fb.sqlite") as store:
        store.record([rec("is it going to snow"), rec("play jazz please"), rec("is it going to snow")])
    with FeedbackStore.open(tmp_path / "dev2" / "fb.sqlite", mode="hash") as store:
        store.record([rec("secret text")])
    texts, textless = load_feedback(tmp_path)
    assert texts == ("is it going to snow", "play jazz please") and textless == 1
    transfer = build_transfer_set(TransferConfig(augment_copies=0), TRAIN, LABELS, (), exclude=("play jazz please",),
                                  seed=0, feedback=texts)
    assert transfer.texts == ("is it going to snow",) and transfer.kinds == ("feedback",)  # excluded stays out
    assert transfer.counts()["feedback"] == 1
    with pytest.raises(DataError, match="--feedback"):
        load_feedback(tmp_path / "nothing-here")


def test_feedback_copies_are_dropouts_of_feedback_texts_and_leave_the_rest_as_it_was() -> None:
    config = TransferConfig(augment_copies=2, word_dropout=0.4, splice_share=0.5)
    feedback = ("is it going to snow in oslo tomorrow morning", "how do i say thank you in italian please")
    plain = build_transfer_set(config, TRAIN, LABELS, ("a wiki sentence",), exclude=(), seed=3, feedback=feedback)
    copied = build_transfer_set(config, TRAIN, LABELS, ("a wiki sentence",), exclude=(), seed=3, feedback=feedback,
                                feedback_copies=3)
    assert copied.texts[: len(plain.texts)] == plain.texts  # everything before them unchanged
    extra = copied.texts[len(plain.texts):]
    assert 0 < len(extra) <= 3 * len(feedback) and set(copied.kinds[len(plain.texts):]) == {"feedback"}
    sources = [set(t.split()) for t in feedback]
    for text in extra:
        assert any(set(text.split()) <= words for words in sources) and text not in feedback
    assert copied.counts()["feedback"] == len(feedback) + len(extra)


@pytest.mark.parametrize("copies", [-1, 51])
def test_feedback_copies_out_of_range_are_refused_by_name(copies: int) -> None:
    from model_build.config import preset
    from model_build.errors import BuildError

    with pytest.raises(BuildError, match=r"--feedback-copies must be in \[0, 50\]"):
        preset("quick", feedback_copies=copies)
