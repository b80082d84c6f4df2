"""Escalations of several requests in one cloud call (EDGE_CLOUD_BATCH_WAIT_MS > 0).

Each request's escalated texts are a job; a job waits at most the batch wait for others, and one call
carries up to the cloud's per-call limit of texts (`modelpack.limits`). Fewer calls cost less (the cloud
charges per call and per text) and ask less of the cloud's budget store: four DynamoDB round trips per call,
whatever its size. The reply is split back by position; a failure is every member's failure. The call's
deadline is its members' earliest, and its Idempotency-Key is derived from theirs: the edge's own retries
of the call replay it; a client's retry of one request, batched with other company, is a new call (with
batching off, the default, a client's retry with the same `request_id` replays as before).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from edge_container.batcher import Batcher
from edge_container.cloud import CloudReply
from edge_container.errors import CloudFailure
from modelpack.cloud_api import Answer, InferReply

log = logging.getLogger("edge_container.cloud_batch")
Call = Callable[[list[str], list[Answer], str, float, str], Awaitable[CloudReply]]


@dataclass(frozen=True, slots=True)
class Job:
    texts: tuple[str, ...]
    edge: tuple[Answer, ...]
    request_id: str
    deadline: float
    key: str


class CloudBatcher:
    def __init__(self, call: Call, *, max_texts: int, wait_s: float, concurrency: int = 4,
                 queue_size: int = 1024) -> None:
        """`call(texts, edge, request_id, deadline, key)` makes one cloud call (raising `CloudFailure`)."""
        self._call = call
        self._batcher: Batcher[Job, CloudReply | CloudFailure] = Batcher(
            self._run, max_batch_size=max_texts, max_wait_s=wait_s, queue_size=queue_size,
            concurrency=concurrency, size=lambda job: len(job.texts))

    async def start(self) -> None:
        await self._batcher.start()

    async def stop(self) -> None:
        await self._batcher.stop()

    async def ask(self, job: Job) -> CloudReply:
        outcome = await self._batcher.submit(job)
        if isinstance(outcome, CloudFailure):
            raise outcome
        return outcome

    async def _run(self, jobs: Sequence[Job]) -> list[CloudReply | CloudFailure]:
        """One call for all `jobs`; never raises for a cloud failure (the batcher would re-run job by job)."""
        if len(jobs) == 1:
            job = jobs[0]
            try:
                return [await self._call(list(job.texts), list(job.edge), job.request_id, job.deadline, job.key)]
            except CloudFailure as failure:
                return [failure]
        texts = [t for job in jobs for t in job.texts]
        edge = [a for job in jobs for a in job.edge]
        digest = hashlib.sha256("\x1f".join(job.key for job in jobs).encode()).hexdigest()[:48]
        # The call goes up under its first member's request id: this line leads the others' ids to it.
        log.info("cloud call for requests %s sent as request %s", ", ".join(job.request_id for job in jobs),
                 jobs[0].request_id, extra={"request_id": jobs[0].request_id,
                                            "batched_request_ids": [job.request_id for job in jobs]})
        try:
            reply = await self._call(texts, edge, jobs[0].request_id, min(job.deadline for job in jobs),
                                     f"edge-b-{digest}")
        except CloudFailure as failure:
            return [failure] * len(jobs)
        return split(reply, [len(job.texts) for job in jobs])


def split(reply: CloudReply, sizes: Sequence[int]) -> list[CloudReply | CloudFailure]:
    """Each member's part of a shared reply (the call's cost and budget on every part)."""
    parts: list[CloudReply | CloudFailure] = []
    start = 0
    for n in sizes:
        whole = reply.reply
        part = InferReply(whole.results[start:start + n], whole.model_version, whole.cost, whole.budget,
                          whole.request_id, whole.model_status, whole.degraded_reason, whole.usage)
        parts.append(CloudReply(part, reply.attempts))
        start += n
    return parts
