"""Labelled text: CLINC150 `data_full.json`, CSV or JSON Lines, loaded into index-ordered numpy splits."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np

from model_build.data.fetch import CLINC150_SHA256
from model_build.errors import BuildError, DataError

OOS_LABEL = "oos"
DEFAULT_DATA_PATH = Path("data/clinc150/data_full.json")
DATA_ENV_VAR = "MODEL_BUILD_DATA"
SPLITS = ("train", "val", "test")
_CLINC_KEYS = {"train": "train", "val": "val", "test": "test",
               "oos_train": "train", "oos_val": "val", "oos_test": "test"}


@dataclass(frozen=True, eq=False)  # eq=False: arrays do not compare to a single bool
class Split:
    texts: tuple[str, ...]
    labels: np.ndarray  # int32 indices into Dataset.labels

    def __post_init__(self) -> None:
        labels = np.array(self.labels, dtype=np.int32)
        if labels.shape != (len(self.texts),):
            raise ValueError(f"{len(self.texts)} texts but labels of shape {labels.shape}")
        labels.setflags(write=False)  # frozen all the way down: pipelines share one copy
        object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class Dataset:
    name: str
    labels: tuple[str, ...]  # sorted in-scope labels, then oos_label last if present
    oos_label: str | None
    train: Split
    val: Split
    test: Split
    source_sha256: str
    source_path: str
    # True when the oos label is a background class the build added (`with_background`): its validation
    # texts are generic negatives, not the traffic's own out-of-scope requests.
    background: bool = False
    # True when the oos label is one the build appended after training (`with_appended_oos`): no text has
    # it and no model predicts it; the thresholds fitted on the in-scope texts alone answer it.
    oos_appended: bool = False
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.oos_label is not None and self.labels[-1:] != (self.oos_label,):
            raise ValueError(f"oos_label {self.oos_label!r} must be the last label")
        object.__setattr__(self, "_index", {label: i for i, label in enumerate(self.labels)})

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def oos_index(self) -> int | None:
        return None if self.oos_label is None else len(self.labels) - 1

    def label_index(self, label: str) -> int:
        try:
            return self._index[label]
        except KeyError:
            raise DataError(f"unknown label {label!r} in data set {self.name!r}") from None

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def in_scope_mask(self, split: Split) -> np.ndarray:
        if self.oos_index is None:
            return np.ones(len(split), dtype=bool)
        return split.labels != self.oos_index


class _Example(NamedTuple):
    text: str
    label: str
    split: str | None  # None: not given, the loader decides
    where: str  # "line 12" / "train[3]": for error messages


def default_data_path() -> Path:
    return Path(os.environ.get(DATA_ENV_VAR) or DEFAULT_DATA_PATH)


def load_dataset(
    path: Path | str,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    name: str | None = None,
) -> Dataset:
    path = Path(path)
    if not (0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
        raise BuildError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) "
                         "and sum to less than 1")
    raw = _read_bytes(path)
    text = _decode(raw, path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        examples = list(_clinc_examples(text, path))
    elif suffix == ".csv":
        examples = list(_csv_examples(text, path))
    elif suffix == ".jsonl":
        examples = list(_jsonl_examples(text, path))
    else:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; "
                        "use .json (CLINC150 layout), .csv or .jsonl")
    if not examples:
        raise DataError(f"{path}: no examples")
    sha256 = hashlib.sha256(raw).hexdigest()
    # The pinned CLINC150 file gets its well-known name rather than "data_full".
    name = name or ("clinc150" if sha256 == CLINC150_SHA256 else path.stem)
    return _build(examples, path, sha256, name,
                  val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        hint = ""
        if path.name == DEFAULT_DATA_PATH.name:
            hint = f"; download it with: python -m model_build data fetch clinc150 --out {path}"
        raise DataError(f"{path}: no such file{hint}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _decode(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8-sig")  # -sig: spreadsheet exports often start with a BOM
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}: line {line}: not UTF-8 (byte {raw[exc.start]:#04x})") from None


def _clinc_examples(text: str, path: Path) -> Iterator[_Example]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: line {exc.lineno}: bad JSON: {exc.msg}") from None
    if not isinstance(data, dict) or "train" not in data:
        raise DataError(f"{path}: expected a JSON object with a 'train' list "
                        "(the CLINC150 data_full.json layout)")
    unknown = sorted(set(data) - set(_CLINC_KEYS))
    if unknown:
        raise DataError(f"{path}: unknown keys {unknown}; expected some of {sorted(_CLINC_KEYS)}")
    for key, split in _CLINC_KEYS.items():
        items = data.get(key, [])
        if not isinstance(items, list):
            raise DataError(f"{path}: '{key}' must be a list of [text, intent] pairs")
        for i, item in enumerate(items):
            where = f"{key}[{i}]"
            if not (isinstance(item, list) and len(item) == 2 and all(isinstance(v, str) for v in item)):
                raise DataError(f"{path}: {where}: expected [text, intent] strings, got {item!r}")
            label = OOS_LABEL if key.startswith("oos_") else item[1]
            yield _Example(item[0], label, split, where)


def _csv_examples(text: str, path: Path) -> Iterator[_Example]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in (reader.fieldnames or [])]
        _require_columns(header, path, "CSV header (line 1)")
        reader.fieldnames = header
        for row in reader:
            yield _Example(row["text"] or "", row["label"] or "", row.get("split"), f"line {reader.line_num}")
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: bad CSV: {exc}") from None


def _jsonl_examples(text: str, path: Path) -> Iterator[_Example]:
    # split("\n"), not splitlines(): JSON strings may hold a raw U+2028, which splitlines() breaks on.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj: Any = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {number}: bad JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}: line {number}: expected a JSON object")
        _require_columns(list(obj), path, f"line {number}")
        for key in ("text", "label"):
            if not isinstance(obj[key], str):
                raise DataError(f"{path}: line {number}: '{key}' must be a string, got {obj[key]!r}")
        split = obj.get("split")
        yield _Example(obj["text"], obj["label"], None if split is None else str(split), f"line {number}")


def _require_columns(columns: list[str], path: Path, where: str) -> None:
    missing = [c for c in ("text", "label") if c not in columns]
    if missing:
        raise DataError(f"{path}: {where}: missing {' and '.join(repr(m) for m in missing)} "
                        f"(found {', '.join(map(repr, columns)) or 'nothing'})")


def _build(
    examples: list[_Example], path: Path, sha256: str, name: str, *,
    val_fraction: float, test_fraction: float, seed: int,
) -> Dataset:
    texts: list[str] = []
    labels: list[str] = []
    splits: list[str] = []
    first_seen: dict[str, str] = {}
    for ex in examples:
        text = " ".join(ex.text.split())  # strips and collapses runs (CLINC has a few double spaces)
        label = ex.label.strip()
        if not text:
            raise DataError(f"{path}: {ex.where}: empty text")
        if not label:
            raise DataError(f"{path}: {ex.where}: empty label")
        split = "train" if ex.split is None else ex.split.strip().lower()
        if split not in SPLITS:
            raise DataError(f"{path}: {ex.where}: unknown split {ex.split!r}; "
                            f"expected one of {', '.join(SPLITS)}")
        texts.append(text)
        labels.append(label)
        splits.append(split)
        first_seen.setdefault(label, ex.where)

    counts = Counter(labels)
    singles = sorted(label for label, n in counts.items() if n == 1)
    if singles:
        shown = ", ".join(f"{s!r} ({first_seen[s]})" for s in singles[:5])
        raise DataError(f"{path}: {len(singles)} label(s) with a single example, which cannot be both "
                        f"learned and evaluated: {shown}{' ...' if len(singles) > 5 else ''}")
    in_train = {label for label, split in zip(labels, splits) if split == "train"}
    for label, split, ex in zip(labels, splits, examples):
        if label not in in_train:
            raise DataError(f"{path}: {ex.where}: label {label!r} appears in {split} but never in train")

    # Derived splits come only from train, so user-given val/test stay untouched.
    wanted = {s: f for s, f in (("val", val_fraction), ("test", test_fraction)) if s not in splits}
    if wanted:
        train_idx = [i for i, s in enumerate(splits) if s == "train"]
        for i, split in _stratified_split(train_idx, labels, wanted, seed).items():
            splits[i] = split

    oos = OOS_LABEL if OOS_LABEL in counts else None
    order = tuple(sorted(label for label in counts if label != OOS_LABEL)) + ((oos,) if oos else ())
    index = {label: i for i, label in enumerate(order)}

    def make(split: str) -> Split:
        rows = [i for i, s in enumerate(splits) if s == split]
        return Split(tuple(texts[i] for i in rows),
                     np.array([index[labels[i]] for i in rows], dtype=np.int32))

    return Dataset(name=name, labels=order, oos_label=oos, train=make("train"), val=make("val"),
                   test=make("test"), source_sha256=sha256, source_path=str(path))


def _stratified_split(
    pool: list[int], labels: list[str], fractions: dict[str, float], seed: int
) -> dict[int, str]:
    """Move a per-class share of `pool` into each split in `fractions`; every class keeps one train row."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for i in pool:
        by_class.setdefault(labels[i], []).append(i)
    classes = sorted(by_class)
    for c in classes:
        rng.shuffle(by_class[c])
    taken = {c: 0 for c in classes}
    moved: dict[int, str] = {}
    for split, fraction in fractions.items():
        ideal = {c: len(by_class[c]) * fraction for c in classes}
        quota = {c: min(int(ideal[c]), len(by_class[c]) - 1 - taken[c]) for c in classes}
        short = round(len(pool) * fraction) - sum(quota.values())
        tiebreak = rng.random(len(classes))
        # Largest-remainder allocation (per-class rounding alone starves small classes and misses the
        # total); the seeded tie-break keeps any one class from always winning by its name.
        ranked = sorted(range(len(classes)),
                        key=lambda k: (quota[classes[k]] - ideal[classes[k]], tiebreak[k]))
        for k in ranked:
            if short <= 0:
                break
            c = classes[k]
            if quota[c] < len(by_class[c]) - 1 - taken[c]:
                quota[c] += 1
                short -= 1
        for c in classes:
            for i in by_class[c][taken[c]: taken[c] + quota[c]]:
                moved[i] = split
            taken[c] += quota[c]
    return moved


def subset(dataset: Dataset, per_class: int | None, *, seed: int = 0) -> Dataset:
    """Keep at most `per_class` training texts of each label, and a proportional share of val and test
    (at least one each), for fast builds (the quick preset). Deterministic for a seed; None keeps all."""
    if per_class is None:
        return dataset
    if per_class < 1:
        raise BuildError(f"subset size per class must be >= 1, got {per_class}")
    rng = np.random.default_rng(seed)
    train_sizes = np.bincount(dataset.train.labels, minlength=dataset.num_labels)
    fraction = min(1.0, per_class / max(1, int(train_sizes.max())))

    def take(split: Split, keep_for) -> Split:
        rows: list[int] = []
        for label in range(dataset.num_labels):
            members = np.flatnonzero(split.labels == label)
            if members.size:
                rows.extend(rng.permutation(members)[: keep_for(members.size)].tolist())
        rows.sort()
        return Split(tuple(split.texts[i] for i in rows), split.labels[rows])

    return dataclasses.replace(
        dataset,
        train=take(dataset.train, lambda n: per_class),
        val=take(dataset.val, lambda n: max(1, round(n * fraction))),
        test=take(dataset.test, lambda n: max(1, round(n * fraction))),
    )
