"""`manifest.json`: the one contract between model_build and the runtimes (edge container, cloud function).

Pure stdlib. `Manifest.from_dict` validates every field and names the bad one (every number finite and in
its range: a NaN threshold compares false, so it would silently turn routing off); `load_manifest` also
checks the SHA-256 of every file the manifest names, so a runtime never serves a file it did not expect.
model_build writes manifests with `Manifest.to_dict`, so one round-trip test pins the contract.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from modelpack.errors import ChecksumMismatch, ManifestError

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
# Scores are computed in float64: neg_entropy of a uniform answer comes out at about -1e-16, not 0.
_SCORE_SLACK = 1e-9


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
    # Cloud only: below this calibrated confidence the cloud answers the out-of-scope label.
    oos_threshold: float | None = None


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

    def files(self) -> dict[str, str]:
        """Every file the manifest names, mapped to its expected SHA-256."""
        return {
            self.tokenizer.file: self.tokenizer.sha256,
            self.edge.file: self.edge.sha256,
            self.cloud.file: self.cloud.sha256,
        }

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["models"] = {"edge": out.pop("edge"), "cloud": out.pop("cloud")}
        if self.routing.oos_threshold is None:  # a two-way manifest reads exactly as before the edge's oos band
            del out["routing"]["oos_threshold"], out["routing"]["expected_edge_oos_rate"]
        if self.routing.oos_score is None:
            del out["routing"]["oos_score"]
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Manifest:
        r = _Reader(raw, "manifest")
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
            routing=_routing(r.sub("routing")),
            data=r.opt_mapping("data"),
            build=r.opt_mapping("build"),
        )
        if manifest.routing.oos_threshold is not None and oos_label is None:
            raise ManifestError("manifest.routing.oos_threshold is set, but there is no oos_label to answer with")
        _require_finite(manifest.data, "manifest.data")
        _require_finite(manifest.build, "manifest.build")
        return manifest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(folder: Path | str, *, verify: bool = True) -> Manifest:
    """Read and validate `folder/manifest.json`; with `verify`, refuse any file whose SHA-256 differs."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"no {MANIFEST_NAME} in {folder}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"{path} must hold a JSON object")
    manifest = Manifest.from_dict(raw)
    if verify:
        verify_files(manifest, folder)
    return manifest


def verify_files(manifest: Manifest, folder: Path) -> None:
    for name, expected in manifest.files().items():
        path = folder / name
        if not path.is_file():
            raise ManifestError(f"{path} is named in the manifest but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ChecksumMismatch(f"{path}: SHA-256 {actual} does not match the manifest's {expected}")


def write_manifest(manifest: Manifest, folder: Path) -> Path:
    # Validate what we write with the same reader the runtimes use.
    Manifest.from_dict(json.loads(json.dumps(manifest.to_dict())))
    path = Path(folder) / MANIFEST_NAME
    path.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path


class _Reader:
    """Typed field access with errors that name the full path of the bad field."""

    def __init__(self, raw: Any, where: str) -> None:
        if not isinstance(raw, Mapping):
            raise ManifestError(f"{where} must be an object")
        self.raw, self.where = raw, where

    def _get(self, key: str) -> Any:
        if key not in self.raw:
            raise ManifestError(f"{self.where}.{key} is missing")
        return self.raw[key]

    def _fail(self, key: str, what: str) -> ManifestError:
        return ManifestError(f"{self.where}.{key} must be {what}, got {self.raw.get(key)!r}")

    def sub(self, key: str) -> _Reader:
        return _Reader(self._get(key), f"{self.where}.{key}")

    def str(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str) or not value:
            raise self._fail(key, "a non-empty string")
        return value

    def opt_str(self, key: str) -> str | None:
        return None if self.raw.get(key) is None else self.str(key)

    def int(self, key: str, *, minimum: int | None = None) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
            raise self._fail(key, "an integer" + ("" if minimum is None else f" >= {minimum}"))
        return value

    def opt_int(self, key: str) -> int | None:
        return None if self.raw.get(key) is None else self.int(key)

    def float(self, key: str, *, low: float | None = None, high: float | None = None,
              low_open: bool = False) -> float:
        """A finite number in [low, high] (or (low, high] with `low_open`); NaN and infinities never pass."""
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._fail(key, "a number")
        below = low is not None and (value <= low if low_open else value < low)
        if not math.isfinite(value) or below or (high is not None and value > high):
            raise self._fail(key, "a finite number" + _span(low, high, low_open))
        return float(value)

    def opt_float(self, key: str, **bounds: float) -> float | None:
        return None if self.raw.get(key) is None else self.float(key, **bounds)

    def bool(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise self._fail(key, "true or false")
        return value

    def choice(self, key: str, allowed: frozenset[str]) -> str:
        value = self.str(key)
        if value not in allowed:
            raise self._fail(key, f"one of {sorted(allowed)}")
        return value

    def str_list(self, key: str) -> list[str]:
        value = self._get(key)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
            raise self._fail(key, "a list of non-empty strings")
        return value

    def shape(self, key: str) -> tuple[int, ...]:
        value = self._get(key)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and (v > 0 or v == -1) for v in value):
            raise self._fail(key, "a list of positive integers or -1")
        return tuple(value)

    def sha256(self, key: str) -> str:
        value = self.str(key)
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise self._fail(key, "a lower-case hex SHA-256")
        return value

    def file(self, key: str) -> str:
        value = self.str(key)
        if "/" in value or "\\" in value or value.startswith("."):
            raise self._fail(key, "a plain file name inside the artifact folder")
        return value

    def opt_mapping(self, key: str) -> Mapping[str, Any]:
        value = self.raw.get(key) or {}
        if not isinstance(value, Mapping):
            raise self._fail(key, "an object")
        return dict(value)


def _tokenizer(r: _Reader) -> TokenizerEntry:
    max_len = r.int("max_seq_len", minimum=2)
    buckets = r.raw.get("length_buckets")
    if (
        not isinstance(buckets, (list, tuple))
        or not buckets
        or not all(isinstance(b, int) and 0 < b <= max_len for b in buckets)
        or list(buckets) != sorted(set(buckets))
        or buckets[-1] != max_len
    ):
        raise r._fail("length_buckets", f"a strictly increasing list of lengths ending at max_seq_len={max_len}")
    return TokenizerEntry(
        file=r.file("file"),
        sha256=r.sha256("sha256"),
        max_seq_len=max_len,
        length_buckets=tuple(buckets),
        pad_id=r.int("pad_id", minimum=0),
    )


def _model(r: _Reader, n_labels: int) -> ModelEntry:
    inputs_raw = r._get("inputs")
    if not isinstance(inputs_raw, (list, tuple)) or not inputs_raw:
        raise r._fail("inputs", "a non-empty list of tensor specs")
    inputs = []
    for i, spec in enumerate(inputs_raw):
        t = _Reader(spec, f"{r.where}.inputs[{i}]")
        inputs.append(TensorSpec(name=t.str("name"), dtype=t.choice("dtype", _DTYPES), shape=t.shape("shape")))
    o = r.sub("output")
    output = OutputSpec(
        dtype=o.choice("dtype", _DTYPES),
        shape=o.shape("shape"),
        logits=o.bool("logits"),
        scale=o.opt_float("scale", low=0.0, low_open=True),
        zero_point=o.opt_int("zero_point"),
    )
    if output.shape[-1] != n_labels:
        raise ManifestError(f"{o.where}.shape ends in {output.shape[-1]}, but there are {n_labels} labels")
    if output.dtype in ("int8", "uint8") and (output.scale is None or output.zero_point is None):
        raise ManifestError(f"{o.where}: a quantized output needs scale and zero_point")
    return ModelEntry(
        file=r.file("file"),
        sha256=r.sha256("sha256"),
        size_bytes=r.int("size_bytes", minimum=1),
        precision=r.choice("precision", _PRECISIONS),
        inputs=tuple(inputs),
        output=output,
        temperature=r.float("temperature", low=1e-3, high=100.0),
        oos_threshold=r.opt_float("oos_threshold", low=0.0, high=1.0),
    )


def _routing(r: _Reader) -> RoutingEntry:
    score = r.choice("score", _SCORES)
    low, high = SCORE_RANGES[score]
    threshold = r.float("threshold")
    in_range = low - _SCORE_SLACK <= threshold <= high + _SCORE_SLACK
    if not (in_range or threshold in (ESCALATE_NONE, ESCALATE_ALL)):
        raise r._fail("threshold", f"a number in [{low}, {high}] for score {score!r} "
                                   f"(or {ESCALATE_NONE:g} / {ESCALATE_ALL:g}: escalate none / all)")
    oos_score = r.raw.get("oos_score")
    if oos_score is not None and oos_score not in BAND_SCORES:
        raise r._fail("oos_score", f"one of {sorted(BAND_SCORES)}")
    oos_threshold = r.opt_float("oos_threshold", low=low - _SCORE_SLACK, high=high + _SCORE_SLACK)
    # On the same score the band lies below the escalation threshold; on a score of its own it need not.
    if oos_threshold is not None and oos_score in (None, score) and threshold != ESCALATE_ALL \
            and oos_threshold > threshold:
        raise r._fail("oos_threshold", f"at most the escalation threshold {threshold} (the edge answers oos "
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
    )


def _span(low: float | None, high: float | None, low_open: bool) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>' if low_open else '>='} {low}"
    if low is None:
        return f" <= {high}"
    return f" in {'(' if low_open else '['}{low}, {high}]"


def _require_finite(node: Any, where: str) -> None:
    """Free-form sections too: json.loads reads NaN and Infinity, which no later reader can rely on."""
    if isinstance(node, float) and not math.isfinite(node):
        raise ManifestError(f"{where} must be a finite number, got {node!r}")
    if isinstance(node, Mapping):
        for key, value in node.items():
            _require_finite(value, f"{where}.{key}")
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            _require_finite(value, f"{where}[{i}]")
