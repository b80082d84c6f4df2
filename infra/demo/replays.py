"""The cascade-economics replays as demo scenarios: `make demo SCENARIO=learn|pacing|shift`.

Each runs the replay of its benchmark on the artifact the demo serves (artifacts/latest, built first if
missing) and writes `bench/results/<scenario>.json` plus a short `<scenario>.md` beside it:

    learn   bench/learn.py record (the first half of the shuffled test split through the edge's routing,
            every escalation the cloud answers into a real feedback store), then the student rebuilt with
            `model_build build --feedback` (teacher, transfer set from the stage cache), then
            bench/learn.py compare (both models on the second half)
    pacing  bench/pacing.py: greedy against paced spending of half the budget over a compressed day
    shift   bench/shift.py: the fixed threshold against the shift-aware policy on validation-like then
            test-like traffic, on the artifact's models with the routing fitted for the validation split's
            mix (`--traffic-oos-fraction val`, refitted from the stage cache when the artifact assumed
            another mix); bench/shift.py writes its own report

Every step runs as a child process with its own progress on the terminal; a failing step stops the
scenario with its status and names the step.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from infra.errors import StackError
from infra.processes import REPO_ROOT

REPLAYS = ("learn", "pacing", "shift")
RESULTS = REPO_ROOT / "bench" / "results"
FEEDBACK_WEIGHT = "5"  # bench/results/learn.json: weight 5 (chosen on the measured half, as its note says)


def run_replay(scenario: str, model_dir: Path, *, data: Path, log: Callable[[str], None],
               results: Path = RESULTS, cache_dir: Path | None = None) -> dict[str, Any]:
    """Run one replay scenario; its result JSON, also written to results/<scenario>.json (+ .md)."""
    out = results / f"{scenario}.json"
    py = sys.executable
    if scenario == "learn":
        with tempfile.TemporaryDirectory(prefix="edge-learn-") as tmp:
            feedback, rebuilt = Path(tmp) / "feedback.sqlite", Path(tmp) / "learned"
            _step(log, "record the first half's escalations",
                  [py, "bench/learn.py", "record", "--model-dir", str(model_dir), "--feedback", str(feedback)])
            _step(log, "rebuild the student from the feedback (teacher from the stage cache)",
                  _rebuild(model_dir, data, rebuilt, cache_dir, "--feedback", str(feedback),
                           "--feedback-weight", FEEDBACK_WEIGHT))
            _step(log, "compare both models on the second half",
                  [py, "bench/learn.py", "compare", "--model-dir", str(model_dir), "--new", str(rebuilt),
                   "--out", str(out)])
    elif scenario == "pacing":
        _step(log, "greedy against paced spending", [py, "bench/pacing.py", "--model-dir", str(model_dir),
                                                     "--out", str(out)])
    elif scenario == "shift":
        with tempfile.TemporaryDirectory(prefix="edge-shift-") as tmp:
            fitted = model_dir
            if _traffic_mix(model_dir) != "val":  # the replay starts on validation-like traffic
                fitted = Path(tmp) / "val-mix"
                _step(log, "refit the routing for the validation split's mix (models from the stage cache)",
                      _rebuild(model_dir, data, fitted, cache_dir, "--traffic-oos-fraction", "val"))
            _step(log, "fixed against shift-aware thresholds",
                  [py, "bench/shift.py", "--model-dir", str(fitted), "--out", str(out)])
        return json.loads(out.read_text())  # bench/shift.py wrote its own, fuller report beside it
    else:
        raise StackError(f"unknown replay scenario {scenario!r}; choose one of {list(REPLAYS)}")
    result = json.loads(out.read_text())
    out.with_suffix(".md").write_text(render(scenario, result))
    return result


def _built_with(model_dir: Path) -> Mapping[str, Any]:
    """The `build` record of the artifact's manifest (preset, config)."""
    from modelpack.manifest import load_manifest

    return load_manifest(model_dir, verify=False).build


def _traffic_mix(model_dir: Path) -> Any:
    return _built_with(model_dir).get("config", {}).get("traffic_oos_fraction")


def _rebuild(model_dir: Path, data: Path, out: Path, cache_dir: Path | None, *options: str) -> list[str]:
    """The build command of `model_dir`'s preset and unlabeled pool with `options`: the stage cache supplies
    what they leave unchanged (the teacher always). The pool is the one the artifact's build record names,
    never the environment's: without it the transfer set, and so the student, would silently be another."""
    from model_build.cache import default_cache_dir  # the build's own default (MODEL_BUILD_CACHE), stdlib only

    built = _built_with(model_dir)
    preset = built.get("preset", "fast")
    command = [sys.executable, "-m", "model_build", "build", "--preset", str(preset), "--data", str(data),
               *options, "--out", str(out), "--cache-dir", str(cache_dir or REPO_ROOT / default_cache_dir())]
    recorded = built.get("config", {}).get("unlabeled")
    if recorded:
        unlabeled = REPO_ROOT / recorded  # relative to the repository, as the Makefile passes it
        if not unlabeled.is_file():
            raise StackError(f"{model_dir} was built with --unlabeled {recorded}, which is not there: a rebuild "
                             "without it would train another student (put the file back, or rebuild the artifact)")
        command += ["--unlabeled", str(unlabeled)]
    return command


def _step(log: Callable[[str], None], what: str, command: Sequence[str]) -> None:
    log(f"== {what}\n$ {' '.join(str(c) for c in command[1:])}")
    status = subprocess.call(list(command), cwd=REPO_ROOT)
    if status != 0:
        raise StackError(f"step '{what}' failed with status {status} (see its output above)")


def render(scenario: str, result: dict[str, Any]) -> str:
    """A short markdown report: the result's headline figures (every scalar), then whether it met its goal."""
    lines = [f"# `make demo SCENARIO={scenario}`", ""]
    for key in ("before", "after", "greedy", "paced", "fixed", "shift_aware"):
        part = result.get(key)
        if isinstance(part, dict):
            scalars = {k: v for k, v in part.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
            lines += [f"## {key}", "", "| figure | value |", "|---|---:|",
                      *(f"| `{k}` | {_fmt(v)} |" for k, v in scalars.items()), ""]
    top = {k: v for k, v in result.items() if isinstance(v, (int, float, str, bool)) and k != "note"}
    lines += ["## result", "", "| figure | value |", "|---|---:|", *(f"| `{k}` | {_fmt(v)} |" for k, v in top.items())]
    if "note" in result:
        lines += ["", str(result["note"])]
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
