"""fp32 vs dynamic-range vs full-int8 students: size, accuracy, ECE, p50 latency at batch 1 and 32.

All three files come from the same trained student (the build's cached student stage, trained if missing),
run through ai-edge-litert in one process with interleaved timing, so the ratios are comparable.

    .venv/bin/python bench/quantization.py [--preset full] [--data PATH] [--json] [--out bench/results/quantization.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="full", choices=["quick", "full"])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "quantization.json")
    args = parser.parse_args()

    import numpy as np

    from model_build.artifact import EDGE_DYNAMIC_FILE, EDGE_FILE, EDGE_FP32_FILE
    from model_build.cache import StageCache
    from model_build.calibrate import calibration
    from model_build.config import preset
    from model_build.data.dataset import default_data_path
    from model_build.progress import StageTimer
    from model_build.stages import train_stages
    from model_build.teacher.minilm import minilm_dir
    from model_build.tflite.graph import float_ops, output_quantization
    from model_build.tflite.run import latency_inputs, median_latency_ms, model_logits
    from modelpack.litert import LiteRTModel
    from modelpack.manifest import ModelEntry, OutputSpec, TensorSpec
    from modelpack.scores import softmax
    from modelpack.tokenizer import TextTokenizer

    config = preset(args.preset)
    stages = train_stages(config, Path(args.data or default_data_path()), StageCache(args.cache_dir), StageTimer())
    ds = stages.dataset
    tok = TextTokenizer(minilm_dir() / "tokenizer.json", max_seq_len=config.max_seq_len,
                        length_buckets=config.length_buckets)
    n = ds.num_labels
    variants = {"fp32": EDGE_FP32_FILE, "dynamic_range": EDGE_DYNAMIC_FILE, "int8": EDGE_FILE}
    models, rows = {}, {}
    for name, file in variants.items():
        data = (stages.student_dir / file).read_bytes()
        scale, zero = output_quantization(data)
        quantized = scale != 0.0
        entry = ModelEntry(
            file=file, sha256="0" * 64, size_bytes=len(data), precision="int8" if quantized else "fp32",
            inputs=(TensorSpec("input_ids", "int32", (-1, -1)),),
            output=OutputSpec(dtype="int8" if quantized else "float32", shape=(-1, n), logits=True,
                              scale=scale if quantized else None, zero_point=zero if quantized else None),
            temperature=1.0,
        )
        models[name] = LiteRTModel(data, entry)
        val_logits = model_logits(models[name], tok, ds.val.texts)
        test_logits = model_logits(models[name], tok, ds.test.texts)
        t = calibration.fit_temperature(val_logits, np.asarray(ds.val.labels))
        y = np.asarray(ds.test.labels)
        rows[name] = {
            "size_bytes": len(data),
            "accuracy": float((test_logits.argmax(1) == y).mean()),
            "ece_raw": calibration.ece(softmax(test_logits), y),
            "ece_calibrated": calibration.ece(softmax(test_logits, t), y),
            "temperature": t,
            "float_ops": len(float_ops(data)),
        }
    texts = list(ds.test.texts)
    for batch in (1, 32):
        ids = latency_inputs(tok, texts, batch)
        repeats = args.repeats if batch == 1 else max(20, args.repeats // 5)
        for name, ms in median_latency_ms(models, ids, repeats=repeats).items():
            rows[name][f"latency_ms_b{batch}"] = round(ms, 4)
    fp32 = rows["fp32"]
    for name, row in rows.items():
        row["size_vs_fp32"] = row["size_bytes"] / fp32["size_bytes"]
        row["speedup_b1_vs_fp32"] = fp32["latency_ms_b1"] / row["latency_ms_b1"]
        row["speedup_b32_vs_fp32"] = fp32["latency_ms_b32"] / row["latency_ms_b32"]
    result = {
        "benchmark": "quantization",
        "preset": args.preset,
        "student": asdict(config.student),
        "test_examples": len(texts),
        "variants": rows,
        "machine": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                    "processor": platform.processor() or "unknown", "runtime": "ai-edge-litert 2.3.0, 1 thread"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
