"""bench/peers.py without its peers: a real edge server on the tiny artifact, a short run, real figures.

The peers' venv (LitServe, BentoML) is never made here: every run below is `--servers edge`.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

from bench import peers


@pytest.fixture(scope="module")
def edge_run(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One real run of the edge server and of the model in process, with the bench's own functions."""
    texts = peers.clinc_texts()
    sample = random.Random(0).sample(texts, 50)
    work = tmp_path_factory.mktemp("peers")
    options = peers.SpecOptions(tiny_artifact, threads=2, max_batch_size=32, edge_max_wait_ms=0.0,
                                litserve_batch_timeout_ms=1.0, bentoml_max_latency_ms=60000,
                                peers_python=None, edge_extras=None, workdir=work)
    run = peers.measure_server(peers.edge_spec(options), work / "edge.log", texts=texts, sample=sample,
                               expected=peers.expected_labels(tiny_artifact, sample), requests=200,
                               connections=16, seconds=0.5)
    in_proc = peers.in_process(tiny_artifact, texts, threads=2, batch=32, seconds=0.3, requests=200)
    return {"run": run, "in_process": in_proc}


def test_an_edge_run_answers_every_request_with_the_models_labels(edge_run: dict) -> None:
    run = edge_run["run"]
    assert run["errors"] == 0
    assert run["agreement"] == 1.0  # the service's edge label is the in-process model's, text by text
    assert 0 < run["c1_p50_ms"] <= run["c1_p99_ms"]
    assert run["c64_rps"] > 0 and 0 < run["c64_p50_ms"] <= run["c64_p99_ms"]
    assert run["server_cpu_us_per_request"] > 0  # from /proc: the server's tree, not this process
    assert run["runtime"]["processes"] == 1


def test_ratios_divide_by_the_best_peer_of_each_figure(edge_run: dict) -> None:
    edge = edge_run["run"]
    # Peers made from the edge's real run: litserve the better at c1, bentoml the faster at c64.
    litserve = {**edge, "c64_rps": edge["c64_rps"] / 4, "c1_p50_ms": edge["c1_p50_ms"] * 1.5}
    bentoml = {**edge, "c64_rps": edge["c64_rps"] / 2, "c1_p50_ms": edge["c1_p50_ms"] * 3}
    summary = peers.summarise({"edge": [edge], "litserve": [litserve], "bentoml": [bentoml]},
                              [edge_run["in_process"]], batch=32)
    ratios = summary["vs_best_peer"]
    assert ratios["c64_best_peer"] == "bentoml" and ratios["c1_best_peer"] == "litserve"
    assert ratios["c64_throughput_ratio"] == pytest.approx(2.0, rel=1e-3)
    assert ratios["c1_p50_ratio"] == pytest.approx(1 / 1.5, rel=1e-3)
    assert summary["goals"]["c64_throughput_ratio"]["status"] == "fail"  # 2 < 5
    assert summary["goals"]["c1_p50_ratio"]["status"] == "fail"  # 0.67 > 0.5


def test_edge_figures_and_goals_without_peers(edge_run: dict) -> None:
    summary = peers.summarise({"edge": [edge_run["run"]]}, [edge_run["in_process"]], batch=32)
    assert summary["vs_best_peer"]["c64_throughput_ratio"] is None
    assert summary["goals"]["c64_throughput_ratio"]["status"] == "not measured"
    over = summary["edge"]["c64_over_in_process"]
    ceiling = edge_run["in_process"]["b32_texts_per_s"]
    assert over == pytest.approx(edge_run["run"]["c64_rps"] / ceiling, rel=1e-2)
    cpu = summary["goals"]["server_cpu_us_per_request"]
    assert cpu["value"] == summary["servers"]["edge"]["server_cpu_us_per_request"]
    assert cpu["met"] == (cpu["value"] <= 400)


def test_the_command_writes_the_json_with_every_key(tiny_artifact: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out, venv = tmp_path / "peers.json", tmp_path / "venv"
    code = peers.main(["--servers", "edge", "--seconds", "0.5", "--repeats", "1", "--requests", "200",
                       "--connections", "16", "--model-dir", str(tiny_artifact), "--venv", str(venv),
                       "--out", str(out), "--json"])
    assert code == 0
    result, printed = json.loads(out.read_text()), capsys.readouterr()
    assert json.loads(printed.out) == result
    assert "repeat 1/1 edge: c1 p50" in printed.err  # a progress line per run, on stderr
    assert not venv.exists()  # no peer asked for, no venv made
    assert {"cpu_model", "avx2", "avx512", "cores", "python", "date"} <= result["machine"].keys()
    assert set(result["servers"]) == {"edge"}
    assert set(peers.SERVER_FIGURES) | {"errors", "agreement"} <= result["servers"]["edge"].keys()
    assert {"b1_p50_ms", "b32_texts_per_s"} == result["in_process"].keys()
    assert result["settings"]["edge"]["env"]["EDGE_POLICY"] == "edge_only"
    assert set(result["goals"]) == set(peers.GOALS)


def test_a_server_that_dies_while_starting_is_reported_with_its_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "print('cannot load the model'); raise SystemExit(3)"]
    spec = peers.ServerSpec("broken", argv, {}, peers._free_port(), "/", "/ready", lambda t: b"",
                            lambda a: "", {})
    with (pytest.raises(peers.BenchError, match=r"(?s)broken exited \(code 3\).*cannot load the model"),
          peers.running(spec, tmp_path / "broken.log")):
        pass


def test_a_folder_without_manifest_is_a_clear_error(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code = peers.main(["--servers", "edge", "--model-dir", str(tmp_path), "--out", str(tmp_path / "x.json")])
    assert code == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
