"""Texts without labels, read from files: `--unlabeled` and `--negatives` (.txt one a line, or the `text`
column of a .csv / .jsonl), the edge's feedback (`--feedback`), and the digests the stage keys take of them."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from model_build.data.off_topic import from_spreadsheet, is_review
from model_build.errors import DataError
from modelpack.feedback import FeedbackError, read_feedback


def load_unlabeled(path: Path | str) -> tuple[str, ...]:
    """Texts from a .txt file (one a line), or the `text` column of a .csv / .jsonl file. Empty lines are
    skipped; anything else unreadable fails naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (--unlabeled)")
    texts: list[str] = []
    try:
        if path.suffix.lower() == ".csv":
            with path.open(encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames is None or "text" not in reader.fieldnames:
                    raise DataError(f"{path}: a CSV of unlabelled texts needs a 'text' column")
                texts = [row["text"] or "" for row in reader]
                if is_review(reader.fieldnames):  # `data off-topic`'s CSV: its texts were made spreadsheet-safe
                    texts = [from_spreadsheet(t) for t in texts]
        elif path.suffix.lower() == ".jsonl":
            with path.open(encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except ValueError as exc:
                        raise DataError(f"{path}:{n}: not valid JSON: {exc}") from None
                    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                        raise DataError(f"{path}:{n}: each line must be an object with a string 'text'")
                    texts.append(row["text"])
        else:
            texts = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    cleaned = tuple(dict.fromkeys(t.strip() for t in texts if t.strip()))  # order kept, duplicates dropped
    if not cleaned:
        raise DataError(f"{path}: no texts in it")
    return cleaned


def file_digest(path: Path | str | None) -> str | None:
    return None if path is None else hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_feedback(path: Path | str) -> tuple[tuple[str, ...], int]:
    """The distinct texts of the edge's feedback at `path` (a store, an export or a folder of them:
    `modelpack.feedback.read_feedback`), in first-seen order, and how many records had no text (a hash-mode
    store's, kept for monitoring only)."""
    try:
        records = read_feedback(path)
    except FeedbackError as exc:
        raise DataError(f"--feedback {exc}") from None
    texts = [r["text"] for r in records if isinstance(r.get("text"), str) and r["text"].strip()]
    return tuple(dict.fromkeys(texts)), len(records) - len(texts)


def texts_digest(texts: Sequence[str]) -> str:
    return hashlib.sha256("\x1e".join(texts).encode("utf-8", "surrogatepass")).hexdigest()
