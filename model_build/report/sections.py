"""The build report's sections: one renderer per section of the metrics, each returning Markdown lines.

Every renderer takes whatever the section holds: a present section shows its key numbers, with ``n/a``
where one is missing, and lists the keys it does not know at its end.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

from model_build.report.formatting import (
    NA,
    difference,
    extra_lines,
    fact_lines,
    fmt_bytes,
    fmt_int,
    fmt_mix,
    fmt_ms,
    fmt_num,
    fmt_pct,
    fmt_pp,
    fmt_seconds,
    fmt_times,
    fmt_unit,
    fmt_yes_no,
    generic_lines,
    is_number,
    missing,
    ratio_of,
    table_lines,
)

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
    "==": operator.eq,
}


def _data(section: Any) -> list[str]:
    if not isinstance(section, dict):
        return generic_lines(section)
    facts = [
        ("dataset", "Dataset", str),
        ("variant", "Variant", str),
        ("n_classes", "Classes", fmt_int),
        ("oos_label", "Out-of-scope label", lambda v: f"`{v}`"),
    ]
    lines = fact_lines(section, facts, required=("dataset",))
    splits = section.get("splits")
    if isinstance(splits, dict) and splits:
        lines += ["", "| split | examples | oos share |", "|---|---:|---:|"]
        for name, split in splits.items():
            split = _dict(split)
            lines.append(f"| {name} | {fmt_int(split.get('n'))} | {fmt_pct(split.get('oos_fraction'))} |")
    return lines + extra_lines(section, {key for key, _, _ in facts} | {"splits"})


def _teacher(section: Any) -> list[str]:
    if not isinstance(section, dict):
        return generic_lines(section)
    rows = [
        ("name", "model", str, True),
        ("split", "evaluated on", str, False),
        ("accuracy", "accuracy", fmt_pct, True),
        ("in_scope_accuracy", "in-scope accuracy", fmt_pct, True),
        ("oos_recall", "OOS recall", fmt_pct, True),
        ("oos_precision", "OOS precision", fmt_pct, False),
        ("oos_score", "OOS score (`models.cloud.oos_score`)", str, False),
        ("oos_threshold", "OOS threshold (`oos` below it)", fmt_num, False),
        ("temperature", "temperature", fmt_num, False),
        ("latency_ms", "latency", fmt_ms, False),
        ("precision", "precision (int8 vs fp32)", str, False),
    ]
    return table_lines(section, rows) + extra_lines(section, {row[0] for row in rows})


def _edge(section: Any) -> list[str]:
    if not isinstance(section, dict):
        return generic_lines(section)
    variants = [name for name in ("fp32", "int8") if isinstance(section.get(name), dict)]
    variants += [name for name, value in section.items() if isinstance(value, dict) and name not in variants]
    lines = []
    if "split" in section:
        lines += [f"Accuracy on the {section['split']} split.", ""]
    lines += [
        "| model | size | latency p50, batch 1 | latency p50, batch 32 | accuracy | ECE |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in variants or ("fp32", "int8"):
        row = section.get(name, {})
        lines.append(
            f"| {name} | {fmt_bytes(row.get('size_bytes'))} | {fmt_ms(row.get('latency_ms_b1'))} "
            f"| {fmt_ms(row.get('latency_ms_b32'))} | {fmt_pct(row.get('accuracy'))} | {fmt_num(row.get('ece'))} |"
        )
    fp32, int8 = section.get("fp32"), section.get("int8")
    if isinstance(fp32, dict) and isinstance(int8, dict):
        ratio = ratio_of(fp32.get("size_bytes"), int8.get("size_bytes"))
        delta = difference(int8.get("accuracy"), fp32.get("accuracy"))
        lines += ["", f"int8 is {fmt_times(ratio)} smaller than fp32; accuracy change {fmt_pp(delta)}."]
    return lines + extra_lines(section, set(variants) | {"split"})


def _float_ops(section: Any) -> list[str]:
    if isinstance(section, list):
        ops: dict[str, Any] = {}
        for name in section:
            ops[str(name)] = ops.get(str(name), 0) + 1
        count: Any = len(section)
    elif isinstance(section, dict):
        raw = section.get("ops", {k: v for k, v in section.items() if k != "count"})
        ops = raw if isinstance(raw, dict) else {str(name): 1 for name in raw}
        count = section.get("count", sum(v for v in ops.values() if isinstance(v, int | float)))
    else:
        return generic_lines(section)
    if not ops and count == 0:
        return ["None: every op in the int8 graph is integer."]
    lines = [f"{fmt_int(count)} float op(s) remain:", "", "| op | count |", "|---|---:|"]
    lines += [f"| `{name}` | {fmt_int(n)} |" for name, n in sorted(ops.items())]
    return lines


def _calibration(section: Any) -> list[str]:
    if not isinstance(section, dict):
        return generic_lines(section)
    facts = [
        ("model", "Model", str),
        ("temperature", "Temperature", fmt_num),
        ("oos_logit_bias", "Bias on the oos logit (after the temperature)", fmt_num),
        ("fit_split", "Fitted on", str),
        ("eval_split", "Evaluated on", str),
        ("oos_fraction", "Traffic mix (oos share)", fmt_mix),
        ("n_bins", "ECE bins", fmt_int),
    ]
    lines = fact_lines(section, facts, required=("temperature",))
    lines += [
        "",
        "| metric | before | after |",
        "|---|---:|---:|",
        f"| ECE | {fmt_num(section.get('ece_before'))} | {fmt_num(section.get('ece_after'))} |",
    ]
    if "nll_before" in section or "nll_after" in section:
        lines.append(f"| NLL | {fmt_num(section.get('nll_before'))} | {fmt_num(section.get('nll_after'))} |")
    used = {key for key, _, _ in facts} | {"ece_before", "ece_after", "nll_before", "nll_after"}
    return lines + extra_lines(section, used)


def _routing(section: Any) -> list[str]:
    if not isinstance(section, dict):
        return generic_lines(section)
    routed_rows: list[tuple[str, str, Callable[[Any], str], bool]] = [
        ("escalation_rate", "escalation rate", fmt_pct, True),
        ("joint_accuracy", "joint accuracy", fmt_pct, True),
        ("teacher_accuracy", "teacher accuracy", fmt_pct, True),
        ("joint_over_teacher", "joint / teacher", fmt_num, True),
        ("edge_accuracy", "edge-only accuracy", fmt_pct, False),
        ("joint_oos_recall", "joint OOS recall", fmt_pct, True),
        ("in_scope_accuracy", "in-scope joint accuracy", fmt_pct, True),
        ("in_scope_escalation_rate", "in-scope escalation rate", fmt_pct, True),
        ("oos_escalation_rate", "OOS escalation rate", fmt_pct, False),
        ("edge_oos_rate", "answered `oos` by the edge", fmt_pct, False),
    ]
    facts = [
        ("score", "Chosen score", lambda v: f"`{v}`"),
        ("threshold", "Threshold (escalate iff score <)", fmt_num),
        ("oos_threshold", "Edge answers `oos` itself iff band score <", fmt_num),
        ("oos_score", "Band score", lambda v: f"`{v}`"),
        ("two_way_escalation_rate", "Escalation of the best one-threshold rule (validation)", fmt_pct),
        ("target_ratio", "Target", lambda v: f"joint accuracy ≥ {fmt_num(v)} × teacher"),
        ("oos_fraction", "Assumed traffic mix (oos share)", fmt_mix),
        ("chosen_on", "Threshold chosen on", str),
        ("reachable", "Target reachable", fmt_yes_no),
    ]
    lines = fact_lines(section, facts, required=("score", "threshold", "target_ratio", "oos_fraction"))
    splits = section.get("splits")
    if not isinstance(splits, dict) or not splits:
        flat = {key: section[key] for key, *_ in routed_rows if key in section}
        splits = {str(section.get("evaluated_on", "evaluation")): flat}
    names = list(splits)
    lines += ["", "| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key, label, fmt, required in routed_rows:
        values = [split.get(key) if isinstance(split, dict) else None for split in splits.values()]
        if required or any(value is not None for value in values):
            lines.append(f"| {label} | " + " | ".join(fmt(value) for value in values) + " |")
    scores = section.get("scores")
    if isinstance(scores, dict) and scores:
        lines += [
            "",
            "Operating point per score (on the split the threshold was chosen on):",
            "",
            "| score | threshold | escalation rate | joint accuracy | target reached |",
            "|---|---:|---:|---:|---|",
        ]
        for name, choice in scores.items():
            choice = _dict(choice)
            mark = " **(chosen)**" if name == section.get("score") else ""
            lines.append(
                f"| `{name}`{mark} | {fmt_num(choice.get('threshold'))} | {fmt_pct(choice.get('escalation_rate'))} "
                f"| {fmt_pct(choice.get('joint_accuracy'))} | {fmt_yes_no(choice.get('reachable'))} |"
            )
    used = {key for key, _, _ in facts} | {"splits", "scores", "evaluated_on"}
    used |= {key for key, *_ in routed_rows}
    return lines + extra_lines(section, used)


def _escalation_table(section: Any) -> list[str]:
    if isinstance(section, list):
        section = {"rows": section}
    if not isinstance(section, dict):
        return generic_lines(section)
    lines = []
    about = [f"score `{section['score']}`" if "score" in section else "", str(section.get("split", ""))]
    if any(about):
        lines += [f"Joint accuracy within each escalation budget ({', '.join(a for a in about if a)}).", ""]
    teacher = section.get("teacher_accuracy")
    lines += [
        "| budget | realised rate | joint accuracy | joint / teacher | threshold |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in section.get("rows", []):
        row = _dict(row)
        ratio = row.get("joint_over_teacher", ratio_of(row.get("joint_accuracy"), teacher))
        lines.append(
            f"| {fmt_pct(row.get('budget'), 0)} | {fmt_pct(row.get('escalation_rate'))} "
            f"| {fmt_pct(row.get('joint_accuracy'))} | {fmt_num(ratio)} | {fmt_num(row.get('threshold'))} |"
        )
    return lines


_SPLIT_NAMES = {"val": "Validation", "test": "Test"}
_NO_RULE = {
    None: "No out-of-scope rule: the data has no `oos` label and the build had no `--negatives`, so every "
          "label is in scope and every request gets an intent. `--negatives FILE` adds one (docs/build.md).",
    "data": "No out-of-scope rule: neither validation nor test holds `oos` texts to fit or measure one on.",
    "appended": "The data has no `oos` label, so the build appended one that no model learns: each tier answers "
                "`oos` below its threshold (the edge's band on its best intent's probability, the cloud's on its "
                "energy), fit so that it refuses at most its share of `--max-false-reject` of in-scope texts "
                "(Routing and the manifest hold them). No text here is out of scope to measure what they "
                "catch: `model_build evaluate DIR --ood FILE` does on texts of yours; `--negatives FILE` "
                "teaches both tiers what `oos` looks like (docs/build.md).",
}
_CAUGHT_ON = {
    "negatives": "Validation's out-of-scope texts are the `--negatives` (generic text, such as Wikipedia "
                 "sentences; your `--off-topic` requests first, if given), most of them far easier to tell "
                 "from the intents than real out-of-domain requests: "
                 "\"caught\" on them overstates what real traffic gets. `model_build evaluate DIR --ood "
                 "FILE` measures that on texts of yours.",
    "data": "Out-of-scope texts are the data's own `oos` rows; other out-of-domain traffic may be caught "
            "less: `model_build evaluate DIR --ood FILE` measures it on texts of yours.",
}


def _rejection(section: Any) -> list[str]:
    if not isinstance(section, dict):
        return generic_lines(section)
    splits = section.get("splits")
    if not isinstance(splits, dict) or not splits:
        return [_NO_RULE.get(section.get("oos_source"), _NO_RULE[None])]
    lines = []
    for name, split in splits.items():
        lines += _rejection_table(_SPLIT_NAMES.get(name, name), _dict(split)) + [""]
    if section.get("oos_source") in _CAUGHT_ON:
        lines.append(_CAUGHT_ON[section["oos_source"]])
    return lines


def _rejection_table(name: str, split: Mapping[str, Any]) -> list[str]:
    """A split's curves (a column per tier) and each tier's shipped point, in bold."""
    tiers = {tier: _dict(split.get(tier)) for tier in ("edge", "cloud")}
    lines = [f"{name} ({fmt_int(split.get('n_in_scope'))} in-scope, {fmt_int(split.get('n_oos'))} "
             "out-of-scope texts): out-of-scope texts caught at each share of in-scope texts refused.", "",
             "| in-scope refused | " + " | ".join(
                 f"{tier} catches (`{t.get('score')}`)" for tier, t in tiers.items()) + " |",
             "|---:|---:|---:|"]
    curves = [_dict(t.get("curve")) for t in tiers.values()]
    for rate in dict.fromkeys(key for curve in curves for key in curve):
        caught = " | ".join(fmt_pct(curve.get(rate)) for curve in curves)
        lines.append(f"| {fmt_pct(float(rate), 1)} | {caught} |")
    lines += [_shipped_row(tier, _dict(t.get("chosen")), i) for i, (tier, t) in enumerate(tiers.items())]
    answered = "; ".join(f"{tier} {_answered(_dict(t.get('chosen')))}" for tier, t in tiers.items())
    lines += ["", f"Every `oos` answer, its top label `oos` too (no threshold undoes it): {answered}."]
    cloud = tiers["cloud"]
    asked = cloud.get("asked")
    if isinstance(asked, dict):
        counted = " (the fit counts its budget there)" if cloud.get("counted_on") == "escalated" else ""
        lines.append(f"Asked only about the texts the edge escalates, the cloud answers `oos` to "
                     f"{_answered(asked)}{counted}.")
    budgets = [f"{tier} {fmt_pct(t['budget'])}" for tier, t in tiers.items() if is_number(t.get("budget"))]
    if budgets:
        lines.append(f"Share of in-scope texts the fit let each refuse: {', '.join(budgets)}.")
    return lines


def _shipped_row(tier: str, point: Mapping[str, Any], column: int) -> str:
    rule = "no threshold" if missing(point.get("threshold")) else f"< {fmt_num(point.get('threshold'))}"
    cells = ["", ""]
    cells[column] = f"**{fmt_pct(point.get('ood_caught'))}**"
    refused = fmt_pct(point.get("in_scope_refused"))
    return f"| **{tier}, shipped ({rule}): {refused}** | {cells[0]} | {cells[1]} |"


def _answered(point: Mapping[str, Any]) -> str:
    return (f"{fmt_pct(point.get('in_scope_answered_oos'))} of the in-scope texts, "
            f"{fmt_pct(point.get('ood_answered_oos'))} of the out-of-scope ones")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _goals(section: Any) -> list[str]:
    if isinstance(section, dict):
        goals = [
            {"name": name, **(goal if isinstance(goal, dict) else {"value": goal})}
            for name, goal in section.items()
        ]
    elif isinstance(section, list):
        goals = [goal if isinstance(goal, dict) else {"name": str(goal)} for goal in section]
    else:
        return generic_lines(section)
    if not goals:
        return ["No goals were recorded for this build."]
    counts = {"met": 0, "MISSED": 0, NA: 0}
    rows = ["| goal | target | value | status |", "|---|---|---:|---|"]
    for goal in goals:
        unit = goal.get("unit")
        value = goal.get("value")
        status = _goal_status(goal)
        counts[status] += 1
        shown = "**MISSED**" if status == "MISSED" else status
        target = goal.get("target")
        target_text = NA if missing(target) else f"{goal.get('op', '')} {fmt_unit(target, unit)}".strip()
        rows.append(f"| {goal.get('name', NA)} | {target_text} | {fmt_unit(value, unit)} | {shown} |")
    summary = f"{counts['met']} met, {counts['MISSED']} missed, {counts[NA]} without a number (n/a)."
    return [summary, ""] + rows


def _goal_status(goal: Mapping[str, Any]) -> str:
    value = goal.get("value")
    if missing(value):
        return NA
    met = goal.get("met")
    if met is None:
        compare = _OPS.get(str(goal.get("op", "")))
        target = goal.get("target")
        if compare is None or not is_number(target) or not is_number(value):
            return NA
        met = compare(float(value), float(target))
    return "met" if met else "MISSED"


def _gates(section: Any) -> list[str]:
    if not isinstance(section, dict):
        return generic_lines(section)
    if section.get("passed"):
        return ["Every gate passed: the artifact may be published."]
    return ["**Gates failed** (publish refuses this artifact without `--allow-failed-gates`):", ""] + [
        f"- {failure}" for failure in section.get("failures", [])]


def _timings(section: Any) -> list[str]:
    if not isinstance(section, dict):
        return generic_lines(section)
    lines = ["| stage | time |", "|---|---:|"]
    stages = {k: v for k, v in section.items() if k != "total_s"}
    lines += [f"| {stage} | {fmt_seconds(value)} |" for stage, value in stages.items()]
    numbers = [float(value) for value in stages.values() if is_number(value)]
    total = section.get("total_s") if is_number(section.get("total_s")) else (sum(numbers) if numbers else None)
    lines.append(f"| **total (wall)** | {fmt_seconds(total) if total is not None else NA} |")
    return lines


RENDERERS: dict[str, Callable[[Any], list[str]]] = {
    "data": _data,
    "teacher": _teacher,
    "edge": _edge,
    "float_ops": _float_ops,
    "calibration": _calibration,
    "routing": _routing,
    "escalation_table": _escalation_table,
    "escalation_table_in_scope": _escalation_table,
    "rejection": _rejection,
    "gates": _gates,
    "goals": _goals,
    "timings": _timings,
}
