"""modelpack.feedback: what a build reads of the edge's feedback, from a store, an export or a folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_container.feedback import FeedbackRecord, FeedbackStore
from modelpack.feedback import FeedbackError, read_feedback


def record(text: str) -> FeedbackRecord:
    return FeedbackRecord(text, "weather", 0.4, {"max_prob": 0.4}, "oos", 0.9, "e-1", "c-1", "low_confidence")


def test_a_store_an_export_and_a_folder_read_the_same_records(tmp_path: Path) -> None:
    store_path = tmp_path / "device-a" / "feedback.sqlite"
    with FeedbackStore.open(store_path) as store:
        store.record([record("set an alarm"), record("play jazz")])
        with (tmp_path / "device-b.jsonl").open("w") as out:
            store.export(out)
    from_store = read_feedback(store_path)
    from_export = read_feedback(tmp_path / "device-b.jsonl")
    assert [r["text"] for r in from_store] == [r["text"] for r in from_export] == ["set an alarm", "play jazz"]
    assert from_store == from_export and from_store[0]["cloud_label"] == "oos"
    assert [r["text"] for r in read_feedback(tmp_path)] == ["set an alarm", "play jazz"] * 2


def test_a_hash_mode_store_yields_records_without_text(tmp_path: Path) -> None:
    with FeedbackStore.open(tmp_path / "h.sqlite", mode="hash") as store:
        store.record([record("my pin is 1234")])
    [item] = read_feedback(tmp_path / "h.sqlite")
    assert "text" not in item and len(item["text_hash"]) == 64


@pytest.mark.parametrize(("name", "content", "message"), [
    ("missing.jsonl", None, "no such feedback file"),
    ("junk.sqlite", b"not a database at all" * 50, "not a readable feedback store"),
    ("bad.jsonl", b'{"format": "something-else"}\n', "not a feedback export"),
])
def test_unusable_feedback_is_a_clear_error(tmp_path: Path, name: str, content: bytes | None, message: str) -> None:
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(FeedbackError, match=message):
        read_feedback(tmp_path / name)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FeedbackError, match="no feedback files"):
        read_feedback(empty)
