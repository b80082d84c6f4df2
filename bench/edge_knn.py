"""The edge refusing on its own score plus the pretrained encoder's nearest-neighbour similarity: a simulation on
built artifacts (`bench/results/open_set.json` → `edge_pretrained_knn`), not a build option.

`bench/cloud_knn.py` asks this of the cloud; here the *device* would run the pretrained all-MiniLM-L6-v2 beside
its student (the bound on anything that teaches the student what that encoder knows). The edge's band score
becomes its own score (the log of the band's best-intent probability, or its energy) plus `w` × `sim` (the
cosine similarity to the nearest labelled in-scope training text), both standardised on the in-scope
validation texts, cut so that the band refuses as many in-scope validation texts as the artifact's own band
(the same share of the budget). Texts it does not refuse are escalated by the artifact's own escalation test;
the cloud answers them by the artifact's rule (its neighbours included, if it has them). Reports, on the
in-scope test texts and each out-of-domain file: refused, answered with an intent, escalated; and AUROCs.

    python bench/edge_knn.py --artifact full=DIR --data kept.csv --ood far=ood_far.txt --ood near=ood_near.txt \
        [--weight 0.5 --weight 1] [--out FILE]

Needs TensorFlow (the pretrained encoder runs through the build's Keras port, fp32): run it from the build's
environment. About two minutes per 100-intent artifact on the 2-core AMD EPYC, most of it embedding texts.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cloud_knn import PretrainedEmbedder, measure, run, standardised  # noqa: E402
from model_build.errors import BuildError  # noqa: E402
from model_build.evaluate.ood import auroc  # noqa: E402
from modelpack.manifest import load_manifest  # noqa: E402
from modelpack.routing import Route, below, cloud_answer, decide  # noqa: E402
from modelpack.scores import manifest_band_score, neg_energy  # noqa: E402


def simulate(folder: Path, data: Path | None, ood: dict[str, tuple[str, ...]], weights: Sequence[float],
             embed: PretrainedEmbedder) -> dict[str, Any]:
    measured = measure(folder, data, ood, embed)
    manifest, parts, y_test, sim = measured.manifest, measured.parts, measured.y_test, measured.sim
    tiers, logits = measured.tiers, measured.logits
    edge = {p: tiers["edge"].calibrate(z) for p, z in logits["edge"].items()}
    oos = manifest.oos_index
    cloud = {p: cloud_answer(tiers["cloud"].calibrate(z), manifest.cloud, oos, logits=z)
             for p, z in logits["cloud"].items()}
    own = {"band": {p: np.log(np.clip(manifest_band_score(edge[p], manifest.routing, oos), 1e-12, None))
                    for p in parts},
           "energy": {p: neg_energy(logits["edge"][p], oos) for p in parts}}
    shipped = {p: decide(edge[p], manifest.routing, oos) for p in parts}
    refusals = int(shipped["val"].edge_oos.sum())

    def outcomes(route: dict[str, Route]) -> dict[str, float]:
        def answers(part: str) -> np.ndarray:
            out = edge[part].argmax(axis=1)
            out[route[part].edge_oos] = oos
            out[route[part].escalate] = cloud[part][route[part].escalate]
            return out

        test = answers("test")
        row = {"in_scope_refused": float((test == oos).mean()),
               "in_scope_joint_accuracy": float((test == y_test).mean()),
               "in_scope_escalated": float(route["test"].escalate.mean())}
        for name in ood:
            row[f"{name}_answered_in_scope"] = float((answers(name) != oos).mean())
            row[f"{name}_escalated"] = float(route[name].escalate.mean())
            row[f"{name}_answered_by_edge"] = float(route[name].edge_answers.mean())
        return {k: round(v, 4) for k, v in row.items()}

    rows = {"shipped": outcomes(shipped)}
    aurocs = {name: {"band": round(auroc(own["band"]["test"], own["band"][name]), 4),
                     "energy": round(auroc(own["energy"]["test"], own["energy"][name]), 4),
                     "sim": round(auroc(sim["test"], sim[name]), 4)} for name in ood}
    for base, score in own.items():
        for w in weights:
            summed = {p: standardised(score[p], score["val"]) + w * standardised(sim[p], sim["val"]) for p in parts}
            cut = np.sort(summed["val"])[refusals]
            refused = {p: summed[p] < cut for p in parts}
            route = {p: Route(refused[p], below(edge[p], manifest.routing.score, manifest.routing.threshold)
                              & ~refused[p]) for p in parts}
            rows[f"{base}_plus_{w:g}_sim"] = outcomes(route)
            for name in ood:
                aurocs[name][f"{base}_plus_{w:g}_sim"] = round(auroc(summed["test"], summed[name]), 4)
    return {"version": manifest.model_version, "edge_band_val_refusals": refusals, "auroc": aurocs,
            "cascade": rows}


def _checked(folder: Path) -> Path:
    manifest = load_manifest(folder)
    if manifest.oos_index is None or manifest.routing.oos_threshold is None:
        raise BuildError(f"{folder}: the edge has no oos band (routing.oos_threshold) to compare with")
    return folder


def main(argv: list[str] | None = None) -> int:
    return run(__doc__, _checked, simulate, [0.5, 1.0, 2.0], argv)


if __name__ == "__main__":
    raise SystemExit(main())
