"""The build's plots (PNG): reliability diagrams and escalation curves. They draw data computed before
them (`evaluate.measure`) and compute nothing the metrics or the report read.

matplotlib is imported inside the plotting functions and draws on an explicit Agg canvas, so importing
this module costs no matplotlib and never touches pyplot's global backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from model_build.calibrate.calibration import ReliabilityBins
from model_build.calibrate.curves import Curve, SplitCurves
from model_build.calibrate.thresholds import RoutingChoice
from model_build.evaluate.measure import EdgeReliability

RELIABILITY_FILE, ESCALATION_FILE = "reliability_edge.png", "escalation_curve.png"


def draw_build_plots(out_dir: Path, reliability: EdgeReliability, curves: SplitCurves,
                     chosen: RoutingChoice) -> dict[str, str]:
    """The artifact's two plots, by the name the report places them under."""
    plot_reliability(reliability.before, reliability.after, out_dir / RELIABILITY_FILE,
                     "Edge int8 model (test split)")
    teacher_accuracy = curves.by_score[chosen.score_name].teacher_accuracy
    plot_escalation_curve(curves.by_score, chosen, teacher_accuracy, out_dir / ESCALATION_FILE)
    return {"reliability": str(out_dir / RELIABILITY_FILE), "escalation_curve": str(out_dir / ESCALATION_FILE)}


def plot_reliability(
    bins_before: ReliabilityBins,
    bins_after: ReliabilityBins,
    path: str | Path,
    title: str = "Reliability",
) -> Path:
    """Side-by-side reliability diagrams (before / after temperature scaling) as a PNG."""
    # matplotlib only when a plot is drawn (see the module's docstring)
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
    # matplotlib only when a plot is drawn (see the module's docstring)
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


def _save(figure: Any, path: str | Path) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, format="png")
    return target
