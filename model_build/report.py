"""The build report: reliability and escalation plots (PNG) and a Markdown summary of a metrics dict.

matplotlib is imported inside the plotting functions and draws on an explicit Agg canvas, so importing
this module costs nothing and never touches pyplot's global backend.

The metrics dict is plain JSON-able data (dataclasses are accepted and converted). Every section is
optional; a present section shows its key numbers, with ``n/a`` where one is missing. Expected shape::

    {
      "title": str,
      "data": {"dataset", "variant", "n_classes", "oos_label", "splits": {name: {"n", "oos_fraction"}}},
      "teacher": {"name", "split", "accuracy", "in_scope_accuracy", "oos_recall", "oos_precision",
                  "oos_threshold", "temperature", "latency_ms"},
      "edge": {"fp32": {"size_bytes", "latency_ms_b1", "latency_ms_b32", "accuracy", "ece"}, "int8": {...},
               "split": str},
      "float_ops": {"count": int, "ops": {op_name: count}}  # or a list of op names
      "calibration": {"model", "temperature", "fit_split", "eval_split", "oos_fraction",
                      "ece_before", "ece_after", "nll_before", "nll_after", "n_bins"},
      "routing": {"score", "threshold", "target_ratio", "oos_fraction", "chosen_on", "reachable",
                  "splits": {split: {"escalation_rate", "joint_accuracy", "teacher_accuracy",
                                     "joint_over_teacher", "edge_accuracy", "joint_oos_recall",
                                     "in_scope_accuracy", "in_scope_escalation_rate",
                                     "oos_escalation_rate"}},
                  "scores": {name: {"threshold", "escalation_rate", "joint_accuracy", "reachable"}}},
      "escalation_table": {"score", "split", "teacher_accuracy",
                           "rows": [{"budget", "escalation_rate", "joint_accuracy", "threshold"}]},
      "goals": [{"name", "value", "target", "op", "unit", "met"}],   # or {name: {...}}
      "timings": {stage: seconds},
    }

Rates and accuracies are fractions in [0, 1] and are shown as percentages. A goal's ``unit`` picks
the format: ``fraction`` (%), ``pp`` (fraction shown as percentage points), ``bytes``, ``ms``, ``s``,
``x`` (ratio), anything else is printed after the number. ``met`` is computed from ``op`` and
``target`` when absent; a goal without a value is shown as ``n/a``, never as met.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model_build.calibration import ReliabilityBins
from model_build.routing import TABLE_RATES, Curve, RoutingChoice, curve_at_rates

NA = "n/a"
REPORT_FILENAME = "report.md"

_SECTION_TITLES: dict[str, str] = {
    "data": "Data",
    "teacher": "Teacher (cloud)",
    "edge": "Edge model: fp32 vs int8",
    "float_ops": "Float ops left in the int8 graph",
    "calibration": "Calibration",
    "routing": "Routing",
    "escalation_table": "Escalation curve",
    "escalation_table_in_scope": "Escalation curve, in-scope requests only",
    "gates": "Gates",
    "goals": "Goals",
    "timings": "Stage timings",
}
_OPTIONAL_SECTIONS = frozenset({"escalation_table_in_scope", "gates"})  # not listed as missing when absent
_PLOT_HOMES: dict[str, str] = {"reliability": "calibration", "escalation_curve": "routing"}
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
    "==": operator.eq,
}


# --------------------------------------------------------------------------------------------- plots


def plot_reliability(
    bins_before: ReliabilityBins,
    bins_after: ReliabilityBins,
    path: str | Path,
    title: str = "Reliability",
) -> Path:
    """Side-by-side reliability diagrams (before / after temperature scaling) as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9.0, 4.2), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2, sharey=True)
    for ax, bins, label in ((axes[0], bins_before, "before"), (axes[1], bins_after, "after")):
        width = np.diff(bins.edges)
        filled = bins.count > 0
        ax.bar(
            bins.edges[:-1][filled],
            bins.accuracy[filled],
            width=width[filled],
            align="edge",
            color="#4C72B0",
            edgecolor="white",
            label="accuracy",
        )
        gap_low = np.minimum(bins.accuracy[filled], bins.confidence[filled])
        ax.bar(
            bins.edges[:-1][filled],
            np.abs(bins.confidence[filled] - bins.accuracy[filled]),
            bottom=gap_low,
            width=width[filled],
            align="edge",
            color="#C44E52",
            alpha=0.3,
            hatch="//",
            edgecolor="#C44E52",
            label="gap to confidence",
        )
        ax.plot([0.0, 1.0], [0.0, 1.0], linestyle="--", color="black", linewidth=1.0, label="perfect")
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.0)
        ax.set_xlabel("confidence (max probability)")
        ax.set_title(f"{label}: ECE = {bins.ece:.4f}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path)


def plot_escalation_curve(
    curves: Mapping[str, Curve],
    chosen: RoutingChoice,
    teacher_accuracy: float,
    path: str | Path,
    title: str = "Joint accuracy vs escalation rate",
) -> Path:
    """Joint accuracy against escalation rate per score, with teacher, target and the chosen point."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 4.8), dpi=110)
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    for name, curve in curves.items():
        ax.plot(100.0 * curve.escalation_rate, 100.0 * curve.joint_accuracy, linewidth=1.4, label=name)
    ax.axhline(100.0 * teacher_accuracy, color="black", linestyle="--", linewidth=1.0, label="teacher")
    target = chosen.target_ratio * teacher_accuracy
    ax.axhline(
        100.0 * target, color="grey", linestyle=":", linewidth=1.0, label=f"target {chosen.target_ratio:g}×"
    )
    ax.plot(
        [100.0 * chosen.escalation_rate],
        [100.0 * chosen.joint_accuracy],
        marker="o",
        markersize=8,
        color="crimson",
        linestyle="none",
        label=f"chosen: {chosen.score_name} @ {100.0 * chosen.escalation_rate:.1f} %",
    )
    ax.set_xlim(0.0, 100.0)
    ax.set_xlabel("escalated to cloud (%)")
    ax.set_ylabel("joint accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return _save(figure, path)


def escalation_table_rows(curve: Curve, rates: Sequence[float] = TABLE_RATES) -> list[dict[str, float]]:
    """Rows for ``metrics["escalation_table"]["rows"]``: the best point within each escalation budget."""
    return [
        {
            "budget": float(rate),
            "escalation_rate": point.escalation_rate,
            "joint_accuracy": point.joint_accuracy,
            "threshold": point.threshold,
        }
        for rate, point in zip(rates, curve_at_rates(curve, rates), strict=True)
    ]


def _save(figure: Any, path: str | Path) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, format="png")
    return target


# ------------------------------------------------------------------------------------------ markdown


def write_report_md(
    metrics: Mapping[str, Any],
    out_dir: str | Path,
    plots: Mapping[str, str | Path] | None = None,
) -> Path:
    """Render ``metrics`` (and links to ``plots``, by name) to ``out_dir/report.md``; return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / REPORT_FILENAME
    path.write_text(render_report_md(metrics, plots, base_dir=out), encoding="utf-8")
    return path


def render_report_md(
    metrics: Mapping[str, Any],
    plots: Mapping[str, str | Path] | None = None,
    *,
    base_dir: str | Path | None = None,
) -> str:
    data = _plain(metrics)
    if not isinstance(data, dict):
        raise TypeError(f"metrics must be a mapping, got {type(metrics).__name__}")
    if "edge" not in data and ("edge_fp32" in data or "edge_int8" in data):
        # Flat layout ({"edge_fp32": {...}, "edge_int8": {...}}) folded into the edge comparison.
        data["edge"] = {name: data.pop(f"edge_{name}") for name in ("fp32", "int8") if f"edge_{name}" in data}
    plot_links = {name: (_link(path, base_dir), Path(path).is_file()) for name, path in (plots or {}).items()}
    renderers: dict[str, Callable[[Any], list[str]]] = {
        "data": _data,
        "teacher": _teacher,
        "edge": _edge,
        "float_ops": _float_ops,
        "calibration": _calibration,
        "routing": _routing,
        "escalation_table": _escalation_table,
        "escalation_table_in_scope": _escalation_table,
        "gates": _gates,
        "goals": _goals,
        "timings": _timings,
    }
    lines = [f"# {data.get('title', 'Model build report')}", ""]
    missing: list[str] = []
    for key, render in renderers.items():
        section = data.get(key)
        home_plots = [name for name, home in _PLOT_HOMES.items() if home == key and name in plot_links]
        if section is None:
            if key not in _OPTIONAL_SECTIONS:
                missing.append(_SECTION_TITLES[key])
            continue
        lines += [f"## {_SECTION_TITLES[key]}", ""]
        lines += render(section)
        for name in home_plots:
            lines += _plot_lines(name, plot_links.pop(name))
        lines.append("")
    extra = [key for key in data if key not in renderers and key != "title"]
    for key in extra:
        lines += [f"## {key.replace('_', ' ').capitalize()}", ""] + _generic(data[key]) + [""]
    if plot_links:
        lines.append("## Plots")
        for name, link in plot_links.items():
            lines += _plot_lines(name, link)
        lines.append("")
    if missing:
        lines += [f"_Sections without data in this build: {', '.join(missing)}._", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _data(section: Any) -> list[str]:
    if not isinstance(section, dict):
        return _generic(section)
    facts = [
        ("dataset", "Dataset", str),
        ("variant", "Variant", str),
        ("n_classes", "Classes", _int),
        ("oos_label", "Out-of-scope label", lambda v: f"`{v}`"),
    ]
    lines = _facts(section, facts, required=("dataset",))
    splits = section.get("splits")
    if isinstance(splits, dict) and splits:
        lines += ["", "| split | examples | oos share |", "|---|---:|---:|"]
        for name, split in splits.items():
            split = split if isinstance(split, dict) else {}
            lines.append(f"| {name} | {_int(split.get('n'))} | {_pct(split.get('oos_fraction'))} |")
    return lines + _extras(section, {key for key, _, _ in facts} | {"splits"})


def _teacher(section: Any) -> list[str]:
    if not isinstance(section, dict):
        return _generic(section)
    rows = [
        ("name", "model", str, True),
        ("split", "evaluated on", str, False),
        ("accuracy", "accuracy", _pct, True),
        ("in_scope_accuracy", "in-scope accuracy", _pct, True),
        ("oos_recall", "OOS recall", _pct, True),
        ("oos_precision", "OOS precision", _pct, False),
        ("oos_threshold", "OOS threshold (max prob <)", _num, False),
        ("temperature", "temperature", _num, False),
        ("latency_ms", "latency", _ms, False),
    ]
    return _table(section, rows) + _extras(section, {row[0] for row in rows})


def _edge(section: Any) -> list[str]:
    if not isinstance(section, dict):
        return _generic(section)
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
            f"| {name} | {_bytes(row.get('size_bytes'))} | {_ms(row.get('latency_ms_b1'))} "
            f"| {_ms(row.get('latency_ms_b32'))} | {_pct(row.get('accuracy'))} | {_num(row.get('ece'))} |"
        )
    fp32, int8 = section.get("fp32"), section.get("int8")
    if isinstance(fp32, dict) and isinstance(int8, dict):
        ratio = _ratio(fp32.get("size_bytes"), int8.get("size_bytes"))
        delta = _diff(int8.get("accuracy"), fp32.get("accuracy"))
        lines += ["", f"int8 is {_times(ratio)} smaller than fp32; accuracy change {_pp(delta)}."]
    return lines + _extras(section, set(variants) | {"split"})


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
        return _generic(section)
    if not ops and count == 0:
        return ["None: every op in the int8 graph is integer."]
    lines = [f"{_int(count)} float op(s) remain:", "", "| op | count |", "|---|---:|"]
    lines += [f"| `{name}` | {_int(n)} |" for name, n in sorted(ops.items())]
    return lines


def _calibration(section: Any) -> list[str]:
    if not isinstance(section, dict):
        return _generic(section)
    facts = [
        ("model", "Model", str),
        ("temperature", "Temperature", _num),
        ("fit_split", "Fitted on", str),
        ("eval_split", "Evaluated on", str),
        ("oos_fraction", "Traffic mix (oos share)", _mix),
        ("n_bins", "ECE bins", _int),
    ]
    lines = _facts(section, facts, required=("temperature",))
    lines += [
        "",
        "| metric | before | after |",
        "|---|---:|---:|",
        f"| ECE | {_num(section.get('ece_before'))} | {_num(section.get('ece_after'))} |",
    ]
    if "nll_before" in section or "nll_after" in section:
        lines.append(f"| NLL | {_num(section.get('nll_before'))} | {_num(section.get('nll_after'))} |")
    used = {key for key, _, _ in facts} | {"ece_before", "ece_after", "nll_before", "nll_after"}
    return lines + _extras(section, used)


def _routing(section: Any) -> list[str]:
    if not isinstance(section, dict):
        return _generic(section)
    routed_rows: list[tuple[str, str, Callable[[Any], str], bool]] = [
        ("escalation_rate", "escalation rate", _pct, True),
        ("joint_accuracy", "joint accuracy", _pct, True),
        ("teacher_accuracy", "teacher accuracy", _pct, True),
        ("joint_over_teacher", "joint / teacher", _num, True),
        ("edge_accuracy", "edge-only accuracy", _pct, False),
        ("joint_oos_recall", "joint OOS recall", _pct, True),
        ("in_scope_accuracy", "in-scope joint accuracy", _pct, True),
        ("in_scope_escalation_rate", "in-scope escalation rate", _pct, True),
        ("oos_escalation_rate", "OOS escalation rate", _pct, False),
        ("edge_oos_rate", "answered `oos` by the edge", _pct, False),
    ]
    facts = [
        ("score", "Chosen score", lambda v: f"`{v}`"),
        ("threshold", "Threshold (escalate iff score <)", _num),
        ("oos_threshold", "Edge answers `oos` itself iff band score <", _num),
        ("oos_score", "Band score", lambda v: f"`{v}`"),
        ("two_way_escalation_rate", "Escalation of the best one-threshold rule (validation)", _pct),
        ("target_ratio", "Target", lambda v: f"joint accuracy ≥ {_num(v)} × teacher"),
        ("oos_fraction", "Assumed traffic mix (oos share)", _mix),
        ("chosen_on", "Threshold chosen on", str),
        ("reachable", "Target reachable", _yes_no),
    ]
    lines = _facts(section, facts, required=("score", "threshold", "target_ratio", "oos_fraction"))
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
            choice = choice if isinstance(choice, dict) else {}
            mark = " **(chosen)**" if name == section.get("score") else ""
            lines.append(
                f"| `{name}`{mark} | {_num(choice.get('threshold'))} | {_pct(choice.get('escalation_rate'))} "
                f"| {_pct(choice.get('joint_accuracy'))} | {_yes_no(choice.get('reachable'))} |"
            )
    used = {key for key, _, _ in facts} | {"splits", "scores", "evaluated_on"}
    used |= {key for key, *_ in routed_rows}
    return lines + _extras(section, used)


def _escalation_table(section: Any) -> list[str]:
    if isinstance(section, list):
        section = {"rows": section}
    if not isinstance(section, dict):
        return _generic(section)
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
        row = row if isinstance(row, dict) else {}
        ratio = row.get("joint_over_teacher", _ratio(row.get("joint_accuracy"), teacher))
        lines.append(
            f"| {_pct(row.get('budget'), 0)} | {_pct(row.get('escalation_rate'))} "
            f"| {_pct(row.get('joint_accuracy'))} | {_num(ratio)} | {_num(row.get('threshold'))} |"
        )
    return lines


def _goals(section: Any) -> list[str]:
    if isinstance(section, dict):
        goals = [
            {"name": name, **(goal if isinstance(goal, dict) else {"value": goal})}
            for name, goal in section.items()
        ]
    elif isinstance(section, list):
        goals = [goal if isinstance(goal, dict) else {"name": str(goal)} for goal in section]
    else:
        return _generic(section)
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
        target_text = NA if _missing(target) else f"{goal.get('op', '')} {_fmt_unit(target, unit)}".strip()
        rows.append(f"| {goal.get('name', NA)} | {target_text} | {_fmt_unit(value, unit)} | {shown} |")
    summary = f"{counts['met']} met, {counts['MISSED']} missed, {counts[NA]} without a number (n/a)."
    return [summary, ""] + rows


def _goal_status(goal: Mapping[str, Any]) -> str:
    value = goal.get("value")
    if _missing(value):
        return NA
    met = goal.get("met")
    if met is None:
        compare = _OPS.get(str(goal.get("op", "")))
        target = goal.get("target")
        if compare is None or not _is_number(target) or not _is_number(value):
            return NA
        met = compare(float(value), float(target))
    return "met" if met else "MISSED"


def _gates(section: Any) -> list[str]:
    if not isinstance(section, dict):
        return _generic(section)
    if section.get("passed"):
        return ["Every gate passed: the artifact may be published."]
    return ["**Gates failed** (publish refuses this artifact without `--allow-failed-gates`):", ""] + [
        f"- {failure}" for failure in section.get("failures", [])]


def _timings(section: Any) -> list[str]:
    if not isinstance(section, dict):
        return _generic(section)
    lines = ["| stage | time |", "|---|---:|"]
    stages = {k: v for k, v in section.items() if k != "total_s"}
    lines += [f"| {stage} | {_seconds(value)} |" for stage, value in stages.items()]
    numbers = [float(value) for value in stages.values() if _is_number(value)]
    total = section.get("total_s") if _is_number(section.get("total_s")) else (sum(numbers) if numbers else None)
    lines.append(f"| **total (wall)** | {_seconds(total) if total is not None else NA} |")
    return lines


# ------------------------------------------------------------------------------------------- helpers


def _facts(
    section: Mapping[str, Any],
    facts: Sequence[tuple[str, str, Callable[[Any], str]]],
    *,
    required: Sequence[str] = (),
) -> list[str]:
    lines = []
    for key, label, fmt in facts:
        if key in section:
            value = section[key]
            # For the traffic mix, None is a statement ("split as is"), not a missing number.
            shown = fmt(value) if fmt is _mix or not _missing(value) else NA
            lines.append(f"- {label}: {shown}")
        elif key in required:
            lines.append(f"- {label}: {NA}")
    return lines


def _table(
    section: Mapping[str, Any],
    rows: Sequence[tuple[str, str, Callable[[Any], str], bool]],
) -> list[str]:
    lines = ["| metric | value |", "|---|---:|"]
    for key, label, fmt, required in rows:
        if required or key in section:
            value = section.get(key)
            lines.append(f"| {label} | {NA if _missing(value) else fmt(value)} |")
    return lines


def _extras(section: Mapping[str, Any], used: set[str]) -> list[str]:
    rest = {key: value for key, value in section.items() if key not in used}
    return ([""] + _generic(rest)) if rest else []


def _generic(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [f"- {key}: {_scalar(item)}" for key, item in value.items()]
    if isinstance(value, list):
        return [f"- {_scalar(item)}" for item in value]
    return [_scalar(value)]


def _scalar(value: Any) -> str:
    if _missing(value):
        return NA
    if isinstance(value, bool):
        return _yes_no(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return _num(value)
    if isinstance(value, dict | list):
        return f"`{value}`"
    return str(value)


def _plot_lines(name: str, plot: tuple[str, bool]) -> list[str]:
    link, exists = plot
    return ["", f"![{name}]({link})" if exists else f"_Plot `{name}` is missing: no file at `{link}`._"]


def _link(path: str | Path, base_dir: str | Path | None) -> str:
    target = Path(path)
    if base_dir is not None:
        try:
            return Path(os.path.relpath(target.resolve(), Path(base_dir).resolve())).as_posix()
        except ValueError:  # different drive on Windows
            pass
    return target.as_posix()


def _plain(value: Any) -> Any:
    """Dataclasses → dicts, numpy scalars/arrays → Python values, recursively."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain({field.name: getattr(value, field.name) for field in dataclasses.fields(value)})
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return value.as_posix()
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _num(value: Any, digits: int = 4) -> str:
    if not _is_number(value):
        return NA if _missing(value) else str(value)
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def _int(value: Any) -> str:
    return f"{int(value):,}" if _is_number(value) else (NA if _missing(value) else str(value))


def _pct(value: Any, digits: int = 2) -> str:
    return f"{100.0 * value:.{digits}f} %" if _is_number(value) else NA


def _pp(value: Any) -> str:
    return f"{100.0 * value:+.2f} pp" if _is_number(value) else NA


def _ms(value: Any) -> str:
    return f"{value:.2f} ms" if _is_number(value) else NA


def _seconds(value: Any) -> str:
    if not _is_number(value):
        return NA
    if value < 60.0:
        return f"{value:.1f} s"
    minutes, seconds = divmod(float(value), 60.0)
    return f"{int(minutes)} min {seconds:04.1f} s"


def _bytes(value: Any) -> str:
    if not _is_number(value):
        return NA
    size = float(value)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024.0 or unit == "MiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024.0
    return NA  # unreachable: the loop always returns at MiB


def _times(value: Any) -> str:
    return f"{value:.2f}×" if _is_number(value) else NA


def _mix(value: Any) -> str:
    return "split as is (no re-weighting)" if _missing(value) else f"{_pct(value, 1)} oos"


def _yes_no(value: Any) -> str:
    return NA if value is None else ("yes" if value else "**no**")


def _ratio(numerator: Any, denominator: Any) -> float | None:
    if _is_number(numerator) and _is_number(denominator) and denominator != 0:
        return float(numerator) / float(denominator)
    return None


def _diff(a: Any, b: Any) -> float | None:
    return float(a) - float(b) if _is_number(a) and _is_number(b) else None


def _fmt_unit(value: Any, unit: Any) -> str:
    if not _is_number(value):
        return NA if _missing(value) else str(value)
    formats: dict[str, Callable[[Any], str]] = {
        "fraction": _pct,
        "pp": _pp,
        "bytes": _bytes,
        "ms": _ms,
        "s": _seconds,
        "x": lambda v: f"{_num(v)}×",
    }
    if unit in formats:
        return formats[str(unit)](value)
    return f"{_num(value)} {unit}" if unit else _num(value)
