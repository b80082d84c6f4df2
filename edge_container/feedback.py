"""The feedback store: every escalation the cloud answered, kept on the device as training data.

    store = FeedbackStore.open(path, mode="text" | "hash", max_bytes=..., max_age_s=...)
    store.record([FeedbackRecord(...), ...])   one transaction per cloud reply
    store.export(out, after_id=0)              JSON Lines, what `model_build build --feedback` reads
    store.stats()                              rows, bytes, oldest, newest

SQLite in WAL mode (stdlib `sqlite3`: no server, one file and its -wal beside it, crash-safe): a record whose
`record()` returned is in the database even if the process is killed (`kill -9`) a moment later, and a
kill in the middle of a write loses only that uncommitted transaction, never the file (WAL with
`synchronous=NORMAL` survives application crashes; only a power cut can drop the last commits, never
corrupt the file). Bounded by size and age: after every `prune_every` writes the oldest rows past
`max_age_s`, then past `max_bytes` of pages, are deleted and the pages given back (incremental vacuum).

`mode="hash"` keeps no text, only a keyed hash of it (HMAC-SHA256 under a random key made once per store and
kept in it): enough to count repeats and monitor agreement, not to train on, and not reversible by hashing
a dictionary of likely texts without the store's key.

A store is used from one thread (SQLite connections are not shared between threads here); the service writes
through `edge_container.feedback_writer.FeedbackWriter`, which owns that thread, and which keeps a store that
cannot be written (a full disk) from failing requests or flooding the log: one line per change of state, a
backoff between attempts.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Literal, Self

from modelpack.feedback import (  # noqa: F401  (re-exported)
    COLUMNS,
    FORMAT,
    JSON_COLUMNS,
    FeedbackError,
    header,
    read_export,
    stored_item,
)

Mode = Literal["text", "hash"]
MODES: tuple[Mode, ...] = ("text", "hash")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    text TEXT,
    text_hash TEXT NOT NULL,
    edge_label TEXT NOT NULL,
    edge_confidence REAL NOT NULL,
    edge_scores TEXT NOT NULL,
    cloud_label TEXT NOT NULL,
    cloud_confidence REAL NOT NULL,
    edge_model_version TEXT NOT NULL,
    cloud_model_version TEXT NOT NULL,
    reason TEXT NOT NULL,
    cloud_top TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS feedback_ts ON feedback (ts);
"""
_COLUMNS = COLUMNS


def _add_new_columns(db: sqlite3.Connection) -> None:
    """Columns newer than a store made by an older edge: added in place, with their empty value for the rows
    it already holds (SQLite's ADD COLUMN: no copy of the table)."""
    present = {row[1] for row in db.execute("PRAGMA table_info(feedback)")}
    for column, empty in JSON_COLUMNS.items():
        if column not in present:
            db.execute(f"ALTER TABLE feedback ADD COLUMN {column} TEXT NOT NULL DEFAULT '{empty}'")


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    """One escalated text and both tiers' answers. `edge_scores` holds the edge's routing scores and its
    top probabilities ({"max_prob": .., "top": [[label, p], ...]}), enough to re-fit a threshold."""

    text: str
    edge_label: str
    edge_confidence: float
    edge_scores: dict[str, Any]
    cloud_label: str
    cloud_confidence: float
    edge_model_version: str
    cloud_model_version: str
    reason: str  # why it went up (low_confidence, forced_cloud, ...)
    ts: float = 0.0  # seconds since the epoch; 0 means "now" when recorded
    cloud_top: tuple[tuple[str, float], ...] = ()  # the cloud's best answers, (label, probability), as it replied


@dataclass(frozen=True, slots=True)
class StoreStats:
    rows: int
    bytes: int
    oldest_ts: float | None
    newest_ts: float | None
    last_id: int


class FeedbackStore:
    def __init__(self, connection: sqlite3.Connection, path: Path, *, mode: Mode, max_bytes: int,
                 max_age_s: float, prune_every: int, clock: Callable[[], float]) -> None:
        self._db, self.path, self.mode = connection, path, mode
        self.max_bytes, self.max_age_s, self.prune_every = max_bytes, max_age_s, prune_every
        self._clock = clock
        self._writes = 0
        self._key = self._hash_key()

    @classmethod
    def open(cls, path: Path | str, *, mode: Mode = "text", max_bytes: int = 64 * 2**20,
             max_age_s: float = 30 * 86400, prune_every: int = 100,
             clock: Callable[[], float] = time.time) -> FeedbackStore:
        """Open (creating if needed) the store at `path`. A store remembers its mode: opening a hash-only store
        as `text` (or the reverse) is refused, so texts never start appearing in a store promised to hold none."""
        if mode not in MODES:
            raise FeedbackError(f"feedback mode must be one of {', '.join(MODES)}, not {mode!r}")
        if max_bytes < 64 * 1024 or max_age_s <= 0 or prune_every < 1:
            raise FeedbackError("feedback bounds: max_bytes >= 64 KiB, max_age_s > 0, prune_every >= 1")
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, timeout=5.0, isolation_level=None)  # autocommit; explicit transactions
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only takes effect on a new file, before any table
            if db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
                raise FeedbackError(f"{path}: SQLite cannot use WAL here (a network file system?)")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            _add_new_columns(db)
        except sqlite3.DatabaseError as exc:
            raise FeedbackError(f"{path}: not a usable feedback store ({exc})") from exc
        store = cls(db, path, mode=mode, max_bytes=max_bytes, max_age_s=max_age_s, prune_every=prune_every,
                    clock=clock)
        store._check_mode()
        return store

    @classmethod
    def open_existing(cls, path: Path | str) -> FeedbackStore:
        """Open a store that exists, in the mode it was created with (for export and inspection)."""
        try:
            with sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True) as db:
                row = db.execute("SELECT value FROM meta WHERE key = 'mode'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise FeedbackError(f"{path}: not a usable feedback store ({exc})") from None
        mode = row[0] if row is not None else "text"
        if mode not in MODES:
            raise FeedbackError(f"{path}: unknown feedback mode {mode!r}")
        return cls.open(path, mode=mode)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writing

    def record(self, records: Sequence[FeedbackRecord]) -> int:
        """Store `records` in one transaction; returns how many. Once it returns they survive a crash."""
        if not records:
            return 0
        now = self._clock()
        rows = [self._row(r, now) for r in records]
        placeholders = ", ".join("?" * len(_COLUMNS))
        with self._transaction():
            self._db.executemany(f"INSERT INTO feedback ({', '.join(_COLUMNS)}) VALUES ({placeholders})", rows)
        self._writes += 1
        if self._writes % self.prune_every == 0:
            self.prune()
        return len(rows)

    def prune(self) -> int:
        """Delete rows older than `max_age_s`, then the oldest until the pages in use fit `max_bytes`; give the
        freed pages back to the file system. Returns the rows deleted."""
        deleted = 0
        with self._transaction():
            deleted += self._db.execute("DELETE FROM feedback WHERE ts < ?",
                                        (self._clock() - self.max_age_s,)).rowcount
            while self._used_bytes() > self.max_bytes:
                rows = self._db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
                if rows == 0:
                    break
                cut = max(1, rows // 10)  # a tenth at a time: few passes, never the whole store for one row
                deleted += self._db.execute(
                    "DELETE FROM feedback WHERE id IN (SELECT id FROM feedback ORDER BY id LIMIT ?)", (cut,)
                ).rowcount
        self._db.execute("PRAGMA incremental_vacuum")
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return deleted

    # ------------------------------------------------------------------ reading

    def stats(self) -> StoreStats:
        rows, oldest, newest, last = self._db.execute(
            "SELECT COUNT(*), MIN(ts), MAX(ts), COALESCE(MAX(id), 0) FROM feedback").fetchone()
        return StoreStats(rows, self._used_bytes(), oldest, newest, last)

    def records(self, *, after_id: int = 0, limit: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
        """(id, record as a JSON-ready dict) in id order, after `after_id`."""
        query = f"SELECT id, {', '.join(_COLUMNS)} FROM feedback WHERE id > ? ORDER BY id"
        params: tuple[Any, ...] = (after_id,)
        if limit is not None:
            query += " LIMIT ?"
            params += (limit,)
        for row in self._db.execute(query, params):
            yield row[0], stored_item(dict(zip(_COLUMNS, row[1:], strict=True)))

    def export(self, out: IO[str], *, after_id: int = 0, limit: int | None = None) -> int:
        """Write the records after `after_id` to `out` as JSON Lines (a header line naming the format and the
        mode first); returns the last id written (`after_id` when none)."""
        out.write(header(self.mode) + "\n")
        last = after_id
        for last, item in self.records(after_id=after_id, limit=limit):
            out.write(json.dumps(item, ensure_ascii=False) + "\n")
        return last

    # ------------------------------------------------------------------ helpers

    def shipped_id(self) -> int:
        """The last id shipped to S3 (0: none yet)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'shipped_id'").fetchone()
        return int(row[0]) if row is not None else 0

    def mark_shipped(self, last_id: int) -> None:
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('shipped_id', ?)", (str(last_id),))

    def _row(self, record: FeedbackRecord, now: float) -> tuple[Any, ...]:
        digest = hmac.new(self._key, record.text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
        values = asdict(record)
        values.update(ts=record.ts or now, text=record.text if self.mode == "text" else None, text_hash=digest,
                      edge_scores=json.dumps(record.edge_scores, separators=(",", ":")),
                      cloud_top=json.dumps([[label, p] for label, p in record.cloud_top], separators=(",", ":")))
        return tuple(values[c] for c in _COLUMNS)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def _used_bytes(self) -> int:
        page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * page_size)

    def _hash_key(self) -> bytes:
        with self._transaction():
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('hash_key', ?)", (secrets.token_hex(32),))
        return bytes.fromhex(self._db.execute("SELECT value FROM meta WHERE key = 'hash_key'").fetchone()[0])

    def _check_mode(self) -> None:
        with self._transaction():
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('mode', ?)", (self.mode,))
        stored = self._db.execute("SELECT value FROM meta WHERE key = 'mode'").fetchone()[0]
        if stored != self.mode:
            self.close()
            raise FeedbackError(f"{self.path} is a {stored!r}-mode feedback store; it cannot be opened as {self.mode!r}")


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): a writer takes the lock up front, never half-way."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is not None:
            self._rollback()
            return
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error:  # a full disk can fail the commit itself: leave no transaction open behind it
            self._rollback()
            raise

    def _rollback(self) -> None:
        # SQLite may have rolled back already (SQLITE_FULL, SQLITE_IOERR); a failing ROLLBACK must not hide
        # the error that got here.
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
