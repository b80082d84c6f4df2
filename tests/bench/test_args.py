"""bench._args.named: the benches' `--artifact NAME=DIR` / `--ood NAME=FILE`, each refused in one line (exit 2)
before any model runs; and bench/open_set.py, which used to split them by hand, on its bad inputs."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench import open_set
from bench._args import named
from model_build.errors import DataError


def refusal(capsys: pytest.CaptureFixture[str], call) -> str:
    with pytest.raises(SystemExit) as refused:
        call()
    assert refused.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_each_name_loads_its_path_in_order() -> None:
    parser = argparse.ArgumentParser()
    found = named(parser, "--x", ["b=/one", "a=/two/three"], lambda path: path.name)
    assert list(found.items()) == [("b", "one"), ("a", "three")]


@pytest.mark.parametrize("spec, says", [("plain", "expected NAME=DIR"), ("=dir", "expected NAME=DIR"),
                                        ("name=", "expected NAME=DIR")])
def test_a_spec_without_a_name_or_a_path_is_refused(capsys: pytest.CaptureFixture[str], spec: str,
                                                     says: str) -> None:
    line = refusal(capsys, lambda: named(argparse.ArgumentParser(), "--x", [spec], Path))
    assert line.endswith(f"--x {spec}: {says}")


def test_a_name_given_twice_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    line = refusal(capsys, lambda: named(argparse.ArgumentParser(), "--x", ["a=/1", "a=/2"], Path))
    assert line.endswith("--x a=/2: the name 'a' is given twice")


def test_what_the_loader_refuses_is_the_parsers_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def load(path: Path) -> None:
        raise DataError(f"{path}: no such file")

    line = refusal(capsys, lambda: named(argparse.ArgumentParser(), "--ood", ["far=/gone.txt"], load,
                                         what="FILE"))
    assert line.endswith("--ood far=/gone.txt: /gone.txt: no such file")


def test_open_set_refuses_a_bad_artifact_or_ood_file_before_running_a_model(
        tiny_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ood = tmp_path / "far.txt"
    ood.write_text("what is the capital of peru\n")
    line = refusal(capsys, lambda: open_set.main(["--artifact", f"x={tmp_path}", "--ood", f"far={ood}"]))
    assert f"--artifact x={tmp_path}:" in line and "manifest.json" in line
    line = refusal(capsys, lambda: open_set.main(["--artifact", str(tiny_artifact), "--ood", f"far={ood}"]))
    assert line.endswith("expected NAME=DIR")
    line = refusal(capsys, lambda: open_set.main(["--artifact", f"t={tiny_artifact}", "--ood", "far=/no/such.txt"]))
    assert "--ood far=/no/such.txt:" in line and "no such file" in line


@pytest.mark.parametrize("bench, says", [("cloud_knn", "the cloud has no energy oos rule"),
                                         ("edge_knn", "the edge has no oos band")])
def test_the_neighbour_simulations_refuse_an_artifact_without_the_rule_they_change(
        bench: str, says: str, tiny_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The tiny artifact has an oos label but neither an energy rule in its cloud nor a band at its edge: each
    simulation says which one it lacks before it loads the pretrained encoder."""
    import importlib

    module = importlib.import_module(f"bench.{bench}")
    ood = tmp_path / "far.txt"
    ood.write_text("what is the capital of peru\n")
    line = refusal(capsys, lambda: module.main(["--artifact", f"t={tiny_artifact}", "--ood", f"far={ood}"]))
    assert f"--artifact t={tiny_artifact}: {tiny_artifact}: {says}" in line
