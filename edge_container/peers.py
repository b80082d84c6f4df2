"""What one of several server processes (EDGE_PROCESSES > 1) asks its siblings, on their loopback ports.

The shared port hands each connection to whichever process the kernel picks, so the process answering an
admin call, a scrape or a readiness probe speaks for all: it asks every sibling on the sibling's own port
(`edge_container.processes`), with `x-edge-local: 1` (answer for yourself only, do not fan out again) and
a timeout, concurrently. A sibling that does not answer is reported as such, never waited for forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from edge_container.processes import Peer, read_peers

LOCAL_HEADER = "x-edge-local"  # on a fanned-out call: answer for this process only


@dataclass(frozen=True, slots=True)
class PeerReply:
    peer: Peer
    status: int | None  # None: no answer (refused, timed out)
    body: Any  # parsed JSON, the text for /metrics, or None
    error: str | None = None


class Peers:
    """The siblings of process `index` of `expected`, found in `directory`."""

    def __init__(self, directory: Path, *, index: int, expected: int, timeout_s: float = 5.0) -> None:
        self.directory, self.index, self.expected, self.timeout_s = directory, index, expected, timeout_s
        self._http: httpx.AsyncClient | None = None

    def others(self) -> list[Peer]:
        return [p for p in read_peers(self.directory) if p.index != self.index]

    async def ask(self, method: str, path: str, *, headers: Mapping[str, str] | None = None,
                  json: Any = None) -> list[PeerReply]:
        """`method path` on every sibling at once; the replies by index."""
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.timeout_s, trust_env=False)
        sent = {**(headers or {}), LOCAL_HEADER: "1"}
        return list(await asyncio.gather(*(self._one(p, method, path, sent, json) for p in self.others())))

    async def _one(self, peer: Peer, method: str, path: str, headers: dict[str, str], json: Any) -> PeerReply:
        assert self._http is not None
        try:
            response = await self._http.request(method, f"http://127.0.0.1:{peer.port}{path}", headers=headers,
                                                json=json)
        except httpx.HTTPError as exc:
            return PeerReply(peer, None, None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        if response.headers.get("content-type", "").startswith("application/json"):
            try:
                return PeerReply(peer, response.status_code, response.json())
            except ValueError:
                return PeerReply(peer, response.status_code, None, "unreadable JSON")
        return PeerReply(peer, response.status_code, response.text)

    async def all_ready(self) -> bool:
        """Every sibling is recorded and answers its own readiness probe with 200."""
        replies = await self.ask("GET", "/readyz")
        return len(replies) == self.expected - 1 and all(r.status == 200 for r in replies)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None


def merged_metrics(expositions: Mapping[int, str]) -> bytes:
    """One exposition of several processes' metrics: each sample gains a `process` label (its index), each
    family is written once. Sum over processes in the query: `sum without (process) (rate(...))`."""
    families: dict[str, Metric] = {}
    for index, text in sorted(expositions.items()):
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                merged.samples.append(sample._replace(labels={**sample.labels, "process": str(index)}))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families.values()))
    return generate_latest(registry)


class _Fixed(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families
