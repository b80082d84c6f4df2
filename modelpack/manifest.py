"""`manifest.json`: the one contract between model_build and the runtimes (edge container, cloud function).

Pure stdlib. `Manifest.from_dict` validates every field and names the bad one (every number finite and in
its range: a NaN threshold compares false, so it would silently turn routing off); `load_manifest` also
checks the SHA-256 of every file the manifest names, so a runtime never serves a file it did not expect.
model_build writes manifests with `Manifest.to_dict`, so one round-trip test pins the contract.

Every SHA-256 check of an artifact's files is made here (`verify_files`, `verify_file`, `check_sha256`):
the build's publish step, the edge runtime and the cloud's model store wrap these, so a corrupt file is
refused by the same rule, in the same words, wherever it is found.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from modelpack._fields import Reader, require_finite
from modelpack.errors import ChecksumMismatch, ManifestError
from modelpack.neighbours import NeighbourEntry, read_neighbours
from modelpack.scores import CLOUD_OOS_SCORES
from modelpack.shift import ShiftTable, read_shift_table

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
_DTYPES = frozenset({"int8", "uint8", "int32", "int64", "float32", "float16"})
_PRECISIONS = frozenset({"int8", "fp32", "dynamic_range", "fp16"})
# The range of each routing score (modelpack.scores) on calibrated probabilities; a threshold lies in it.
SCORE_RANGES: Mapping[str, tuple[float, float]] = {"max_prob": (0.0, 1.0), "margin": (0.0, 1.0),
                                                   "neg_entropy": (0.0, 1.0)}
_SCORES = frozenset(SCORE_RANGES)
# JSON has no infinities: the build writes "escalate none" (-inf) and "escalate all" (+inf) as these.
ESCALATE_NONE, ESCALATE_ALL = -1e9, 1e9
# Scores the edge's oos band may be cut on (modelpack.scores.band_score; all in [0, 1]).
BAND_SCORES = frozenset(SCORE_RANGES) | {"in_scope_max_prob"}
# The range of the cloud's oos threshold on each of its scores (modelpack.scores.CLOUD_OOS_SCORES; None:
# max_prob): a probability, or logit units for neg_energy (any finite number).
_OOS_THRESHOLD_RANGE: Mapping[str | None, dict[str, float]] = {
    None: {"low": 0.0, "high": 1.0}, "max_prob": {"low": 0.0, "high": 1.0}, "neg_energy": {}}
# Scores are computed in float64: neg_entropy of a uniform answer comes out at about -1e-16, not 0.
_SCORE_SLACK = 1e-9

Tier = Literal["edge", "cloud"]
Part = Literal["tokenizer", "edge", "cloud"]  # a file of the artifact, by the role it plays
PARTS: tuple[Part, ...] = ("tokenizer", "edge", "cloud")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]  # -1 marks a dynamic dimension


@dataclass(frozen=True)
class OutputSpec:
    dtype: str
    shape: tuple[int, ...]
    logits: bool  # True: pre-softmax scores (apply temperature, then softmax)
    scale: float | None = None  # quantization of an int8 output: real = scale * (q - zero_point)
    zero_point: int | None = None


@dataclass(frozen=True)
class ModelEntry:
    file: str
    sha256: str
    size_bytes: int
    precision: str
    inputs: tuple[TensorSpec, ...]
    output: OutputSpec
    temperature: float
    # Cloud only: below this score (`oos_score`) the cloud answers the out-of-scope label.
    oos_threshold: float | None = None
    # Added to the out-of-scope label's logit after the temperature (modelpack.scores.softmax); fitted on
    # validation with it. Absent (0) in manifests that have none.
    oos_logit_bias: float = 0.0
    # Cloud only: the score `oos_threshold` is cut on (modelpack.scores.CLOUD_OOS_SCORES): None or max_prob,
    # the calibrated max probability; neg_energy, the log-sum-exp of the raw logits over the intents.
    oos_score: str | None = None
    # The model has no output for the out-of-scope label (data without one: the build's rejection is its
    # thresholds' alone): runtimes append this raw logit as its column (`LiteRTModel.logits`), so low that
    # it takes no probability; every score and rule then reads the labels as the manifest lists them.
    appended_oos_logit: float | None = None
    # Cloud only: an offset from the text's nearest labelled training text added to all its logits
    # (modelpack.neighbours): its probabilities stay, its energy reads the distance too. None: no offset.
    neighbours: NeighbourEntry | None = None


@dataclass(frozen=True)
class TokenizerEntry:
    file: str
    sha256: str
    max_seq_len: int
    length_buckets: tuple[int, ...]  # batches are padded to the smallest bucket >= their longest text
    pad_id: int = 0


@dataclass(frozen=True)
class RoutingEntry:
    score: str  # max_prob | margin | neg_entropy, computed on the edge's calibrated probabilities
    threshold: float  # escalate when score < threshold
    target_joint_over_teacher: float
    traffic_oos_fraction: float | None  # the out-of-scope share of traffic the threshold assumes
    expected_escalation_rate: float
    # The edge's own `oos` answer: score < oos_threshold → the edge answers `oos_label` without asking the
    # cloud (a text it finds hopeless); oos_threshold <= score < threshold → the cloud. None: no such band.
    oos_threshold: float | None = None
    expected_edge_oos_rate: float = 0.0
    oos_score: str | None = None  # the score the band is cut on (modelpack.scores.BAND_SCORES); None: `score`
    # Per-group rates of this rule on the build's validation split, for a grid of thresholds: what a runtime
    # needs to re-derive `threshold` at another oos share (modelpack.shift). None: an older manifest.
    shift: ShiftTable | None = None


@dataclass(frozen=True)
class Manifest:
    model_version: str
    labels: tuple[str, ...]
    oos_label: str | None
    tokenizer: TokenizerEntry
    edge: ModelEntry
    cloud: ModelEntry
    routing: RoutingEntry
    data: Mapping[str, Any] = field(default_factory=dict)
    build: Mapping[str, Any] = field(default_factory=dict)
    created_at: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def oos_index(self) -> int | None:
        return None if self.oos_label is None else self.labels.index(self.oos_label)

    def model(self, tier: Tier) -> ModelEntry:
        """The entry of `tier`'s model."""
        return self.edge if tier == "edge" else self.cloud

    def files(self, parts: Iterable[Part] = PARTS) -> dict[str, str]:
        """The files of `parts` (by default every file the manifest names), mapped to their expected SHA-256."""
        files = {}
        for part in parts:
            entry = self.tokenizer if part == "tokenizer" else self.model(part)
            files[entry.file] = entry.sha256
            if isinstance(entry, ModelEntry) and entry.neighbours is not None:
                files.update(entry.neighbours.files())
        return files

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["models"] = {"edge": out.pop("edge"), "cloud": out.pop("cloud")}
        for entry in out["models"].values():  # manifests without a bias read exactly as before it existed
            if not entry["oos_logit_bias"]:
                del entry["oos_logit_bias"]
            if entry["oos_score"] is None:  # max_prob: manifests read exactly as before the choice existed
                del entry["oos_score"]
            if entry["appended_oos_logit"] is None:  # the model has every label's output
                del entry["appended_oos_logit"]
            if entry["neighbours"] is None:  # no neighbour offset: manifests read exactly as before it existed
                del entry["neighbours"]
        if self.routing.oos_threshold is None:  # a two-way manifest reads exactly as before the edge's oos band
            del out["routing"]["oos_threshold"], out["routing"]["expected_edge_oos_rate"]
        if self.routing.oos_score is None:
            del out["routing"]["oos_score"]
        if self.routing.shift is None:  # manifests without a shift table read exactly as before it existed
            del out["routing"]["shift"]
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Manifest:
        r = Reader(raw, "manifest")
        version = r.int("format_version")
        if version != FORMAT_VERSION:
            raise ManifestError(f"manifest.format_version is {version}; this runtime reads {FORMAT_VERSION}")
        labels = tuple(r.str_list("labels"))
        if len(set(labels)) != len(labels) or len(labels) < 2:
            raise ManifestError("manifest.labels must hold at least two distinct labels")
        oos_label = r.opt_str("oos_label")
        if oos_label is not None and oos_label not in labels:
            raise ManifestError(f"manifest.oos_label {oos_label!r} is not in manifest.labels")
        models = r.sub("models")
        manifest = cls(
            format_version=version,
            model_version=r.str("model_version"),
            created_at=r.opt_str("created_at") or "",
            labels=labels,
            oos_label=oos_label,
            tokenizer=_tokenizer(r.sub("tokenizer")),
            edge=_model(models.sub("edge"), len(labels)),
            cloud=_model(models.sub("cloud"), len(labels)),
            routing=_routing(r.sub("routing"), len(labels)),
            data=r.opt_mapping("data"),
            build=r.opt_mapping("build"),
        )
        if any(manifest.model(t).appended_oos_logit is not None for t in ("edge", "cloud")) \
                and labels[-1] != oos_label:
            raise ManifestError("manifest.models.*.appended_oos_logit is set: the oos_label must be the last label")
        if manifest.routing.oos_threshold is not None and oos_label is None:
            raise ManifestError("manifest.routing.oos_threshold is set, but there is no oos_label to answer with")
        for tier in ("edge", "cloud"):
            if manifest.model(tier).oos_logit_bias and oos_label is None:
                raise ManifestError(f"manifest.models.{tier}.oos_logit_bias is set, but there is no oos_label")
        if manifest.edge.neighbours is not None:
            raise ManifestError("manifest.models.edge.neighbours is set, but only the cloud runs a neighbour offset")
        if manifest.edge.oos_score is not None:
            raise ManifestError("manifest.models.edge.oos_score is set, but only the cloud has an oos threshold "
                                "(the edge's band is routing.oos_score)")
        shift = manifest.routing.shift
        if shift is not None and shift.oos_index != manifest.oos_index:
            raise ManifestError(f"manifest.routing.shift.oos_index is {shift.oos_index}, but oos_label "
                                f"{oos_label!r} is label {manifest.oos_index}")
        require_finite(manifest.data, "manifest.data")
        require_finite(manifest.build, "manifest.build")
        return manifest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def json_object(data: bytes | str, where: str) -> dict[str, Any]:
    """`data` (UTF-8 JSON) parsed into the object it must hold; a `ManifestError` naming `where` otherwise.
    The manifest and the publish pointer (`modelpack.pointer`) are both read through it."""
    try:
        raw = json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"{where} must hold a JSON object")
    return raw


def load_manifest(folder: Path | str, *, verify: bool = True) -> Manifest:
    """Read and validate `folder/manifest.json`; with `verify`, refuse any file whose SHA-256 differs."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"no {MANIFEST_NAME} in {folder}") from None
    manifest = Manifest.from_dict(json_object(data, str(path)))
    if verify:
        verify_files(manifest, folder)
    return manifest


def verify_files(manifest: Manifest, folder: Path | str, parts: Iterable[Part] = PARTS) -> None:
    """Refuse the artifact in `folder` unless every file of `parts` is there with the manifest's SHA-256:
    `ManifestError` for a missing file, `ChecksumMismatch` for a changed one. Files are hashed as they are
    read (a teacher model can be large); `verify_file` also hands back the bytes it checked."""
    for name, expected in manifest.files(parts).items():
        path = _named_file(Path(folder) / name)
        check_sha256(path, sha256_file(path), expected)


def verify_file(path: Path | str, sha256: str) -> bytes:
    """The bytes of the file at `path`, once their SHA-256 is `sha256`: load exactly these, and nothing
    written to the path after the check can be served. Raises as `verify_files` does."""
    data = _named_file(Path(path)).read_bytes()
    check_sha256(path, hashlib.sha256(data).hexdigest(), sha256)
    return data


def check_sha256(where: object, actual: str, expected: str) -> None:
    """Raise `ChecksumMismatch` naming `where` (a path, an S3 URI) unless `actual` is the manifest's `expected`
    digest: also the check of a file hashed while it downloads."""
    if actual != expected:
        raise ChecksumMismatch(f"{where}: SHA-256 {actual} does not match the manifest's {expected}")


def _named_file(path: Path) -> Path:
    if not path.is_file():
        raise ManifestError(f"{path} is named in the manifest but missing")
    return path


def write_manifest(manifest: Manifest, folder: Path) -> Path:
    # Validate what we write with the same reader the runtimes use.
    Manifest.from_dict(json.loads(json.dumps(manifest.to_dict())))
    path = Path(folder) / MANIFEST_NAME
    path.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path


def _tokenizer(r: Reader) -> TokenizerEntry:
    max_len = r.int("max_seq_len", minimum=2)
    buckets = r.raw.get("length_buckets")
    if (
        not isinstance(buckets, (list, tuple))
        or not buckets
        or not all(isinstance(b, int) and 0 < b <= max_len for b in buckets)
        or list(buckets) != sorted(set(buckets))
        or buckets[-1] != max_len
    ):
        raise r.fail("length_buckets", f"a strictly increasing list of lengths ending at max_seq_len={max_len}")
    return TokenizerEntry(
        file=r.file("file"),
        sha256=r.sha256("sha256"),
        max_seq_len=max_len,
        length_buckets=tuple(buckets),
        pad_id=r.int("pad_id", minimum=0),
    )


def _model(r: Reader, n_labels: int) -> ModelEntry:
    inputs_raw = r.required("inputs")
    if not isinstance(inputs_raw, (list, tuple)) or not inputs_raw:
        raise r.fail("inputs", "a non-empty list of tensor specs")
    inputs = []
    for i, spec in enumerate(inputs_raw):
        t = Reader(spec, f"{r.where}.inputs[{i}]")
        inputs.append(TensorSpec(name=t.str("name"), dtype=t.choice("dtype", _DTYPES), shape=t.shape("shape")))
    o = r.sub("output")
    output = OutputSpec(
        dtype=o.choice("dtype", _DTYPES),
        shape=o.shape("shape"),
        logits=o.bool("logits"),
        scale=o.opt_float("scale", low=0.0, low_open=True),
        zero_point=o.opt_int("zero_point"),
    )
    appended = r.opt_float("appended_oos_logit", low=-1e6, high=-10.0)
    width = n_labels - (appended is not None)  # an appended oos logit is no output of the model's
    if output.shape[-1] != width:
        raise ManifestError(f"{o.where}.shape ends in {output.shape[-1]}, but there are {n_labels} labels"
                            + (" (one of them appended: appended_oos_logit)" if appended is not None else ""))
    if output.dtype in ("int8", "uint8") and (output.scale is None or output.zero_point is None):
        raise ManifestError(f"{o.where}: a quantized output needs scale and zero_point")
    oos_score = r.opt_str("oos_score")
    if oos_score is not None and oos_score not in CLOUD_OOS_SCORES:
        raise r.fail("oos_score", f"one of {sorted(CLOUD_OOS_SCORES)}")
    return ModelEntry(
        file=r.file("file"),
        sha256=r.sha256("sha256"),
        size_bytes=r.int("size_bytes", minimum=1),
        precision=r.choice("precision", _PRECISIONS),
        inputs=tuple(inputs),
        output=output,
        temperature=r.float("temperature", low=1e-3, high=100.0),
        oos_threshold=r.opt_float("oos_threshold", **_OOS_THRESHOLD_RANGE[oos_score]),
        oos_logit_bias=r.opt_float("oos_logit_bias", low=-50.0, high=50.0) or 0.0,
        oos_score=oos_score,
        appended_oos_logit=appended,
        neighbours=read_neighbours(r.sub("neighbours")) if r.raw.get("neighbours") is not None else None,
    )


def _routing(r: Reader, n_labels: int) -> RoutingEntry:
    score = r.choice("score", _SCORES)
    low, high = SCORE_RANGES[score]
    threshold = r.float("threshold")
    in_range = low - _SCORE_SLACK <= threshold <= high + _SCORE_SLACK
    if not (in_range or threshold in (ESCALATE_NONE, ESCALATE_ALL)):
        raise r.fail("threshold", f"a number in [{low}, {high}] for score {score!r} "
                                   f"(or {ESCALATE_NONE:g} / {ESCALATE_ALL:g}: escalate none / all)")
    oos_score = r.raw.get("oos_score")
    if oos_score is not None and (not isinstance(oos_score, str) or oos_score not in BAND_SCORES):
        raise r.fail("oos_score", f"one of {sorted(BAND_SCORES)}")
    oos_threshold = r.opt_float("oos_threshold", low=low - _SCORE_SLACK, high=high + _SCORE_SLACK)
    # On the same score the band lies below the escalation threshold; on a score of its own it need not, nor
    # when nothing escalates (the edge alone meets the target: it answers or refuses, the cloud never asked)
    if oos_threshold is not None and oos_score in (None, score) \
            and threshold not in (ESCALATE_ALL, ESCALATE_NONE) and oos_threshold > threshold:
        raise r.fail("oos_threshold", f"at most the escalation threshold {threshold} (the edge answers oos "
                                       "below it, the cloud between the two)")
    return RoutingEntry(
        score=score,
        threshold=threshold,
        target_joint_over_teacher=r.float("target_joint_over_teacher", low=0.0, high=1.0),
        traffic_oos_fraction=r.opt_float("traffic_oos_fraction", low=0.0, high=1.0),
        expected_escalation_rate=r.float("expected_escalation_rate", low=0.0, high=1.0),
        oos_threshold=oos_threshold,
        expected_edge_oos_rate=r.float("expected_edge_oos_rate", low=0.0, high=1.0)
        if r.raw.get("expected_edge_oos_rate") is not None else 0.0,
        oos_score=oos_score,
        shift=None if r.raw.get("shift") is None else read_shift_table(
            r.sub("shift"), n_labels, low, high, (ESCALATE_NONE, ESCALATE_ALL)),
    )
