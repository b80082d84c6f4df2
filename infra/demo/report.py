"""The demo's report: notes on what a reader would otherwise misread, and the markdown page.

    report["notes"] = explain(report, args, manifest, run)
    (out_dir / "demo.md").write_text(render_markdown(report, plots))
"""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Any

from infra.demo.load import SHUFFLE_SEED
from infra.demo.records import Run, kind_of


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
            f"model. The local API runs {args.cloud_concurrency} invocation(s) at a time (Lambda execution "
            "environments, --cloud-concurrency) over ONE moto server that serves one request at a time, "
            f"several per invocation, and {args.concurrency} clients escalating "
            f"{100 * (report['escalation_rate'] or 0):.0f} % of their texts keep it full; in AWS, Lambda "
            "scales out. Fewer clients (--concurrency 4) show the per-call latency instead.")
    routed, cloud = report["routing_joint_accuracy"], report["cloud_only_accuracy"]
    target = manifest.routing.target_joint_over_teacher
    if routed and cloud and routed / cloud < target:
        notes.append(
            f"the routing alone reaches {100 * routed / cloud:.2f} % of cloud-only accuracy on this split, below "
            f"the build's target of {100 * target:.1f} %: the threshold was fit on the validation split (the "
            "artifact's metrics.json, routing.joint_over_teacher, has the build's own test-split figure)")
    return notes


def render_markdown(report: dict[str, Any], plots: dict[str, str]) -> str:
    r = report
    lines = [
        f"# Local stack demo: `{r['scenario']}` scenario",
        "",
        (f"{r['requests']} CLINC150 test texts (in-scope test + oos_test, shuffled with seed {SHUFFLE_SEED}) sent "
        f"one per request to the edge's `POST /v1/predict`, {r['config']['concurrency']} at a time, on "
        f"loopback: the serialised moto server (DynamoDB + S3), the Lambda handler behind the local API "
        f"adapter{_environments(r['config'])}, and the edge service. Model `{r['config']['model_version']}` from "
        f"`{r['config']['model_dir']}`, published to the local bucket and read from there by both tiers."),
        "",
        f"**Failed requests: {r['failed']}**" + ("" if not r["failed"] else f" ({r['failures']})"),
        "",
        *_metrics_table(r),
        "",
        *_latency_section(r, plots["latency"]),
        "",
        *_fallbacks_section(r, plots["timeline"]),
        *_refused_section(r),
        "",
    ]
    if r["timeline"]:
        lines += _timeline_section(r)
    if r["notes"]:
        lines += ["## Notes", "", *(f"- {note}" for note in r["notes"]), ""]
    lines += ["Reproduce: `" + r["config"]["command"] + "`", ""]
    return "\n".join(lines)


def _environments(config: dict[str, Any]) -> str:
    n = config.get("cloud_concurrency")
    return "" if n is None else f" ({n} Lambda execution environment{'s' if n != 1 else ''})"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _metrics_table(r: dict[str, Any]) -> list[str]:
    pct, ms = _pct, _ms
    return [
        "| metric | value |",
        "|---|---|",
        f"| edge-only accuracy (the edge model's own answer) | {pct(r['edge_only_accuracy'])} |",
        f"| cloud-only accuracy (every text to the cloud API) | {pct(r['cloud_only_accuracy'])} |",
        f"| joint accuracy (what the client got) | {pct(r['joint_accuracy'])} |",
        f"| joint / cloud-only | {pct(r['joint_over_cloud'])} |",
        (f"| joint accuracy of the routing alone (escalations answered by the cloud, no fallback) | "
        f"{pct(r['routing_joint_accuracy'])} |"),
        (f"| escalation rate (texts the edge sent up) | {pct(r['escalation_rate'])} "
        f"(the build expected {pct(r['config']['expected_escalation_rate'])}) |"),
        f"| answered by the cloud / by an edge fallback | {pct(r['cloud_answer_rate'])} / {pct(r['fallback_rate'])} |",
        (f"| OOS recall: edge / cloud / joint | {pct(r['oos_recall']['edge'])} / {pct(r['oos_recall']['cloud'])} / "
        f"{pct(r['oos_recall']['joint'])} |"),
        (f"| in-scope accuracy: edge / cloud / joint | {pct(r['in_scope_accuracy']['edge'])} / "
        f"{pct(r['in_scope_accuracy']['cloud'])} / {pct(r['in_scope_accuracy']['joint'])} |"),
        f"| cost (units charged to tenant `{r['config']['tenant']}`) | {r['cost']} |",
        (f"| cost of a cloud-only deployment (same requests) | {r['cloud_only_cost']} "
        f"({r['pricing']['units_per_call']} per call + {r['pricing']['units_per_text']} per text) |"),
        f"| cost ratio | {pct(r['cost_ratio'])} |",
        (f"| budget | limit {r['budget']['limit']}, spent {r['budget']['spent']} today, "
        f"{r['budget']['remaining']} left |"),
        (f"| latency p50 / p95 / p99 (client-side, all) | {ms(r['p50_ms'])} / {ms(r['p95_ms'])} / "
        f"{ms(r['p99_ms'])} ms |"),
        f"| wall time, throughput | {r['wall_s']} s, {r['throughput_rps']} requests/s |",
    ]


def _latency_section(r: dict[str, Any], plot: str) -> list[str]:
    return [
        "## Latency by source (ms, client-side)",
        "",
        "| source | answers | p50 | p95 | p99 |",
        "|---|---|---|---|---|",
        *(f"| {s} | {v['count']} | {_ms(v['p50'])} | {_ms(v['p95'])} | {_ms(v['p99'])} |"
          for s, v in r["latency_ms_by_source"].items()),
        "",
        f"![latency by source]({plot})",
    ]


def _fallbacks_section(r: dict[str, Any], plot: str) -> list[str]:
    return [
        "## Fallbacks",
        "",
        ("No escalation fell back to the edge." if not r["fallbacks_by_reason"] else
         "| reason | texts |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in
                                                   sorted(r["fallbacks_by_reason"].items()))),
        "",
        f"![answers by source over time]({plot})",
    ]


def _refused_section(r: dict[str, Any]) -> list[str]:
    """The requests answered `oos` (none of the intents): by whom, why, and a few of them."""
    refused = r.get("refused") or {}
    if not refused:
        return ["", "## Refused (out of scope)", "", "No request was answered `oos`."]
    lines = ["", "## Refused (out of scope)", "", "| answered by / reason | texts | of them in scope (false refusals) |",
             "|---|---|---|"]
    lines += [f"| {key} | {v['texts']} | {v['in_scope']} |" for key, v in sorted(refused.items())]
    for key, v in sorted(refused.items()):
        lines += ["", f"Examples, {key}:", ""]
        lines += [f"- \"{e['text']}\" (gold: {e['gold']})" for e in v["examples"]]
    return lines


def _timeline_section(r: dict[str, Any]) -> list[str]:
    return [
        "## Timeline", "", "Numbered as on the plot above.", "",
        "| # | at (s) | event | detail |", "|---|---|---|---|",
        *(f"| {n} | {e['at_s']:.2f} | {e['what']} | {e['detail']} |" for n, e in enumerate(r["timeline"], start=1)),
        "",
        ("How the requests sent between two events were answered (`edge`: kept by the edge; the rest "
        "were escalations; a request is counted where it was sent, so escalations waiting in the "
        "cloud's queue when it was killed show up as `cloud_error` just before the kill):"), "",
        "| from (s) | to (s) | after | requests | answers |", "|---|---|---|---|---|",
        *(f"| {p['from_s']:.2f} | {p['to_s']:.2f} | {p['after']} | {p['requests']} | "
          + ", ".join(f"{k} {v}" for k, v in p["answers"].items()) + " |" for p in r["phases"]),
        "",
    ]
