"""The feedback export format: what the edge's feedback store writes and `model_build build --feedback`
reads (JSON Lines; the first line names the format and the store's mode).

    {"format": "edge-feedback/1", "mode": "text"}
    {"ts": 1796180000.5, "text": "...", "text_hash": "...", "edge_label": "...", "edge_confidence": 0.41,
     "edge_scores": {...}, "cloud_label": "...", "cloud_confidence": 0.93, "edge_model_version": "...",
     "cloud_model_version": "...", "reason": "low_confidence", "cloud_top": [["weather", 0.31], ...]}

A hash-mode store's records carry no `text`. `cloud_top` (the cloud's best answers with their probabilities,
as it replied) is newer than the format: records of older stores and exports have none. Stdlib only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

FORMAT = "edge-feedback/1"
COLUMNS = ("ts", "text", "text_hash", "edge_label", "edge_confidence", "edge_scores", "cloud_label",
           "cloud_confidence", "edge_model_version", "cloud_model_version", "reason", "cloud_top")
JSON_COLUMNS = {"edge_scores": "{}", "cloud_top": "[]"}  # stored as JSON text; the value a store without one reads


class FeedbackError(Exception):
    """Feedback that cannot be used: a store that cannot be opened, an export that is not one."""


def header(mode: str) -> str:
    return json.dumps({"format": FORMAT, "mode": mode})


def read_export(lines: Iterable[str], *, where: str = "feedback") -> Iterator[dict[str, Any]]:
    """The records of an export (`FeedbackStore.export`), checking its header; `FeedbackError` otherwise."""
    it = iter(lines)
    try:
        header = json.loads(next(it))
    except (StopIteration, json.JSONDecodeError):
        raise FeedbackError(f"{where}: empty, or not a feedback export (no header line)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise FeedbackError(f"{where}: not a feedback export (format {FORMAT!r} expected)")
    for n, line in enumerate(it, start=2):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            raise FeedbackError(f"{where}: line {n} is not JSON") from None
        if not isinstance(item, dict):
            raise FeedbackError(f"{where}: line {n} is not a record")
        yield item


def read_store(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records of a feedback store file (the edge's SQLite database), opened read-only: a build can read
    a copy taken from a device, or the live file beside a running edge (WAL lets a reader in)."""
    import sqlite3

    try:
        db = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
        present = {row[1] for row in db.execute("PRAGMA table_info(feedback)")}
        columns = [c for c in COLUMNS if c in present]  # an older store lacks the newer columns
        rows = db.execute(f"SELECT {', '.join(columns)} FROM feedback ORDER BY id").fetchall()
    except sqlite3.DatabaseError as exc:
        raise FeedbackError(f"{path}: not a readable feedback store ({exc})") from None
    db.close()
    for row in rows:
        yield stored_item(dict(zip(columns, row, strict=True)))


def stored_item(item: dict[str, Any]) -> dict[str, Any]:
    """A store's row as a record: its JSON columns decoded (their empty value when the store has none), no
    `text` key for a hash-mode row."""
    for column, empty in JSON_COLUMNS.items():
        item[column] = json.loads(item.get(column) or empty)
    if item.get("text") is None:
        item.pop("text", None)
    return item


def read_feedback(path: str | Path) -> list[dict[str, Any]]:
    """Every record in `path`: a store (`.sqlite`/`.db`), an export (`.jsonl`), or a folder of them."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".sqlite", ".db"))
        if not files:
            raise FeedbackError(f"{path}: no feedback files (.jsonl exports or .sqlite stores) in it")
        return [item for f in files for item in read_feedback(f)]
    if not path.is_file():
        raise FeedbackError(f"{path}: no such feedback file or folder")
    if path.suffix in (".sqlite", ".db"):
        return list(read_store(path))
    with path.open(encoding="utf-8") as lines:
        return list(read_export(lines, where=str(path)))
