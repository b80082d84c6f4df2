"""The build report: a Markdown summary of a metrics dict, with links to its plots (model_build.report.plots).

The sections are rendered by :mod:`model_build.report.sections`, their values formatted by
:mod:`model_build.report.formatting`; :mod:`model_build.report.view` arranges a build's metrics into them.

The metrics dict is plain JSON-able data (dataclasses are accepted and converted). Every section is
optional; a present section shows its key numbers, with ``n/a`` where one is missing. Expected shape::

    {
      "title": str,
      "data": {"dataset", "variant", "n_classes", "oos_label", "splits": {name: {"n", "oos_fraction"}}},
      "teacher": {"name", "split", "accuracy", "in_scope_accuracy", "oos_recall", "oos_precision",
                  "oos_threshold", "temperature", "latency_ms", "precision"},
      "edge": {"fp32": {"size_bytes", "latency_ms_b1", "latency_ms_b32", "accuracy", "ece"}, "int8": {...},
               "split": str},
      "float_ops": {"count": int, "ops": {op_name: count}}  # or a list of op names
      "calibration": {"model", "temperature", "oos_logit_bias", "fit_split", "eval_split", "oos_fraction",
                      "ece_before", "ece_after", "nll_before", "nll_after", "n_bins"},
      "routing": {"score", "threshold", "target_ratio", "oos_fraction", "chosen_on", "reachable",
                  "splits": {split: {"escalation_rate", "joint_accuracy", "teacher_accuracy",
                                     "joint_over_teacher", "edge_accuracy", "joint_oos_recall",
                                     "in_scope_accuracy", "in_scope_escalation_rate",
                                     "oos_escalation_rate"}},
                  "scores": {name: {"threshold", "escalation_rate", "joint_accuracy", "reachable"}}},
      "escalation_table": {"score", "split", "teacher_accuracy",
                           "rows": [{"budget", "escalation_rate", "joint_accuracy", "threshold"}]},
      "rejection": {"oos_source": "data" | "negatives" | "appended" | None,
                    "splits": {split: {"n_in_scope", "n_oos", "edge": {...}, "cloud": {...}}}},
                    # per tier: "score", "curve": {refused: caught}, "chosen"/"asked": {"threshold",
                    # "in_scope_refused", "ood_caught", "in_scope_answered_oos", "ood_answered_oos"},
                    # "budget", "counted_on"
      "goals": [{"name", "value", "target", "op", "unit", "met"}],   # or {name: {...}}
      "timings": {stage: seconds},
    }

Rates and accuracies are fractions in [0, 1] and are shown as percentages. A goal's ``unit`` picks
the format: ``fraction`` (%), ``pp`` (fraction shown as percentage points), ``bytes``, ``ms``, ``s``,
``x`` (ratio), anything else is printed after the number. ``met`` is computed from ``op`` and
``target`` when absent; a goal without a value is shown as ``n/a``, never as met.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from model_build.report.formatting import generic_lines, plain
from model_build.report.sections import RENDERERS

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
    "rejection": "Out-of-scope rejection",
    "gates": "Gates",
    "goals": "Goals",
    "timings": "Stage timings",
}
# Not listed as missing when absent
_OPTIONAL_SECTIONS = frozenset({"escalation_table_in_scope", "rejection", "gates"})
_PLOT_HOMES: dict[str, str] = {"reliability": "calibration", "escalation_curve": "routing"}


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
    """The report as Markdown: the known sections in order, then unknown ones, then unplaced plots."""
    data = plain(metrics)
    if not isinstance(data, dict):
        raise TypeError(f"metrics must be a mapping, got {type(metrics).__name__}")
    if "edge" not in data and ("edge_fp32" in data or "edge_int8" in data):
        # Flat layout ({"edge_fp32": {...}, "edge_int8": {...}}) folded into the edge comparison.
        data["edge"] = {name: data.pop(f"edge_{name}") for name in ("fp32", "int8") if f"edge_{name}" in data}
    plot_links = {name: (_link(path, base_dir), Path(path).is_file()) for name, path in (plots or {}).items()}
    lines = [f"# {data.get('title', 'Model build report')}", ""]
    missing: list[str] = []
    for key, render in RENDERERS.items():
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
    extra = [key for key in data if key not in RENDERERS and key != "title"]
    for key in extra:
        lines += [f"## {key.replace('_', ' ').capitalize()}", ""] + generic_lines(data[key]) + [""]
    if plot_links:
        lines.append("## Plots")
        for name, link in plot_links.items():
            lines += _plot_lines(name, link)
        lines.append("")
    if missing:
        lines += [f"_Sections without data in this build: {', '.join(missing)}._", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


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
