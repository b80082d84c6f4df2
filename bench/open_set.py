"""Out-of-scope rejection candidates side by side, on artifacts built from data without an oos label.

For each artifact and tier, each candidate score's AUROC (in-scope test texts vs out-of-domain texts the
build never saw) and the share of out-of-domain texts it catches at a threshold taken, as a build takes
it, on the *validation* split's in-scope texts (their 2nd / 5th percentile: 2 % / 5 % false rejects
expected). Then what the shipped cascade does (`model_build.evaluate.ood`, the runtime's rule).

    python bench/open_set.py --artifact base=DIR --artifact bg=DIR --data kept.csv \
        --ood near=ood_near.txt --ood far=ood_far.txt [--out bench/results/open_set.json]

Scores (higher: more surely in scope): `max_prob` (calibrated), `in_scope_max_prob` (the best intent,
the background class left out), `neg_energy` (logsumexp of the raw logits over the intents, Liu et al.
2020), `not_oos` (1 - the background class's probability).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._args import add_artifact_and_ood_args, named  # noqa: E402
from bench._output import emit  # noqa: E402
from model_build.artifact import machine  # noqa: E402
from model_build.calibrate.rejection import best_intent_score as rejection_score  # noqa: E402
from model_build.data.unlabeled import load_unlabeled  # noqa: E402
from model_build.evaluate.measure import built_from, oos_auroc  # noqa: E402
from model_build.evaluate.ood import in_scope_test, ood_report  # noqa: E402
from model_build.tflite.run import classifier_logits  # noqa: E402
from modelpack.classifier import Classifier  # noqa: E402
from modelpack.manifest import load_manifest  # noqa: E402
from modelpack.scores import neg_energy  # noqa: E402

FALSE_REJECTS = (0.02, 0.05)


def scores(logits: np.ndarray, model: Classifier) -> dict[str, np.ndarray]:
    probs = model.calibrate(logits)
    oos = model.oos_index
    out = {"max_prob": probs.max(axis=1),
           "in_scope_max_prob": rejection_score(probs, oos),
           "neg_energy": neg_energy(logits, oos)}
    if oos is not None:
        out["not_oos"] = 1.0 - probs[:, oos]
    return out


def candidates(folder: Path, data: Path | None, ood: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    manifest = load_manifest(folder)
    dataset = built_from(folder, manifest, data)
    val_texts = [t for t, keep in zip(dataset.val.texts, dataset.in_scope_mask(dataset.val)) if keep]
    test = in_scope_test(dataset)
    out: dict[str, Any] = {"version": manifest.model_version, "labels": len(manifest.labels),
                           "oos_label": manifest.oos_label, "tiers": {}}
    for tier in ("edge", "cloud"):
        model = Classifier(manifest, folder, tier)  # type: ignore[arg-type]
        val = scores(classifier_logits(model, val_texts), model)
        inside = scores(classifier_logits(model, test.texts), model)
        outside = {name: scores(classifier_logits(model, texts), model) for name, texts in ood.items()}
        rows: dict[str, Any] = {}
        for score in inside:
            row: dict[str, Any] = {}
            for name in ood:
                row[f"auroc_{name}"] = round(oos_auroc(np.r_[inside[score], outside[name][score]],
                                                       np.r_[np.zeros(len(inside[score]), bool),
                                                             np.ones(len(outside[name][score]), bool)]), 4)
            for fr in FALSE_REJECTS:
                cut = float(np.quantile(val[score], fr))
                row[f"test_false_reject@{fr:g}"] = round(float((inside[score] < cut).mean()), 4)
                for name in ood:
                    row[f"{name}_caught@{fr:g}"] = round(float((outside[name][score] < cut).mean()), 4)
            rows[score] = row
        out["tiers"][tier] = rows
    out["cascade"] = {name: ood_report(manifest, folder, test.texts, np.asarray(test.labels), texts).to_dict()
                      for name, texts in ood.items()}
    return out


def _checked(folder: Path) -> Path:
    load_manifest(folder)  # a missing or broken artifact stops the bench before any model runs
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_artifact_and_ood_args(p)
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    folders = named(p, "--artifact", args.artifact, _checked)
    ood = named(p, "--ood", args.ood, load_unlabeled, what="FILE")
    result = {"machine": machine(), "ood_sizes": {k: len(v) for k, v in ood.items()},
              "artifacts": {name: candidates(folder, args.data, ood) for name, folder in folders.items()}}
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
