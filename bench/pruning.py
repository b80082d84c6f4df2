"""Structured L1 pruning of the edge student at 0 / 30 / 50 %: accuracy, int8 size, latency, routing.

    python -m model_build build --preset full --unlabeled data/clinc150/all_wiki_sents.txt --out A0
    python -m model_build build --preset full --unlabeled data/clinc150/all_wiki_sents.txt --prune 0.3 --out A30
    python -m model_build build --preset full --unlabeled data/clinc150/all_wiki_sents.txt --prune 0.5 --out A50
    python bench/pruning.py A0 A30 A50 [--out bench/results/pruning.json]

The builds share the cached teacher and transfer set (same cache folder), so only the student differs.
Accuracy and routing figures are read from each build's own metrics.json (through the LiteRT interpreter,
test split). Latencies are measured here, all int8 models side by side in one process, interleaved
(`side_by_side_ms_b1` / `_b32`: medians over CLINC150 test texts), because the builds' own figures come from
separate runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def row(folder: Path) -> dict:
    m = json.loads((folder / "metrics.json").read_text())
    e, f, r = m["edge_int8"], m.get("edge_fp32", {}), m["routing"]
    config = json.loads((folder / "manifest.json").read_text())["build"]["config"]
    return {
        "artifact": folder.name, "prune": config.get("prune", 0.0),
        "edge_int8_in_scope_accuracy": e["in_scope_accuracy"], "edge_int8_oos_recall": e.get("oos_recall"),
        "edge_int8_accuracy_drop_vs_fp32": e.get("accuracy_drop_vs_fp32"), "edge_int8_ece": e["ece"],
        "int8_bytes": e["size_bytes"], "int8_weight_bytes": e.get("weight_bytes"),
        "latency_ms_b1": e["latency_ms_b1"], "latency_ms_b32": e["latency_ms_b32"],
        "fp32_latency_ms_b1": f.get("latency_ms_b1"), "fp32_latency_ms_b32": f.get("latency_ms_b32"),
        "escalation_rate": r["escalation_rate"], "joint_over_teacher": r["joint_over_teacher"],
        "student_stage_s": m["timings_s"].get("student"), "gates_passed": m.get("gates", {}).get("passed"),
        "machine": m.get("machine"),
    }


def side_by_side(folders: list[Path], *, repeats: int) -> dict[int, dict[str, float]]:
    sys.path.insert(0, str(REPO_ROOT))
    from model_build.data.dataset import load_dataset
    from model_build.tflite.run import latency_inputs, median_latency_ms
    from modelpack.litert import LiteRTModel
    from modelpack.manifest import load_manifest
    from modelpack.tokenizer import TextTokenizer

    manifests = {f.name: load_manifest(f) for f in folders}
    first = folders[0]
    tok = manifests[first.name].tokenizer
    tokenizer = TextTokenizer(first / tok.file, max_seq_len=tok.max_seq_len, length_buckets=tok.length_buckets)
    texts = list(load_dataset(manifests[first.name].data["path"], seed=0).test.texts)
    models = {f.name: LiteRTModel((f / manifests[f.name].edge.file).read_bytes(), manifests[f.name].edge)
              for f in folders}
    return {batch: median_latency_ms(models, latency_inputs(tokenizer, texts, batch),
                                     repeats=repeats if batch == 1 else max(20, repeats // 4))
            for batch in (1, 32)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "pruning.json")
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    rows = sorted((row(folder) for folder in args.artifacts), key=lambda r: r["prune"])
    by_name = {r["artifact"]: r for r in rows}
    for batch, ms in side_by_side(args.artifacts, repeats=args.repeats).items():
        for name, value in ms.items():
            by_name[name][f"side_by_side_ms_b{batch}"] = round(value, 4)
    out = {"benchmark": "pruning", "split": "test (CLINC150, 18 % oos)", "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
