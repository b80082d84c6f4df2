"""The feedback export format: what the edge's feedback store writes and `model_build build --feedback`
reads (JSON Lines; the first line names the format and the store's mode).

    {"format": "edge-feedback/1", "mode": "text"}
    {"ts": 1796180000.5, "text": "...", "text_hash": "...", "edge_label": "...", "edge_confidence": 0.41,
     "edge_scores": {...}, "cloud_label": "...", "cloud_confidence": 0.93, "edge_model_version": "...",
     "cloud_model_version": "...", "reason": "low_confidence"}

A hash-mode store's records carry no `text`. Stdlib only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

FORMAT = "edge-feedback/1"
COLUMNS = ("ts", "text", "text_hash", "edge_label", "edge_confidence", "edge_scores", "cloud_label",
           "cloud_confidence", "edge_model_version", "cloud_model_version", "reason")


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
        rows = db.execute(f"SELECT {', '.join(COLUMNS)} FROM feedback ORDER BY id").fetchall()
    except sqlite3.DatabaseError as exc:
        raise FeedbackError(f"{path}: not a readable feedback store ({exc})") from None
    db.close()
    for row in rows:
        item = dict(zip(COLUMNS, row, strict=True))
        item["edge_scores"] = json.loads(item["edge_scores"])
        if item["text"] is None:
            del item["text"]
        yield item


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
