"""Teacher fine-tuning speed: seconds per optimiser step for length groupings and XLA, side by side.

    python bench/teacher_speed.py [--steps 150] [--repeats 2] [--out bench/results/teacher_speed.json]

The full preset's teacher (MiniLM, layers from `train_from_layer` up trained on cached lower-layer states),
on CLINC150's training texts. For each variant: the lower-layer states once (part of the stage's cost),
then `--steps` optimiser steps drawn from the variant's own length-grouped plan; variants are interleaved
over `--repeats` rounds and the median taken. The projected stage time is lower states + 5 epochs of steps.
Speed only: the groupings are exact (pads are masked) and XLA compiles the same graph, so accuracy is
settled by a full build, not here. Run it alone on the machine: it is a timing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

VARIANTS = {
    "groups_16_32": {"group_widths": (16,), "jit_compile": False},  # the build's grouping before this bench
    "groups_8_12_16_24_32": {"group_widths": (8, 12, 16, 24), "jit_compile": False},
    "groups_16_32_xla": {"group_widths": (16,), "jit_compile": True},
    "groups_8_12_16_24_32_xla": {"group_widths": (8, 12, 16, 24), "jit_compile": True},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "data" / "clinc150" / "data_full.json")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "teacher_speed.json")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    args = parser.parse_args()

    import numpy as np

    from model_build.artifact import TOKENIZER_FILE, machine
    from model_build.config import preset
    from model_build.data.dataset import load_dataset
    from model_build.teacher.finetune import Teacher
    from model_build.teacher.minilm import minilm_dir
    from modelpack.tokenizer import TextTokenizer

    config = preset("full")
    dataset = load_dataset(args.data, seed=0)
    tokenizer = TextTokenizer(minilm_dir() / TOKENIZER_FILE, max_seq_len=config.max_seq_len,
                              length_buckets=config.length_buckets)
    ids = tokenizer.encode(dataset.train.texts, pad_to=config.max_seq_len)
    labels = np.asarray(dataset.train.labels)
    epochs_steps = math.ceil(len(ids) / config.teacher.batch_size) * config.teacher.epochs
    lengths = (ids != 0).sum(axis=1)
    samples: dict[str, dict[str, list[float]]] = {v: {"lower_s": [], "step_s": []} for v in args.variants}
    for round_ in range(args.repeats):
        for name in args.variants:
            options = VARIANTS[name]
            teacher = Teacher(dataclasses.replace(config.teacher, max_steps=args.steps), dataset.num_labels)
            lower = _time_lower_states(teacher, ids, lengths, options["group_widths"])
            start = time.perf_counter()
            teacher.train(ids, labels, **options)
            train_s = time.perf_counter() - start - lower  # train() computes the lower states first
            # The first steps of each shape trace (and with XLA compile) the graph: part of the real cost,
            # spread over the whole run; measured here over `--steps` steps, so a small overestimate.
            samples[name]["lower_s"].append(lower)
            samples[name]["step_s"].append(train_s / args.steps)
            print(f"[round {round_ + 1}] {name}: lower states {lower:.1f} s, {train_s / args.steps:.3f} s/step",
                  file=sys.stderr, flush=True)
    results = {}
    for name, got in samples.items():
        lower, step = statistics.median(got["lower_s"]), statistics.median(got["step_s"])
        results[name] = {**{k: list(v) if isinstance(v, tuple) else v for k, v in VARIANTS[name].items()},
                         "lower_states_s": round(lower, 2), "s_per_step": round(step, 4),
                         "projected_stage_s": round(lower + step * epochs_steps, 1)}
    base = results.get("groups_16_32")
    if base:
        for row in results.values():
            row["speedup_vs_groups_16_32"] = round(base["projected_stage_s"] / row["projected_stage_s"], 3)
    out = {"benchmark": "teacher_speed", "steps_timed": args.steps, "repeats": args.repeats,
           "steps_per_stage": epochs_steps, "train_texts": len(ids),
           "lengths": {"p50": int(np.median(lengths)), "p90": int(np.quantile(lengths, 0.9)),
                       "max": int(lengths.max())},
           "machine": machine(), "variants": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


def _time_lower_states(teacher, ids, lengths, widths) -> float:
    start = time.perf_counter()
    low = 0
    for width in (*[w for w in widths if w < ids.shape[1]], ids.shape[1]):
        mask = (lengths > low) & (lengths <= width)
        low = width
        if mask.any():
            teacher.lower_states(ids[mask, :width])
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
