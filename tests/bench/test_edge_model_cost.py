"""bench/edge_model_cost.py on the real tiny artifact: one child process per thread count, real figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import edge_model_cost


def test_each_thread_count_is_measured_in_its_own_process(tiny_artifact: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cost.json"
    assert edge_model_cost.main(["--artifact", f"tiny={tiny_artifact}", "--threads", "1", "2", "--calls", "20",
                                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == report
    rows = report["results"]["tiny"]
    assert [r["threads"] for r in rows] == [1, 2]
    for row in rows:
        # memory only grows in one process: import, then load, then run (peak RSS)
        assert 0 < row["rss_after_import_mb"] <= row["rss_after_load_mb"] <= row["rss_after_run_mb"]
        assert 0 < row["b1_ms_p50"] <= row["b1_ms_p99"] and 0 < row["b32_ms_p50"] <= row["b32_ms_p99"]
        assert row["calls"] == 20
        assert row["model_mb"] == round((tiny_artifact / "edge_int8.tflite").stat().st_size / 1e6, 2)


def test_a_folder_without_a_manifest_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as refused:
        edge_model_cost.main(["--artifact", f"nothing={tmp_path}"])
    assert refused.value.code == 2
