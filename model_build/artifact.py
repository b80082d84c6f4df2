"""The artifact folder: its file names, the manifest entries read from the .tflite files themselves, the
draft manifest a build starts from, the provenance it records (version, git commit, machine), and its
models ready to run on a data set (`ArtifactRunner`: what the fit, the evaluation and the report measure)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from model_build.cache import stage_key
from model_build.config import BuildConfig
from model_build.data.background import APPENDED_OOS_LOGIT
from model_build.data.dataset import Dataset, Split
from model_build.jsonable import jsonable
from model_build.tflite.graph import input_details, output_details, size_breakdown
from model_build.tflite.run import classifier_logits, model_logits
from modelpack.classifier import Classifier
from modelpack.litert import LiteRTModel
from modelpack.manifest import (
    Manifest,
    ModelEntry,
    OutputSpec,
    RoutingEntry,
    TensorSpec,
    TokenizerEntry,
    load_manifest,
    sha256_file,
    write_manifest,
)

EDGE_FILE, CLOUD_FILE, TOKENIZER_FILE = "edge_int8.tflite", "cloud.tflite", "tokenizer.json"
EDGE_FP32_FILE = "edge_fp32.tflite"  # the float student, kept beside the int8 one for comparison
EDGE_DYNAMIC_FILE = "edge_dynamic.tflite"  # in the student stage only, for bench/quantization.py


def model_entry(folder: Path, file: str, precision: str, n_labels: int, *,
                appended_oos_logit: float | None = None) -> ModelEntry:
    """The manifest entry of a .tflite file, read from the file itself (tensors, quantization, digest).
    `appended_oos_logit`: the last of the `n_labels` is no output of the model's (`ModelEntry`)."""
    tflite = (folder / file).read_bytes()
    inputs = tuple(TensorSpec(t.name, t.dtype.lower(), t.shape_signature) for t in input_details(tflite))
    (out,) = output_details(tflite)
    dtype = out.dtype.lower()
    quantized = dtype in ("int8", "uint8")
    return ModelEntry(
        file=file,
        sha256=sha256_file(folder / file),
        size_bytes=len(tflite),
        precision=precision,
        inputs=inputs,
        output=OutputSpec(
            dtype=dtype, shape=(-1, n_labels - (appended_oos_logit is not None)), logits=True,
            scale=out.scale if quantized else None, zero_point=out.zero_point if quantized else None,
        ),
        temperature=1.0,
        appended_oos_logit=appended_oos_logit,
    )


# What a model entry says about its file; the rest (temperature, oos rule, bias, neighbours) is calibration.
_FILE_FIELDS = ("file", "sha256", "size_bytes", "precision", "inputs", "output")


def with_cloud_model(artifact: Path, tflite: Path, folder: Path) -> Manifest:
    """A copy of `artifact` in `folder` whose cloud model is the file `tflite` (e.g. the teacher at another
    precision), its manifest entry read from that file; the calibration (temperature, the oos rule and its
    score, the bias, a neighbour offset) stays the artifact's. For side-by-side measurements
    (bench/lambda_handler.py), not for shipping."""
    manifest = load_manifest(artifact)
    shutil.copytree(artifact, folder)
    shutil.copyfile(tflite, folder / manifest.cloud.file)
    quantized = size_breakdown((folder / manifest.cloud.file).read_bytes()).quantized_weight_bytes > 0
    entry = model_entry(folder, manifest.cloud.file, "dynamic_range" if quantized else "fp32", len(manifest.labels),
                        appended_oos_logit=manifest.cloud.appended_oos_logit)
    cloud = dataclasses.replace(manifest.cloud, **{f: getattr(entry, f) for f in _FILE_FIELDS})
    swapped = dataclasses.replace(manifest, cloud=cloud)
    write_manifest(swapped, folder)
    return swapped


def draft_manifest(config: BuildConfig, dataset: Dataset, data_path: Path, folder: Path,
                   version: str, *, cloud_precision: str | None = None) -> Manifest:
    """The manifest of the files in `folder` before calibration: temperatures 1, escalate nothing.
    `cloud_precision`: of the cloud file in `folder` (default: the teacher stage's, teacher.precision)."""
    n = dataset.num_labels
    appended = APPENDED_OOS_LOGIT if dataset.oos_appended else None
    return Manifest(
        model_version=version,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        labels=dataset.labels,
        oos_label=dataset.oos_label,
        tokenizer=TokenizerEntry(
            file=TOKENIZER_FILE, sha256=sha256_file(folder / TOKENIZER_FILE),
            max_seq_len=config.max_seq_len, length_buckets=config.length_buckets, pad_id=0,
        ),
        edge=model_entry(folder, EDGE_FILE, "int8", n, appended_oos_logit=appended),
        cloud=model_entry(folder, CLOUD_FILE, cloud_precision or config.teacher.precision, n,
                          appended_oos_logit=appended),
        routing=RoutingEntry(score="max_prob", threshold=0.0, target_joint_over_teacher=config.routing_target,
                             traffic_oos_fraction=None, expected_escalation_rate=0.0),
        data={
            "name": dataset.name, "path": str(data_path), "sha256": dataset.source_sha256,
            "sizes": {s: len(dataset.split(s)) for s in ("train", "val", "test")},
        },
        build={"preset": config.preset, "config": jsonable(config.to_dict()), "git_commit": git_commit()},
    )


def default_version(teacher_key: str, student_key: str) -> str:
    """The build day and a digest of the trained stages' keys."""
    day = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d")
    return f"{day}-{stage_key('version', t=teacher_key, s=student_key)[:8]}"


def machine() -> dict[str, Any]:
    """The CPU a build's timings were measured on: they mean nothing without it."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "arch": platform.machine()}


def git_commit() -> str | None:
    """HEAD's commit, marked ``-dirty`` when tracked files differ from it; None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


class ArtifactRunner:
    """The models of one artifact folder, ready to run on a data set: the manifest's two tiers as calibrated
    classifiers, and the float student (a file beside them no manifest entry describes) when it is there."""

    def __init__(self, folder: Path, manifest: Manifest):
        self.folder, self.manifest = folder, manifest
        self.edge = Classifier(manifest, folder, "edge")
        self.cloud = Classifier(manifest, folder, "cloud")
        self.tokenizer = self.edge.tokenizer
        fp32 = folder / EDGE_FP32_FILE
        self.edge_fp32 = _load_fp32(fp32, manifest.edge) if fp32.exists() else None

    def logits(self, which: str, split: Split) -> np.ndarray:
        desc = f"{which} {len(split)} texts"
        if which == "edge_fp32":
            assert self.edge_fp32 is not None, f"no {which} model in {self.folder}"
            return model_logits(self.edge_fp32, self.tokenizer, split.texts, desc=desc)
        return classifier_logits({"edge": self.edge, "cloud": self.cloud}[which], split.texts, desc=desc)

    def timed_models(self) -> dict[str, LiteRTModel]:
        """The interpreters whose latency metrics.json reports, by their metrics name."""
        timed = {"edge_int8": self.edge.model}
        if self.edge_fp32 is not None:
            timed["edge_fp32"] = self.edge_fp32
        timed["teacher"] = self.cloud.model
        return timed


def _load_fp32(path: Path, int8_entry: ModelEntry) -> LiteRTModel:
    entry = dataclasses.replace(
        int8_entry,
        file=path.name,
        precision="fp32",
        output=dataclasses.replace(int8_entry.output, dtype="float32", scale=None, zero_point=None),
    )
    return LiteRTModel(path.read_bytes(), entry)

