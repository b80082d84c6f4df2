"""A generic dynamic batcher: callers submit items, a handler runs them in batches. It knows nothing of models.

Bounded: a full queue raises `Overloaded` at once (the caller answers 503 + Retry-After) instead of
letting latency grow without limit. At most `concurrency` batches run at a time (one per interpreter);
while they run, new items queue up, and the next batch takes everything queued up to `max_batch_size`.
So under load batches grow by themselves, and a lone request never waits for company unless
`max_wait_s` > 0 asks it to (it then waits at most that long after it was queued).
When a batch fails, each of its jobs is run again alone: only the jobs that fail by themselves fail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from edge_container.errors import NotReady, Overloaded

T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True)
class _Job(Generic[T, R]):
    item: T
    size: int
    future: asyncio.Future[R]
    enqueued: float


@dataclass(frozen=True, slots=True)
class BatchInfo:
    size: int  # sum of the items' sizes
    jobs: int
    queue_waits_s: tuple[float, ...]  # per job: enqueue -> dispatch


class Batcher(Generic[T, R]):
    def __init__(
        self,
        handler: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        *,
        max_batch_size: int,
        max_wait_s: float = 0.0,
        queue_size: int = 256,
        concurrency: int = 1,
        size: Callable[[T], int] = lambda item: 1,
        observer: Callable[[BatchInfo], None] | None = None,
        retry_after_s: int = 1,
    ) -> None:
        self._handler, self._size, self._observer = handler, size, observer
        self.max_batch_size, self.max_wait_s = max_batch_size, max_wait_s
        self.queue_size, self.concurrency, self.retry_after_s = queue_size, concurrency, retry_after_s
        self._queue: asyncio.Queue[_Job[T, R]] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._idle: set[asyncio.Task[None] | None] = set()
        self._stopping = False

    @property
    def running(self) -> bool:
        return bool(self._workers) and not self._stopping

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        self._queue, self._stopping = asyncio.Queue(self.queue_size), False
        # One worker coroutine per concurrent batch (per interpreter): no task is created per batch.
        self._workers = [asyncio.create_task(self._worker(), name=f"batcher-{i}") for i in range(self.concurrency)]

    async def stop(self, *, drain_s: float = 5.0) -> None:
        """Stop taking work; let running batches finish (up to `drain_s`); fail what is still queued."""
        if not self._workers or self._queue is None:
            return
        self._stopping = True
        for task in list(self._idle):
            if task is not None:
                task.cancel()  # idle workers only: a busy one finishes its batch, then sees `_stopping`
        _, late = await asyncio.wait(self._workers, timeout=drain_s)
        for task in late:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(NotReady("the service is shutting down"))
        self._workers = []

    async def submit(self, item: T) -> R:
        if self._queue is None or not self.running:
            raise NotReady("the batcher is not running")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Job(item, self._size(item), future, time.perf_counter()))
        except asyncio.QueueFull:
            raise Overloaded(f"the queue is full ({self.queue_size} requests)",
                             retry_after_s=self.retry_after_s) from None
        return await future

    async def _worker(self) -> None:
        assert self._queue is not None
        queue, me, carry = self._queue, asyncio.current_task(), None
        while not self._stopping:
            if carry is None:
                self._idle.add(me)
                try:
                    first = await queue.get()  # while this worker ran its last batch, the queue filled up
                finally:
                    self._idle.discard(me)
            else:
                first, carry = carry, None
            batch, size = [first], first.size
            until = first.enqueued + self.max_wait_s
            while size < self.max_batch_size:
                try:
                    job = queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = until - time.perf_counter()
                    if left <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(queue.get(), left)
                    except TimeoutError:
                        break
                if job.future.done():  # its caller went away (cancelled): skip the work
                    continue
                if size + job.size > self.max_batch_size:
                    carry = job  # starts this worker's next batch
                    break
                batch.append(job)
                size += job.size
            batch = [job for job in batch if not job.future.done()]
            if batch:
                await self._run(batch)
        if carry is not None and not carry.future.done():
            carry.future.set_exception(NotReady("the service is shutting down"))

    async def _run(self, batch: list[_Job[T, R]]) -> None:
        if self._observer is not None:
            now = time.perf_counter()
            self._observer(BatchInfo(sum(job.size for job in batch), len(batch),
                                     tuple(now - job.enqueued for job in batch)))
        try:
            results = await self._call(batch)
        except Exception as exc:  # noqa: BLE001 - one bad item must not fail the others co-batched with it
            if len(batch) == 1:
                self._fail(batch[0], exc)
                return
            # Isolate: run each job alone, so only the failing ones get their error. A failing batch is rare
            # (validation rejects what the tokenizer cannot read), so the extra calls cost little.
            for job in batch:
                if job.future.done():
                    continue
                try:
                    self._settle(job, (await self._call([job]))[0])
                except Exception as alone:  # noqa: BLE001
                    self._fail(job, alone)
            return
        for job, result in zip(batch, results):
            self._settle(job, result)

    async def _call(self, batch: list[_Job[T, R]]) -> Sequence[R]:
        results = await self._handler([job.item for job in batch])
        if len(results) != len(batch):
            raise RuntimeError(f"batch handler returned {len(results)} results for {len(batch)} items")
        return results

    @staticmethod
    def _settle(job: _Job[T, R], result: R) -> None:
        if not job.future.done():
            job.future.set_result(result)

    @staticmethod
    def _fail(job: _Job[T, R], exc: BaseException) -> None:
        if not job.future.done():
            job.future.set_exception(exc)
