"""What an edge model costs on the device: memory and latency by interpreter threads, artifact by artifact.

    python bench/edge_model_cost.py --artifact cnn=DIR --artifact transformer=DIR [--threads 1 2] [--out FILE]

Each (artifact, threads) pair runs in a fresh subprocess, so that its peak RSS is its own: the process
imports the runtime (modelpack, LiteRT; no TensorFlow), loads the artifact's edge model as the edge does
(`modelpack.Classifier`), then times `probabilities` on real texts (the artifact's own test split when the
data is there, else a fixed set) at batch 1 and batch 32, interleaving the two. Figures:

  rss_after_import_mb   peak RSS once the runtime is imported (the floor every model pays)
  rss_after_load_mb     peak RSS once the model is loaded
  rss_after_run_mb      peak RSS after the timed runs (buffers of the largest batch shape)
  b1_ms_p50 / p99       one text per call
  b32_ms_p50 / p99      32 texts per call
  model_mb              the edge file's size

Timings are medians of many calls on whatever else the machine is doing: run it alone (`load_average` is
recorded) and compare artifacts measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
TEXTS = (
    "what is my account balance", "set a timer for ten minutes", "how do i say thank you in french",
    "book a table for two at seven tonight", "what's the weather like tomorrow in boston",
    "remind me to call mom when i get home", "play some jazz in the living room",
    "how many calories are in a banana", "cancel my reservation at the steakhouse",
    "is there a lot of traffic on the way to work", "what time is it in tokyo right now",
    "transfer two hundred dollars from checking to savings",
)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def _texts(folder: Path) -> list[str]:
    """The artifact's own test texts when its data is at hand, else the fixed set, cycled to 256."""
    texts: list[str] = []
    try:
        from model_build.evaluate.measure import built_from  # needs the data the artifact names
        from modelpack.manifest import load_manifest

        texts = list(built_from(folder, load_manifest(folder), None).test.texts)[:256]
    except Exception:  # noqa: BLE001 - any failure: fall back to the fixed texts
        texts = []
    return texts or [TEXTS[i % len(TEXTS)] for i in range(256)]


def measure(folder: Path, texts: list[str], threads: int, calls: int) -> dict[str, Any]:
    """In this process (which has imported nothing of the build): import, load, time. Returns the figures of
    one (artifact, threads) pair."""
    before = _rss_mb()
    from modelpack.classifier import Classifier

    imported = _rss_mb()
    model = Classifier.from_folder(folder, "edge", num_threads=threads)
    loaded = _rss_mb()
    batch = texts[:32]
    model.probabilities(batch)  # warm both shapes up
    model.probabilities(texts[:1])
    b1: list[float] = []
    b32: list[float] = []
    for i in range(calls):
        t0 = time.perf_counter()
        model.probabilities([texts[i % len(texts)]])
        b1.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        model.probabilities(batch)
        b32.append((time.perf_counter() - t0) * 1e3)

    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)

    return {
        "threads": threads, "calls": calls, "texts": len(texts),
        "rss_before_import_mb": round(before, 1), "rss_after_import_mb": round(imported, 1),
        "rss_after_load_mb": round(loaded, 1), "rss_after_run_mb": round(_rss_mb(), 1),
        "b1_ms_p50": pct(b1, 0.5), "b1_ms_p99": pct(b1, 0.99),
        "b32_ms_p50": pct(b32, 0.5), "b32_ms_p99": pct(b32, 0.99),
        "model_mb": round((folder / model.manifest.edge.file).stat().st_size / 1e6, 2),
        "architecture": (model.manifest.build or {}).get("config", {}).get("student", {}).get("architecture"),
    }


def _child(folder: Path, texts_file: Path, threads: int, calls: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(folder), "--texts", str(texts_file), "--threads", str(threads),
         "--calls", str(calls)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise SystemExit(f"measuring {folder} with {threads} thread(s) failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--texts", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        sys.path.insert(0, str(REPO_ROOT))
        texts = json.loads(args.texts.read_text())
        print(json.dumps(measure(args.child, texts, args.threads[0], args.calls)))
        return 0
    if not args.artifact:
        parser.error("give at least one --artifact NAME=DIR")
    artifacts = {}
    for spec in args.artifact:
        name, sep, folder = spec.partition("=")
        if not sep or not (Path(folder) / "manifest.json").is_file():
            parser.error(f"--artifact {spec}: expected NAME=DIR with a manifest.json in DIR")
        artifacts[name] = Path(folder)
    machine = _machine()
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in artifacts}
    with tempfile.TemporaryDirectory() as tmp:
        texts_files = {}
        for name, folder in artifacts.items():
            texts_files[name] = Path(tmp) / f"{name}.json"
            texts_files[name].write_text(json.dumps(_texts(folder)))
        for threads in args.threads:  # artifacts interleaved at each thread count
            for name, folder in artifacts.items():
                results[name].append(_child(folder, texts_files[name], threads, args.calls))
    out = {"benchmark": "edge_model_cost", "machine": machine | {"load_average_after": list(os.getloadavg())},
           "artifacts": {name: str(folder) for name, folder in artifacts.items()}, "results": results}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
