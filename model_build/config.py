"""Build configuration: one frozen object, from a named preset plus a few CLI overrides.

Every setting of a build is here, each room's part included (TeacherConfig, StudentConfig,
TransformerStudentConfig, TransferConfig, DistillConfig, Gates): reading a configuration imports no
Keras, and the rooms read their part from here. Stage keys hash these classes' reprs (their names and
fields, not the module they live in)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from model_build.errors import BuildError


@dataclass(frozen=True)
class TeacherConfig:
    train_from_layer: int = 4  # 0 = full fine-tuning (embeddings stay frozen either way)
    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    dropout: float = 0.1
    label_smoothing: float = 0.0  # of the cross-entropy the teacher is fine-tuned with (0: none)
    max_steps: int | None = None  # cap on optimiser steps (quick preset)
    precision: str = "fp32"  # of the exported TFLite model: fp32 | dynamic_range


Architecture = Literal["bag", "cnn", "transformer"]


@dataclass(frozen=True)
class StudentConfig:
    """Architecture of a student. ``bag``: masked mean of embeddings + MLP. ``cnn``: 1-D convolutions of
    several widths over the embeddings + global max pool + MLP. The defaults are the recommended student
    (bench/results/student_search.md): embed_dim 384 takes the teacher's word embeddings unprojected."""

    architecture: Architecture = "cnn"
    embed_dim: int = 384
    kernel_sizes: tuple[int, ...] = (1, 2, 3)  # cnn only
    filters: int = 128  # cnn only: channels per kernel size
    conv_layers: int = 1  # cnn only: stacked convs per branch (the extra ones are width 3)
    hidden: tuple[int, ...] = (256,)  # MLP widths after pooling
    dropout: float = 0.2  # before each Dense
    embed_dropout: float = 0.1  # drops whole token vectors of the embedded sequence
    seq_len: int = 32  # longest sequence served (tokenizer truncation); the bag's reciprocal table size
    max_tokens: int | None = None  # ids kept by build_vocab_map (None: every id seen in training)


@dataclass(frozen=True)
class TransformerStudentConfig:
    """A transformer student cut from the teacher's own pretrained MiniLM (model_build.student.transformer):
    ``layers`` of its 6 blocks in order, at its width (384), keeping ``heads`` of the 12 attention heads and
    ``intermediate`` of the 1,536 feed-forward units of each block (the ones with the largest weight norms).
    A class of its own, not more fields on StudentConfig: the CNN's student cache key (the config's repr)
    stays what it was."""

    architecture: Literal["transformer"] = "transformer"
    layers: tuple[int, ...] = (0, 1)
    heads: int = 12
    intermediate: int = 1536
    # Added to the attention scores of pad keys. Not BERT's -1e4: the int8 score tensor's range covers this
    # value, so a huge one would leave the real scores a handful of int8 steps. exp(-12) ~ 6e-6 per pad key.
    pad_score: float = -12.0
    dropout: float = 0.1  # attention probabilities, block outputs and the pooled sentence
    seq_len: int = 32  # longest sequence served (tokenizer truncation); the pooling's reciprocal table size
    max_tokens: int | None = None  # ids kept by build_vocab_map (None: every id seen in training)


@dataclass(frozen=True)
class TransferConfig:
    augment_copies: int = 0  # augmented copies of each training text (0: none)
    word_dropout: float = 0.2  # dropout copies: each word dropped with this probability (one always kept)
    splice_share: float = 0.5  # of the augmented copies, the share that splices two texts of different labels
    unlabeled_weight: float = 1.0  # loss weight of a teacher-labelled text, against 1 for a labelled one
    max_unlabeled: int | None = None  # keep at most this many unlabelled texts (a seeded sample)

    def __post_init__(self) -> None:
        if self.augment_copies < 0 or not 0.0 <= self.word_dropout < 1.0 or not 0.0 <= self.splice_share <= 1.0:
            raise ValueError(f"bad transfer settings: {self}")
        if not self.unlabeled_weight >= 0.0 or (self.max_unlabeled is not None and self.max_unlabeled < 1):
            raise ValueError(f"bad transfer settings: {self}")


@dataclass(frozen=True)
class DistillConfig:
    epochs: int = 12
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 2.0  # softens the teacher's logits for the KL term
    alpha: float = 0.7  # weight of the KL term; 1 - alpha on the hard-label cross-entropy
    oos_weight: float = 1.0  # loss weight of out-of-scope training texts (CLINC has 100 vs 100 per intent)


@dataclass(frozen=True)
class Gates:
    """Promises the int8 edge model must keep. A broken one is recorded in metrics.json, the report and
    the manifest (publish then refuses the artifact); with --strict the build also exits non-zero."""

    max_int8_accuracy_drop: float = 0.005  # vs the float student, fraction of examples
    # Quantized weights / float weights of the same student (fixed bytes such as the id map, which no
    # quantization shrinks, are reported beside it, not counted: they made a smaller vocabulary fail).
    max_int8_size_ratio: float = 0.26
    allowed_float_ops: tuple[str, ...] = ()  # op names allowed to compute in float in the int8 graph
    # Not a failure but a choice: the dynamic-range int8 teacher (~4x smaller, faster in the Lambda) ships
    # when its validation accuracy is at most this far below the fp32 teacher's; otherwise fp32 does
    # (model_build.teacher.cloud_precision; metrics.json teacher.precision_choice).
    max_cloud_int8_accuracy_drop: float = 0.003


DEFAULT_FALSE_REJECT = 0.02  # a background class's false-reject budget when none is given (--max-false-reject)


@dataclass(frozen=True)
class BuildConfig:
    preset: str
    teacher: TeacherConfig
    student: StudentConfig | TransformerStudentConfig
    distill: DistillConfig
    gates: Gates = field(default_factory=Gates)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    unlabeled: str | None = None  # a file of unlabelled texts the teacher labels for the student (--unlabeled)
    # Texts known to lie outside every intent (--negatives): for data without an oos label, a background
    # class `oos` learnt from them (model_build.data.background.with_background). None: no background class.
    negatives: str | None = None
    # Off-topic requests from your own traffic (--off-topic): background-class texts drawn before any of the
    # negatives (with_background's `first`). None: none.
    off_topic: str | None = None
    # The share of in-domain validation texts the cascade may refuse as `oos` (--max-false-reject): the
    # cloud's oos threshold and the edge's band are capped at it (thresholds.cap_false_reject). None:
    # DEFAULT_FALSE_REJECT for a background class; no cap for data with an oos label, whose validation oos
    # texts let the fit weigh what a refusal buys (on CLINC150 a 2 % cap cost 6 pt of joint oos recall).
    max_false_reject: float | None = None

    def false_reject_budget(self, background: bool) -> float | None:
        return self.max_false_reject if self.max_false_reject is not None or not background \
            else DEFAULT_FALSE_REJECT
    feedback: str | None = None  # the edge's feedback (store, export or folder) added to the transfer set
    feedback_weight: float = 1.0  # loss weight of a feedback text against 1 for a labelled one (--feedback-weight)
    feedback_copies: int = 0  # word-dropout copies of each feedback text, teacher-labelled too (--feedback-copies)
    prune: float = 0.0  # structured L1 pruning: this share of conv filters and hidden units dropped (--prune)
    prune_epochs: int = 3  # distillation fine-tuning epochs after pruning
    max_seq_len: int = 32  # CLINC150: p99 21 tokens, longest 33
    length_buckets: tuple[int, ...] = (8, 16, 32)
    representative_size: int = 400  # real training texts for int8 calibration (>= 200)
    # Joint accuracy >= this x teacher accuracy on validation data, at the lowest escalation. The goal is
    # 0.99 on unseen traffic: fit for 0.99 on CLINC150's validation split, the threshold gave 0.989 on its
    # test split; 0.995 gave 0.993 (bench/results/full_build/), so the default keeps that margin.
    routing_target: float = 0.995
    traffic_oos_fraction: float | str = "test"  # number, "test" or "val": the traffic mix assumed
    # The edge answers `oos` itself below a second, lower threshold when that escalates less for the same
    # target (deferral.choose_deferral); False keeps the one-threshold rule.
    edge_oos_band: bool = True
    # Fit a bias on the edge's oos logit with its temperature (calibrate.fit.OOS_BIAS_GRID): the one
    # whose routing escalates least on validation ships (manifest models.edge.oos_logit_bias).
    edge_oos_bias: bool = True
    cloud_min_in_scope_accuracy: float = 0.95  # floor when choosing the cloud's oos confidence threshold
    # The cloud model's precision: "auto" (Gates.max_cloud_int8_accuracy_drop decides), "fp32" or
    # "dynamic_range" (--cloud-precision). Chosen after training: no stage key depends on it.
    cloud_precision: str = "auto"
    # The cloud's neighbour offset (model_build.teacher.neighbours, --neighbours on): its oos rule also reads
    # how far a text lies from every labelled training text in the pretrained encoder's embedding. Off by
    # default: measured, it helps builds with --negatives and not the default open set
    # (bench/results/open_set.md, "The cloud's neighbours").
    neighbours: bool = False
    subset_per_class: int | None = None  # quick preset: keep this many training texts per label
    latency_repeats: int = 200
    seed: int = 0

    @property
    def has_negatives(self) -> bool:
        """Out-of-scope texts to add (--negatives or --off-topic): a background class on data without oos."""
        return bool(self.negatives or self.off_topic)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _quick() -> BuildConfig:
    return BuildConfig(
        preset="quick",
        teacher=TeacherConfig(train_from_layer=5, epochs=1, learning_rate=5e-4, max_steps=60),
        student=StudentConfig(architecture="cnn", embed_dim=32, filters=32, hidden=(64,)),
        distill=DistillConfig(epochs=3, batch_size=64, learning_rate=3e-3),
        representative_size=200,
        subset_per_class=12,
        # A toy student: its int32 biases (not shrunk by int8) weigh more beside its few weights.
        gates=Gates(max_int8_size_ratio=0.35),
        latency_repeats=20,
    )


def _full() -> BuildConfig:
    return BuildConfig(
        preset="full",
        # Measured on CLINC150 test (in-scope): layers 4-5 for 3 epochs at 2e-4 gave 95.9 %; layers 2-5
        # for 5 epochs at 1.5e-4 gave 96.5 % (bench/results/full_build/).
        teacher=TeacherConfig(train_from_layer=2, epochs=5, learning_rate=1.5e-4),
        # Twice the default student's width: with the transfer set and the oos bias, escalation at the
        # routing target 13.5 -> 9.9 % on CLINC150 test (9.5 % expected on validation), int8 file 2.5 ->
        # 3.2 MB, about twice the student stage's time (bench/results/cascade/README.md).
        student=StudentConfig(filters=256, hidden=(512,)),
        distill=DistillConfig(),
        # One teacher-labelled augmented copy of each training text (with --unlabeled texts, if given):
        # measured on CLINC150 with its wiki pool, edge OOS recall 9.8 % -> 49 % (docs/results.md, the full
        # build).
        transfer=TransferConfig(augment_copies=1),
    )


def _fast() -> BuildConfig:
    """A real model in a few minutes, for `make up` on a fresh machine: the full transfer set, the default
    (narrower) student, a teacher tuning only its top two layers for 3 epochs (measured: docs/results.md, "Presets")."""
    return dataclasses.replace(
        _full(), preset="fast",
        teacher=TeacherConfig(train_from_layer=4, epochs=3, learning_rate=2e-4),
        student=StudentConfig(),  # the narrower student: `make up`'s first answer stays within minutes
        distill=DistillConfig(epochs=6),
    )


PRESETS = {"quick": _quick, "fast": _fast, "full": _full}
STUDENTS = ("cnn", "transformer")


def _transformer(config: BuildConfig) -> BuildConfig:
    """The preset with the transformer student (--student transformer): blocks of the teacher's pretrained
    MiniLM, fine-tuned by the same distillation loss (AdamW, decay 0.01, batch 32, 3 epochs).
    Fast and full: MiniLM's first two blocks whole (bench/results/student_search.md, "Transformer students");
    quick: one block with 4 heads and 256 feed-forward units, a toy like its CNN."""
    if config.preset == "quick":
        student = TransformerStudentConfig(layers=(0,), heads=4, intermediate=256)
        distill = dataclasses.replace(config.distill, epochs=3, batch_size=32, learning_rate=5e-4, weight_decay=0.01)
    else:
        # 4e-4, not 1.5e-4: on CLINC150 (fast preset) raw int8 in-scope accuracy 93.3 -> 94.2 %.
        student = TransformerStudentConfig(layers=(0, 1))
        distill = dataclasses.replace(config.distill, epochs=3, batch_size=32, learning_rate=4e-4,
                                      weight_decay=0.01)
    return dataclasses.replace(config, student=student, distill=distill)


def preset(name: str, **overrides: Any) -> BuildConfig:
    if name not in PRESETS:
        raise BuildError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    config = PRESETS[name]()
    student = overrides.pop("student", "cnn")
    if student not in STUDENTS:
        raise BuildError(f"--student must be one of {', '.join(STUDENTS)}, got {student!r}")
    if student == "transformer":
        if overrides.get("prune"):
            raise BuildError("--prune applies to the CNN student only")
        config = _transformer(config)
    mix = overrides.pop("traffic_oos_fraction", config.traffic_oos_fraction)
    if isinstance(mix, str) and mix not in ("test", "val"):
        try:
            mix = float(mix)
        except ValueError:
            raise BuildError(f"--traffic-oos-fraction must be a number, 'test' or 'val', got {mix!r}") from None
    if isinstance(mix, float) and not 0.0 <= mix < 1.0:
        raise BuildError(f"--traffic-oos-fraction must be in [0, 1), got {mix}")
    prune = overrides.get("prune", 0.0)
    if not 0.0 <= prune < 1.0:
        raise BuildError(f"--prune must be in [0, 1), got {prune}")
    augment = overrides.pop("augment", None)
    if augment is not None:
        if augment < 0:
            raise BuildError(f"--augment must be >= 0, got {augment}")
        config = dataclasses.replace(config, transfer=dataclasses.replace(config.transfer, augment_copies=augment))
    unlabeled = overrides.get("unlabeled")
    if unlabeled is not None and not Path(unlabeled).is_file():
        raise BuildError(f"--unlabeled {unlabeled}: no such file")
    for flag in ("negatives", "off_topic"):
        path = overrides.get(flag)
        if path is not None and not Path(path).is_file():
            raise BuildError(f"--{flag.replace('_', '-')} {path}: no such file")
    reject = overrides.get("max_false_reject", config.max_false_reject)
    if reject is not None and not 0.0 <= reject < 0.5:
        raise BuildError(f"--max-false-reject must be in [0, 0.5), got {reject}")
    feedback = overrides.get("feedback")
    if feedback is not None and not Path(feedback).exists():
        raise BuildError(f"--feedback {feedback}: no such file or folder")
    weight = overrides.get("feedback_weight", config.feedback_weight)
    if not 0.0 < weight <= 100.0:
        raise BuildError(f"--feedback-weight must be in (0, 100], got {weight}")
    copies = overrides.get("feedback_copies", config.feedback_copies)
    if not 0 <= copies <= 50:
        raise BuildError(f"--feedback-copies must be in [0, 50], got {copies}")
    cloud = overrides.get("cloud_precision", config.cloud_precision)
    if cloud not in ("auto", "fp32", "dynamic_range"):
        raise BuildError(f"--cloud-precision must be auto, fp32 or dynamic_range, got {cloud!r}")
    target = overrides.get("routing_target", config.routing_target)
    if not 0.0 < target <= 1.0:
        raise BuildError(f"--routing-target must be in (0, 1], got {target}")
    return dataclasses.replace(config, traffic_oos_fraction=mix, **overrides)
