"""The cloud refusing on its energy plus the pretrained encoder's nearest-neighbour similarity: a simulation on
built artifacts (`bench/results/open_set.json` → `cloud_pretrained_knn`), not a build option.

For each text, `sim` is the cosine similarity to the nearest labelled in-scope training text in the sentence
embedding of the *pretrained* all-MiniLM-L6-v2 (the package the teacher starts from, not fine-tuned). The
cloud's score is its energy (log-sum-exp of its raw logits over the intents, what the shipped rule reads) plus
`w` × `sim`, both standardised on the in-scope validation texts. Its threshold is cut so that it refuses as
many in-scope validation texts among those the edge escalates as the artifact's own rule does (the same
budget); the edge, its band and its escalation threshold are the artifact's. Reports, on the in-scope test
texts and each out-of-domain file: refused, answered with an intent, escalated; and each score's AUROC.

    python bench/cloud_knn.py --artifact full=DIR --data kept.csv --ood far=ood_far.txt --ood near=ood_near.txt \
        [--weight 0.5 --weight 1] [--out FILE]

Needs TensorFlow (the pretrained encoder runs through the build's Keras port, fp32): run it from the build's
environment. About two minutes per 100-intent artifact on the 2-core AMD EPYC, most of it embedding texts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._args import add_artifact_and_ood_args, named  # noqa: E402
from bench._output import emit  # noqa: E402
from model_build.artifact import machine  # noqa: E402
from model_build.data.unlabeled import load_unlabeled  # noqa: E402
from model_build.evaluate.measure import built_from  # noqa: E402
from model_build.errors import BuildError  # noqa: E402
from model_build.evaluate.ood import auroc  # noqa: E402
from model_build.tflite.run import classifier_logits  # noqa: E402
from modelpack.classifier import Classifier  # noqa: E402
from modelpack.manifest import Manifest, load_manifest  # noqa: E402
from modelpack.nearest import nearest_similarity  # noqa: E402
from modelpack.routing import cloud_answer, decide  # noqa: E402
from modelpack.scores import neg_energy  # noqa: E402

BATCH = 128


class PretrainedEmbedder:
    """all-MiniLM-L6-v2 as it is installed: normalised mean-pooled sentence embeddings (Keras, fp32)."""

    def __init__(self) -> None:
        from model_build.teacher.encoder import build_encoder
        from model_build.teacher.minilm import EncoderConfig, load_weights, minilm_dir
        from modelpack.tokenizer import TextTokenizer

        config = EncoderConfig.from_dir(minilm_dir())
        self.model = build_encoder(config, load_weights(minilm_dir())).full_model(None, normalize=True)
        self.tokenizer = TextTokenizer(minilm_dir() / "tokenizer.json", max_seq_len=64, length_buckets=(16, 32, 64))
        self.width = config.hidden_size

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.width), dtype=np.float32)
        order = np.argsort([len(t) for t in texts])  # similar lengths batch together: less padding
        for start in range(0, len(texts), BATCH):
            idx = order[start:start + BATCH]
            ids = self.tokenizer.encode([texts[i] for i in idx]).astype("int32")
            out[idx] = self.model(ids, training=False).numpy()
        return out


def standardised(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return (x - ref.mean()) / ref.std()


@dataclass(frozen=True)
class Measured:
    """An artifact's in-scope validation and test texts and the out-of-domain files (`parts`), each text's
    nearest-neighbour similarity in the pretrained embedding (`sim`), and both tiers' raw logits."""

    manifest: Manifest
    parts: dict[str, list[str]]
    y_test: np.ndarray
    sim: dict[str, np.ndarray]
    tiers: dict[str, Classifier]
    logits: dict[str, dict[str, np.ndarray]]


def measure(folder: Path, data: Path | None, ood: dict[str, tuple[str, ...]], embed: PretrainedEmbedder) -> Measured:
    """What both simulations read (this one and `bench/edge_knn.py`): embeddings and both tiers' logits."""
    manifest = load_manifest(folder)
    dataset = built_from(folder, manifest, data)

    def in_scope(split: Any) -> tuple[list[str], np.ndarray]:
        keep = np.asarray(dataset.in_scope_mask(split))
        return [t for t, k in zip(split.texts, keep) if k], np.asarray(split.labels)[keep]

    train, _ = in_scope(dataset.train)
    (val, _), (test, y_test) = in_scope(dataset.val), in_scope(dataset.test)
    parts = {"val": val, "test": test, **{name: list(texts) for name, texts in ood.items()}}
    bank = embed(train)
    sim = {p: nearest_similarity(embed(texts), bank.T) for p, texts in parts.items()}
    tiers = {tier: Classifier(manifest, folder, tier) for tier in ("edge", "cloud")}
    logits = {tier: {p: classifier_logits(m, texts) for p, texts in parts.items()} for tier, m in tiers.items()}
    return Measured(manifest, parts, y_test, sim, tiers, logits)


def simulate(folder: Path, data: Path | None, ood: dict[str, tuple[str, ...]], weights: Sequence[float],
             embed: PretrainedEmbedder) -> dict[str, Any]:
    measured = measure(folder, data, ood, embed)
    manifest, parts, y_test, sim = measured.manifest, measured.parts, measured.y_test, measured.sim
    tiers, logits = measured.tiers, measured.logits
    probs = {tier: {p: tiers[tier].calibrate(z) for p, z in logits[tier].items()} for tier in tiers}
    oos = manifest.oos_index
    energy = {p: neg_energy(logits["cloud"][p], oos) for p in parts}
    route = {p: decide(probs["edge"][p], manifest.routing, oos) for p in parts}
    shipped = {p: cloud_answer(probs["cloud"][p], manifest.cloud, oos, logits=logits["cloud"][p]) for p in parts}
    budget = int(((shipped["val"] == oos) & route["val"].escalate).sum())
    rows = {"shipped": _outcomes(manifest, probs, route, shipped, y_test, ood)}
    argmax = {p: probs["cloud"][p].argmax(axis=1) for p in parts}
    for w in weights:
        score = {p: standardised(energy[p], energy["val"]) + w * standardised(sim[p], sim["val"]) for p in parts}
        asked = route["val"].escalate & (argmax["val"] != oos)  # an `oos` argmax is refused either way
        extra = budget - int((route["val"].escalate & (argmax["val"] == oos)).sum())
        ranked = np.sort(score["val"][asked])
        cut = ranked[extra] if 0 <= extra < len(ranked) else -np.inf
        answers = {p: np.where(score[p] < cut, oos, argmax[p]) for p in parts}
        rows[f"energy_plus_{w:g}_sim"] = _outcomes(manifest, probs, route, answers, y_test, ood)
    aurocs = {}
    for name in ood:
        summed = {p: standardised(energy[p], energy["val"]) + standardised(sim[p], sim["val"]) for p in ("test", name)}
        aurocs[name] = {"energy": round(auroc(energy["test"], energy[name]), 4),
                        "sim": round(auroc(sim["test"], sim[name]), 4),
                        "sum": round(auroc(summed["test"], summed[name]), 4)}
    return {"version": manifest.model_version, "cloud_budget_val_refusals": budget, "auroc": aurocs,
            "cascade": rows}


def _outcomes(manifest: Manifest, probs: dict[str, dict[str, np.ndarray]], route: dict[str, Any],
              cloud: dict[str, np.ndarray], y_test: np.ndarray, ood: dict[str, Any]) -> dict[str, float]:
    oos = manifest.oos_index

    def answers(part: str) -> np.ndarray:
        out = probs["edge"][part].argmax(axis=1)
        out[route[part].edge_oos] = oos
        out[route[part].escalate] = cloud[part][route[part].escalate]
        return out

    test = answers("test")
    row = {"in_scope_refused": float((test == oos).mean()), "in_scope_joint_accuracy": float((test == y_test).mean()),
           "in_scope_escalated": float(route["test"].escalate.mean())}
    for name in ood:
        row[f"{name}_answered_in_scope"] = float((answers(name) != oos).mean())
        row[f"{name}_escalated"] = float(route[name].escalate.mean())
    return {k: round(v, 4) for k, v in row.items()}


def _checked(folder: Path) -> Path:
    manifest = load_manifest(folder)
    if manifest.oos_index is None or manifest.cloud.oos_score != "neg_energy":
        raise BuildError(f"{folder}: the cloud has no energy oos rule (models.cloud.oos_score) to compare with")
    if manifest.cloud.neighbours is not None:
        raise BuildError(f"{folder}: its cloud already reads the neighbours (--neighbours on): nothing to simulate")
    return folder


def run(doc: str, checked: Callable[[Path], Path], simulate_one: Callable[..., dict[str, Any]],
        default_weights: list[float], argv: list[str] | None) -> int:
    """The command line of both simulations (this one and `bench/edge_knn.py`)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_artifact_and_ood_args(p)
    p.add_argument("--weight", action="append", type=float,
                   help=f"of the similarity (default: {', '.join(f'{w:g}' for w in default_weights)})")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    folders = named(p, "--artifact", args.artifact, checked)
    ood = named(p, "--ood", args.ood, load_unlabeled, what="FILE")
    embed = PretrainedEmbedder()
    result = {"machine": machine(), "ood_sizes": {k: len(v) for k, v in ood.items()},
              "artifacts": {name: simulate_one(folder, args.data, ood, args.weight or default_weights, embed)
                            for name, folder in folders.items()}}
    emit(result, args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(__doc__, _checked, simulate, [0.5, 1.0], argv)


if __name__ == "__main__":
    raise SystemExit(main())
