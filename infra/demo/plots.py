"""The demo's two plots: latency by answer source, and answers by source over the run with its events.

    files = plot(outcomes, timeline.events, out_dir, stem="demo")   # {"latency": name, "timeline": name}
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from infra.demo.records import SOURCES, Event, Outcome
from infra.demo.stats import percentile


def plot(outcomes: Sequence[Outcome], events: Sequence[Event], out_dir: Path, stem: str = "demo") -> dict[str, str]:
    """Two PNGs: latency by source (histogram, log scale), and answers per second by source / fallback
    reason over the run, with the fault events marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [o for o in outcomes if o.ok]
    files = {"latency": f"{stem}_latency_by_source.png", "timeline": f"{stem}_sources_over_time.png"}
    for name, draw, size in (("latency", _latency, (8, 4.5)), ("timeline", _timeline, (11, 4.5))):
        fig, ax = plt.subplots(figsize=size)
        draw(ax, ok, events)
        fig.tight_layout()
        fig.savefig(out_dir / files[name], dpi=110)
        plt.close(fig)
    return files


def _latency(ax: Any, ok: Sequence[Outcome], events: Sequence[Event]) -> None:
    import numpy as np

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


def _timeline(ax: Any, ok: Sequence[Outcome], events: Sequence[Event]) -> None:
    import numpy as np

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
