"""The build's plots are real PNGs: model_build.report.plots."""

import struct
from pathlib import Path
from typing import Any

import numpy as np

from model_build.calibrate.calibration import reliability_bins, softmax
from model_build.report.plots import plot_escalation_curve, plot_reliability

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, after checking the file really is a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE
    assert head[12:16] == b"IHDR"
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def test_plot_reliability_writes_a_real_png(tmp_path: Path, routed: dict[str, Any]) -> None:
    before = reliability_bins(routed["probs"], routed["labels"])
    after = reliability_bins(softmax(np.log(routed["probs"]), 2.0), routed["labels"])

    path = plot_reliability(before, after, tmp_path / "plots" / "reliability.png", "edge int8")

    assert path == tmp_path / "plots" / "reliability.png"
    width, height = png_size(path)
    assert width >= 600 and height >= 300
    assert path.stat().st_size > 10_000


def test_plot_escalation_curve_writes_a_real_png(tmp_path: Path, routed: dict[str, Any]) -> None:
    comparison = routed["comparison"]

    path = plot_escalation_curve(
        comparison.curves, comparison.best_choice, comparison.cloud_only_accuracy, tmp_path / "curve.png"
    )

    width, height = png_size(path)
    assert width >= 600 and height >= 400
    assert path.stat().st_size > 10_000
