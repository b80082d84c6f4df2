"""`make demo SCENARIO=learn|pacing|shift`: the replay steps, their failure, their report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.demo.replays import REPLAYS, render, run_replay
from infra.demo.run import _parser
from infra.errors import StackError
from infra.processes import REPO_ROOT

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_accepts_every_replay_scenario() -> None:
    for scenario in REPLAYS:
        assert _parser().parse_args(["--scenario", scenario]).scenario == scenario


def test_a_failing_step_stops_the_scenario_naming_it(tmp_path: Path) -> None:
    logged: list[str] = []
    with pytest.raises(StackError, match="record the first half's escalations"):
        run_replay("learn", tmp_path / "not-an-artifact", data=tmp_path / "none.json", log=logged.append,
                   results=tmp_path)
    assert logged and "bench/learn.py record" in logged[0]
    assert not (tmp_path / "learn.json").exists()


def test_an_unknown_scenario_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="unknown replay scenario"):
        run_replay("weather", tmp_path, data=tmp_path, log=print, results=tmp_path)


def test_the_report_shows_each_part_and_the_result() -> None:
    result = json.loads((REPO / "bench" / "results" / "learn.json").read_text())
    text = render("learn", result)
    assert text.startswith("# `make demo SCENARIO=learn`")
    assert "## before" in text and "## after" in text and "## result" in text
    assert f"| `escalation_rate` | {result['after']['escalation_rate']:.4g} |" in text
    assert f"| `failed` | {result['failed']} |" in text


def test_shift_refits_an_artifact_fitted_for_another_mix_first(tmp_path: Path, tiny_artifact: Path) -> None:
    logged: list[str] = []
    with pytest.raises(StackError, match="refit the routing for the validation split's mix"):
        run_replay("shift", tiny_artifact, data=tmp_path / "none.json", log=logged.append, results=tmp_path)
    assert "--traffic-oos-fraction val" in logged[0]
    assert not (tmp_path / "shift.json").exists()


def test_shift_runs_a_validation_mix_artifact_as_it_is(tmp_path: Path, tiny_artifact: Path) -> None:
    import shutil

    artifact = tmp_path / "val-mix"
    shutil.copytree(tiny_artifact, artifact)
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest.setdefault("build", {}).setdefault("config", {})["traffic_oos_fraction"] = "val"
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    logged: list[str] = []
    with pytest.raises(StackError, match="fixed against shift-aware thresholds"):
        run_replay("shift", artifact, data=tmp_path / "none.json", log=logged.append, results=tmp_path)
    assert len(logged) == 1 and f"bench/shift.py --model-dir {artifact}" in logged[0]


def _with_unlabeled(tiny_artifact: Path, folder: Path, unlabeled: str) -> Path:
    import shutil

    shutil.copytree(tiny_artifact, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.setdefault("build", {}).setdefault("config", {})["unlabeled"] = unlabeled
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_a_rebuild_uses_the_unlabeled_pool_the_artifact_was_built_with(
        tmp_path: Path, tiny_artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = tmp_path / "pool.txt"
    pool.write_text("a sentence from elsewhere\n")
    artifact = _with_unlabeled(tiny_artifact, tmp_path / "a", str(pool))
    monkeypatch.delenv("UNLABELED", raising=False)  # the environment has no say: the build record does
    logged: list[str] = []
    with pytest.raises(StackError, match="refit the routing"):
        run_replay("shift", artifact, data=tmp_path / "none.json", log=logged.append, results=tmp_path)
    assert f"--unlabeled {pool}" in logged[0]


def test_a_rebuild_reads_the_stage_cache_the_build_would(
        tmp_path: Path, tiny_artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = tmp_path / "pool.txt"
    pool.write_text("a sentence from elsewhere\n")
    artifact = _with_unlabeled(tiny_artifact, tmp_path / "a", str(pool))
    for env, expected in ((str(tmp_path / "cache"), str(tmp_path / "cache")),
                          (None, str(REPO_ROOT / ".cache" / "model_build"))):
        if env is None:
            monkeypatch.delenv("MODEL_BUILD_CACHE", raising=False)
        else:
            monkeypatch.setenv("MODEL_BUILD_CACHE", env)
        logged: list[str] = []
        with pytest.raises(StackError, match="refit the routing"):
            run_replay("shift", artifact, data=tmp_path / "none.json", log=logged.append, results=tmp_path)
        assert f"--cache-dir {expected} " in logged[0] + " "


def test_a_rebuild_refuses_when_the_recorded_pool_is_missing(tmp_path: Path, tiny_artifact: Path) -> None:
    artifact = _with_unlabeled(tiny_artifact, tmp_path / "a", str(tmp_path / "gone.txt"))
    logged: list[str] = []
    with pytest.raises(StackError, match="which is not there: a rebuild without it would train another student"):
        run_replay("shift", artifact, data=tmp_path / "none.json", log=logged.append, results=tmp_path)
    assert logged == []  # refused before any step ran
