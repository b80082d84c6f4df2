"""Replay the CLINC150 test split through the local stack's edge and report what the edge-cloud split bought.

    python -m infra.demo [--scenario normal|faults] [--concurrency 16] [--limit N] [--model-dir DIR]

Starts `LocalStack` (free ports), sends every test text (test + oos_test: 5,500) to the edge's
`POST /v1/predict` with bounded concurrency, sends the same texts once straight to the cloud API (the
cloud-only baseline, on the stack's own key so the tenant's budget measures the joint system alone), and
writes `reports/demo.json`, `reports/demo.md` and two PNG plots (`reports/demo_faults.*` for `faults`).

`faults` runs the same replay and, while it runs: kills the cloud process (SIGKILL), starts it again,
sets the tenant's budget to 0, then restores it. The edge must answer every request all along.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from infra.stack import LOCAL_EDGE_DEFAULTS, REPO_ROOT, LocalStack, StackError, ensure_artifact

PROG = "python -m infra.demo"
SOURCES = ("edge", "cloud", "edge_fallback")
CLOUD_BATCH = 32  # the template's MaxTextsPerCall
SHUFFLE_SEED = 0


@dataclass(frozen=True, slots=True)
class Sample:
    text: str
    gold: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """One replayed request. `ok` is False for anything but a 200 with one well-formed result."""

    index: int
    ok: bool
    at_s: float  # when the request was sent, seconds since the replay started
    latency_ms: float  # measured by the client
    status: int | None = None
    error: str | None = None
    label: str | None = None
    source: str | None = None
    reason: str | None = None
    edge_label: str | None = None
    edge_version: str | None = None
    cloud_version: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    at_s: float
    what: str
    detail: str = ""


@dataclass
class Timeline:
    started: float = field(default_factory=time.monotonic)
    events: list[Event] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.started

    def add(self, what: str, detail: str = "") -> None:
        self.events.append(Event(round(self.now(), 3), what, detail))
        print(f"  [{self.now():7.2f} s] {what}{': ' + detail if detail else ''}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data


def load_samples(data: Path, *, limit: int | None) -> list[Sample]:
    """The test split (in-scope test + oos_test), shuffled with a fixed seed (the file is grouped by
    intent; a prefix of it would be a few intents only), then cut to `limit`."""
    from model_build.data import load_dataset

    dataset = load_dataset(data)
    split = dataset.test
    samples = [Sample(text, dataset.labels[int(i)]) for text, i in zip(split.texts, split.labels, strict=True)]
    random.Random(SHUFFLE_SEED).shuffle(samples)
    return samples[:limit] if limit else samples


# --------------------------------------------------------------------------- replay


async def replay(edge_url: str, samples: Sequence[Sample], *, concurrency: int, timeline: Timeline,
                 headers: Mapping[str, str] | None = None,
                 on_outcome: Callable[[Outcome], None] | None = None, timeout_s: float = 30.0) -> list[Outcome]:
    """Every sample once through `POST /v1/predict`, `concurrency` in flight at most, with `headers` (the
    client key and the JSON content type: `LocalStack.edge_headers`). No retries: a request that fails is
    counted as failed."""
    import httpx

    outcomes: list[Outcome | None] = [None] * len(samples)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(samples)):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(timeout_s, connect=5.0)
    client = httpx.AsyncClient(base_url=edge_url, headers=headers, limits=limits, timeout=timeout)
    async with client:

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                outcome = outcomes[i] = await _predict(client, i, samples[i].text, timeline)
                if on_outcome is not None:
                    on_outcome(outcome)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [o for o in outcomes if o is not None]


async def _predict(client: Any, i: int, text: str, timeline: Timeline) -> Outcome:
    import httpx

    at = timeline.now()
    started = time.perf_counter()
    try:
        response = await client.post("/v1/predict", json={"text": text, "request_id": f"demo-{i}"})
    except httpx.HTTPError as exc:
        return Outcome(i, False, at, (time.perf_counter() - started) * 1000, error=type(exc).__name__)
    latency = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        return Outcome(i, False, at, latency, status=response.status_code, error=response.text[:200])
    try:
        result = response.json()["results"][0]
        versions = result["model_versions"]
        return Outcome(i, True, at, latency, 200, None, result["label"], result["source"], result["reason"],
                       result["edge"]["label"], versions["edge"], versions["cloud"])
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        return Outcome(i, False, at, latency, status=200, error=f"bad response: {exc}")


def cloud_only_labels(cloud_url: str, api_key: str, texts: Sequence[str]) -> tuple[list[str], str]:
    """The cloud's answer for every text, in batches straight to the cloud API: the cloud-only baseline."""
    import httpx

    labels: list[str] = []
    version = ""
    with httpx.Client(base_url=cloud_url, timeout=httpx.Timeout(120.0, connect=5.0)) as client:
        for start in range(0, len(texts), CLOUD_BATCH):
            batch = list(texts[start:start + CLOUD_BATCH])
            response = client.post("/v1/infer", json={"texts": batch}, headers={"x-api-key": api_key})
            if response.status_code != 200:
                raise StackError(f"the cloud-only pass got {response.status_code}: {response.text[:300]}")
            body = response.json()
            labels += [r["label"] for r in body["results"]]
            version = body["model_version"]
    return labels, version


# --------------------------------------------------------------------------- the fault scenario


def kind_of(outcome: Outcome) -> str:
    """`edge`, `cloud`, `edge_fallback/<reason>` or `failed`."""
    if not outcome.ok:
        return "failed"
    return f"edge_fallback/{outcome.reason}" if outcome.source == "edge_fallback" else str(outcome.source)


class Progress:
    """What the replay has answered so far: a count, and per kind of answer the latest send time."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.latest: dict[str, float] = {}

    def __call__(self, outcome: Outcome) -> None:
        self.done += 1
        kind = kind_of(outcome)
        self.latest[kind] = max(self.latest.get(kind, 0.0), outcome.at_s)
        if self.done % 500 == 0 or self.done == self.total:
            _stderr(f"  {self.done}/{self.total}")

    def seen_since(self, kind: str, since_s: float) -> bool:
        return self.latest.get(kind, -1.0) >= since_s


async def inject_faults(stack: LocalStack, timeline: Timeline, progress: Progress, budget: int,
                        *, wait_s: float = 60.0) -> None:
    """Kill the cloud at 15 % of the replay; start it again once the edge's circuit is open; wait for the
    edge to get cloud answers again; empty the budget at 55 % (or after the recovery); restore it at 80 %.
    Steps wait for the state they follow (seen in the answers), so the timeline shows each one under load;
    the caller cancels whatever is left when the replay ends."""

    async def reach(fraction: float) -> None:
        while progress.done < fraction * progress.total:
            await asyncio.sleep(0.02)

    async def observe(kind: str, since_s: float, what: str) -> None:
        deadline = time.monotonic() + wait_s
        while not progress.seen_since(kind, since_s):
            if time.monotonic() > deadline:
                timeline.add(f"no {kind} answer within {wait_s:.0f} s")
                return
            await asyncio.sleep(0.02)
        timeline.add(what, f"first {kind} answer to a request sent at >= {since_s:.2f} s")

    await reach(0.15)
    stack.kill_cloud()
    killed = timeline.now()
    timeline.add("cloud killed", "SIGKILL to the local API process")
    await observe("edge_fallback/circuit_open", killed, "edge circuit open")
    await asyncio.sleep(1.0)  # a moment of the open circuit under load
    timeline.add("cloud restarting")
    await asyncio.to_thread(stack.start_cloud)
    back = timeline.now()
    timeline.add("cloud back", "ready and warm; the edge's breaker probes it after its reset time")
    await observe("cloud", back, "edge recovered")
    await reach(0.55)
    await asyncio.to_thread(stack.set_budget, 0)
    emptied = timeline.now()
    timeline.add("budget exhausted", f"tenant {stack.tenant!r}: daily limit set to 0")
    await observe("edge_fallback/budget_exhausted", emptied, "edge stops escalating")
    await reach(0.80)
    status = await asyncio.to_thread(stack.set_budget, budget)
    timeline.add("budget restored", f"daily limit {budget}, {status['remaining']} units left")


def phases(outcomes: Sequence[Outcome], events: Sequence[Event], end_s: float) -> list[dict[str, Any]]:
    """The replay cut at each event: how the requests sent in each stretch were answered."""
    marks = [Event(0.0, "start"), *events]
    out = []
    for i, event in enumerate(marks):
        stop = marks[i + 1].at_s if i + 1 < len(marks) else end_s
        inside = [o for o in outcomes if event.at_s <= o.at_s < stop]
        out.append({"from_s": event.at_s, "to_s": round(stop, 3), "after": event.what, "requests": len(inside),
                    "answers": dict(Counter(kind_of(o) for o in inside).most_common())})
    return out


# --------------------------------------------------------------------------- report


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 100]); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return round(ordered[rank - 1], 3)


def _ratio(part: float, whole: float) -> float | None:
    return None if whole == 0 else round(part / whole, 4)


def summarise(samples: Sequence[Sample], outcomes: Sequence[Outcome], cloud_labels: Sequence[str], *,
              oos_label: str | None, pricing: tuple[int, int], spent: int, wall_s: float,
              budget: dict[str, Any]) -> dict[str, Any]:
    ok = [o for o in outcomes if o.ok]
    gold = [samples[o.index].gold for o in ok]
    n = len(ok)
    by_source = Counter(o.source for o in ok)
    escalated = [o for o in ok if o.source in ("cloud", "edge_fallback")]
    per_request, per_text = pricing
    cloud_only_cost = len(samples) * (per_request + per_text)

    def accuracy(labels: Sequence[str | None], golds: Sequence[str]) -> float | None:
        return _ratio(sum(a == g for a, g in zip(labels, golds, strict=True)), len(golds))

    def oos_recall(labels: Sequence[str | None], golds: Sequence[str]) -> float | None:
        pairs = [(a, g) for a, g in zip(labels, golds, strict=True) if g == oos_label]
        return _ratio(sum(a == g for a, g in pairs), len(pairs)) if oos_label else None

    edge_labels = [o.edge_label for o in ok]
    joint_labels = [o.label for o in ok]
    all_gold = [s.gold for s in samples]
    joint_accuracy = accuracy(joint_labels, gold)
    # What the routing alone would give: every escalated text answered by the cloud (its cloud-only answer),
    # i.e. the joint accuracy without the fallbacks the infrastructure caused.
    routed = [cloud_labels[o.index] if o.source != "edge" else o.label for o in ok]
    cloud_accuracy = accuracy(cloud_labels, all_gold)
    latencies = [o.latency_ms for o in ok]
    return {
        "requests": len(outcomes),
        "failed": len(outcomes) - n,
        "failures": dict(Counter(str(o.status or o.error) for o in outcomes if not o.ok)),
        "edge_only_accuracy": accuracy(edge_labels, gold),
        "cloud_only_accuracy": cloud_accuracy,
        "joint_accuracy": joint_accuracy,
        "joint_over_cloud": None if not cloud_accuracy or joint_accuracy is None
        else round(joint_accuracy / cloud_accuracy, 4),
        "routing_joint_accuracy": accuracy(routed, gold),
        "escalation_rate": _ratio(len(escalated), n),
        "cloud_answer_rate": _ratio(by_source["cloud"], n),
        "fallback_rate": _ratio(by_source["edge_fallback"], n),
        "answers_by_source": {s: by_source[s] for s in SOURCES},
        "fallbacks_by_reason": dict(Counter(o.reason for o in ok if o.source == "edge_fallback")),
        "oos_recall": {"edge": oos_recall(edge_labels, gold), "cloud": oos_recall(cloud_labels, all_gold),
                       "joint": oos_recall(joint_labels, gold)},
        "in_scope_accuracy": {
            "edge": accuracy(*_in_scope(edge_labels, gold, oos_label)),
            "cloud": accuracy(*_in_scope(list(cloud_labels), all_gold, oos_label)),
            "joint": accuracy(*_in_scope(joint_labels, gold, oos_label)),
        },
        "cost": spent,
        "cloud_only_cost": cloud_only_cost,
        "cost_ratio": _ratio(spent, cloud_only_cost),
        "pricing": {"units_per_call": per_request, "units_per_text": per_text},
        "budget": budget,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "latency_ms_by_source": {
            s: {"count": by_source[s],
                **{f"p{q}": percentile([o.latency_ms for o in ok if o.source == s], q) for q in (50, 95, 99)}}
            for s in SOURCES
        },
        "wall_s": round(wall_s, 2),
        "throughput_rps": round(len(outcomes) / wall_s, 1) if wall_s > 0 else None,
        "model_versions": {
            "edge": sorted({o.edge_version for o in ok if o.edge_version}),
            "cloud": sorted({o.cloud_version for o in ok if o.cloud_version}),
        },
    }


def _in_scope(labels: list[str | None], gold: list[str], oos_label: str | None) -> tuple[list[str | None], list[str]]:
    keep = [i for i, g in enumerate(gold) if g != oos_label]
    return [labels[i] for i in keep], [gold[i] for i in keep]


def plot(outcomes: Sequence[Outcome], events: Sequence[Event], out_dir: Path, stem: str = "demo") -> dict[str, str]:
    """Two PNGs: latency by source (histogram, log scale), and answers per second by source / fallback
    reason over the run, with the fault events marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ok = [o for o in outcomes if o.ok]
    files = {"latency": f"{stem}_latency_by_source.png", "timeline": f"{stem}_sources_over_time.png"}

    fig, ax = plt.subplots(figsize=(8, 4.5))
    lat = [o.latency_ms for o in ok] or [1.0]
    bins = np.logspace(np.log10(max(min(lat), 0.1)), np.log10(max(lat) * 1.01 + 0.1), 50)
    for source in SOURCES:
        values = [o.latency_ms for o in ok if o.source == source]
        if values:
            ax.hist(values, bins=bins, alpha=0.6, label=f"{source} (n={len(values)}, "
                    f"p50 {percentile(values, 50):.1f} ms, p99 {percentile(values, 99):.1f} ms)")
    ax.set_xscale("log")
    ax.set_xlabel("client-side latency (ms, log scale)")
    ax.set_ylabel("requests")
    ax.set_title("Latency by answer source")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / files["latency"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(11, 4.5))
    end = max((o.at_s for o in ok), default=1.0)
    width = max(0.25, round(end / 60, 2))  # about 60 bars, whatever the run's length
    edges = np.arange(0.0, end + width, width)
    series: dict[str, list[float]] = {"edge": [], "cloud": []}
    for o in ok:
        key = o.source if o.source != "edge_fallback" else f"fallback: {o.reason}"
        series.setdefault(str(key), [])
        series[str(key)].append(o.at_s)
    bottom = np.zeros(len(edges) - 1)
    for key, times in series.items():
        if not times:
            continue
        counts, _ = np.histogram(times, bins=edges)
        ax.bar(edges[:-1], counts / width, width=width, bottom=bottom, align="edge", label=key)
        bottom += counts / width
    top = ax.get_ylim()[1]
    for number, event in enumerate(events, start=1):  # numbered as in the report's timeline table
        ax.axvline(event.at_s, color="black", linestyle="--", linewidth=0.8)
        ax.text(event.at_s, top * (1.0 if number % 2 else 1.035), str(number), ha="center", va="bottom",
                fontsize=8)  # staggered: events seconds apart would print over each other
    ax.set_xlabel("seconds since the replay started (requests by send time)")
    ax.set_ylabel("answers per second")
    ax.set_title("Answers by source and fallback reason over time", pad=14)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(out_dir / files["timeline"], dpi=110)
    plt.close(fig)
    return files


def render_markdown(report: dict[str, Any], plots: dict[str, str]) -> str:
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.2f} %"

    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1f}"

    r = report
    lines = [
        f"# Local stack demo: `{r['scenario']}` scenario",
        "",
        f"{r['requests']} CLINC150 test texts (in-scope test + oos_test, shuffled with seed {SHUFFLE_SEED}) sent "
        f"one per request to the edge's `POST /v1/predict`, {r['config']['concurrency']} at a time, on "
        f"loopback: the serialised moto server (DynamoDB + S3), the Lambda handler behind the local API "
        f"adapter, and the edge service. Model `{r['config']['model_version']}` from "
        f"`{r['config']['model_dir']}`, published to the local bucket and read from there by both tiers.",
        "",
        f"**Failed requests: {r['failed']}**" + ("" if not r["failed"] else f" ({r['failures']})"),
        "",
        "| metric | value |",
        "|---|---|",
        f"| edge-only accuracy (the edge model's own answer) | {pct(r['edge_only_accuracy'])} |",
        f"| cloud-only accuracy (every text to the cloud API) | {pct(r['cloud_only_accuracy'])} |",
        f"| joint accuracy (what the client got) | {pct(r['joint_accuracy'])} |",
        f"| joint / cloud-only | {pct(r['joint_over_cloud'])} |",
        f"| joint accuracy of the routing alone (escalations answered by the cloud, no fallback) | "
        f"{pct(r['routing_joint_accuracy'])} |",
        f"| escalation rate (texts the edge sent up) | {pct(r['escalation_rate'])} "
        f"(the build expected {pct(r['config']['expected_escalation_rate'])}) |",
        f"| answered by the cloud / by an edge fallback | {pct(r['cloud_answer_rate'])} / {pct(r['fallback_rate'])} |",
        f"| OOS recall: edge / cloud / joint | {pct(r['oos_recall']['edge'])} / {pct(r['oos_recall']['cloud'])} / "
        f"{pct(r['oos_recall']['joint'])} |",
        f"| in-scope accuracy: edge / cloud / joint | {pct(r['in_scope_accuracy']['edge'])} / "
        f"{pct(r['in_scope_accuracy']['cloud'])} / {pct(r['in_scope_accuracy']['joint'])} |",
        f"| cost (units charged to tenant `{r['config']['tenant']}`) | {r['cost']} |",
        f"| cost of a cloud-only deployment (same requests) | {r['cloud_only_cost']} "
        f"({r['pricing']['units_per_call']} per call + {r['pricing']['units_per_text']} per text) |",
        f"| cost ratio | {pct(r['cost_ratio'])} |",
        f"| budget | limit {r['budget']['limit']}, spent {r['budget']['spent']} today, "
        f"{r['budget']['remaining']} left |",
        f"| latency p50 / p95 / p99 (client-side, all) | {ms(r['p50_ms'])} / {ms(r['p95_ms'])} / "
        f"{ms(r['p99_ms'])} ms |",
        f"| wall time, throughput | {r['wall_s']} s, {r['throughput_rps']} requests/s |",
        "",
        "## Latency by source (ms, client-side)",
        "",
        "| source | answers | p50 | p95 | p99 |",
        "|---|---|---|---|---|",
        *(f"| {s} | {v['count']} | {ms(v['p50'])} | {ms(v['p95'])} | {ms(v['p99'])} |"
          for s, v in r["latency_ms_by_source"].items()),
        "",
        f"![latency by source]({plots['latency']})",
        "",
        "## Fallbacks",
        "",
        ("No escalation fell back to the edge." if not r["fallbacks_by_reason"] else
         "| reason | texts |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in
                                                   sorted(r["fallbacks_by_reason"].items()))),
        "",
        f"![answers by source over time]({plots['timeline']})",
        "",
    ]
    if r["timeline"]:
        lines += ["## Timeline", "", "Numbered as on the plot above.", "",
                  "| # | at (s) | event | detail |", "|---|---|---|---|",
                  *(f"| {n} | {e['at_s']:.2f} | {e['what']} | {e['detail']} |"
                    for n, e in enumerate(r["timeline"], start=1)), "",
                  "How the requests sent between two events were answered (`edge`: kept by the edge; the rest "
                  "were escalations; a request is counted where it was sent, so escalations waiting in the "
                  "cloud's queue when it was killed show up as `cloud_error` just before the kill):", "", "| from (s) | to (s) | after | requests | answers |", "|---|---|---|---|---|",
                  *(f"| {p['from_s']:.2f} | {p['to_s']:.2f} | {p['after']} | {p['requests']} | "
                    + ", ".join(f"{k} {v}" for k, v in p["answers"].items()) + " |" for p in r["phases"]), ""]
    if r["notes"]:
        lines += ["## Notes", "", *(f"- {note}" for note in r["notes"]), ""]
    lines += ["Reproduce: `" + r["config"]["command"] + "`", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Run:
    """What one replay produced, before any arithmetic."""

    outcomes: list[Outcome]
    cloud_labels: list[str]
    cloud_version: str
    events: list[Event]
    wall_s: float
    spent: int  # units charged to the tenant during the replay
    budget: dict[str, Any]  # the tenant's status afterwards
    pricing: tuple[int, int]
    tenant: str


def run(args: argparse.Namespace) -> dict[str, Any]:
    from modelpack.manifest import load_manifest

    model_dir = ensure_artifact(args.model_dir, preset=args.preset, data=args.data, log=_stderr)
    manifest = load_manifest(model_dir, verify=False)
    samples = load_samples(args.data, limit=args.limit)
    # One text per request costs 1 per call + 1 per text (the template's prices): enough for every text.
    budget = args.daily_budget if args.daily_budget is not None else len(samples) * 2
    edge_env = {"EDGE_BREAKER_RESET_S": str(args.breaker_reset_s)}
    _stderr(f"{len(samples)} texts, scenario {args.scenario}, concurrency {args.concurrency}, "
            f"model {manifest.model_version}")
    result = _replay_on_a_stack(args, model_dir, samples, budget, edge_env)
    report = summarise(samples, result.outcomes, result.cloud_labels, oos_label=manifest.oos_label,
                       pricing=result.pricing, spent=result.spent, wall_s=result.wall_s, budget=result.budget)
    report = {
        "scenario": args.scenario,
        **report,
        "timeline": [asdict(e) for e in result.events],
        "phases": phases(result.outcomes, result.events, result.wall_s) if result.events else [],
        "notes": explain(report, args, manifest, result),
        "config": {
            "concurrency": args.concurrency, "limit": args.limit, "shuffle_seed": SHUFFLE_SEED,
            "model_dir": str(model_dir), "model_version": manifest.model_version,
            "cloud_version": result.cloud_version,
            "expected_escalation_rate": manifest.routing.expected_escalation_rate,
            "routing": {"score": manifest.routing.score, "threshold": manifest.routing.threshold},
            "tenant": result.tenant, "daily_budget": budget, "edge_env": {**LOCAL_EDGE_DEFAULTS, **edge_env},
            "data": str(args.data), "command": " ".join([PROG, *sys.argv[1:]]),
        },
    }
    out_dir = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = report_stem(args.scenario)
    plots = plot(result.outcomes, result.events, out_dir, stem)
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out_dir / f"{stem}.md").write_text(render_markdown(report, plots), encoding="utf-8")
    return report


def _replay_on_a_stack(args: argparse.Namespace, model_dir: Path, samples: Sequence[Sample], budget: int,
                       edge_env: dict[str, str]) -> Run:
    with LocalStack(model_dir, daily_budget=budget, work_dir=args.work_dir, edge_env=edge_env,
                    log=_stderr) as stack:
        _stderr("cloud-only pass (straight to the cloud API, the stack's own key) ...")
        started = time.monotonic()
        cloud_labels, cloud_version = cloud_only_labels(stack.cloud_url, stack.service_api_key,
                                                        [s.text for s in samples])
        _stderr(f"  {len(samples)} texts in {time.monotonic() - started:.1f} s")
        before = stack.budget()
        _stderr(f"replaying through the edge ({stack.edge_url}) ...")
        timeline = Timeline()
        progress = Progress(len(samples))

        async def main() -> list[Outcome]:
            faults = None
            if args.scenario == "faults":
                faults = asyncio.create_task(inject_faults(stack, timeline, progress, budget))
            outcomes = await replay(stack.edge_url, samples, concurrency=args.concurrency, timeline=timeline,
                                    headers=stack.edge_headers, on_outcome=progress)
            if faults is not None:
                if not faults.done():
                    timeline.add("replay ended", "before every fault step ran: replay more texts")
                    faults.cancel()
                await asyncio.gather(faults, return_exceptions=True)
            return outcomes

        outcomes = asyncio.run(main())
        wall = timeline.now()
        after = stack.budget()
        return Run(outcomes, cloud_labels, cloud_version, timeline.events, wall, after["spent"] - before["spent"],
                   after, stack.pricing, stack.tenant)


def explain(report: dict[str, Any], args: argparse.Namespace, manifest: Any, result: Run) -> list[str]:
    """The report's notes: what a reader would otherwise misread."""
    notes = []
    if args.scenario == "normal" and "budget_exhausted" in report["fallbacks_by_reason"]:
        notes.append("the tenant's budget ran out during the run: escalations after that were answered by "
                     "the edge (budget_exhausted); raise it with --daily-budget")
    restored = next((e.at_s for e in result.events if e.what == "budget restored"), None)
    if restored is not None:
        after = Counter(kind_of(o) for o in result.outcomes if o.at_s >= restored and o.source != "edge")
        if after and "cloud" not in after:
            notes.append(
                "after the budget was restored, the edge kept answering its escalations itself "
                f"({dict(after)}): its budget gate honours the cloud's `resets_at` (the next UTC midnight) and "
                "does not ask the cloud again before then. Restarting the edge re-opens it.")
    cloud_p50 = report["latency_ms_by_source"]["cloud"]["p50"]
    if cloud_p50 is not None and cloud_p50 > 200:
        notes.append(
            f"cloud answers took {cloud_p50:.0f} ms at the median: that is the local stand-in's queue, not the "
            "model. The local API runs one invocation at a time (one Lambda execution environment) over a "
            f"moto server that serves one request at a time, ~15-20 calls/s here, and {args.concurrency} "
            f"clients escalating {100 * (report['escalation_rate'] or 0):.0f} % of their texts keep it full; in "
            "AWS, Lambda runs invocations side by side. Fewer clients (--concurrency 4) show the per-call "
            "latency instead.")
    routed, cloud = report["routing_joint_accuracy"], report["cloud_only_accuracy"]
    target = manifest.routing.target_joint_over_teacher
    if routed and cloud and routed / cloud < target:
        notes.append(
            f"the routing alone reaches {100 * routed / cloud:.2f} % of cloud-only accuracy on this split, below "
            f"the build's target of {100 * target:.1f} %: the threshold was fit on the validation split (the "
            "artifact's metrics.json, routing.joint_over_teacher, has the build's own test-split figure)")
    return notes


def report_stem(scenario: str) -> str:
    """demo.json / demo.md for the normal run; the fault run writes beside it, not over it."""
    return "demo" if scenario == "normal" else f"demo_{scenario}"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    from model_build.data import DATA_ENV_VAR, DEFAULT_DATA_PATH

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=["normal", "faults"], default="normal")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="replay only the first N (shuffled) texts")
    parser.add_argument("--model-dir", type=Path, help="artifact folder (default: artifacts/latest, built if missing)")
    parser.add_argument("--preset", choices=["full", "fast", "quick"], default=os.environ.get("PRESET") or "fast",
                        help="preset of the build when artifacts/latest is missing (default: $PRESET or full)")
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get(DATA_ENV_VAR) or REPO_ROOT / DEFAULT_DATA_PATH),
                        help="CLINC150 data_full.json (default: $MODEL_BUILD_DATA or data/clinc150/data_full.json)")
    parser.add_argument("--daily-budget", type=int, default=None,
                        help="the tenant's budget (default: enough for every request to escalate)")
    parser.add_argument("--breaker-reset-s", type=float, default=3.0,
                        help="EDGE_BREAKER_RESET_S for this run (default %(default)s: recovery shows in a short run)")
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "reports")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="the stack's logs and caches (default: a temporary folder, removed afterwards, so "
                        "demos can run side by side)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.concurrency < 1 or (args.limit is not None and args.limit < 1):
        print(f"{PROG}: error: --concurrency and --limit must be >= 1", file=sys.stderr)
        return 2
    try:
        report = run(args)
    except StackError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    summary = {k: report[k] for k in ("requests", "failed", "edge_only_accuracy", "cloud_only_accuracy",
                                      "joint_accuracy", "escalation_rate", "cost", "cloud_only_cost",
                                      "p50_ms", "p99_ms", "fallbacks_by_reason")}
    print(json.dumps(summary, indent=2))
    print(f"report: {args.out_dir / (report_stem(args.scenario) + '.md')}", file=sys.stderr)
    return 0 if report["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
