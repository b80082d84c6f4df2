"""The cloud precision choice: the int8 teacher ships within the accuracy gate, fp32 beyond it, a forced
precision wins, and a teacher stage that exported int8 only has nothing to choose from."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from model_build.config import Gates, TeacherConfig, preset
from model_build.errors import BuildError
from model_build.teacher.cloud_precision import CLOUD_DYNAMIC_FILE, MEASURES_FILE, choose


def _measured(folder: Path, fp32_val: float, int8_val: float) -> Path:
    def candidate(size: int, val: float) -> dict[str, float]:
        return {"size_bytes": size, "val_accuracy": val, "val_in_scope_accuracy": val,
                "test_accuracy": val - 0.01, "test_in_scope_accuracy": val - 0.01}

    folder.mkdir(parents=True, exist_ok=True)
    (folder / MEASURES_FILE).write_text(json.dumps({
        "fp32": candidate(90_000_000, fp32_val), "dynamic_range": candidate(23_000_000, int8_val),
        "val_agreement": 0.99,
    }))
    return folder


@pytest.mark.parametrize(("int8_val", "chosen"), [(0.950, "dynamic_range"), (0.948, "dynamic_range"),
                                                   (0.955, "dynamic_range"), (0.9479, "fp32")])
def test_int8_ships_when_its_validation_drop_is_within_the_gate(tmp_path: Path, int8_val: float,
                                                                chosen: str) -> None:
    config = preset("quick")  # the default gate: 0.3 points
    choice = choose(config, tmp_path / "teacher", _measured(tmp_path / "m", 0.951, int8_val))

    assert choice.chosen == chosen and choice.rule == "auto"
    assert choice.val_accuracy_drop == pytest.approx(0.951 - int8_val)
    assert choice.source == (tmp_path / "m" / CLOUD_DYNAMIC_FILE if chosen == "dynamic_range"
                             else tmp_path / "teacher" / "cloud.tflite")
    recorded = choice.to_dict()
    assert "source" not in recorded and recorded["fp32"]["size_bytes"] == 90_000_000
    assert recorded["max_accuracy_drop"] == 0.003 and recorded["val_agreement"] == 0.99
    assert recorded["teacher_stage"] == "teacher/teacher"  # the cache entry's folder, under any cache root


def test_the_gate_is_a_setting(tmp_path: Path) -> None:
    config = dataclasses.replace(preset("quick"), gates=Gates(max_cloud_int8_accuracy_drop=0.0))
    assert choose(config, tmp_path, _measured(tmp_path / "m", 0.951, 0.950)).chosen == "fp32"


@pytest.mark.parametrize("forced", ["fp32", "dynamic_range"])
def test_a_forced_precision_wins_over_the_gate(tmp_path: Path, forced: str) -> None:
    config = preset("quick", cloud_precision=forced)
    choice = choose(config, tmp_path, _measured(tmp_path / "m", 0.95, 0.80 if forced == "dynamic_range" else 0.95))

    assert (choice.chosen, choice.rule) == (forced, forced)
    assert choice.reason == f"forced by --cloud-precision {forced}"


def test_an_int8_only_teacher_stage_ships_as_it_is(tmp_path: Path) -> None:
    config = dataclasses.replace(preset("quick"), teacher=TeacherConfig(precision="dynamic_range"))
    choice = choose(config, tmp_path, None)

    assert choice.chosen == "dynamic_range" and choice.fp32 is None and choice.source == tmp_path / "cloud.tflite"
    with pytest.raises(BuildError, match="exported dynamic_range only"):
        choose(dataclasses.replace(config, cloud_precision="fp32"), tmp_path, None)


def test_an_unknown_precision_is_refused_by_name() -> None:
    with pytest.raises(BuildError, match="--cloud-precision must be auto, fp32 or dynamic_range"):
        preset("quick", cloud_precision="int4")
