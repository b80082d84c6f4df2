"""bench/arm64.py without QEMU: the comparison and its int8 reading, the host checks and their messages, and
the committed result read back through the same comparison. The emulated run itself takes minutes and root
(bench/results/arm64.md says how to run it)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import arm64

SCALE, ZERO_POINT = 0.15, 2
RESULT = Path(__file__).resolve().parents[2] / "bench" / "results" / "arm64.json"


def answer(q: list[int], *, temperature: float = 1.0, label: str | None = None) -> dict:
    """What the edge answers for int8 outputs `q`: its probabilities are the softmax of the dequantized logits."""
    logits = SCALE * (np.array(q, dtype=np.float64) - ZERO_POINT) / temperature
    p = np.exp(logits - logits.max())
    p /= p.sum()
    top = f"label{int(np.argmax(p))}"
    return {"label": label or top, "edge_label": top, "probabilities": p.tolist()}


def test_identical_answers_are_zero_int8_steps_apart() -> None:
    x86 = [answer([10, -3, 7]), answer([0, 40, -20])]
    result = arm64.compare(["a", "b"], x86, x86, scale=SCALE, temperature=1.0)
    assert result["label_agreement"] == 1.0 and result["labels_agreeing"] == 2
    assert result["max_abs_prob_diff"] == 0.0 and result["max_int8_steps"] == 0.0
    assert result["within_int8_rounding"] is True


@pytest.mark.parametrize("temperature", [1.0, 1.7])
def test_one_rounding_step_on_one_logit_reads_as_one_step_and_stays_within_the_bound(temperature: float) -> None:
    x86 = [answer([10, 9, 7], temperature=temperature)]
    arm = [answer([10, 10, 7], temperature=temperature)]
    result = arm64.compare(["t"], x86, arm, scale=SCALE, temperature=temperature)
    assert result["max_int8_steps"] == pytest.approx(1.0, abs=1e-6)
    assert result["within_int8_rounding"] is True
    assert 0 < result["max_abs_prob_diff"] <= result["one_step_prob_bound"]
    assert result["one_step_prob_bound"] == pytest.approx(math.tanh(SCALE / (4 * temperature)))


def test_a_shift_of_every_logit_alike_changes_nothing() -> None:
    assert arm64.int8_steps(answer([5, 1, -4])["probabilities"], answer([8, 4, -1])["probabilities"],
                            scale=SCALE, temperature=1.0) == pytest.approx(0.0, abs=1e-9)


def test_two_steps_apart_is_not_int8_rounding() -> None:
    result = arm64.compare(["t"], [answer([10, 9, 7])], [answer([10, 11, 7])], scale=SCALE, temperature=1.0)
    assert result["max_int8_steps"] == pytest.approx(2.0, abs=1e-6)
    assert result["within_int8_rounding"] is False


def test_a_different_label_fails_even_with_close_probabilities() -> None:
    x86, arm = answer([10, 9, 7]), answer([10, 9, 7], label="oos")  # the routing said oos on one side
    result = arm64.compare(["t"], [x86], [arm], scale=SCALE, temperature=1.0)
    assert result["label_agreement"] == 0.0 and result["per_text"][0]["label_agrees"] is False
    assert result["within_int8_rounding"] is False


def test_a_zero_probability_has_no_int8_reading_and_does_not_pass() -> None:
    x86 = answer([10, 9, 7])
    arm = {**x86, "probabilities": [1.0, 0.0, 0.0]}
    result = arm64.compare(["t"], [x86], [arm], scale=SCALE, temperature=1.0)
    assert result["per_text"][0]["int8_steps"] is None and result["texts_without_int8_steps"] == 1
    assert result["within_int8_rounding"] is False


def test_missing_tools_are_named_with_the_apt_line_that_installs_them() -> None:
    with pytest.raises(arm64.BenchError) as caught:
        arm64.check_host(which=lambda tool: None if tool in ("debootstrap", "qemu-aarch64-static") else "/x",
                         machine="x86_64", euid=0)
    message = str(caught.value)
    assert "qemu-aarch64-static" in message and "debootstrap" in message
    assert "apt-get install -y qemu-user-static debootstrap binfmt-support" in message


def test_the_host_must_be_x86_64_and_root() -> None:
    with pytest.raises(arm64.BenchError, match="this one is aarch64"):
        arm64.check_host(which=lambda tool: "/x", machine="aarch64", euid=0)
    with pytest.raises(arm64.BenchError, match="run as root"):
        arm64.check_host(which=lambda tool: "/x", machine="x86_64", euid=1000)
    arm64.check_host(which=lambda tool: "/x", machine="x86_64", euid=0)


def test_a_missing_tool_is_one_sentence_on_stderr_and_exit_code_2(monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str],
                                                                    tmp_path: Path) -> None:
    monkeypatch.setattr(arm64.shutil, "which", lambda tool: None)
    monkeypatch.setattr(arm64.platform, "machine", lambda: "x86_64")

    def no_command(*args: object, **kwargs: object) -> str:
        raise AssertionError("the host check must stop the run before any command")

    monkeypatch.setattr(arm64, "_run", no_command)
    assert arm64.main(["--cache", str(tmp_path), "--out", str(tmp_path / "out.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench/arm64.py: missing ") and "Traceback" not in err
    assert "apt-get install -y qemu-user-static debootstrap binfmt-support" in err
    assert not (tmp_path / "out.json").exists()


def test_binfmt_flags_are_read_from_the_entry() -> None:
    entry = ("enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\noffset 0\n"
             "magic 7f454c46\n")
    assert arm64.binfmt_flags(entry) == "PF"
    assert arm64.binfmt_flags("disabled\n") == ""


def test_cpuinfo_names_the_emulated_core_once_per_processor() -> None:
    text = arm64.cpuinfo_text("cortex-a76", 2)
    assert text.count("processor\t:") == 2 and text.count("CPU part\t: 0xd0b") == 2
    assert "CPU implementer\t: 0x41" in text
    assert "CPU part\t: 0x051" in arm64.cpuinfo_text("max,sme=off", 1)  # properties after the model name
    assert "CPU part\t: 0x000" in arm64.cpuinfo_text("some-new-core", 1)


def test_hwcap_bits_become_extension_names() -> None:
    assert arm64.hwcap_names(1 << 1 | 1 << 20, 1 << 23) == ["asimd", "asimddp", "sme"]
    assert arm64.hwcap_names(0, 0) == []


def test_elf_machine_reads_the_header(tmp_path: Path) -> None:
    fake = tmp_path / "lib.so"
    fake.write_bytes(b"\x7fELF" + bytes(14) + (183).to_bytes(2, "little"))
    assert arm64.elf_machine(fake) == "aarch64"
    (tmp_path / "text").write_text("not a binary at all")
    assert arm64.elf_machine(tmp_path / "text") == "not ELF"
    if sys.platform == "linux":
        assert arm64.elf_machine(Path(sys.executable).resolve()) in arm64.ELF_MACHINES.values()


def test_the_chroot_command_clears_the_environment_and_ends_with_the_program(tmp_path: Path) -> None:
    cmd = arm64.in_root(tmp_path / "root", tmp_path / "cpuinfo", ["/opt/edge-venv/bin/python", "-V"],
                        {"QEMU_CPU": "cortex-a53"}, "/opt/app")
    assert cmd[:4] == ["unshare", "--mount", "--propagation", "private"]
    assert cmd[-6:] == ["-i", "-C", "/opt/app", "QEMU_CPU=cortex-a53", "/opt/edge-venv/bin/python", "-V"]


def test_latency_summary_keeps_the_first_request_apart() -> None:
    summary = arm64.latency_summary([900.0, 10.0, 12.0, 11.0])
    assert summary["first"] == 900.0 and summary["p50_after_first"] == 11.0 and summary["max"] == 900.0


@pytest.mark.skipif(not RESULT.exists(), reason="no committed bench/results/arm64.json")
def test_the_committed_result_says_what_its_answers_say() -> None:
    report = json.loads(RESULT.read_text())
    model = report["model"]
    assert report["texts"] and report["aarch64"]
    for run, row in zip(report["aarch64"], report["summary"], strict=True):
        assert run["probe"]["machine"] == "aarch64"
        assert set(run["process"]["litert_libraries_mapped"].values()) == {"aarch64"}
        again = arm64.compare(report["texts"], report["x86_64"]["answers"], run["answers"],
                              scale=model["output_scale"], temperature=model["temperature"])
        for key in arm64.SUMMARY_KEYS:
            assert row[key] == again[key] == run["comparison"][key], (run["cpu"], key)
