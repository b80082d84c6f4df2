import asyncio
from collections.abc import Sequence

import pytest

from edge_container.batcher import Batcher, BatchInfo
from edge_container.errors import NotReady, Overloaded


class Recorder:
    """A handler that doubles numbers, slowly, and records the batches and the concurrency it saw."""

    def __init__(self, delay_s: float = 0.005) -> None:
        self.delay_s, self.running, self.max_running = delay_s, 0, 0
        self.batches: list[list[int]] = []

    async def __call__(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        await asyncio.sleep(self.delay_s)
        self.running -= 1
        return [2 * i for i in items]


def test_many_concurrent_callers_each_get_their_own_answer_in_bounded_batches() -> None:
    async def main() -> None:
        handler = Recorder()
        infos: list[BatchInfo] = []
        batcher = Batcher(handler, max_batch_size=8, queue_size=1000, concurrency=2, observer=infos.append)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(500)))
        await batcher.stop()
        assert results == [2 * i for i in range(500)]
        assert sorted(i for batch in handler.batches for i in batch) == list(range(500))
        assert max(len(b) for b in handler.batches) == 8  # under load, batches fill up
        assert len(handler.batches) < 500 / 4
        assert handler.max_running == 2  # never more batches at once than workers
        assert sum(info.size for info in infos) == 500 and all(w >= 0 for i in infos for w in i.queue_waits_s)

    asyncio.run(main())


def test_a_lone_request_is_not_held_back_without_max_wait() -> None:
    async def main() -> None:
        handler = Recorder(delay_s=0)
        batcher = Batcher(handler, max_batch_size=32, max_wait_s=0.0, concurrency=1)
        await batcher.start()
        start = asyncio.get_running_loop().time()
        assert await batcher.submit(21) == 42
        assert asyncio.get_running_loop().time() - start < 0.05
        await batcher.stop()

    asyncio.run(main())


def test_max_wait_collects_requests_that_arrive_within_it() -> None:
    async def main() -> None:
        handler = Recorder(delay_s=0)
        batcher = Batcher(handler, max_batch_size=32, max_wait_s=0.2, concurrency=1)
        await batcher.start()

        async def later(i: int) -> int:
            await asyncio.sleep(0.02 * i)
            return await batcher.submit(i)

        assert await asyncio.gather(*(later(i) for i in range(4))) == [0, 2, 4, 6]
        await batcher.stop()
        assert handler.batches == [[0, 1, 2, 3]]

    asyncio.run(main())


def test_item_sizes_count_towards_the_batch_limit_and_order_is_kept() -> None:
    async def main() -> None:
        seen: list[list[str]] = []

        async def handler(items: Sequence[str]) -> list[int]:
            seen.append(list(items))
            await asyncio.sleep(0.01)
            return [len(i) for i in items]

        batcher = Batcher(handler, max_batch_size=5, concurrency=1, size=len)
        await batcher.start()
        items = ["aaa", "bb", "cccc", "d", "eeeee", "ff"]
        assert await asyncio.gather(*(batcher.submit(i) for i in items)) == [3, 2, 4, 1, 5, 2]
        await batcher.stop()
        assert all(sum(map(len, batch)) <= 5 for batch in seen)
        assert [i for batch in seen for i in batch] == items

    asyncio.run(main())


def test_a_full_queue_refuses_at_once_with_retry_after() -> None:
    async def main() -> None:
        gate = asyncio.Event()

        async def blocked(items: Sequence[int]) -> list[int]:
            await gate.wait()
            return list(items)

        batcher = Batcher(blocked, max_batch_size=1, queue_size=3, concurrency=1)
        await batcher.start()
        accepted = [asyncio.create_task(batcher.submit(0))]
        await asyncio.sleep(0.01)  # 0 is running: the queue is empty again
        accepted += [asyncio.create_task(batcher.submit(i)) for i in range(1, 4)]
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded) as info:
            await batcher.submit(99)
        assert info.value.status == 503 and info.value.headers() == {"Retry-After": "1"}
        gate.set()
        assert await asyncio.gather(*accepted) == [0, 1, 2, 3]
        await batcher.stop()

    asyncio.run(main())


def test_a_failing_handler_fails_its_batch_only() -> None:
    async def main() -> None:
        async def handler(items: Sequence[int]) -> list[int]:
            if 13 in items:
                raise ValueError("unlucky")
            return list(items)

        batcher = Batcher(handler, max_batch_size=1, concurrency=1)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in (12, 13, 14)), return_exceptions=True)
        await batcher.stop()
        assert results[0] == 12 and isinstance(results[1], ValueError) and results[2] == 14

    asyncio.run(main())


def test_cancelled_callers_are_skipped() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        handler_items: list[int] = []

        async def handler(items: Sequence[int]) -> list[int]:
            handler_items.extend(items)
            await gate.wait()
            return list(items)

        batcher = Batcher(handler, max_batch_size=4, concurrency=1)
        await batcher.start()
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.01)  # 0 is running; 1 and 2 queue behind it
        gone, kept = asyncio.create_task(batcher.submit(1)), asyncio.create_task(batcher.submit(2))
        await asyncio.sleep(0.01)
        gone.cancel()
        gate.set()
        assert await first == 0 and await kept == 2
        await batcher.stop()
        assert handler_items == [0, 2]

    asyncio.run(main())


def test_stop_lets_running_batches_finish_and_refuses_new_work() -> None:
    async def main() -> None:
        handler = Recorder(delay_s=0.05)
        batcher = Batcher(handler, max_batch_size=2, concurrency=1)
        with pytest.raises(NotReady):
            await batcher.submit(1)  # not started
        await batcher.start()
        running = asyncio.create_task(batcher.submit(5))
        await asyncio.sleep(0.01)
        await batcher.stop()
        assert await running == 10
        with pytest.raises(NotReady):
            await batcher.submit(1)

    asyncio.run(main())
