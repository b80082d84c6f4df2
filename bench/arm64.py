"""The edge service on an aarch64 userland under QEMU user emulation and on this x86_64 host: one artifact,
the same texts; do the two answer alike?

    .venv/bin/python bench/arm64.py [--cpus cortex-a53 ... max] [--qemu PATH] [--model-dir DIR] \
        [--cache ~/.cache/edge-arm64] [--out bench/results/arm64.json]

Needs root (debootstrap, chroot, mount), `apt-get install -y qemu-user-static debootstrap binfmt-support`, and
the first time deb.debian.org and a package index. Each step is reused from CACHE when it is there:

1. binfmt_misc: mounted if it is not, Debian's `qemu-aarch64` entry enabled (`update-binfmts --enable
   qemu-aarch64`, flags PF: the kernel hands every aarch64 ELF to qemu-aarch64-static, opened once, so it
   works inside a chroot). It stays registered after the run; `update-binfmts --disable qemu-aarch64` undoes
   it.
2. CACHE/rootfs, an arm64 Debian root: `debootstrap --arch=arm64 --foreign --variant=minbase
   --include=python3,python3-venv SUITE`, then its second stage inside the chroot (emulated: minutes).
3. The edge's pinned wheels for that root's CPython, downloaded here (`pip download --only-binary=:all:` with
   the aarch64 manylinux tags, `-r edge_container/requirements.txt -c requirements/constraints.txt`) and
   installed by the root's own pip into /opt/edge-venv (`--no-index --find-links`): pip on aarch64 picks the
   wheels.
4. This checkout's `modelpack/`, `edge_container/` and `pyproject.toml` (`--code REV`: as in that git
   revision) into /opt/app (the image's layout), the artifact into /opt/models (default: the tiny test
   artifact, built once into CACHE/model by tests/fixtures/tiny_artifact.py, which needs TensorFlow: ~20 s).
   Both copies are fresh every run.
5. `python -m edge_container serve` from /opt/app on 127.0.0.1: first this interpreter on the host (x86_64),
   then the root's venv in the chroot once per emulated CPU model (`--cpus`, QEMU_CPU), one server at a time.
   Each answers the same texts, one request each, in order: POST /v1/predict (label, source, reason; the
   latency) and POST /v2/models/edge/infer (the probability vector).
6. Per CPU model, text by text: the labels, the largest absolute probability difference, and `int8_steps`, the
   int8 output difference those probabilities imply. The edge's logits are scale * (q - zero_point) and its
   probabilities their softmax at the manifest's temperature T, so T * (ln p_arm - ln p_x86) / scale is the
   difference of the int8 outputs plus a constant per text; its spread is 0 when the int8 outputs are the same
   and 1 for one rounding step. "Within int8 rounding": every label agrees and every spread is at most 1.

The chroot gets its own mount namespace with /proc and /sys (without /sys, the cpuinfo library LiteRT's
XNNPACK uses fails and XNNPACK is not used) and a /proc/cpuinfo describing the emulated core: QEMU 7.2 passes
the host's x86 one through, and the cpuinfo library crashes on it. The CPU model decides which XNNPACK kernels
run: QEMU's default `max` (SVE, SME, I8MM ...) exercises other kernels than a Cortex-A53. `--qemu PATH` runs
the root's python through that qemu-aarch64 binary (`-cpu`), e.g. a newer QEMU than the binfmt_misc one.

Emulated timings are QEMU's on this host, not an arm64 device's: they show that the service starts and
answers, not how fast it would on arm64 hardware. Exit code 0 when every CPU model is within int8 rounding, 1
when one is not, 2 when something is missing or a step failed (said in one sentence with the fix).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # runnable as a plain script too
    sys.path.insert(0, str(REPO_ROOT))

from bench.arm64_wheels import pins, platform_tags  # noqa: E402
from bench.edge_serving import _cpu_seconds, _percentile  # noqa: E402

REQUIREMENTS = REPO_ROOT / "edge_container" / "requirements.txt"
CONSTRAINTS = REPO_ROOT / "requirements" / "constraints.txt"
DEFAULT_CACHE = Path.home() / ".cache" / "edge-arm64"
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "arm64.json"
DEFAULT_CPUS = ("cortex-a53", "cortex-a72", "cortex-a76", "neoverse-n1")
BINFMT = Path("/proc/sys/fs/binfmt_misc")
APT_FIX = "apt-get install -y qemu-user-static debootstrap binfmt-support"
TOOLS = {"qemu-aarch64-static": APT_FIX, "debootstrap": APT_FIX, "update-binfmts": APT_FIX,
         "chroot": "apt-get install -y coreutils", "unshare": "apt-get install -y util-linux",
         "mount": "apt-get install -y mount"}
GLIBC = {"bookworm": (2, 36), "trixie": (2, 41)}  # each suite's libc6: the newest manylinux tag to offer
VENV = "/opt/edge-venv"
APP_FILES = ("modelpack", "edge_container", "pyproject.toml")  # the image's COPYs; pyproject.toml last
SUMMARY_KEYS = ("label_agreement", "max_abs_prob_diff", "max_int8_steps", "within_int8_rounding")
READY_TIMEOUT_S = 300.0  # an emulated start took ~5 s here; room for a loaded machine
ELF_MACHINES = {183: "aarch64", 62: "x86_64"}
# MIDR fields (implementer, part) /proc/cpuinfo shows for each QEMU CPU model; `max` is QEMU's own
MIDR = {"cortex-a35": (0x41, 0xD04), "cortex-a53": (0x41, 0xD03), "cortex-a55": (0x41, 0xD05),
        "cortex-a57": (0x41, 0xD07), "cortex-a72": (0x41, 0xD08), "cortex-a76": (0x41, 0xD0B),
        "cortex-a710": (0x41, 0xD47), "neoverse-n1": (0x41, 0xD0C), "neoverse-n2": (0x41, 0xD49),
        "neoverse-v1": (0x41, 0xD40), "a64fx": (0x46, 0x001), "max": (0x00, 0x051)}
# Linux arm64 AT_HWCAP / AT_HWCAP2 bits of the extensions XNNPACK chooses kernels by
HWCAP = {"asimd": 1, "fphp": 9, "asimdhp": 10, "asimddp": 20, "sve": 22}
HWCAP2 = {"sve2": 1, "i8mm": 13, "bf16": 14, "sme": 23, "sme2": 37}
TEXTS = (
    # from the tiny artifact's training set
    "what is my account balance", "set a timer for five minutes", "will it rain tomorrow", "hello there",
    # paraphrases it never saw
    "how much cash is left in my savings", "remind me in ten minutes", "is it going to snow this weekend",
    "hey good evening",
    # outside its intents
    "how do i change a flat tire", "recommend a good book", "what is the capital of france",
    # in between
    "hello what is the weather", "check the time", "money for an umbrella", "ok", "balance the timer please",
)
PROBE = """
import json, platform, struct, sys
from importlib import metadata
import edge_container
auxv = {}
if platform.machine() == "aarch64":
    auxv = dict(struct.iter_unpack("<QQ", open("/proc/self/auxv", "rb").read()))
print(json.dumps({"machine": platform.machine(), "python": platform.python_version(),
                  "implementation": platform.python_implementation(), "libc": "-".join(platform.libc_ver()),
                  "executable": sys.executable, "edge_container": edge_container.__file__,
                  "hwcap": auxv.get(16), "hwcap2": auxv.get(26),
                  "packages": {n: metadata.version(n) for n in json.loads(sys.argv[1])}}))
"""


class BenchError(Exception):
    """Something this host lacks or a step that failed, said in a sentence with the fix."""


# --- the host -----------------------------------------------------------------------------------------------
def missing_tools(which: Callable[[str], str | None] | None = None) -> list[str]:
    which = which or shutil.which
    return [tool for tool in TOOLS if which(tool) is None]


def check_host(which: Callable[[str], str | None] | None = None, machine: str | None = None,
               euid: int | None = None) -> None:
    machine = machine or platform.machine()
    if machine != "x86_64":
        raise BenchError(f"this compares an emulated aarch64 root with an x86_64 host; this one is {machine}")
    missing = missing_tools(which)
    if missing:
        fixes = sorted({TOOLS[t] for t in missing})
        raise BenchError(f"missing {', '.join(missing)}; install with: {' && '.join(fixes)}")
    if (os.geteuid() if euid is None else euid) != 0:
        raise BenchError("run as root: debootstrap, chroot and mount need it")


def ensure_binfmt(fs: Path = BINFMT) -> dict[str, Any]:
    """The kernel must run aarch64 ELF files through QEMU, with the F flag (the interpreter is opened when the
    entry is registered: the chroot does not contain it)."""
    done = []
    if not (fs / "register").exists():
        _run(["mount", "binfmt_misc", "-t", "binfmt_misc", str(fs)],
             fix="this container may not mount binfmt_misc (it needs a privileged container or a VM)")
        done.append(f"mounted binfmt_misc on {fs}")
    entry = fs / "qemu-aarch64"
    if not entry.exists() or not entry.read_text().startswith("enabled"):
        _run(["update-binfmts", "--enable", "qemu-aarch64"], fix=f"is qemu-user-static there? ({APT_FIX})")
        done.append("update-binfmts --enable qemu-aarch64")
    flags = binfmt_flags(entry.read_text())
    if "F" not in flags:
        raise BenchError(f"{entry} is registered without the F flag ({flags!r}): a chroot cannot reach QEMU; "
                         "re-register it: update-binfmts --disable qemu-aarch64 && update-binfmts --enable "
                         "qemu-aarch64 (Debian's qemu-user-static asks for fix_binary)")
    return {"entry": str(entry), "flags": flags, "changed_by_this_run": done}


def binfmt_flags(entry_text: str) -> str:
    for line in entry_text.splitlines():
        if line.startswith("flags:"):
            return line.split(":", 1)[1].strip()
    return ""


def host_machine() -> dict[str, Any]:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    fields = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in lscpu.splitlines())}
    return {"lscpu_model_name": fields.get("Model name"), "cpus": os.cpu_count(),
            "avx512f": "avx512f" in fields.get("Flags", "").split(), "kernel": platform.release(),
            "load_average_1m_at_start": round(os.getloadavg()[0], 2)}


def qemu_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0] if out else "unknown"


# --- preparing the arm64 root -------------------------------------------------------------------------------
def ensure_rootfs(root: Path, *, suite: str, mirror: str, logs: Path) -> dict[str, Any]:
    marker = root / ".edge-arm64.json"
    if marker.exists():
        return {**json.loads(marker.read_text()), "reused": True}
    if root.exists():  # a run that stopped half way: start over, but never through a mount point
        mounted = [ln.split()[1] for ln in Path("/proc/mounts").read_text().splitlines()
                   if ln.split()[1].startswith(str(root.resolve()))]
        if mounted:
            raise BenchError(f"{root} is incomplete and has mounts inside ({', '.join(mounted)}); "
                             "unmount them and remove it")
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    _run(["nice", "debootstrap", "--arch=arm64", "--foreign", "--variant=minbase",
          "--include=python3,python3-venv", suite, str(root), mirror],
         log=logs / "debootstrap-first-stage.log", fix=f"can this host reach {mirror}?")
    first = time.monotonic() - start
    start = time.monotonic()
    _run(["nice", "chroot", str(root), "/debootstrap/debootstrap", "--second-stage"],
         log=logs / "debootstrap-second-stage.log", fix="it runs emulated: does binfmt_misc work?")
    record = {"suite": suite, "mirror": mirror, "variant": "minbase", "include": ["python3", "python3-venv"],
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "debootstrap_first_stage_s": round(first, 1),
              "debootstrap_second_stage_emulated_s": round(time.monotonic() - start, 1)}
    marker.write_text(json.dumps(record, indent=2) + "\n")
    return {**record, "reused": False}


def requirements_key() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes() + b"\0" + CONSTRAINTS.read_bytes()).hexdigest()[:12]


def ensure_wheels(cache: Path, python: tuple[int, int], glibc: tuple[int, int], logs: Path) -> Path:
    tag = f"cp{python[0]}{python[1]}"
    dest = cache / "wheels" / f"{tag}-aarch64-{requirements_key()}"
    if (dest / ".complete").exists():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    _run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--only-binary=:all:",
          "--implementation", "cp", "--python-version", f"{python[0]}.{python[1]}", "--abi", tag,
          *[a for t in platform_tags("aarch64", glibc) for a in ("--platform", t)], "--dest", str(dest),
          "-r", str(REQUIREMENTS), "-c", str(CONSTRAINTS)], log=logs / "pip-download.log",
         fix="is a package index reachable, and has every pin an aarch64 wheel? (bench/arm64_wheels.py)")
    (dest / ".complete").touch()
    return dest


def ensure_venv(root: Path, wheels: Path, logs: Path) -> dict[str, Any]:
    venv = root / VENV.lstrip("/")
    marker = venv / ".edge-requirements"
    if marker.exists() and marker.read_text() == requirements_key():
        return {"reused": True}
    shutil.rmtree(venv, ignore_errors=True)
    staged = root / "opt" / "wheels"
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(wheels, staged)
    for file in (REQUIREMENTS, CONSTRAINTS):
        shutil.copy(file, staged / file.name)
    start = time.monotonic()
    _run(["nice", "chroot", str(root), "/usr/bin/python3", "-m", "venv", VENV], log=logs / "venv.log")
    made = time.monotonic() - start
    start = time.monotonic()
    _run(["nice", "chroot", str(root), f"{VENV}/bin/python", "-m", "pip", "install",
          "--disable-pip-version-check", "--no-index", "--find-links", "/opt/wheels",
          "-r", "/opt/wheels/requirements.txt",
          "-c", "/opt/wheels/constraints.txt"], log=logs / "pip-install.log")
    marker.write_text(requirements_key())
    return {"reused": False, "venv_emulated_s": round(made, 1),
            "pip_install_emulated_s": round(time.monotonic() - start, 1)}


def stage(root: Path, model_dir: Path, code: str | None) -> tuple[Path, Path]:
    """Fresh copies of the code (the working tree's, or git revision `code`'s) and of the artifact inside the
    root; the x86_64 run serves the same files."""
    app, models = root / "opt" / "app", root / "opt" / "models"
    for path in (app, models):
        shutil.rmtree(path, ignore_errors=True)
    app.mkdir(parents=True)
    if code:
        archive = subprocess.run(["git", "archive", "--format=tar", code, *APP_FILES], cwd=REPO_ROOT,
                                 capture_output=True, check=False)
        if archive.returncode != 0:
            raise BenchError(f"git archive {code} failed: {archive.stderr.decode().strip()}")
        subprocess.run(["tar", "-x", "-C", str(app)], input=archive.stdout, check=True)
    else:
        skip = shutil.ignore_patterns("__pycache__", "*.pyc")
        for name in APP_FILES[:-1]:
            shutil.copytree(REPO_ROOT / name, app / name, ignore=skip)
        shutil.copy(REPO_ROOT / APP_FILES[-1], app / APP_FILES[-1])
    shutil.copytree(model_dir, models)
    return app, models


def tiny_artifact(cache: Path, logs: Path) -> Path:
    folder = cache / "model"
    if not (folder / "manifest.json").exists():
        shutil.rmtree(folder, ignore_errors=True)
        _run([sys.executable, "-m", "tests.fixtures.tiny_artifact", str(folder)], cwd=REPO_ROOT,
             log=logs / "tiny-artifact.log", fix="it needs TensorFlow in this venv; or pass --model-dir")
    return folder


def cpuinfo_text(cpu: str, processors: int) -> str:
    """A /proc/cpuinfo for `processors` cores of QEMU's CPU model `cpu` (the MIDR fields the library reads;
    the features it takes from AT_HWCAP, which QEMU sets)."""
    implementer, part = MIDR.get(cpu.split(",")[0], (0x00, 0x000))
    block = ("processor\t: {i}\nCPU implementer\t: 0x{implementer:02x}\nCPU architecture: 8\n"
             "CPU variant\t: 0x0\nCPU part\t: 0x{part:03x}\nCPU revision\t: 0\n")
    return "\n".join(block.format(i=i, implementer=implementer, part=part) for i in range(processors)) + "\n"


def _run(cmd: Sequence[str], *, log: Path | None = None, fix: str = "", cwd: Path | None = None) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False, cwd=cwd)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        where = f" (log: {log})" if log else ""
        raise BenchError(f"`{' '.join(cmd[:4])} ...` failed with exit code {proc.returncode}{where}"
                         f"{'; ' + fix if fix else ''}\n{tail}")
    return proc.stdout


# --- running the edge ---------------------------------------------------------------------------------------
def in_root(root: Path, cpuinfo: Path, argv: Sequence[str], env: dict[str, str], cwd: str) -> list[str]:
    """`argv` in the chroot, in a mount namespace of its own (its /proc, /sys and cpuinfo vanish with it).
    Each step execs the next: the process started is the one that ends up running `argv`."""
    script = ('root="$1" cpuinfo="$2"; shift 2; mount -t proc proc "$root/proc" && mount -t sysfs sysfs '
              '"$root/sys" && mount --bind "$cpuinfo" "$root/proc/cpuinfo" && exec chroot "$root" "$@"')
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", str(root),
            str(cpuinfo), "/usr/bin/env", "-i", "-C", cwd, *(f"{k}={v}" for k, v in env.items()), *argv]


def probe(cmd: list[str], cwd: Path | None = None) -> dict[str, Any]:
    out = _run([*cmd, "-c", PROBE, json.dumps(list(pins(REQUIREMENTS)))], cwd=cwd)
    found = json.loads(out.strip().splitlines()[-1])
    hwcap, hwcap2 = found.pop("hwcap"), found.pop("hwcap2")
    if hwcap is not None:
        found["cpu_extensions"] = hwcap_names(hwcap, hwcap2 or 0)
    return found


def hwcap_names(hwcap: int, hwcap2: int) -> list[str]:
    return [name for name, bit in HWCAP.items() if hwcap >> bit & 1] + [
        name for name, bit in HWCAP2.items() if hwcap2 >> bit & 1]


class Edge:
    """One `python -m edge_container serve`, started by `cmd`: ready, or an error."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None, cwd: Path | None, port: int,
                 log: Path) -> None:
        self.port, self.log = port, log
        log.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with log.open("w") as out:
            self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        while not self._ready():
            if self.proc.poll() is not None:
                raise BenchError(f"the edge exited ({self.proc.returncode}) before it was ready: {log}")
            if time.monotonic() - started > READY_TIMEOUT_S:
                self.stop()
                raise BenchError(f"the edge was not ready after {READY_TIMEOUT_S:.0f} s: {log}")
            time.sleep(0.1)
        self.startup_s = time.monotonic() - started
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def _ready(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            conn.request("GET", "/readyz")
            return conn.getresponse().status == 200
        except OSError:
            return False

    def post(self, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
        start = time.perf_counter()
        self.conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
        response = self.conn.getresponse()
        raw = response.read()
        elapsed = time.perf_counter() - start
        if response.status != 200:
            raise BenchError(f"POST {path} answered {response.status}: {raw[:300]!r}")
        return json.loads(raw), elapsed

    def process(self) -> dict[str, Any]:
        """What the host sees of the server: its executable, and the native LiteRT libraries it has mapped."""
        pid = self.proc.pid
        maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
        mapped = sorted({ln.split()[-1] for ln in maps if "/ai_edge_litert/" in ln and ".so" in ln})
        return {"host_exe": os.readlink(f"/proc/{pid}/exe"),
                "cmdline": Path(f"/proc/{pid}/cmdline").read_bytes().decode().strip("\0").split("\0"),
                "litert_libraries_mapped": {Path(p).name: elf_machine(Path(p)) for p in mapped}}

    def stop(self) -> list[str]:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.log.read_text().splitlines()


def elf_machine(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF":
        return "not ELF"
    code = int.from_bytes(head[18:20], "little")
    return ELF_MACHINES.get(code, f"e_machine {code}")


def ask(edge: Edge, texts: Sequence[str]) -> tuple[list[dict[str, Any]], list[float]]:
    """Per text: the /v1/predict answer and the /v2 probability vector; each /v1/predict's latency (ms)."""
    answers, latencies = [], []
    for text in texts:
        reply, seconds = edge.post("/v1/predict", {"text": text})
        result = reply["results"][0]
        oip, _ = edge.post("/v2/models/edge/infer",
                           {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]})
        outputs = {o["name"]: o["data"] for o in oip["outputs"]}
        answers.append({"label": result["label"], "confidence": result["confidence"],
                        "source": result["source"], "reason": result["reason"],
                        "edge_label": outputs["label"][0],
                        "probabilities": outputs["probabilities"]})
        latencies.append(seconds * 1e3)
    return answers, latencies


def serve_and_ask(cmd: list[str], env: dict[str, str] | None, cwd: Path | None, port: int, log: Path,
                  texts: Sequence[str]) -> dict[str, Any]:
    edge = Edge(cmd, env, cwd, port, log)
    try:
        cpu_start = _cpu_seconds(edge.proc.pid)
        answers, latencies = ask(edge, texts)
        cpu = _cpu_seconds(edge.proc.pid) - cpu_start
        process = edge.process()
    finally:
        lines = edge.stop()
    return {"process": process, "startup_s": round(edge.startup_s, 2),
            "latency_ms": latency_summary(latencies),
            # server CPU per text (one /v1 and one /v2 request): steadier than wall time on a shared machine
            "server_cpu_ms_per_text": round(cpu / len(texts) * 1e3, 2),
            "xnnpack": any("XNNPACK delegate" in ln for ln in lines),
            "cpuinfo_errors": [ln for ln in lines if "cpuinfo" in ln.lower()][:3],
            "shut_down_cleanly": any("Application shutdown complete" in ln for ln in lines),
            "answers": answers}


def latency_summary(ms: Sequence[float]) -> dict[str, float]:
    rest = list(ms[1:]) or list(ms)
    return {"first": round(ms[0], 2), "p50_after_first": round(statistics.median(rest), 2),
            "p90_after_first": round(_percentile(rest, 0.9), 2), "max": round(max(ms), 2), "n": len(ms)}


# --- the comparison -----------------------------------------------------------------------------------------
def int8_steps(p_a: Sequence[float], p_b: Sequence[float], *, scale: float,
               temperature: float) -> float | None:
    """The spread of the int8 output difference two probability vectors imply (the module's step 6); None
    when a probability is 0 (no log to take)."""
    if min(*p_a, *p_b) <= 0.0:
        return None
    diff = [temperature * (math.log(a) - math.log(b)) / scale for a, b in zip(p_a, p_b, strict=True)]
    return max(diff) - min(diff)


def compare(texts: Sequence[str], x86: Sequence[dict[str, Any]], arm: Sequence[dict[str, Any]], *,
            scale: float, temperature: float) -> dict[str, Any]:
    rows = []
    for text, a, b in zip(texts, x86, arm, strict=True):
        step = int8_steps(b["probabilities"], a["probabilities"], scale=scale, temperature=temperature)
        pairs = zip(a["probabilities"], b["probabilities"], strict=True)
        rows.append({"text": text, "x86_64": a["label"], "aarch64": b["label"],
                     "label_agrees": a["label"] == b["label"] and a["edge_label"] == b["edge_label"],
                     "max_abs_prob_diff": max(abs(p - q) for p, q in pairs),
                     "int8_steps": None if step is None else round(step, 4)})
    agree = sum(r["label_agrees"] for r in rows)
    steps = [r["int8_steps"] for r in rows if r["int8_steps"] is not None]
    max_steps = max(steps, default=None)
    return {
        "texts": len(rows), "labels_agreeing": agree, "label_agreement": agree / len(rows) if rows else None,
        "max_abs_prob_diff": max((r["max_abs_prob_diff"] for r in rows), default=None),
        "max_int8_steps": max_steps, "texts_without_int8_steps": len(rows) - len(steps),
        # the most one rounding step (on one logit, or several alike) can move a probability: tanh(scale/4T)
        "one_step_prob_bound": math.tanh(scale / (4 * temperature)),
        "within_int8_rounding": bool(rows) and agree == len(rows) and len(steps) == len(rows)
                                and max_steps is not None and max_steps <= 1.0 + 1e-3,
        "per_text": rows,
    }


# --- the run ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", nargs="+", default=list(DEFAULT_CPUS), metavar="CPU",
                        help="QEMU CPU models to emulate, one aarch64 run each (`qemu-aarch64-static -cpu "
                             "help`; properties after a comma: max,sme=off)")
    parser.add_argument("--qemu", type=Path, help="run the root's python through this qemu-aarch64 binary "
                                                   "instead of the binfmt_misc one")
    parser.add_argument("--model-dir", type=Path, help="an artifact folder (default: the tiny test artifact)")
    parser.add_argument("--code", metavar="REV", help="serve modelpack/, edge_container/ and pyproject.toml "
                                                      "as in this git revision (default: the working tree)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help=f"the root, wheels, model and logs (default: {DEFAULT_CACHE})")
    parser.add_argument("--suite", default="bookworm", choices=sorted(GLIBC),
                        help="the root's Debian release")
    parser.add_argument("--mirror", default="http://deb.debian.org/debian")
    parser.add_argument("--port", type=int, default=0, help="the edge's port (default: a free one)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    try:
        report = run(args)
    except BenchError as exc:
        print(f"bench/arm64.py: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"summary": report["summary"], "run_s": report["run_s"], "out": str(args.out)},
                     indent=1))
    return 0 if all(row["within_int8_rounding"] for row in report["summary"]) else 1


def run(args: argparse.Namespace) -> dict[str, Any]:
    from infra.processes import free_port
    from modelpack.manifest import load_manifest

    started = time.monotonic()
    check_host()
    cache = args.cache.expanduser().resolve()
    logs, root = cache / "logs", cache / "rootfs"
    binfmt = ensure_binfmt()
    rootfs = ensure_rootfs(root, suite=args.suite, mirror=args.mirror, logs=logs)
    version = json.loads(_run(["chroot", str(root), "/usr/bin/python3", "-c",
                               "import json, sys; print(json.dumps(sys.version_info[:2]))"]))
    wheels = ensure_wheels(cache, (version[0], version[1]), GLIBC[args.suite], logs)
    venv = ensure_venv(root, wheels, logs)
    model_dir = args.model_dir.resolve() if args.model_dir else tiny_artifact(cache, logs)
    app, models = stage(root, model_dir, args.code)
    manifest = load_manifest(models)
    output = manifest.edge.output
    if output.scale is None:
        raise BenchError(f"{model_dir}'s edge model has no int8 output (precision {manifest.edge.precision})")
    qemu = "qemu-aarch64-static (binfmt_misc)"
    if args.qemu:
        shutil.copy(args.qemu, root / "opt" / "qemu-aarch64")
        qemu = str(args.qemu)

    port = args.port or free_port()
    edge_env = {"EDGE_HOST": "127.0.0.1", "EDGE_PORT": str(port), "PYTHONDONTWRITEBYTECODE": "1",
                "LANG": "C.UTF-8"}
    serve = ["-m", "edge_container", "serve"]
    x86_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
               **edge_env, "EDGE_MODEL_DIR": str(models)}
    x86 = {"probe": probe([sys.executable], cwd=app),
           **serve_and_ask([sys.executable, *serve], x86_env, app, port, logs / "edge-x86_64.log", TEXTS)}

    runs = []
    for cpu in args.cpus:
        cpuinfo = cache / f"cpuinfo-{cpu.replace(',', '_')}"
        cpuinfo.write_text(cpuinfo_text(cpu, os.cpu_count() or 1))
        arm_env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", **edge_env, "EDGE_MODEL_DIR": "/opt/models"}
        python = [f"{VENV}/bin/python"]
        if args.qemu:
            python = ["/opt/qemu-aarch64", "-cpu", cpu, *python]
        else:
            arm_env["QEMU_CPU"] = cpu  # read by qemu-aarch64-static when binfmt_misc starts it
        arm_python = in_root(root, cpuinfo, python, arm_env, "/opt/app")
        found = probe(arm_python)
        if found["machine"] != "aarch64":
            raise BenchError(f"the root's python says platform.machine() = {found['machine']}, not aarch64")
        served = serve_and_ask([*arm_python, *serve], None, None, port, logs / f"edge-aarch64-{cpu}.log",
                               TEXTS)
        runs.append({"cpu": cpu, "probe": found, "process": served["process"],
                     "emulated_startup_s": served["startup_s"], "emulated_latency_ms": served["latency_ms"],
                     "emulated_server_cpu_ms_per_text": served["server_cpu_ms_per_text"],
                     **{k: served[k] for k in ("xnnpack", "cpuinfo_errors", "shut_down_cleanly", "answers")},
                     "comparison": compare(TEXTS, x86["answers"], served["answers"], scale=output.scale,
                                           temperature=manifest.edge.temperature)})
    return {
        "benchmark": "arm64",
        "question": "does the edge service, installed from its pinned aarch64 wheels on an arm64 Debian "
                    "userland (QEMU user emulation), answer the same texts as on x86_64, within int8 "
                    "rounding?",
        "date": time.strftime("%Y-%m-%d"),
        "host": {**host_machine(),
                 "qemu": qemu_version(str(args.qemu) if args.qemu else "qemu-aarch64-static")},
        "qemu": qemu,
        "binfmt": binfmt,
        "rootfs": rootfs,
        "venv": venv,
        "wheels": sorted(p.name for p in wheels.glob("*.whl")),
        "checkout": _checkout(args.code),
        "model": {"dir": str(model_dir), "version": manifest.model_version, "labels": list(manifest.labels),
                  "edge_file": manifest.edge.file, "edge_sha256": manifest.edge.sha256,
                  "output_scale": output.scale, "output_zero_point": output.zero_point,
                  "temperature": manifest.edge.temperature},
        "edge_environment": {k: v for k, v in edge_env.items() if k != "EDGE_PORT"},
        "timings_note": "emulated_* figures are QEMU user emulation on the host above (one request at a "
                        "time, the client in the bench's process): not an arm64 device's speed",
        "texts": list(TEXTS),
        "summary": [{"cpu": r["cpu"], "machine": r["probe"]["machine"], "xnnpack": r["xnnpack"],
                     **{k: r["comparison"][k] for k in SUMMARY_KEYS},
                     "emulated_startup_s": r["emulated_startup_s"],
                     "emulated_latency_ms_p50": r["emulated_latency_ms"]["p50_after_first"]} for r in runs],
        "x86_64": x86,
        "aarch64": runs,
        "run_s": round(time.monotonic() - started, 1),
    }


def _checkout(code: str | None) -> dict[str, Any]:
    def git(*a: str) -> str:
        done = subprocess.run(["git", *a], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    if code:
        return {"served": f"git revision {code}", "commit": git("rev-parse", code)}
    # others edit the tree meanwhile: what was uncommitted in the code that was served
    return {"served": "working tree", "commit": git("rev-parse", "HEAD"),
            "uncommitted_in_served_code": git("status", "--porcelain", "--", *APP_FILES).splitlines()}


if __name__ == "__main__":
    sys.exit(main())
