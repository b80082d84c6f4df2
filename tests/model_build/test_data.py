import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from model_build.data.dataset import Dataset, Split, default_data_path, load_dataset
from model_build.errors import BuildError, DataError

CLINC = Path(__file__).resolve().parents[2] / "data" / "clinc150" / "data_full.json"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def csv_rows(n_per_label: dict[str, int]) -> str:
    lines = ["text,label"]
    for label, n in n_per_label.items():
        lines += [f"{label} example number {i},{label}" for i in range(n)]
    return "\n".join(lines) + "\n"


def labels_of(ds: Dataset, split: Split) -> list[str]:
    return [ds.labels[i] for i in split.labels]


@pytest.mark.skipif(not CLINC.is_file(), reason="CLINC150 not present; run `make data`")
def test_real_clinc150_counts_and_label_order() -> None:
    ds = load_dataset(CLINC)

    assert (len(ds.train), len(ds.val), len(ds.test)) == (15_100, 3_100, 5_500)
    assert ds.num_labels == 151 and ds.labels[-1] == "oos" and ds.oos_label == "oos"
    assert list(ds.labels[:-1]) == sorted(ds.labels[:-1])
    assert ds.name == "clinc150" and len(ds.source_sha256) == 64
    assert int(ds.in_scope_mask(ds.test).sum()) == 4_500
    assert ds.train.labels.dtype == np.int32
    assert not any("  " in t for t in ds.train.texts + ds.test.texts)  # the 5 double spaces collapsed


def test_clinc_layout_oos_parts_join_their_splits_with_label_oos(tmp_path: Path) -> None:
    data = {
        "train": [["book a table", "restaurant"], ["  play   some jazz ", "music"],
                  ["dinner for two", "restaurant"]],
        "val": [["play rock", "music"]],
        "test": [["a table please", "restaurant"]],
        "oos_train": [["how tall is a giraffe", "oos"], ["meaning of life", "oos"]],
        "oos_val": [],
        "oos_test": [["what is love", "oos"]],
    }
    path = write(tmp_path / "small.json", json.dumps(data))

    ds = load_dataset(path)

    assert ds.labels == ("music", "restaurant", "oos")
    assert ds.train.texts == ("book a table", "play some jazz", "dinner for two",
                              "how tall is a giraffe", "meaning of life")
    assert labels_of(ds, ds.test) == ["restaurant", "oos"]
    assert ds.in_scope_mask(ds.test).tolist() == [True, False]
    assert ds.label_index("oos") == 2 and ds.oos_index == 2
    assert ds.name == "small" and ds.source_path == str(path)


def test_csv_without_splits_is_split_stratified_and_reproducibly(tmp_path: Path) -> None:
    counts = {"a": 40, "b": 20, "c": 3, "oos": 10}
    path = write(tmp_path / "d.csv", csv_rows(counts))

    ds = load_dataset(path, val_fraction=0.2, test_fraction=0.1, seed=7)
    again = load_dataset(path, val_fraction=0.2, test_fraction=0.1, seed=7)

    assert ds.labels == ("a", "b", "c", "oos")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (51, 15, 7)  # 73 rows: round(14.6), round(7.3)
    assert Counter(labels_of(ds, ds.val))["a"] == 8 and Counter(labels_of(ds, ds.val))["b"] == 4
    assert set(labels_of(ds, ds.train)) == {"a", "b", "c", "oos"}  # every class keeps training examples
    assert ds.val.texts == again.val.texts and ds.test.texts == again.test.texts
    assert set(ds.train.texts).isdisjoint(ds.val.texts + ds.test.texts)


def test_a_class_with_two_examples_keeps_one_for_training(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", csv_rows({"big": 30, "tiny": 2}))

    for seed in range(5):
        ds = load_dataset(path, val_fraction=0.3, test_fraction=0.3, seed=seed)
        assert "tiny" in labels_of(ds, ds.train)


def test_csv_split_column_is_honoured_and_extra_columns_ignored(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "id,text,label,split,note\n"
                 "1,hi there,greet,train,x\n2,hello,greet,TRAIN,\n3,bye,leave,train,\n4,see ya,leave,train,\n"
                 "5,hey,greet,val,\n6,ciao,leave,test,\n")

    ds = load_dataset(path)

    assert ds.val.texts == ("hey",) and ds.test.texts == ("ciao",) and len(ds.train) == 4
    assert ds.oos_label is None and ds.in_scope_mask(ds.val).tolist() == [True]


def test_only_the_missing_split_is_derived(tmp_path: Path) -> None:
    lines = [json.dumps({"text": f"t{i}", "label": "ab"[i % 2], "split": "train"}) for i in range(20)]
    lines += [json.dumps({"text": "v1", "label": "a", "split": "val"}), ""]
    path = write(tmp_path / "d.jsonl", "\n".join(lines))

    ds = load_dataset(path, val_fraction=0.5, test_fraction=0.2)

    assert ds.val.texts == ("v1",)
    assert len(ds.test) == 4 and len(ds.train) == 16


def test_jsonl_loads_with_bom_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    rows = [{"text": "x one", "label": "x", "extra": 1}, {"text": "x two", "label": "x"},
            {"text": "y one", "label": "y", "split": "test"},
            {"text": "y two", "label": "y", "split": None}]
    path.write_bytes(b"\xef\xbb\xbf" + "\n\n".join(json.dumps(r) for r in rows).encode())

    ds = load_dataset(path, val_fraction=0.0)

    assert ds.train.texts == ("x one", "x two", "y two") and ds.test.texts == ("y one",) and len(ds.val) == 0


def test_split_is_immutable() -> None:
    split = Split(("a", "b"), np.array([0, 1]))
    with pytest.raises(ValueError):
        split.labels[0] = 1
    assert len(split) == 2 and split.labels.dtype == np.int32


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("d.csv", "text,label\nhello,a\n  ,a\nbye,a\n", "line 3: empty text"),
        ("d.csv", "text,label\nhello,a\nbye, \n", "line 3: empty label"),
        ("d.csv", "text,label\nhello,a\n", "cannot be both learned and evaluated: 'a' (line 2)"),
        ("d.csv", "words,label\nhello,a\n", "missing 'text'"),
        ("d.csv", "text,tag\nhello,a\n", "missing 'label'"),
        ("d.csv", "", "missing 'text' and 'label'"),
        ("d.csv", "text,label\n", "no examples"),
        ("d.csv", "text,label,split\nhi,a,train\nho,a,dev\n", "line 3: unknown split 'dev'"),
        ("d.csv", "text,label,split\nhi,a,train\nho,a,train\nx,b,val\ny,b,test\n",
         "line 4: label 'b' appears in val but never in train"),
        ("d.jsonl", '{"text": "hi", "label": "a"}\n{"text": "ho", "label": "a"\n', "line 2: bad JSON"),
        ("d.jsonl", '{"text": "hi", "label": "a"}\n["ho", "a"]\n', "line 2: expected a JSON object"),
        ("d.jsonl", '{"text": "hi", "label": 3}\n', "line 1: 'label' must be a string"),
        ("d.jsonl", '{"text": "hi"}\n', "line 1: missing 'label'"),
        ("d.json", '{"train": [["hi", "a"],\n ["ho"]]}', "train[1]: expected [text, intent]"),
        ("d.json", '{"train": [["hi", "a"]],\n "dev": []}', "unknown keys ['dev']"),
        ("d.json", '{"train": [["hi", "a"]\n', "line 2: bad JSON"),
        ("d.txt", "hi\ta\n", "unsupported file type '.txt'"),
    ],
)
def test_malformed_files_raise_data_error_naming_file_and_row(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = write(tmp_path / name, content)

    with pytest.raises(DataError) as err:
        load_dataset(path)

    assert str(path) in str(err.value) and message in str(err.value)


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"text,label\nhello,a\ncaf\xe9,a\n")

    with pytest.raises(DataError, match=r"line 3: not UTF-8"):
        load_dataset(path)


def test_missing_default_file_tells_how_to_fetch_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no such file.*python -m model_build data fetch clinc150"):
        load_dataset(tmp_path / "clinc150" / "data_full.json")
    with pytest.raises(DataError, match=r"no such file$"):
        load_dataset(tmp_path / "mine.csv")


def test_bad_fractions_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", csv_rows({"a": 4}))
    with pytest.raises(BuildError, match="sum to less than 1"):
        load_dataset(path, val_fraction=0.6, test_fraction=0.4)


def test_default_data_path_reads_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODEL_BUILD_DATA", raising=False)
    assert default_data_path() == Path("data/clinc150/data_full.json")
    monkeypatch.setenv("MODEL_BUILD_DATA", "/elsewhere/x.csv")
    assert default_data_path() == Path("/elsewhere/x.csv")
