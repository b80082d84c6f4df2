"""The service's side of the feedback store (`edge_container.feedback`): `FeedbackWriter`, the one thread
that writes it, awaited by the request whose escalations it records and never failing one; and
`FeedbackShipper`, which ships its new records to S3 (EDGE_FEEDBACK_S3_URI). Their log lines go out as
`edge_container.feedback`, the store's.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from edge_container.feedback import FeedbackError, FeedbackRecord, FeedbackStore

if TYPE_CHECKING:
    from edge_container.metrics import Metrics

log = logging.getLogger("edge_container.feedback")


# What a store's own trouble raises (a full disk, an I/O error, a file gone bad): logged without a traceback.
_STORAGE_ERRORS = (OSError, sqlite3.Error, FeedbackError)


@dataclass(slots=True)
class _Failing:
    """The store's failing spell: mutated on the writer's thread only."""

    since: str
    started: float
    error: str = ""
    failed_writes: int = 0
    lost: int = 0  # records of the writes that failed
    dropped: int = 0  # records not tried while backing off
    retry_at: float = 0.0


class FeedbackWriter:
    """The service's side of the store: records go to one dedicated thread (the store's connection lives
    there), awaited by the request that produced them, so a record is on disk before its answer leaves.

    A store that cannot be written (a full disk, an I/O error, a file gone bad) never fails a request and is
    not hammered. The first failed write makes the writer `failing` (logged once, with the error); batches
    that come while it waits are dropped without touching the disk; after `backoff_s`, doubling up to
    `max_backoff_s`, the next batch is tried on a freshly opened store; the first one written makes it
    `healthy` again (logged once, with how many records were lost). Dropped, not buffered: a memory buffer
    would hold seconds of escalations on a device and die with the process, while a full disk lasts until
    someone acts. `status()`, `edge_feedback_store_healthy`, `edge_feedback_write_errors_total` and
    `edge_feedback_records_total{outcome="ok"|"error"|"dropped"}` say what happened."""

    def __init__(self, opener: Callable[[], FeedbackStore], *, metrics: Metrics | None = None,
                 backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._opener, self._store = opener, None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="edge-feedback")
        self._metrics = metrics
        self.backoff_s, self.max_backoff_s, self._clock = backoff_s, max_backoff_s, clock
        self._failing: _Failing | None = None
        self._last_failure: dict[str, Any] | None = None
        if metrics is not None:
            metrics.feedback_store_healthy.set(1)

    async def write(self, records: Sequence[FeedbackRecord]) -> None:
        if not records:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._write, records)
        except RuntimeError:  # the writer is closed: the service is stopping; the answer still goes out
            self._count("dropped", len(records))

    def status(self) -> dict[str, Any]:
        """`healthy`, or `failing` since when, why, and what was lost so far; the last failing spell."""
        failing = self._failing
        if failing is None:
            return {"state": "healthy", "last_failure": self._last_failure}
        return {"state": "failing", "since": failing.since, "error": failing.error,
                "failed_writes": failing.failed_writes, "records_lost": failing.lost + failing.dropped,
                "retry_in_s": round(max(0.0, failing.retry_at - self._clock()), 3),
                "last_failure": self._last_failure}

    async def run(self, job: Callable[[FeedbackStore], Any]) -> Any:
        """`job(store)` on the store's own thread (the shipper's reads and watermark)."""
        def call() -> Any:
            if self._store is None:
                self._store = self._opener()
            return job(self._store)

        return await asyncio.get_running_loop().run_in_executor(self._thread, call)

    def close(self) -> None:
        self._thread.submit(self._close).result(timeout=10)
        self._thread.shutdown(wait=True)

    def _write(self, records: Sequence[FeedbackRecord]) -> None:
        n, failing, now = len(records), self._failing, self._clock()
        if failing is not None and now < failing.retry_at:
            failing.dropped += n
            self._count("dropped", n)
            return
        try:
            if self._store is None:
                self._store = self._opener()
            self._store.record(records)
        except Exception as exc:  # whatever the store raised, the request that brought the records is answered
            self._failed(exc, n, now)
            self._count("error", n)
            return
        self._count("ok", n)
        if failing is not None:
            self._recovered(failing, now)

    def _failed(self, exc: Exception, n: int, now: float) -> None:
        failing, first = self._failing, self._failing is None
        if failing is None:
            failing = self._failing = _Failing(datetime.now(UTC).isoformat(timespec="seconds"), now)
        failing.error = f"{type(exc).__name__}: {exc}"
        failing.failed_writes += 1
        failing.lost += n
        delay = min(self.backoff_s * 2 ** (failing.failed_writes - 1), self.max_backoff_s)
        failing.retry_at = now + delay
        where = self._store.path if self._store is not None else "the feedback store"  # an open error names it
        self._close()  # the retry opens the store afresh (a file replaced or repaired meanwhile)
        if self._metrics is not None:
            self._metrics.feedback_write_errors.inc()
            self._metrics.feedback_store_healthy.set(0)
        if first:
            log.error("cannot write %s (%s): %d record(s) lost; requests are answered as usual, records are "
                      "dropped until a write succeeds again, tried after %gs, doubling up to %gs", where,
                      failing.error, n, delay, self.max_backoff_s,
                      exc_info=not isinstance(exc, _STORAGE_ERRORS))  # not the store's trouble: a bug, show it
        else:
            log.debug("%s still failing (%s), next try in %gs", where, failing.error, delay)

    def _recovered(self, failing: _Failing, now: float) -> None:
        self._failing = None
        lost = failing.lost + failing.dropped
        self._last_failure = {"since": failing.since, "until": datetime.now(UTC).isoformat(timespec="seconds"),
                              "error": failing.error, "failed_writes": failing.failed_writes, "records_lost": lost}
        if self._metrics is not None:
            self._metrics.feedback_store_healthy.set(1)
        log.warning("%s takes writes again after %.0fs: %d record(s) were not stored (%d in %d failed "
                    "write(s), %d dropped in between; last error %s)", self._store.path if self._store else
                    "the feedback store", now - failing.started, lost, failing.lost, failing.failed_writes,
                    failing.dropped, failing.error)

    def _count(self, outcome: str, n: int) -> None:
        if self._metrics is not None:
            self._metrics.feedback_records.labels(outcome).inc(n)

    def _close(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            with contextlib.suppress(sqlite3.Error):
                store.close()


class FeedbackShipper:
    """Ships the store's new records to S3 every `interval_s` (EDGE_FEEDBACK_S3_URI), as JSON Lines exports at
    `<prefix>/<device>/<first id>-<last id>.jsonl`, at most `batch` records each, then moves the store's
    watermark. An upload that fails is retried next time; one that succeeded before a crash, before the
    watermark moved, is uploaded again under the same key with the same content: never lost, never doubled.
    `model_build build --feedback s3://bucket/prefix` reads them."""

    def __init__(self, writer: FeedbackWriter, s3_client: Any, *, bucket: str, prefix: str, device: str,
                 interval_s: float = 300.0, batch: int = 10_000,
                 on_result: Callable[[str, int], None] | None = None) -> None:
        self._writer, self._s3, self.bucket, self.prefix = writer, s3_client, bucket, prefix.strip("/")
        self.device, self.interval_s, self.batch = device, interval_s, batch
        self._on_result = on_result or (lambda outcome, n: None)
        self._task: Any = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="feedback-shipper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def ship_once(self) -> int:
        """Upload what is new (up to `batch` records); the number of records shipped."""
        def export(store: FeedbackStore) -> tuple[int, int, str]:
            after = store.shipped_id()
            out = io.StringIO()
            last = store.export(out, after_id=after, limit=self.batch)
            return after, last, out.getvalue()

        after, last, body = await self._writer.run(export)
        if last == after:
            return 0
        key = "/".join(p for p in (self.prefix, self.device, f"{after + 1:012d}-{last:012d}.jsonl") if p)
        await asyncio.to_thread(self._s3.put_object, Bucket=self.bucket, Key=key, Body=body.encode(),
                                ContentType="application/x-ndjson")
        await self._writer.run(lambda store: store.mark_shipped(last))
        return last - after

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                shipped = await self.ship_once()
            except Exception:
                log.warning("could not ship feedback to s3://%s/%s (retried in %gs)", self.bucket, self.prefix,
                            self.interval_s, exc_info=True)
                self._on_result("error", 0)
            else:
                if shipped:
                    self._on_result("shipped", shipped)
