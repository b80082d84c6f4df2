"""Escalation: the one way from the edge to the cloud, and everything on it.

    EdgeService.predict --(the texts the policy sends up)--> Escalation.ask --> CloudClient.infer --> cloud

`ask` answers each chunk of a request's escalations with the cloud's `InferReply` or the `CloudFailure`
that says why not; it never raises for the cloud. On the way:

- the budget gate: once the cloud says the budget is spent, no call goes up until it resets;
- chunking: at most the cloud's per-call limit of texts a call (`modelpack.limits`), up to
  `CHUNKS_IN_FLIGHT` chunks of one request at a time, all within the request's deadline; one failing chunk
  falls back only its own texts;
- keys: each chunk's `Idempotency-Key` is derived from the request id, the chunk's position and its texts
  (`chunk_key`), so a retry of it, ours or the client's, is charged once;
- cloud batching (`EDGE_CLOUD_BATCH_WAIT_MS` > 0): chunks of several requests share one call. Fewer calls
  cost less (the cloud charges per call and per text) and ask less of the cloud's budget store: four
  DynamoDB round trips per call, whatever its size. The reply is split back by position; a failure is every
  member's failure. The call's deadline is its members' earliest, and its key is derived from theirs
  (`shared_key`): the edge's own retries of the call replay it; a client's retry of one request, batched
  with other company, is a new call (with batching off, the default, it replays as before);
- the one call: the client's `infer`, then its bookkeeping: call metrics, the budget the reply reports (to
  the policy, the gauges and the gate).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from edge_container.batcher import Batcher
from edge_container.cloud import CloudClient
from edge_container.errors import CloudBudgetExhausted, CloudDisabled, CloudFailure
from edge_container.metrics import Metrics
from edge_container.policies import Policy
from modelpack.cloud_api import Answer, InferReply

log = logging.getLogger("edge_container.escalation")
# Chunks of one request's escalations in flight at once: its latency is the slowest chunk's, not their sum;
# the cloud client's connection pool (EDGE_CLOUD_MAX_CONNECTIONS) bounds all requests together.
CHUNKS_IN_FLIGHT = 4
Outcome = InferReply | CloudFailure


class BudgetGate:
    """Once the cloud says the budget is spent, stop escalating until the period resets (re-checking
    every `default_block`, so a budget raised mid-day is noticed)."""

    def __init__(self, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 default_block: timedelta = timedelta(minutes=1)) -> None:
        self._clock, self._default = clock, default_block
        self.blocked_until: datetime | None = None

    def is_open(self) -> bool:
        if self.blocked_until is not None and self._clock() >= self.blocked_until:
            self.blocked_until = None
        return self.blocked_until is None

    def block(self, until: datetime | None) -> None:
        # Ask again after `default_block` at the latest, even when the reset is hours away: an operator may
        # raise the budget mid-day, and one refused escalation a minute costs nothing (a 429 charges nothing).
        recheck = self._clock() + self._default
        self.blocked_until = recheck if until is None else min(until, recheck)


@dataclass(frozen=True, slots=True)
class _Chunk:
    """One chunk of one request's escalations, as it waits for company in the cloud batcher."""

    texts: tuple[str, ...]
    edge: tuple[Answer, ...]
    request_id: str
    deadline: float
    key: str


class Escalation:
    def __init__(self, cloud: CloudClient | None, *, policy: Policy, metrics: Metrics,
                 budget: BudgetGate | None = None, batch_wait_s: float = 0.0, queue_size: int = 1024) -> None:
        """`cloud` None: every escalation falls back (`cloud_disabled`). `batch_wait_s` > 0: chunks of several
        requests share one call, each waiting at most that long for company."""
        self.cloud, self.policy, self.metrics = cloud, policy, metrics
        self.budget = budget or BudgetGate()
        self._shared: Batcher[_Chunk, Outcome] | None = None
        if cloud is not None and batch_wait_s > 0:
            self._shared = Batcher(self._call_shared, max_batch_size=cloud.max_texts, max_wait_s=batch_wait_s,
                                   queue_size=queue_size, concurrency=CHUNKS_IN_FLIGHT,
                                   size=lambda chunk: len(chunk.texts))

    async def start(self) -> None:
        if self._shared is not None:
            await self._shared.start()

    async def stop(self) -> None:
        if self._shared is not None:
            await self._shared.stop()

    async def ask(self, texts: Sequence[str], edge: Sequence[Answer], request_id: str,
                  deadline: float) -> list[tuple[slice, Outcome]]:
        """The cloud's answer for each chunk of `texts` (`edge`: the edge's answers, same order), or why not.
        `deadline` is on `time.monotonic`."""
        if self.cloud is None:
            return [(slice(0, len(texts)), CloudDisabled("no cloud is configured (EDGE_CLOUD_URL)"))]
        size = self.cloud.max_texts
        parts = [slice(start, start + size) for start in range(0, len(texts), size)]
        gate = asyncio.Semaphore(CHUNKS_IN_FLIGHT)

        async def ask(part: slice) -> tuple[slice, Outcome]:
            async with gate:
                chunk = tuple(texts[part])
                try:
                    return part, await self._chunk(chunk, tuple(edge[part]), request_id, deadline, part.start)
                except CloudFailure as failure:
                    return part, failure

        if len(parts) == 1:  # the usual case: no task to spawn
            return [await ask(parts[0])]
        async with asyncio.TaskGroup() as group:  # a bug in one chunk cancels the others, not leaks them
            tasks = [group.create_task(ask(part)) for part in parts]
        return [task.result() for task in tasks]

    async def _chunk(self, texts: tuple[str, ...], edge: tuple[Answer, ...], request_id: str, deadline: float,
                     start: int) -> InferReply:
        if not self.budget.is_open():  # checked per chunk: an earlier chunk's 429 stops the later ones
            raise CloudBudgetExhausted("the cloud budget is spent", resets_at=self.budget.blocked_until)
        chunk = _Chunk(texts, edge, request_id, deadline, chunk_key(request_id, texts, start=start))
        if self._shared is None:
            return await self._call(chunk.texts, chunk.edge, request_id, deadline, chunk.key)
        outcome = await self._shared.submit(chunk)  # with other requests' escalations, in one call
        if isinstance(outcome, CloudFailure):
            raise outcome
        return outcome

    async def _call_shared(self, chunks: Sequence[_Chunk]) -> list[Outcome]:
        """One call for all `chunks`; never raises for a cloud failure (the batcher would rerun each)."""
        first = chunks[0]
        if len(chunks) == 1:
            try:
                return [await self._call(first.texts, first.edge, first.request_id, first.deadline,
                                         first.key)]
            except CloudFailure as failure:
                return [failure]
        ids = [chunk.request_id for chunk in chunks]
        # The call goes up under its first member's request id: this line leads the others' ids to it.
        log.info("cloud call for requests %s sent as request %s", ", ".join(ids), first.request_id,
                 extra={"request_id": first.request_id, "batched_request_ids": ids})
        try:
            reply = await self._call([t for chunk in chunks for t in chunk.texts],
                                     [a for chunk in chunks for a in chunk.edge], first.request_id,
                                     min(chunk.deadline for chunk in chunks),
                                     shared_key(chunk.key for chunk in chunks))
        except CloudFailure as failure:
            return [failure] * len(chunks)
        return [*split(reply, [len(chunk.texts) for chunk in chunks])]

    async def _call(self, texts: Sequence[str], edge: Sequence[Answer], request_id: str, deadline: float,
                    key: str) -> InferReply:
        """One cloud call, with its metrics and what its reply says of the budget."""
        assert self.cloud is not None
        started = time.perf_counter()
        try:
            reply = await self.cloud.infer(texts, idempotency_key=key, deadline=deadline,
                                           request_id=request_id, edge=edge)
        except CloudBudgetExhausted as exc:
            self._spent(exc.resets_at)
            self.metrics.cloud_calls.labels(exc.reason).inc()
            raise
        except CloudFailure as exc:
            self.metrics.cloud_calls.labels(exc.reason).inc()
            raise
        finally:
            self.metrics.stage["cloud"].observe(time.perf_counter() - started)
        self.metrics.cloud_calls.labels("ok").inc()
        budget = reply.budget
        if budget is not None:
            self.policy.observe_budget(budget.remaining, budget.resets_at, cost=reply.cost,
                                       n_texts=len(texts))
            self.metrics.budget_remaining.set(budget.remaining)
            self.metrics.budget_limit.set(budget.limit)
            if budget.remaining <= 0:  # the next call would be refused: do not spend it
                self.budget.block(budget.resets_at)
        return reply

    def _spent(self, resets_at: datetime | None) -> None:
        """The cloud refused a call for budget (429): nothing goes up until `resets_at` (or the re-check)."""
        self.budget.block(resets_at)
        self.policy.observe_budget(0, resets_at, cost=0, n_texts=0)
        self.metrics.budget_remaining.set(0)


def chunk_key(request_id: str, texts: Sequence[str], *, start: int = 0) -> str:
    """The same request (id and escalated texts) always gets the same key: a client's retry of it is
    replayed by the cloud, not charged again; a different set of texts is different work. A chunk's key
    also names where it starts among the request's escalations: two chunks of identical texts are two
    calls, and one key for both would be answered once and refused (in progress) or replayed the other."""
    digest = hashlib.sha256(f"{request_id}\x1e{start}".encode(errors="surrogatepass"))
    for text in texts:
        digest.update(b"\x1f" + text.encode(errors="surrogatepass"))  # a lone surrogate must not crash a key
    return f"edge-{digest.hexdigest()[:48]}"


def shared_key(keys: Iterable[str]) -> str:
    """The key of one call carrying several chunks: derived from theirs, in order (the same company in the
    same order is the same call; the edge's own retries of it replay it)."""
    digest = hashlib.sha256("\x1f".join(keys).encode())
    return f"edge-b-{digest.hexdigest()[:48]}"


def split(reply: InferReply, sizes: Sequence[int]) -> list[InferReply]:
    """Each member's part of a shared reply: its own results, the call's cost and budget on every part."""
    parts, start = [], 0
    for n in sizes:
        parts.append(dataclasses.replace(reply, results=reply.results[start:start + n]))
        start += n
    return parts
