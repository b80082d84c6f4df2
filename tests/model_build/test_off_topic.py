"""`python -m model_build data off-topic`: the requests the cloud refused, read from the edge's real feedback
store (or its export, or the S3 prefix the edge ships to), as a review CSV that `build --off-topic` reads."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from edge_container.feedback import FeedbackRecord, FeedbackStore
from model_build.cli import main
from model_build.data.off_topic import Candidate, refused_texts
from model_build.data.unlabeled import load_unlabeled


def record(text: str, cloud_label: str = "oos", *, edge_label: str = "weather") -> FeedbackRecord:
    top = [[edge_label, 0.4], ["alarm", 0.25], ["timer", 0.125], ["music", 0.1]]  # as the edge records them
    return FeedbackRecord(text, edge_label, 0.4, {"max_prob": 0.4, "top": top}, cloud_label, 0.3, "e-1", "c-1",
                          "low_confidence", cloud_top=(("sports", 0.3), ("news", 0.21), ("weather", 0.1)))


TRAFFIC = [
    record("who won the game last night", edge_label="weather"),
    record("what is the weather in oslo", "weather"),  # the cloud answered an intent: not a candidate
    record("who won the game last night", edge_label="play_music"),
    record('tell me a joke, a "good" one', edge_label="play_music"),
    record("who won the game last night", edge_label="play_music"),
    record("  "),  # no text to review
    record("play some jazz", edge_label="play_music"),  # an in-scope one the cloud refused
]


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_refused_texts_are_grouped_counted_and_ordered_most_often_then_first_seen() -> None:
    records = [{"text": r.text, "cloud_label": r.cloud_label, "edge_label": r.edge_label,
                "edge_scores": r.edge_scores, "cloud_top": [list(a) for a in r.cloud_top]} for r in TRAFFIC]
    records[3]["edge_scores"] = {"max_prob": 0.4}  # an older record: no top lists
    del records[3]["cloud_top"]
    refused = refused_texts(records, label="oos")
    cloud = "sports 0.30; news 0.21; weather 0.10"
    assert refused.candidates == (  # the most frequent guess; the top lists as first recorded
        Candidate("who won the game last night", 3, "play_music", "weather 0.40; alarm 0.25; timer 0.12", cloud),
        Candidate('tell me a joke, a "good" one', 1, "play_music", "", ""),
        Candidate("play some jazz", 1, "play_music", "play_music 0.40; alarm 0.25; timer 0.12", cloud),
    )
    assert (refused.records, refused.refused, refused.textless) == (7, 6, 1)
    assert refused_texts(records, label="out_of_scope").candidates == ()


def test_the_command_writes_a_review_csv_that_build_off_topic_reads(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "device" / "feedback.sqlite"
    with FeedbackStore.open(store) as s:
        s.record(TRAFFIC)
    out = tmp_path / "review" / "off_topic.csv"
    assert main(["data", "off-topic", str(store), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "the cloud answered 'oos' to 6, 3 distinct texts" in said and "--off-topic" in said
    assert "1 of them carry no text" in said
    assert [(r["text"], r["times"], r["edge_label"], r["edge_top"]) for r in rows(out)] == [
        ("who won the game last night", "3", "play_music", "weather 0.40; alarm 0.25; timer 0.12"),
        ('tell me a joke, a "good" one', "1", "play_music", "play_music 0.40; alarm 0.25; timer 0.12"),
        ("play some jazz", "1", "play_music", "play_music 0.40; alarm 0.25; timer 0.12"),
    ]
    assert {r["cloud_top"] for r in rows(out)} == {"sports 0.30; news 0.21; weather 0.10"}  # what it leaned to
    # The reviewer deletes the in-scope row; what is left is what --off-topic trains on.
    kept = [r for r in rows(out) if r["text"] != "play some jazz"]
    with out.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(kept[0]))
        writer.writeheader()
        writer.writerows(kept)
    assert load_unlabeled(out) == ("who won the game last night", 'tell me a joke, a "good" one')


def test_texts_a_spreadsheet_would_run_as_formulas_are_written_as_text_and_read_back_as_asked(
        tmp_path: Path) -> None:
    asked = ["=HYPERLINK(\"http://x.example\",\"win\")", "+1 555 0100 is it you", "-5 degrees outside?",
             "@home what's up", "'quoted' and fine", "plain words"]
    store = tmp_path / "fb.sqlite"
    with FeedbackStore.open(store) as s:
        s.record([record(t, edge_label="-minus_intent") for t in asked])
    out = tmp_path / "review.csv"
    assert main(["data", "off-topic", str(store), "--out", str(out)]) == 0
    written = rows(out)
    assert [r["text"] for r in written] == ["'" + t for t in asked[:4]] + asked[4:]
    assert {r["edge_label"] for r in written} == {"'-minus_intent"}
    assert all(r["edge_top"].startswith("'-minus_intent 0.40") for r in written)
    assert load_unlabeled(out) == tuple(asked)  # --off-topic trains on the requests as they were asked
    plain = tmp_path / "mine.csv"  # any other CSV is read as it is
    plain.write_text("text\n'=not a review file\n", encoding="utf-8")
    assert load_unlabeled(plain) == ("'=not a review file",)


def test_an_export_and_a_folder_of_devices_read_alike(tmp_path: Path) -> None:
    (tmp_path / "exports").mkdir()
    for device, texts in (("a", ["who won the game", "who won the game"]), ("b", ["who won the game", "hi there"])):
        with FeedbackStore.open(tmp_path / "stores" / f"{device}.sqlite") as s:
            s.record([record(t) for t in texts])
            with (tmp_path / "exports" / f"{device}.jsonl").open("w") as f:
                s.export(f)
    for source in ("stores", "exports"):
        out = tmp_path / f"{source}.csv"
        assert main(["data", "off-topic", str(tmp_path / source), "--out", str(out)]) == 0
        assert [(r["text"], r["times"]) for r in rows(out)] == [("who won the game", "3"), ("hi there", "1")]


@pytest.fixture
def bucket(aws_credentials: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="fleet")
        yield client


def test_the_s3_prefix_the_edge_ships_to_is_read_too(bucket: Any, tmp_path: Path) -> None:
    with FeedbackStore.open(tmp_path / "fb.sqlite") as s:
        s.record([record("who won the game"), record("set an alarm", "alarm")])
        with (tmp_path / "1-2.jsonl").open("w") as f:
            s.export(f)
    bucket.upload_file(str(tmp_path / "1-2.jsonl"), "fleet", "feedback/kiosk-7/1-2.jsonl")
    out = tmp_path / "review.csv"
    assert main(["data", "off-topic", "s3://fleet/feedback", "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert [r["text"] for r in rows(out)] == ["who won the game"]


def test_nothing_to_review_or_nothing_there_is_one_line_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with FeedbackStore.open(tmp_path / "fb.sqlite") as s:
        s.record([record("set an alarm", "alarm")])
    out = tmp_path / "review.csv"
    assert main(["data", "off-topic", str(tmp_path / "fb.sqlite"), "--out", str(out)]) == 2
    assert "none of its 1 records has a text the cloud answered 'oos'" in capsys.readouterr().err
    assert not out.exists()
    assert main(["data", "off-topic", str(tmp_path / "missing.sqlite"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data off-topic:") and "no such feedback file" in err and len(err.splitlines()) == 1
