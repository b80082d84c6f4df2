"""edge_container.feedback: the SQLite store of cloud-answered escalations (real files, a real kill -9)."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import io
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_container.feedback import FORMAT, FeedbackError, FeedbackRecord, FeedbackStore, read_export
from edge_container.feedback_writer import FeedbackWriter
from edge_container.metrics import Metrics
from infra.moto_server import SerialisedMotoServer
from modelpack.feedback import read_feedback
from tests.edge_container.conftest import ADMIN_TOKEN, CONFIDENT, UNSURE, FakeCloud, edge_settings, serve_edge

REPO = Path(__file__).resolve().parents[2]
ADMIN = {"x-admin-token": ADMIN_TOKEN}


def record(i: int, text: str | None = None, ts: float = 0.0) -> FeedbackRecord:
    return FeedbackRecord(text=text or f"what is the weather like in city number {i}", edge_label="weather",
                          edge_confidence=0.41, edge_scores={"max_prob": 0.41, "top": [["weather", 0.41]]},
                          cloud_label="oos", cloud_confidence=0.93, edge_model_version="e-1",
                          cloud_model_version="c-1", reason="low_confidence", ts=ts)


def test_records_come_back_in_order_with_both_answers(tmp_path: Path) -> None:
    with FeedbackStore.open(tmp_path / "fb.sqlite", clock=lambda: 1000.0) as store:
        assert store.record([record(0), record(1)]) == 2
        rows = list(store.records())
    assert [i for i, _ in rows] == [1, 2]
    first = rows[0][1]
    assert first["text"] == record(0).text and first["cloud_label"] == "oos" and first["ts"] == 1000.0
    assert first["edge_scores"] == {"max_prob": 0.41, "top": [["weather", 0.41]]}


def test_hash_mode_keeps_no_text_anywhere_on_disk(tmp_path: Path) -> None:
    secret = "my account number is 4242 4242 4242 4242"
    with FeedbackStore.open(tmp_path / "fb.sqlite", mode="hash") as store:
        store.record([record(0, secret), record(1, secret)])
        (_, first), (_, second) = store.records()
        on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert "text" not in first and first["text_hash"] == second["text_hash"]  # repeats still countable
    assert secret.encode() not in on_disk and b"4242 4242" not in on_disk


def test_a_store_keeps_its_mode(tmp_path: Path) -> None:
    FeedbackStore.open(tmp_path / "fb.sqlite", mode="hash").close()
    with pytest.raises(FeedbackError, match="'hash'-mode feedback store"):
        FeedbackStore.open(tmp_path / "fb.sqlite", mode="text")


def test_a_file_that_is_not_a_store_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"not sqlite at all " * 100)
    with pytest.raises(FeedbackError, match="not a usable feedback store"):
        FeedbackStore.open(tmp_path / "junk")
    with pytest.raises(FeedbackError, match="feedback mode"):
        FeedbackStore.open(tmp_path / "x.sqlite", mode="plain")  # type: ignore[arg-type]


def test_old_rows_are_pruned_by_age(tmp_path: Path) -> None:
    now = [10_000.0]
    with FeedbackStore.open(tmp_path / "fb.sqlite", max_age_s=100, clock=lambda: now[0]) as store:
        store.record([record(0, ts=9_800.0), record(1, ts=9_950.0)])
        assert store.prune() == 1
        assert [r["ts"] for _, r in store.records()] == [9_950.0]


def test_the_store_stays_within_its_size_bound_keeping_the_newest(tmp_path: Path) -> None:
    bound = 256 * 1024
    path = tmp_path / "fb.sqlite"
    with FeedbackStore.open(path, max_bytes=bound, prune_every=10) as store:
        for i in range(400):  # ~1 KB a row: several times the bound
            store.record([record(i, f"{i} " + "x" * 900)])
        store.prune()
        stats = store.stats()
        newest = [r["text"].split()[0] for _, r in store.records()][-1]
    assert stats.bytes <= bound and 0 < stats.rows < 400 and newest == "399"
    assert path.stat().st_size <= bound * 1.5  # freed pages go back to the file system


WRITER = textwrap.dedent("""
    import sys
    from edge_container.feedback import FeedbackRecord, FeedbackStore
    store = FeedbackStore.open(sys.argv[1], prune_every=7)  # prunes (by age: nothing) and checkpoints mid-stream
    i = 0
    while True:
        batch = [FeedbackRecord("t%d-%d " % (i, j) + "y" * 200, "a", 0.5, {"max_prob": 0.5}, "b", 0.9,
                                "e", "c", "low_confidence") for j in range(20)]
        store.record(batch)
        i += 1
        print(i * 20, flush=True)   # acknowledged: these records must survive
""")


def test_a_kill_9_mid_write_loses_no_acknowledged_record_and_never_the_file(tmp_path: Path) -> None:
    path = tmp_path / "fb.sqlite"
    acknowledged = 0
    for _ in range(3):  # three crashes in a row, each in the middle of a stream of writes
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=REPO, stdout=subprocess.PIPE,
                                  text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert writer.stdout is not None
        before = acknowledged
        for line in writer.stdout:
            acknowledged = before + int(line)
            if int(line) >= 600:
                break
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=10)
        writer.stdout.close()
        assert writer.returncode == -signal.SIGKILL
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
    db.close()
    assert rows >= acknowledged  # every record whose write returned is there (unacknowledged ones may be too)
    with FeedbackStore.open(path) as store:  # and the store opens and takes writes again
        store.record([record(0)])


def test_an_export_reads_back_and_anything_else_is_refused(tmp_path: Path) -> None:
    with FeedbackStore.open(tmp_path / "fb.sqlite") as store:
        store.record([record(0), record(1), record(2)])
        out = io.StringIO()
        assert store.export(out, after_id=1) == 3
    items = list(read_export(io.StringIO(out.getvalue())))
    assert [item["text"] for item in items] == [record(1).text, record(2).text]
    assert out.getvalue().splitlines()[0] == f'{{"format": "{FORMAT}", "mode": "text"}}'
    for bad in ("", '{"format": "other"}\n', f'{{"format": "{FORMAT}"}}\n[1]\n'):
        with pytest.raises(FeedbackError):
            list(read_export(io.StringIO(bad)))


def test_the_edge_records_what_the_cloud_answered_before_answering(tmp_path: Path, tiny_artifact: Path,
                                                                   cloud: FakeCloud) -> None:
    path = tmp_path / "feedback" / "edge.sqlite"
    settings = edge_settings(tiny_artifact, cloud_url=cloud.url, cloud_api_key="k", feedback_path=path)
    with serve_edge(settings) as (client, _):
        body = client.post("/v1/predict", json={"texts": [CONFIDENT, UNSURE, UNSURE]}).json()
        with FeedbackStore.open(path) as store:  # a second reader while the edge runs: WAL allows it
            rows = [r for _, r in store.records()]
        metrics = client.get("/metrics").text
    assert [r["source"] for r in body["results"]] == ["edge", "cloud", "cloud"]
    assert [r["text"] for r in rows] == [UNSURE, UNSURE]  # only what the cloud answered
    first = rows[0]
    assert first["cloud_label"] == body["results"][1]["label"] and first["reason"] == "low_confidence"
    assert first["edge_label"] == body["results"][1]["edge"]["label"]
    assert first["cloud_model_version"] == "cloud-7" and first["edge_model_version"] == "tiny-1"
    assert set(first["edge_scores"]) == {"max_prob", "margin", "neg_entropy", "top"}
    assert first["cloud_top"] == [[a["label"], a["confidence"]] for a in body["results"][1]["top_k"]] != []
    assert 'edge_feedback_records_total{outcome="ok"} 2.0' in metrics


OLD_SCHEMA = """CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, text TEXT, text_hash TEXT NOT NULL,
    edge_label TEXT NOT NULL, edge_confidence REAL NOT NULL, edge_scores TEXT NOT NULL, cloud_label TEXT NOT NULL,
    cloud_confidence REAL NOT NULL, edge_model_version TEXT NOT NULL, cloud_model_version TEXT NOT NULL,
    reason TEXT NOT NULL);
INSERT INTO feedback VALUES (1, 5.0, 'who won the game', 'h', 'weather', 0.4, '{"max_prob":0.4}', 'oos', 0.3,
    'e-0', 'c-0', 'low_confidence');"""


def test_a_store_an_older_edge_made_is_read_as_it_is_and_gains_the_new_column_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # the schema before `cloud_top`, with one row in it
        db.executescript(OLD_SCHEMA)
    db.close()
    (old,) = read_feedback(path)  # a build reads it read-only, as it is
    assert old["text"] == "who won the game" and old["cloud_top"] == [] and old["edge_scores"] == {"max_prob": 0.4}
    with FeedbackStore.open(path, clock=lambda: 10.0) as store:  # the new edge opens it: one ALTER TABLE
        store.record([dataclasses.replace(record(1), cloud_top=(("sports", 0.31), ("news", 0.2)))])
        rows = [r for _, r in store.records()]
    assert [r["cloud_top"] for r in rows] == [[], [["sports", 0.31], ["news", 0.2]]]
    assert [r["cloud_top"] for r in read_feedback(path)] == [[], [["sports", 0.31], ["news", 0.2]]]


def test_without_a_path_nothing_is_recorded(tiny_artifact: Path, cloud: FakeCloud) -> None:
    with serve_edge(edge_settings(tiny_artifact, cloud_url=cloud.url, cloud_api_key="k")) as (client, stack):
        client.post("/v1/predict", json={"text": UNSURE})
        assert stack.service.feedback is None


def test_the_export_command_writes_what_the_build_reads(tmp_path: Path) -> None:
    from modelpack.feedback import read_feedback

    with FeedbackStore.open(tmp_path / "fb.sqlite", mode="hash") as store:
        store.record([record(0), record(1)])
    out = tmp_path / "fb.jsonl"
    done = subprocess.run([sys.executable, "-m", "edge_container", "feedback", "export", "--store",
                           str(tmp_path / "fb.sqlite"), "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "up to id 2" in done.stderr
    items = read_feedback(out)
    assert len(items) == 2 and all("text" not in item for item in items)  # the store's hash mode kept
    missing = subprocess.run([sys.executable, "-m", "edge_container", "feedback", "export", "--store",
                              str(tmp_path / "nope.sqlite")], cwd=REPO, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60, check=False)
    assert missing.returncode == 2 and "no such feedback store" in missing.stderr


# --------------------------------------------------------------------------- a store that cannot be written

def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_a_failing_store_is_tried_again_after_a_doubling_delay_not_on_every_batch(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "store"
    blocker.write_text("a file where the store's folder should be")  # every open fails (an OSError)
    now, metrics = [0.0], Metrics()
    writer = FeedbackWriter(lambda: FeedbackStore.open(blocker / "fb.sqlite"), metrics=metrics, backoff_s=1.0,
                            max_backoff_s=4.0, clock=lambda: now[0])

    def write_at(t: float) -> float:
        now[0] = t
        asyncio.run(writer.write([record(int(t * 10))]))
        return sample(metrics, "edge_feedback_write_errors_total")

    try:
        attempts = [write_at(t) for t in (0.0, 0.5, 0.9, 1.0, 2.9, 3.0, 6.9, 7.0, 10.9, 11.0)]
        assert attempts == [1, 1, 1, 2, 2, 3, 3, 4, 4, 5]  # tried at 0, +1, +2, +4, then +4 (the cap)
        status = writer.status()
        assert status["state"] == "failing" and status["failed_writes"] == 5 and status["records_lost"] == 10
        assert status["retry_in_s"] == 4.0 and "FileExistsError" in status["error"]
        assert sample(metrics, "edge_feedback_store_healthy") == 0.0
        assert sample(metrics, "edge_feedback_records_total", {"outcome": "dropped"}) == 5

        blocker.unlink()  # the disk is fixed: the next try after the delay writes
        assert write_at(14.0) == 5 and writer.status()["state"] == "failing"  # still waiting: dropped
        assert write_at(15.0) == 5 and writer.status()["state"] == "healthy"
        assert writer.status()["last_failure"]["records_lost"] == 11
        assert sample(metrics, "edge_feedback_store_healthy") == 1.0
        assert sample(metrics, "edge_feedback_records_total", {"outcome": "ok"}) == 1
    finally:
        writer.close()
    with FeedbackStore.open(blocker / "fb.sqlite") as store:
        assert [r["text"] for _, r in store.records()] == [record(150).text]
    lines = [r for r in caplog.records if r.name == "edge_container.feedback" and r.levelno >= logging.WARNING]
    assert [r.levelname for r in lines] == ["ERROR", "WARNING"]  # one per change of state
    assert not lines[0].exc_info  # the store's own trouble: no traceback


class FullDisk:
    """The feedback store's disk filling up and being freed: a real tiny tmpfs when this process may mount one
    (root), else SQLite's own "database or disk is full" raised from the store's write."""

    def __init__(self, kind: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.kind, self.folder, self.full = kind, folder, False
        self.store = folder / "feedback.sqlite"
        if kind == "tmpfs":
            folder.mkdir()
            mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
                                     capture_output=True, check=False)
            if mounted.returncode != 0:
                pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
        else:
            real = FeedbackStore.record

            def record_unless_full(store: FeedbackStore, records: Any) -> int:
                if self.full:
                    raise sqlite3.OperationalError("database or disk is full")
                return real(store, records)

            monkeypatch.setattr(FeedbackStore, "record", record_unless_full)

    def fill(self) -> None:
        self.full = True
        if self.kind == "tmpfs":
            with (self.folder / "filler").open("wb", buffering=0) as out:
                try:
                    while out.write(b"\0" * 4096):
                        pass
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC

    def free(self) -> None:
        self.full = False
        if self.kind == "tmpfs":
            (self.folder / "filler").unlink()

    def unmount(self) -> None:
        if self.kind == "tmpfs":
            subprocess.run(["umount", "-l", str(self.folder)], check=False)


@pytest.fixture(params=["tmpfs", "injected"])
def full_disk(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FullDisk]:
    disk = FullDisk(request.param, tmp_path / "disk", monkeypatch)
    try:
        yield disk
    finally:
        disk.unmount()


def test_a_full_disk_is_logged_once_per_change_of_state_and_fails_no_request(
        full_disk: FullDisk, tiny_artifact: Path, cloud: FakeCloud, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge_container.feedback")
    settings = edge_settings(tiny_artifact, cloud_url=cloud.url, cloud_api_key="k", feedback_path=full_disk.store)

    def escalate(text: str) -> None:
        r = client.post("/v1/predict", json={"texts": [text] * 3, "route": "cloud"})
        assert r.status_code == 200 and [x["source"] for x in r.json()["results"]] == ["cloud"] * 3

    def feedback_state() -> dict[str, Any]:
        state: dict[str, Any] = client.get("/admin/model", headers=ADMIN).json()["feedback_store"]
        return state

    def warnings() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "edge_container.feedback" and r.levelno >= logging.WARNING]

    with serve_edge(settings) as (client, _):
        escalate("before the disk fills")
        assert feedback_state()["state"] == "healthy"
        full_disk.fill()

        for i in range(20):
            escalate(f"{UNSURE} while the disk is full {i}")

        state = feedback_state()
        assert state["state"] == "failing" and "database or disk is full" in state["error"]
        metrics = client.get("/metrics").text
        assert "edge_feedback_store_healthy 0.0" in metrics and "edge_feedback_write_errors_total" in metrics
        lost = [float(line.split()[-1]) for line in metrics.splitlines()
                if line.startswith("edge_feedback_records_total{outcome=") and "ok" not in line]
        assert sum(lost) == 60 == state["records_lost"]
        assert [r.levelname for r in warnings()] == ["ERROR"]  # one line for 20 batches, no traceback
        assert "database or disk is full" in warnings()[0].getMessage() and not warnings()[0].exc_info

        full_disk.free()
        wait_for(lambda: escalate("after the disk was freed") or feedback_state()["state"] == "healthy")

        assert [r.levelname for r in warnings()] == ["ERROR", "WARNING"]
        assert "takes writes again" in warnings()[1].getMessage()
        assert feedback_state()["last_failure"]["records_lost"] >= 60
        assert "edge_feedback_store_healthy 1.0" in client.get("/metrics").text
    with FeedbackStore.open(full_disk.store) as store:
        texts = [r["text"] for _, r in store.records()]
    assert texts[:3] == ["before the disk fills"] * 3 and texts[-1] == "after the disk was freed"
    assert not any("while the disk is full" in t for t in texts)


# --------------------------------------------------------------------------- shipping to S3

BUCKET = "fleet-feedback"


@pytest.fixture(scope="module")
def moto() -> Iterator[SerialisedMotoServer]:
    with SerialisedMotoServer() as server:
        server.client("s3").create_bucket(Bucket=BUCKET)
        yield server


def shipped(s3: Any, prefix: str) -> list[str]:
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def wait_for(condition: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_the_edge_ships_new_feedback_to_s3_and_the_build_reads_it(
        moto: SerialisedMotoServer, tiny_artifact: Path, cloud: FakeCloud, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    s3 = moto.client("s3")
    store = tmp_path / "fb.sqlite"
    settings = edge_settings(tiny_artifact, cloud_url=cloud.url, cloud_api_key="k", feedback_path=store,
                             feedback_s3_uri=f"s3://{BUCKET}/feedback", feedback_ship_s=0.2, device_id="kiosk-7")
    texts = [f"{UNSURE} number {i}" for i in range(5)]
    with serve_edge(settings, s3_client=s3) as (client, _):
        client.post("/v1/predict", json={"texts": texts[:3], "route": "cloud"})
        wait_for(lambda: len(shipped(s3, "feedback/kiosk-7/")) == 1)
        client.post("/v1/predict", json={"texts": texts[3:], "route": "cloud"})
        wait_for(lambda: len(shipped(s3, "feedback/kiosk-7/")) == 2)
        metrics = client.get("/metrics").text
    keys = shipped(s3, "feedback/kiosk-7/")
    assert keys == ["feedback/kiosk-7/000000000001-000000000003.jsonl", "feedback/kiosk-7/000000000004-000000000005.jsonl"]
    assert 'edge_feedback_shipped_total{outcome="shipped"} 5.0' in metrics

    # A restart ships nothing twice: the watermark is in the store.
    with serve_edge(settings, s3_client=s3) as (client, _):
        time.sleep(0.8)
    assert shipped(s3, "feedback/kiosk-7/") == keys

    # The build reads the prefix (boto3 finds the endpoint in AWS_ENDPOINT_URL_S3).
    from model_build.cli import _local_feedback

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto.endpoint_url)
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    local = _local_feedback(f"s3://{BUCKET}/feedback/", tmp_path / "cache")
    assert [r["text"] for r in read_feedback(local)] == texts
