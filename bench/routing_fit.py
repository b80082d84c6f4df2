"""Does the build's routing fit hold on new data? The routing rule (model_build.calibrate.fit
`fit_on_validation`: temperatures, the edge's oos logit bias, the escalation threshold and band) is chosen on
the validation split to reach `routing_target` (joint accuracy / the cloud's) at the least escalation; this
bench measures how far that promise carries to texts the fit never saw.

    python bench/routing_fit.py --artifact NAME=DIR [--artifact ...] [--folds 5] [--seed 0] [--out FILE]

Each artifact's manifest says what its build fit on: the build config (`build.config`: its preset with the
settings the fit reads, the data's seed and subset, `--negatives`, `--off-topic`; a relative path in it, as
the data's `data.path`, is relative to the repository's root) and the data file. Both are rebuilt as
model_build does (`model_build.stages.training_dataset`: the background class added again), the edge and the
cloud run once on validation and test (LiteRT), and every fit below reads those logits. Per artifact:

  folder, version, data    the artifact folder, its model_version, the data file read
  n                        validation and test texts
  routing_target           the build's target of joint accuracy / the cloud's
  shipped                  the manifest's own cascade on test: escalation_rate, joint_over_teacher (its
                           accuracy / the cloud alone's: everything escalated, no `oos` band, the cloud's own
                           oos rule), in_scope_accuracy (texts not labelled oos), oos_recall (oos texts
                           answered `oos`; null without any), and `rule`: the routing score, the band score
                           (null: no band), the edge's oos bias and the escalation rate expected on validation
  validation_expected      what the manifest promises: its routing's expected_escalation_rate and its target
  reproduced               refitting on validation with today's fit gives the manifest's routing score,
                           threshold, band score and band threshold, and its edge oos bias (false: the figures
                           below describe today's fit, not exactly the shipped one)
  cross_fit                the fit's noise on validation: K folds stratified by label (seeded by --seed), the
                           full fit on K-1 of them, its manifest's cascade applied to the one held out
                           (modelpack.routing.cascade). Out-of-fold joint_over_teacher and escalation_rate,
                           weighted as the fit weighs validation (calibration.traffic_weights at the fit's
                           traffic mix); `folds`: the held-out fold sizes
  corrected                the fit rerun at routing_target = min(1, target + max(0, target - out-of-fold
                           ratio)): what the fit's own optimism costs to undo. Measured on test as `shipped`,
                           with the `routing_target` used (null when the out-of-fold ratio is undefined)
  mle_bias                 the edge's oos logit bias that calibrates best instead of routing cheapest: on the
                           fit's own grid (fit.OOS_BIAS_GRID, or fit.BACKGROUND_BIAS_GRID for a background
                           class, and 0), the bias minimising the weighted validation NLL with the temperature
                           refitted at it (fit._calibrate_edge). `bias` and its `validation_nll`, the
                           `shipped_bias` and its `shipped_validation_nll`, and `forced_fit`: the full fit at
                           that bias, measured on test as `shipped`. Null when the fit searches no bias
                           (edge_oos_bias off, or no oos texts on validation)

The forced fit is the fit's own code: its bias search (which asks `fit._rule_rate` for each grid bias's
validation escalation) is served, for that call only, a free rule at the chosen bias and a hopeless one at
every other; the fit then refits at it as it does at its cheapest bias. The bias it ships is checked.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._args import named  # noqa: E402
from bench._output import emit  # noqa: E402
from model_build.artifact import ArtifactRunner, machine  # noqa: E402
from model_build.calibrate import calibration, fit  # noqa: E402
from model_build.config import BuildConfig, preset  # noqa: E402
from model_build.data.dataset import Dataset, Split  # noqa: E402
from model_build.errors import BuildError  # noqa: E402
from model_build.evaluate.measure import built_from  # noqa: E402
from modelpack.classifier import calibrated  # noqa: E402
from modelpack.manifest import ESCALATE_ALL, Manifest, load_manifest  # noqa: E402
from model_build.stages import training_dataset  # noqa: E402
from modelpack.routing import cascade  # noqa: E402

# The build config's settings the fit reads, or the data it fits on reads: passed to `preset` as they were.
# Not the student: `preset` builds it from its name (default cnn) and the fit never reads it.
FIT_SETTINGS = ("negatives", "off_topic", "max_false_reject", "routing_target", "traffic_oos_fraction",
                "edge_oos_band", "edge_oos_bias", "cloud_min_in_scope_accuracy", "subset_per_class", "seed")


@dataclass(frozen=True, eq=False)  # eq=False: arrays do not compare to one bool
class Logits:
    """One split's labels and both tiers' raw logits, row for row."""

    labels: np.ndarray
    edge: np.ndarray
    cloud: np.ndarray

    def rows(self, keep: np.ndarray) -> Logits:
        return Logits(self.labels[keep], self.edge[keep], self.cloud[keep])


class Served:
    """The runner `fit_on_validation` asks for the tiers' logits on the split it fits on, answering from
    `logits` (already computed, for exactly that split) instead of running the models again."""

    def __init__(self, logits: Logits):
        self._logits = logits

    def logits(self, which: str, split: Split) -> np.ndarray:
        if not np.array_equal(np.asarray(split.labels), self._logits.labels):
            raise ValueError(f"asked for {which} logits of another split ({len(split)} texts)")
        return {"edge": self._logits.edge, "cloud": self._logits.cloud}[which]


@dataclass(frozen=True, eq=False)
class Case:
    """One artifact with what its build fit on: the config, the data set (background class included) and
    both tiers' logits on its validation and test splits."""

    folder: Path
    manifest: Manifest
    config: BuildConfig
    dataset: Dataset
    val: Logits
    test: Logits

    @classmethod
    def run(cls, folder: Path, manifest: Manifest, config: BuildConfig, dataset: Dataset,
            test: Split) -> Case:
        """Both tiers run once on validation and on test (LiteRT)."""
        runner = ArtifactRunner(folder, manifest)

        def logits(split: Split) -> Logits:
            edge, cloud = runner.logits("edge", split), runner.logits("cloud", split)
            return Logits(np.asarray(split.labels), edge, cloud)

        return cls(folder, manifest, config, dataset, logits(dataset.val), logits(test))


def repo_path(path: str) -> Path:
    """A path from a manifest: relative ones are relative to the repository's root, as builds run there."""
    return Path(path) if Path(path).is_absolute() else REPO / path


def rebuild(folder: Path, manifest: Manifest) -> tuple[BuildConfig, Dataset, Split]:
    """The config and the data set the artifact's build fit on (as model_build.stages makes it), and the test
    split its metrics describe (`built_from`). Raises BuildError naming what is missing."""
    config_dict = (manifest.build or {}).get("config")
    data_path = (manifest.data or {}).get("path")
    if not isinstance(config_dict, dict) or "preset" not in config_dict:
        raise BuildError(f"{folder}: its manifest records no build config (build.config): not built by "
                         "model_build")
    if not data_path:
        raise BuildError(f"{folder}: its manifest records no data file (data.path)")
    overrides = {key: config_dict[key] for key in FIT_SETTINGS if key in config_dict}
    for key in ("negatives", "off_topic"):
        if overrides.get(key):
            overrides[key] = str(repo_path(overrides[key]))
    config = preset(config_dict["preset"], **overrides)
    path = repo_path(data_path)
    return config, training_dataset(config, path), built_from(folder, manifest, path).test


def cloud_only(manifest: Manifest) -> Manifest:
    """`manifest` escalating everything, without the edge's band: the cloud alone, with its own oos rule."""
    return dataclasses.replace(manifest, routing=dataclasses.replace(
        manifest.routing, threshold=ESCALATE_ALL, oos_threshold=None))


def answers(manifest: Manifest, logits: Logits) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cascade's answers, the cloud alone's, and which texts the cascade escalates."""
    oos = manifest.oos_index
    edge, cloud = calibrated(logits.edge, manifest.edge, oos), calibrated(logits.cloud, manifest.cloud, oos)
    joint, route = cascade(edge, cloud, manifest, cloud_logits=logits.cloud)
    teacher, _ = cascade(edge, cloud, cloud_only(manifest), cloud_logits=logits.cloud)
    return joint, teacher, route.escalate


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def rule(manifest: Manifest) -> dict[str, Any]:
    routing = manifest.routing
    return {"score": routing.score,
            "band": None if routing.oos_threshold is None else routing.oos_score or routing.score,
            "edge_oos_bias": manifest.edge.oos_logit_bias,
            "expected_escalation_rate": _rounded(routing.expected_escalation_rate)}


def on_test(manifest: Manifest, test: Logits) -> dict[str, Any]:
    """`manifest`'s cascade on the test split: escalation, joint / teacher, in-scope accuracy, oos recall."""
    joint, teacher, escalate = answers(manifest, test)
    y, oos = test.labels, manifest.oos_index
    inside = y != oos if oos is not None else np.ones(len(y), dtype=bool)
    right, teacher_right = (joint == y).mean(), (teacher == y).mean()
    return {"escalation_rate": _rounded(escalate.mean()),
            "joint_over_teacher": _rounded(right / teacher_right) if teacher_right > 0 else None,
            "in_scope_accuracy": _rounded((joint == y)[inside].mean()) if inside.any() else None,
            "oos_recall": _rounded((joint[~inside] == oos).mean()) if (~inside).any() else None,
            "rule": rule(manifest)}


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def same_rule(shipped: Manifest, refit: Manifest) -> bool:
    """The same routing scores, thresholds and edge oos bias (temperatures and expected rates aside)."""
    a, b = shipped.routing, refit.routing
    return (a.score, a.oos_score) == (b.score, b.oos_score) and _close(a.threshold, b.threshold) \
        and _close(a.oos_threshold, b.oos_threshold) \
        and _close(shipped.edge.oos_logit_bias, refit.edge.oos_logit_bias)


def fit_weights(case: Case) -> np.ndarray:
    """The validation texts' weights as fit_on_validation gives them: re-weighted to the fit's oos share."""
    y, oos = case.val.labels, case.dataset.oos_index
    is_oos = y == oos if oos is not None else np.zeros(len(y), dtype=bool)
    fraction = fit.traffic_fraction(case.config, case.dataset)
    return calibration.traffic_weights(is_oos, fraction if is_oos.any() else None)


def fold_ids(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each text's fold: every label's texts shuffled and dealt round the folds from a random one."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=int)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        fold[members] = (np.arange(members.size) + rng.integers(folds)) % folds
    return fold


def cross_fit(case: Case, folds: int, seed: int) -> tuple[dict[str, Any], float | None]:
    """The fit on K-1 folds of validation, applied to the one held out, for each fold: the out-of-fold
    figures, and the raw joint / teacher ratio (None when the cloud gets no held-out text right)."""
    y, w, fold = case.val.labels, fit_weights(case), fold_ids(case.val.labels, folds, seed)
    right, teacher_right, escalate = (np.zeros(len(y), dtype=bool) for _ in range(3))
    texts = case.dataset.val.texts
    for k in range(folds):
        held = fold == k
        if not held.any():
            continue
        part = Split(tuple(t for t, out in zip(texts, held) if not out), y[~held])
        fitted = fit.fit_on_validation(case.config, dataclasses.replace(case.dataset, val=part),
                                       Served(case.val.rows(~held)))
        joint, teacher, escalated = answers(fitted.apply(case.manifest), case.val.rows(held))
        right[held], teacher_right[held], escalate[held] = joint == y[held], teacher == y[held], escalated
    teacher_total = float(np.sum(w * teacher_right))
    ratio = float(np.sum(w * right)) / teacher_total if teacher_total > 0 else None
    return {"joint_over_teacher": _rounded(ratio),
            "escalation_rate": _rounded(np.average(escalate, weights=w)),
            "folds": [int(n) for n in np.bincount(fold, minlength=folds)]}, ratio


def corrected(case: Case, out_of_fold: float | None) -> dict[str, Any] | None:
    """The fit at its target raised by the shortfall the folds measured, on test."""
    if out_of_fold is None:
        return None
    target = case.config.routing_target
    raised = min(1.0, target + max(0.0, target - out_of_fold))
    fitted = fit.fit_on_validation(dataclasses.replace(case.config, routing_target=raised), case.dataset,
                                   Served(case.val))
    return {"routing_target": round(raised, 6)} | on_test(fitted.apply(case.manifest), case.test)


def searches_bias(case: Case) -> bool:
    """Whether fit_on_validation searches the edge's oos bias at all (as it decides)."""
    oos = case.dataset.oos_index
    return bool(case.config.edge_oos_bias and oos is not None and (case.val.labels == oos).any())


def bias_grid(case: Case) -> tuple[float, ...]:
    """The biases the fit tries, none included (as fit_on_validation chooses its grid)."""
    background = case.dataset.background or case.config.has_negatives
    return (0.0, *(fit.BACKGROUND_BIAS_GRID if background else fit.OOS_BIAS_GRID))


def validation_nll(case: Case, bias: float) -> float:
    """The weighted validation NLL of the edge calibrated at `bias` as the fit calibrates it (the temperature
    refitted at that bias: fit._calibrate_edge)."""
    y, w = case.val.labels, fit_weights(case)
    # _calibrate_edge reads the split's labels, weights and oos index only; no cloud answers are involved
    split = fit._Split(y, w, case.dataset.oos_index, cloud_pred=np.empty(0, dtype=int), fraction=None)
    _, probs = fit._calibrate_edge(case.val.edge, split, bias)
    chosen = np.clip(probs[np.arange(len(y)), y], 1e-12, None)
    return float(-np.sum(w * np.log(chosen)) / np.sum(w))


def forced_fit(case: Case, bias: float) -> fit.Fitted:
    """The full fit with its bias search made to choose `bias` (see the module's docstring)."""
    def rate(config: BuildConfig, logits: np.ndarray, split: Any, tried: float, entry: Any) -> float:
        return -1.0 if tried == bias else 2.0  # the search's own rate at no bias is in [0, 1]

    with mock.patch.object(fit, "_rule_rate", rate):
        fitted = fit.fit_on_validation(case.config, case.dataset, Served(case.val))
    if not _close(fitted.edge_oos_bias, bias):
        raise RuntimeError(f"the fit forced to oos bias {bias} shipped {fitted.edge_oos_bias}: "
                           "fit_on_validation no longer chooses its bias by fit._rule_rate")
    return fitted


def mle_bias(case: Case) -> dict[str, Any] | None:
    """The bias on the fit's grid minimising the validation NLL, and the full fit forced to it, on test."""
    if not searches_bias(case):
        return None
    nll = {bias: validation_nll(case, bias) for bias in bias_grid(case)}
    best = min(nll, key=lambda b: (nll[b], abs(b)))
    shipped = case.manifest.edge.oos_logit_bias
    return {"bias": best, "validation_nll": round(nll[best], 6), "shipped_bias": shipped,
            "shipped_validation_nll": round(validation_nll(case, shipped), 6),
            "forced_fit": on_test(forced_fit(case, best).apply(case.manifest), case.test)}


def routing_fit(case: Case, folds: int, seed: int) -> dict[str, Any]:
    """One artifact's row (the module's docstring describes each field)."""
    m = case.manifest
    refit = fit.fit_on_validation(case.config, case.dataset, Served(case.val)).apply(m)
    out_of_fold, ratio = cross_fit(case, folds, seed)
    return {
        "folder": str(case.folder), "version": m.model_version, "data": str(case.dataset.source_path),
        "n": {"validation": int(len(case.val.labels)), "test": int(len(case.test.labels))},
        "routing_target": case.config.routing_target,
        "shipped": on_test(m, case.test),
        "validation_expected": {"escalation_rate": _rounded(m.routing.expected_escalation_rate),
                                "target": m.routing.target_joint_over_teacher},
        "reproduced": same_rule(m, refit),
        "cross_fit": out_of_fold,
        "corrected": corrected(case, ratio),
        "mle_bias": mle_bias(case),
    }


def _found(folder: Path) -> tuple[Path, Manifest, BuildConfig, Dataset, Split]:
    """The artifact's manifest and what its build fit on."""
    manifest = load_manifest(folder)
    return (folder, manifest, *rebuild(folder, manifest))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--folds", type=int, default=5, help="validation folds (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the folds (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.folds < 2:
        parser.error(f"--folds {args.folds}: at least 2")
    artifacts = named(parser, "--artifact", args.artifact, _found)
    result = {"machine": machine() | {"python": platform.python_version()}, "split": "test",
              "folds": args.folds, "seed": args.seed,
              "results": {name: routing_fit(Case.run(*found), args.folds, args.seed)
                          for name, found in artifacts.items()}}
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
