"""The trained stages of a build: data, teacher, transfer set, student (the expensive, cached part).

Each stage is cached by the digest of its inputs (data, config, upstream stage, code version), so a re-run
that changes only calibration or routing options reuses the teacher and the student. Nothing that feeds a
key may change without bumping the stage's code version.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_build.artifact import CLOUD_FILE, EDGE_DYNAMIC_FILE, EDGE_FILE, EDGE_FP32_FILE, model_entry
from model_build.cache import StageCache, stage_key
from model_build.config import BuildConfig
from model_build.data.background import with_background
from model_build.data.dataset import Dataset, load_dataset, subset
from model_build.data.unlabeled import file_digest, load_feedback, load_unlabeled, texts_digest
from model_build.errors import DataError
from model_build.progress import StageTimer
from model_build.student.transfer import build_transfer_set
from model_build.teacher.minilm import EncoderConfig, build_tokenizer, minilm_dir
from model_build.tflite.convert import (
    MIN_REPRESENTATIVE,
    to_tflite_dynamic_range,
    to_tflite_fp32,
    to_tflite_int8,
)
from model_build.tflite.graph import float_ops, graph_ops
from model_build.tflite.run import model_logits
from modelpack.litert import LiteRTModel
from modelpack.tokenizer import TextTokenizer

# Bump when a stage's logic changes in a way that changes its output: invalidates its cache entries.
TEACHER_CODE_VERSION = 3
STUDENT_CODE_VERSION = 3
TRANSFER_CODE_VERSION = 1


@dataclass(frozen=True)
class Stages:
    dataset: Dataset
    teacher_dir: Path  # cloud.tflite (fp32 unless teacher.precision says otherwise), train_logits.npy
    student_dir: Path  # edge_int8.tflite, edge_fp32.tflite, edge_dynamic.tflite, graph.json
    teacher_key: str
    student_key: str


def training_dataset(config: BuildConfig, data_path: Path) -> Dataset:
    """The data set a build trains and fits on: the data (a preset's subset of it), with the background class
    of `--negatives` and `--off-topic` when given (model_build.data.background.with_background)."""
    dataset = subset(load_dataset(data_path, seed=config.seed), config.subset_per_class, seed=config.seed)
    if not config.has_negatives:
        return dataset
    own = load_unlabeled(config.off_topic) if config.off_topic else ()
    generic = load_unlabeled(config.negatives) if config.negatives else ()
    return with_background(dataset, generic, seed=config.seed, first=own)


def train_stages(config: BuildConfig, data_path: Path, cache: StageCache, timer: StageTimer) -> Stages:
    """Data, teacher and student: the expensive, cached part of a build (also used by bench/)."""
    with timer.stage("data"):
        dataset = training_dataset(config, data_path)
        negatives_digest = file_digest(config.negatives)  # None without
        if config.off_topic:  # only when given: the keys of builds without it stay as they were
            negatives_digest = {"negatives": negatives_digest, "off_topic": file_digest(config.off_topic)}
        tokenizer = build_tokenizer(config)
        train_ids = tokenizer.encode(dataset.train.texts, pad_to=config.max_seq_len)
    data_digest: dict[str, Any] = {"sha256": dataset.source_sha256, "subset_per_class": config.subset_per_class}
    if negatives_digest is not None:  # only when given: the keys of builds without it stay as they were
        data_digest["negatives"] = negatives_digest

    teacher_key = stage_key(
        "teacher", data=data_digest, teacher=config.teacher, seq=config.max_seq_len,
        seed=config.seed, code=TEACHER_CODE_VERSION,
    )
    with timer.stage("teacher"):
        teacher_dir, hit = cache.cached(
            "teacher", teacher_key, lambda d: _train_teacher(config, dataset, tokenizer, train_ids, d)
        )
        timer.mark_cached("teacher", hit)

    transfer_dir, extra = _transfer_stage(config, dataset, tokenizer, teacher_dir, teacher_key, cache, timer)
    _check_calibration_inputs(data_path, len(train_ids), transfer_dir)
    student_key = stage_key(
        "student", teacher=teacher_key, student=config.student, distill=config.distill,
        representative=config.representative_size, float_ops=config.gates.allowed_float_ops,
        code=STUDENT_CODE_VERSION, **extra,
    )
    with timer.stage("student"):
        student_dir, hit = cache.cached(
            "student", student_key,
            lambda d: _train_student(config, dataset, train_ids, np.load(teacher_dir / "train_logits.npy"), d,
                                     transfer_dir),
        )
        timer.mark_cached("student", hit)
    return Stages(dataset, teacher_dir, student_dir, teacher_key, student_key)


def _transfer_stage(
    config: BuildConfig, dataset: Dataset, tokenizer: TextTokenizer, teacher_dir: Path, teacher_key: str,
    cache: StageCache, timer: StageTimer,
) -> tuple[Path | None, dict[str, Any]]:
    """The teacher-labelled transfer set (when the config asks for one), and the student key's extra
    inputs."""
    extra: dict[str, Any] = {}
    transfer_dir: Path | None = None
    if config.transfer.augment_copies or config.unlabeled or config.feedback:
        # Feedback enters the key by its texts only when given: keys of builds without it stay as they were.
        feedback = {} if not config.feedback else {"feedback": texts_digest(load_feedback(config.feedback)[0])}
        if config.feedback and config.feedback_copies:
            feedback["feedback_copies"] = config.feedback_copies
        transfer_key = stage_key(
            "transfer", teacher=teacher_key, transfer=config.transfer, unlabeled=file_digest(config.unlabeled),
            seq=config.max_seq_len, seed=config.seed, code=TRANSFER_CODE_VERSION, **feedback,
        )
        with timer.stage("transfer"):
            transfer_dir, hit = cache.cached(
                "transfer", transfer_key,
                lambda d: _label_transfer_set(config, dataset, tokenizer, teacher_dir, d),
            )
            timer.mark_cached("transfer", hit)
        extra["transfer"] = transfer_key  # absent without a transfer set: earlier cache entries stay valid
        if config.feedback and config.feedback_weight != 1.0:
            extra["feedback_weight"] = config.feedback_weight
    if config.prune:
        extra["prune"] = (config.prune, config.prune_epochs)
    return transfer_dir, extra


def _check_calibration_inputs(data_path: Path, n_train: int, transfer_dir: Path | None) -> None:
    """Enough real inputs for int8 calibration, checked before training the student, not after."""
    transferred = sum(json.loads((transfer_dir / "transfer.json").read_text())["counts"].values()) \
        if transfer_dir else 0
    if n_train + transferred < MIN_REPRESENTATIVE:
        raise DataError(f"{data_path}: {n_train} training texts; int8 calibration needs at least "
                        f"{MIN_REPRESENTATIVE} real inputs: add teacher-labelled ones with --augment N or "
                        "--unlabeled FILE")


def _label_transfer_set(config: BuildConfig, dataset: Dataset, tokenizer: TextTokenizer, teacher_dir: Path,
                        folder: Path) -> None:
    """The teacher's logits on the transfer set (augmented and unlabelled texts), through LiteRT."""
    unlabeled = load_unlabeled(config.unlabeled) if config.unlabeled else ()
    feedback, textless = load_feedback(config.feedback) if config.feedback else ((), 0)
    in_test = len(set(feedback) & set(dataset.test.texts))
    if textless or in_test:
        print(f"[build] feedback: {len(feedback)} texts, {textless} record(s) without text (hash mode) skipped, "
              f"{in_test} of them in the test split (its metrics then include texts the student saw)",
              file=sys.stderr)
    # Validation texts never enter training (they fit the temperatures and thresholds); feedback texts may be
    # test texts (a device's real traffic): they are kept, and counted.
    exclude = tuple(dataset.val.texts) + tuple(t for t in dataset.test.texts if t not in set(feedback))
    transfer = build_transfer_set(config.transfer, dataset.train.texts, dataset.train.labels, unlabeled,
                                  exclude=exclude, seed=config.seed, feedback=feedback,
                                  feedback_copies=config.feedback_copies)
    # The teacher stage's own export labels the transfer set (fp32 unless teacher.precision says otherwise),
    # whichever precision the cloud ships later (teacher.cloud_precision): the student learns from the
    # best signal there is (its train logits are the Keras teacher's, fp32, too), and its cache key stays
    # independent of a choice made after it, so changing the cloud's precision never re-trains the student.
    entry = model_entry(teacher_dir, CLOUD_FILE, config.teacher.precision, dataset.num_labels)
    teacher = LiteRTModel((teacher_dir / CLOUD_FILE).read_bytes(), entry, num_threads=2)
    logits = model_logits(teacher, tokenizer, transfer.texts, batch_size=64, desc="teacher labels transfer set")
    np.save(folder / "ids.npy", tokenizer.encode(transfer.texts, pad_to=config.max_seq_len))
    np.save(folder / "logits.npy", logits)
    (folder / "transfer.json").write_text(json.dumps({"counts": transfer.counts(), "kinds": transfer.kinds,
                                                      "feedback_in_test_split": in_test}))


def _train_teacher(config: BuildConfig, dataset: Dataset, tokenizer: TextTokenizer, train_ids, folder: Path):
    # Keras and TensorFlow are imported here, when the teacher trains: a build whose stages are cached never
    # imports them (nor does `python -m model_build --help`).
    from model_build.teacher.finetune import Teacher

    teacher = Teacher(config.teacher, dataset.num_labels, seed=config.seed)
    teacher.train(train_ids, np.asarray(dataset.train.labels))
    np.save(folder / "train_logits.npy", teacher.logits(train_ids))
    # A fixed sequence length keeps the whole float graph in XNNPACK (a dynamic one splits it in 13
    # pieces); runtimes pad the cloud model's input to it (the manifest says so in its input shape).
    model = teacher.export_model(config.max_seq_len)
    convert = to_tflite_dynamic_range if config.teacher.precision == "dynamic_range" else to_tflite_fp32
    (folder / CLOUD_FILE).write_bytes(convert(model))


def _train_student(config: BuildConfig, dataset: Dataset, train_ids, teacher_logits, folder: Path,
                   transfer_dir: Path | None = None):
    # Keras and TensorFlow: imported when the student trains, as for the teacher.
    from model_build.student.distill import TransferData, distill_student

    transfer = None
    if transfer_dir is not None:
        kinds = json.loads((transfer_dir / "transfer.json").read_text())["kinds"]
        weight = {"unlabeled": config.transfer.unlabeled_weight, "feedback": config.feedback_weight}
        weights = np.array([weight.get(k, 1.0) for k in kinds], dtype=np.float32)
        transfer = TransferData(np.load(transfer_dir / "ids.npy"), np.load(transfer_dir / "logits.npy"), weights)
    model = distill_student(config, dataset, train_ids, teacher_logits, transfer)
    rng = np.random.default_rng(config.seed)
    # Real inputs for int8 calibration: the training texts, and the transfer set's when they are too few.
    pool = train_ids if transfer is None or len(train_ids) >= config.representative_size \
        else np.concatenate([train_ids, transfer.ids.astype(train_ids.dtype)])
    pick = rng.choice(len(pool), size=min(config.representative_size, len(pool)), replace=False)
    if config.student.architecture == "transformer":
        int8 = _transformer_int8(config, model, pool[pick], folder)
    else:
        int8 = to_tflite_int8(model, pool[pick], allowed_float_ops=config.gates.allowed_float_ops)
    (folder / EDGE_FILE).write_bytes(int8)
    (folder / EDGE_FP32_FILE).write_bytes(to_tflite_fp32(model))
    (folder / EDGE_DYNAMIC_FILE).write_bytes(to_tflite_dynamic_range(model))  # for bench/quantization.py
    ops = graph_ops(int8)
    (folder / "graph.json").write_text(json.dumps({
        "ops": sorted({op.name for op in ops}),
        "op_count": len(ops),
        "float_ops": float_ops(int8),
    }))


def _transformer_int8(config: BuildConfig, model, representative: np.ndarray, folder: Path) -> bytes:
    """The transformer student's int8 file: its channel-equalised twin (the same function in float,
    student.transformer.equalize), calibrated on the same texts padded as serving pads them (each
    cut to its own length bucket: attention's int8 ranges depend on how much of a row is padding). The
    trained float model is kept beside it (student.keras) so conversion can be redone without training."""
    # Keras and TensorFlow: imported when the student trains, as for the teacher.
    from model_build.student.distill import bucket_rows
    from model_build.student.transformer import equalize

    model.save(folder / "student.keras")
    equalized = equalize(model, config.student, EncoderConfig.from_dir(minilm_dir()), representative)
    by_bucket = [representative[rows, :width] for width, rows in bucket_rows(representative, config.length_buckets)]
    return to_tflite_int8(equalized, by_bucket, allowed_float_ops=config.gates.allowed_float_ops)
