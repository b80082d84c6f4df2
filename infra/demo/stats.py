"""The figures of one demo run: accuracies (edge-only, cloud-only, joint), rates, cost and latency.

    summary = summarise(samples, outcomes, cloud_labels, oos_label="oos", pricing=(1, 1), spent=1428,
                        wall_s=33.1, budget=stack.budget())

Only requests answered with a 200 count towards accuracies and latencies; the failed ones are counted
apart. Ratios are rounded to 4 places, latencies (nearest-rank percentiles) to 3.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from infra.demo.records import SOURCES, Outcome, Sample


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 100]); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return round(ordered[rank - 1], 3)


def summarise(samples: Sequence[Sample], outcomes: Sequence[Outcome], cloud_labels: Sequence[str], *,
              oos_label: str | None, pricing: tuple[int, int], spent: int, wall_s: float,
              budget: dict[str, Any]) -> dict[str, Any]:
    ok = [o for o in outcomes if o.ok]
    n = len(ok)
    by_source = Counter(o.source for o in ok)
    labels = _Labels.of(samples, ok, cloud_labels, oos_label)
    escalated = [o for o in ok if o.source in ("cloud", "edge_fallback")]
    return {
        "requests": len(outcomes),
        "failed": len(outcomes) - n,
        "failures": dict(Counter(str(o.status or o.error) for o in outcomes if not o.ok)),
        **labels.accuracies(),
        "escalation_rate": _ratio(len(escalated), n),
        "cloud_answer_rate": _ratio(by_source["cloud"], n),
        "fallback_rate": _ratio(by_source["edge_fallback"], n),
        "answers_by_source": {s: by_source[s] for s in SOURCES},
        "fallbacks_by_reason": dict(Counter(o.reason for o in ok if o.source == "edge_fallback")),
        "refused": _refused(samples, ok, oos_label),
        **labels.by_scope(),
        **_costs(len(samples), pricing, spent, budget),
        **_latencies(ok, by_source),
        "wall_s": round(wall_s, 2),
        "throughput_rps": round(len(outcomes) / wall_s, 1) if wall_s > 0 else None,
        "model_versions": {
            "edge": sorted({o.edge_version for o in ok if o.edge_version}),
            "cloud": sorted({o.cloud_version for o in ok if o.cloud_version}),
        },
    }


def _refused(samples: Sequence[Sample], ok: Sequence[Outcome], oos_label: str | None,
             examples: int = 5) -> dict[str, Any]:
    """The requests answered `oos_label` (none of the intents), by who refused them and why, with a few
    examples (text, gold label) of each."""
    if oos_label is None:
        return {}
    out: dict[str, Any] = {}
    for o in ok:
        if o.label != oos_label:
            continue
        key = f"{o.source}/{o.reason}"
        entry = out.setdefault(key, {"texts": 0, "in_scope": 0, "examples": []})
        entry["texts"] += 1
        entry["in_scope"] += samples[o.index].gold != oos_label
        if len(entry["examples"]) < examples:
            entry["examples"].append({"text": samples[o.index].text, "gold": samples[o.index].gold})
    return out


@dataclass(frozen=True)
class _Labels:
    """The answers of each tier next to the gold labels: `gold` for the answered requests, `all_gold` for
    every sample (the cloud-only pass answered all of them)."""

    edge: list[str | None]
    joint: list[str | None]
    routed: list[str | None]  # every escalated text answered by the cloud: the routing without fallbacks
    cloud: list[str | None]
    gold: list[str]
    all_gold: list[str]
    oos_label: str | None

    @classmethod
    def of(cls, samples: Sequence[Sample], ok: Sequence[Outcome], cloud_labels: Sequence[str],
           oos_label: str | None) -> _Labels:
        return cls(
            edge=[o.edge_label for o in ok],
            joint=[o.label for o in ok],
            routed=[cloud_labels[o.index] if o.source != "edge" else o.label for o in ok],
            cloud=list(cloud_labels),
            gold=[samples[o.index].gold for o in ok],
            all_gold=[s.gold for s in samples],
            oos_label=oos_label,
        )

    def accuracies(self) -> dict[str, float | None]:
        joint, cloud = _accuracy(self.joint, self.gold), _accuracy(self.cloud, self.all_gold)
        return {
            "edge_only_accuracy": _accuracy(self.edge, self.gold),
            "cloud_only_accuracy": cloud,
            "joint_accuracy": joint,
            "joint_over_cloud": None if not cloud or joint is None else round(joint / cloud, 4),
            "routing_joint_accuracy": _accuracy(self.routed, self.gold),
        }

    def by_scope(self) -> dict[str, dict[str, float | None]]:
        return {
            "oos_recall": {"edge": self._oos_recall(self.edge, self.gold),
                           "cloud": self._oos_recall(self.cloud, self.all_gold),
                           "joint": self._oos_recall(self.joint, self.gold)},
            "in_scope_accuracy": {"edge": _accuracy(*self._in_scope(self.edge, self.gold)),
                                  "cloud": _accuracy(*self._in_scope(self.cloud, self.all_gold)),
                                  "joint": _accuracy(*self._in_scope(self.joint, self.gold))},
        }

    def _oos_recall(self, labels: Sequence[str | None], golds: Sequence[str]) -> float | None:
        if not self.oos_label:
            return None
        pairs = [(a, g) for a, g in zip(labels, golds, strict=True) if g == self.oos_label]
        return _ratio(sum(a == g for a, g in pairs), len(pairs))

    def _in_scope(self, labels: list[str | None], gold: list[str]) -> tuple[list[str | None], list[str]]:
        keep = [i for i, g in enumerate(gold) if g != self.oos_label]
        return [labels[i] for i in keep], [gold[i] for i in keep]


def _costs(requests: int, pricing: tuple[int, int], spent: int, budget: dict[str, Any]) -> dict[str, Any]:
    per_request, per_text = pricing
    cloud_only_cost = requests * (per_request + per_text)  # one text per request, every one to the cloud
    return {
        "cost": spent,
        "cloud_only_cost": cloud_only_cost,
        "cost_ratio": _ratio(spent, cloud_only_cost),
        "pricing": {"units_per_call": per_request, "units_per_text": per_text},
        "budget": budget,
    }


def _latencies(ok: Sequence[Outcome], by_source: Counter[str | None]) -> dict[str, Any]:
    latencies = [o.latency_ms for o in ok]
    return {
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "latency_ms_by_source": {
            s: {"count": by_source[s],
                **{f"p{q}": percentile([o.latency_ms for o in ok if o.source == s], q) for q in (50, 95, 99)}}
            for s in SOURCES
        },
    }


def _accuracy(labels: Sequence[str | None], golds: Sequence[str]) -> float | None:
    return _ratio(sum(a == g for a, g in zip(labels, golds, strict=True)), len(golds))


def _ratio(part: float, whole: float) -> float | None:
    return None if whole == 0 else round(part / whole, 4)
