"""The joint-inference service: edge model through the batcher, a routing policy, the cloud for the rest.

Graceful degradation is the rule here: whatever the cloud does (slow, down, out of budget, circuit open,
no time left), every text gets an answer; an escalation the cloud did not answer carries the edge's label
with `source="edge_fallback"` and the reason. Only the edge's own failures (queue full, no model) fail a
request. What goes up goes through `edge_container.escalation` (budget gate, chunks, keys, cloud batching,
the call); this module decides what goes up and puts the answers back.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Literal

import numpy as np

from edge_container.auth import EscalationLimiter
from edge_container.batcher import Batcher, BatchInfo
from edge_container.errors import CloudFailure, RateLimited
from edge_container.escalation import Escalation
from edge_container.feedback import FeedbackRecord
from edge_container.feedback_writer import FeedbackWriter
from edge_container.logs import answers_log
from edge_container.metrics import Metrics
from edge_container.pacing import PRIORITIES, Priority
from edge_container.policies import Policy
from edge_container.reload import ModelManager
from edge_container.runtime import EdgeModel
from modelpack.cloud_api import Answer
from modelpack.scores import SCORES

Route = Literal["auto", "edge", "cloud"]
EDGE_OOS = "out_of_scope"  # the reason of an `oos` the edge answers itself (the manifest's lowest band)
PACED = "paced"  # the fallback reason of an escalation a pacing policy held back to make the budget last
ROUTES: tuple[Route, ...] = ("auto", "edge", "cloud")


@dataclass(frozen=True, slots=True)
class Result:
    label: str
    confidence: float
    source: Literal["edge", "cloud", "edge_fallback"]
    reason: str
    edge: Answer  # the edge model's own answer, whoever answered
    edge_model_version: str
    cloud_model_version: str | None = None
    top_k: tuple[Answer, ...] = ()  # the cloud's, when it answered


@dataclass(frozen=True, slots=True)
class Prediction:
    request_id: str
    results: tuple[Result, ...]
    latency_ms: float
    priority: Priority = "normal"


def log_answers(prediction: Prediction) -> None:
    """An escalated answer (the cloud's, or the edge's because the cloud gave none) at INFO: they are few,
    and each is an event someone may have to follow into the cloud's log. The edge's own answers, most of the
    traffic, at DEBUG (EDGE_LOG_LEVEL=debug): checked once per request, not formatted unless enabled."""
    everything = answers_log.isEnabledFor(logging.DEBUG)
    if not everything and not answers_log.isEnabledFor(logging.INFO):
        return
    request_id = prediction.request_id
    for index, result in enumerate(prediction.results):
        if result.source == "edge" and not everything:
            continue
        answers_log.log(
            logging.DEBUG if result.source == "edge" else logging.INFO,
            "request %s text %d: %s %s (%s, %.3f)", request_id, index, result.source, result.label,
            result.reason, result.confidence,
            extra={"event": "answer", "request_id": request_id, "index": index, "source": result.source,
                   "reason": result.reason, "label": result.label, "confidence": round(result.confidence, 4),
                   "model_version": result.edge_model_version, "cloud_model_version": result.cloud_model_version})


@dataclass(frozen=True, slots=True)
class EdgeRows:
    """The batcher's answer for one request: its rows of calibrated probabilities, and who made them.
    `top` and `confidence` (each row's best label index and its probability) are computed once per batch,
    in the worker thread, not per request on the event loop."""

    model: EdgeModel
    probs: np.ndarray
    top: Sequence[int]
    confidence: Sequence[float]

    def answers(self) -> list[Answer]:
        labels = self.model.labels
        return [Answer(labels[i], c) for i, c in zip(self.top, self.confidence)]


class _Answers:
    """The answers of one request as routing decides them: the edge's first, replaced text by text."""

    def __init__(self, rows: EdgeRows, keep: str) -> None:
        self.version, self.edge = rows.model.version, rows.answers()
        self.results = [Result(a.label, a.confidence, "edge", keep, a, self.version) for a in self.edge]

    def fall_back(self, indices: Sequence[int], reason: str, metrics: Metrics) -> None:
        """These escalations get the edge's answer, saying why the cloud did not give one."""
        if not indices:
            return
        metrics.fallbacks.labels(reason).inc(len(indices))
        for i in indices:
            a = self.edge[i]
            self.results[i] = Result(a.label, a.confidence, "edge_fallback", reason, a, self.version)


class EdgeService:
    def __init__(
        self,
        *,
        models: ModelManager,
        policy: Policy,
        escalation: Escalation,
        executor: Executor | None,
        metrics: Metrics,
        max_batch_size: int,
        max_wait_s: float,
        queue_size: int,
        workers: int,
        default_deadline_ms: int,
        limiter: EscalationLimiter | None = None,
        feedback: FeedbackWriter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock` is the one deadlines are on: `escalation`'s cloud client must share it (time.monotonic)."""
        self.models, self.policy, self.escalation, self.metrics = models, policy, escalation, metrics
        self.feedback = feedback
        self._recent_escalation = 0.0
        self.limiter = limiter or EscalationLimiter(rate=0.0, burst=0)
        self._executor, self._clock, self.default_deadline_ms = executor, clock, default_deadline_ms
        # Request ids: unique per process and cheap (uuid4 per request costs a urandom syscall).
        self._ids, self._id_prefix = itertools.count(1), uuid.uuid4().hex[:12]
        self._texts = {s: metrics.texts.labels(s) for s in ("edge", "cloud", "edge_fallback")}
        self._priority_texts = {p: metrics.priority_escalations.labels(p) for p in PRIORITIES}
        self.batcher: Batcher[tuple[str, ...], EdgeRows] = Batcher(
            self._run_batch, max_batch_size=max_batch_size, max_wait_s=max_wait_s, queue_size=queue_size,
            concurrency=workers, size=len, observer=self._observe_batch)
        metrics.watch_queue(lambda: self.batcher.depth)
        metrics.recent_escalation.set_function(lambda: self._recent_escalation)  # read when scraped

    async def start(self) -> None:
        await self.batcher.start()
        await self.escalation.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        await self.escalation.stop()

    async def edge(self, texts: Sequence[str]) -> EdgeRows:
        """Calibrated edge probabilities for `texts`, through the batcher; no routing."""
        return await self.batcher.submit(tuple(texts))

    async def predict(self, texts: Sequence[str], *, route: Route = "auto", deadline_ms: int | None = None,
                      request_id: str | None = None, client: str = "local",
                      priority: Priority = "normal") -> Prediction:
        """`client` names the caller's escalation allowance (`EscalationLimiter` bucket); `priority` is how
        a pacing policy treats its escalations (`edge_container.pacing`)."""
        start = time.perf_counter()
        deadline = self._clock() + (deadline_ms or self.default_deadline_ms) / 1000.0
        request_id = request_id or f"{self._id_prefix}-{next(self._ids)}"
        rows = await self.edge(texts)
        escalate, up, keep = self._route(route, rows)
        answers = _Answers(rows, keep)
        if route == "auto":
            escalate = self._edge_oos(rows, escalate, answers)
        # The usual request escalates nothing: no pacing (a pacing policy sees no demand either), no limit.
        chosen = self._limit(client, self._pace(rows, escalate, answers, priority), answers) \
            if escalate.any() else []
        if route == "auto":
            self._observe_escalation(len(chosen), len(texts))
        if chosen:
            self.metrics.escalations.labels(up).inc(len(chosen))
            self._priority_texts[priority].inc(len(chosen))
            asked = [texts[i] for i in chosen]
            edge = answers.edge
            outcomes = await self.escalation.ask(asked, [edge[i] for i in chosen], request_id, deadline)
            for part, outcome in outcomes:
                if isinstance(outcome, CloudFailure):  # degrade, never fail: the edge's answer, and why
                    answers.fall_back(chosen[part], outcome.reason, self.metrics)
                else:
                    for i, answer in zip(chosen[part], outcome.results, strict=True):
                        answers.results[i] = Result(answer.label, answer.confidence, "cloud", up, edge[i],
                                                    answers.version, outcome.model_version, answer.top_k)
            if self.feedback is not None:
                await self.feedback.write(feedback_records(texts, rows, answers.results, chosen))
        if len(answers.results) == 1:
            self._texts[answers.results[0].source].inc()
        else:
            for source, count in Counter(r.source for r in answers.results).items():
                self._texts[source].inc(count)
        prediction = Prediction(request_id, tuple(answers.results), (time.perf_counter() - start) * 1000.0, priority)
        log_answers(prediction)
        return prediction

    def _observe_escalation(self, sent: int, n: int) -> None:
        """An exponential average over the last ~1,000 auto-routed texts (`edge_recent_escalation_ratio`):
        what a fleet dashboard compares between a canary's devices and the rest."""
        keep = (1.0 - 1.0 / 1000) ** n
        self._recent_escalation = keep * self._recent_escalation + (1.0 - keep) * (sent / n)

    def _edge_oos(self, rows: EdgeRows, escalate: np.ndarray, answers: _Answers) -> np.ndarray:
        """The manifest's lowest band: the edge answers `oos` itself, and those texts never go up."""
        manifest = rows.model.manifest
        hopeless = self.policy.edge_oos(rows.probs, manifest.routing, manifest.oos_index)
        if hopeless is None:
            return escalate
        oos_label = manifest.oos_label
        assert oos_label is not None  # the manifest refuses an oos band without an oos label
        edge = answers.edge
        for i in np.flatnonzero(hopeless).tolist():
            # Confidence in the `oos` answer: the mass the edge gives to *not* its best guess.
            answers.results[i] = Result(oos_label, 1.0 - edge[i].confidence, "edge", EDGE_OOS, edge[i],
                                        answers.version)
        return escalate & ~hopeless

    def _pace(self, rows: EdgeRows, escalate: np.ndarray, answers: _Answers, priority: Priority) -> np.ndarray:
        """Only for a request that escalates something: a zero count would dilute the demand average."""
        paced = self.policy.pace(rows.probs, rows.model.manifest.routing, escalate, priority)
        answers.fall_back(np.flatnonzero(escalate & ~paced).tolist(), PACED, self.metrics)
        return paced

    def _limit(self, client: str, escalate: np.ndarray, answers: _Answers) -> list[int]:
        """The texts this client's allowance lets go up; over its share, the least confident still do."""
        chosen = np.flatnonzero(escalate).tolist()
        granted = self.limiter.take(client, len(chosen))
        if granted < len(chosen):
            chosen.sort(key=lambda i: answers.edge[i].confidence)
            chosen, limited = sorted(chosen[:granted]), chosen[granted:]
            answers.fall_back(limited, RateLimited.reason, self.metrics)
        return chosen

    def _route(self, route: Route, rows: EdgeRows) -> tuple[np.ndarray, str, str]:
        """(escalate mask, reason for escalated texts, reason for the others)."""
        n = len(rows.probs)
        if route == "edge":
            return np.zeros(n, dtype=bool), "", "forced_edge"
        if route == "cloud":
            return np.ones(n, dtype=bool), "forced_cloud", ""
        mask = self.policy.escalate(rows.probs, rows.model.manifest.routing)
        return mask, self.policy.escalate_reason, self.policy.keep_reason

    async def _run_batch(self, jobs: Sequence[tuple[str, ...]]) -> list[EdgeRows]:
        model = self.models.current  # this batch runs on this version to the end, even across a swap
        texts = [text for job in jobs for text in job]
        if self._executor is None:  # inline: the loop waits for the model, and reads the next batch's requests after
            out = model.run(texts)
        else:
            out = await asyncio.get_running_loop().run_in_executor(self._executor, model.run, texts)
        self.metrics.stage["tokenize"].observe(out.tokenize_s)
        self.metrics.stage["infer"].observe(out.infer_s)
        rows, start = [], 0
        for job in jobs:
            end = start + len(job)
            rows.append(EdgeRows(model, out.probs[start:end], out.top[start:end], out.confidence[start:end]))
            start = end
        return rows

    def _observe_batch(self, info: BatchInfo) -> None:
        self.metrics.batch_size.observe(info.size)
        for wait in info.queue_waits_s:
            self.metrics.stage["queue"].observe(wait)


def feedback_records(texts: Sequence[str], rows: EdgeRows, results: Sequence[Result],
                     chosen: Sequence[int], *, top: int = 5) -> list[FeedbackRecord]:
    """One record per escalation the cloud answered: the text, both answers, the edge's routing scores and
    top probabilities (what a later build needs to learn from it and re-fit a threshold)."""
    answered = [i for i in chosen if results[i].source == "cloud" and results[i].cloud_model_version is not None]
    if not answered:
        return []
    probs = rows.probs[answered]
    scores = {name: fn(probs) for name, fn in SCORES.items()}  # each score once, over all the rows
    tops = np.argsort(-probs, axis=1)[:, :top]
    labels = rows.model.labels
    records = []
    for row, i in enumerate(answered):
        result = results[i]
        edge_scores: dict[str, object] = {name: round(float(v[row]), 6) for name, v in scores.items()}
        edge_scores["top"] = [[labels[j], round(float(probs[row, j]), 6)] for j in tops[row]]
        records.append(FeedbackRecord(texts[i], result.edge.label, result.edge.confidence, edge_scores,
                                      result.label, result.confidence, result.edge_model_version,
                                      result.cloud_model_version or "", result.reason,
                                      cloud_top=tuple((a.label, round(a.confidence, 6)) for a in result.top_k)))
    return records
