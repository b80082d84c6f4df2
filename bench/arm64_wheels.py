"""Does every edge (or Lambda) requirement install from wheels on arm64 and amd64? `pip download` answers.

    python bench/arm64_wheels.py [--out bench/results/arm64_wheels.json]
    python bench/arm64_wheels.py --lambda [--out bench/results/lambda_arm64_wheels.json]

For each platform (linux/arm64 and, as the control, linux/amd64) this asks pip to resolve
`edge_container/requirements.txt` exactly as the image's `pip install -r` does — the pins plus whatever
transitive versions they pull today — for CPython 3.12 (`python:3.12-slim`), binary wheels only
(`--only-binary=:all:`: no sdist may be built on the device). The manylinux tags offered stop at glibc
2.36 (Debian 12, the oldest base `python:3.12-slim` has been built on; newer bases have a newer glibc, so
what passes here installs there too). It records each wheel, its tag and the glibc it needs; and, for the
record, the literal manylinux2014 (glibc 2.17) question, which fails: ai-edge-litert 2.3.0 ships
manylinux_2_27 wheels only. Needs the network to a package index; nothing is installed. Exit code 1 when
a platform has no complete set of wheels.

`--lambda` asks the same of `cloud_functions/requirements.txt` (what `sam build` installs into the
function) for the Lambda python3.12 runtime on arm64 and x86_64: Amazon Linux 2023, glibc 2.34, so tags
up to manylinux_2_34. An arm64 Lambda costs about 20 % less per GB-second; template.yaml's
`Architectures` follows this answer.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = REPO_ROOT / "edge_container" / "requirements.txt"
PYTHON_VERSION = "3.12"  # the Dockerfile's FROM python:3.12-slim
GLIBC_MAX = (2, 36)  # Debian 12 (bookworm)
ARCHES = {"linux/arm64": "aarch64", "linux/amd64": "x86_64"}
_WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-(?P<python>[^-]+)-(?P<abi>[^-]+)-"
                    r"(?P<platform>[^-]+)\.whl$")
_MANYLINUX = re.compile(r"^manylinux_(\d+)_(\d+)_|^manylinux(2014|2010|1)_")
_LEGACY_GLIBC = {"2014": (2, 17), "2010": (2, 12), "1": (2, 5)}


LAMBDA_REQUIREMENTS = REPO_ROOT / "cloud_functions" / "requirements.txt"
LAMBDA_GLIBC_MAX = (2, 34)  # the python3.12 Lambda runtime: Amazon Linux 2023, on arm64 and x86_64 alike
LAMBDA_ARCHES = {"lambda/arm64": "aarch64", "lambda/x86_64": "x86_64"}


def platform_tags(arch: str, glibc_max: tuple[int, int] = GLIBC_MAX) -> list[str]:
    """Every manylinux tag up to `glibc_max`: pip takes --platform literally and does not expand
    manylinux_2_X to the older glibc versions it covers."""
    return [f"manylinux_{glibc_max[0]}_{minor}_{arch}" for minor in range(glibc_max[1], 16, -1)] + [
        f"manylinux2014_{arch}"]


def pins(path: Path = REQUIREMENTS) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[name.strip()] = version.strip()
    return out


def min_glibc(platform_tag: str) -> tuple[int, int] | None:
    """The oldest glibc a wheel's platform tag needs (None for a pure-Python `any` wheel)."""
    needs = []
    for tag in platform_tag.split("."):  # compressed tag sets: manylinux_2_17_aarch64.manylinux2014_aarch64
        match = _MANYLINUX.match(tag)
        if match and match[3]:
            needs.append(_LEGACY_GLIBC[match[3]])
        elif match:
            needs.append((int(match[1]), int(match[2])))
    return min(needs) if needs else None


def check(docker_platform: str, tags: list[str], requirements: Path = REQUIREMENTS) -> dict:
    with tempfile.TemporaryDirectory(prefix="wheels-") as dest:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
               "--only-binary=:all:", "--implementation", "cp", "--python-version", PYTHON_VERSION,
               "--abi", "cp312", *[a for tag in tags for a in ("--platform", tag)],
               "--dest", dest, "-r", str(requirements)]
        start = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        seconds = round(time.monotonic() - start, 1)
        wheels = []
        for file in sorted(Path(dest).iterdir()):
            match = _WHEEL.match(file.name)
            glibc = min_glibc(match["platform"]) if match else None
            unzipped = sum(i.file_size for i in zipfile.ZipFile(file).infolist()) if match else None
            wheels.append({"file": file.name, "bytes": file.stat().st_size, "unzipped_bytes": unzipped,
                           "platform_tag": match["platform"] if match else None,
                           "needs_glibc": ".".join(map(str, glibc)) if glibc else None})
    names = {_normal(w["file"].split("-")[0]) for w in wheels}
    pinned = pins(requirements)
    missing = [p for p in pinned if _normal(p) not in names]
    not_wheels = [w["file"] for w in wheels if not w["file"].endswith(".whl")]
    native = [w for w in wheels if w["needs_glibc"]]
    return {
        "docker_platform": docker_platform,
        "ok": proc.returncode == 0 and not missing and not not_wheels,
        "pip_exit_code": proc.returncode,
        # the local mirrors pip.conf names answer "ignored" for packages they lack: noise, not errors
        "pip_errors": [ln for ln in proc.stderr.strip().splitlines() if "is ignored: it is neither" not in ln][-10:],
        "seconds": seconds,
        "wheels": wheels,
        "pinned_without_a_wheel": missing,
        # wheels pip pulled that the file does not pin (a fully pinned file, as the Lambda's, has none)
        "unpinned": sorted(n for n in names if n not in {_normal(p) for p in pinned}),
        "not_wheels": not_wheels,
        "native_wheels": len(native),
        # what the installed packages weigh (a Lambda zip must stay under 250 MB unzipped)
        "unzipped_bytes": sum(w["unzipped_bytes"] or 0 for w in wheels),
        "all_native_wheels_manylinux2014": all(tuple(map(int, w["needs_glibc"].split("."))) <= (2, 17)
                                               for w in native),
        "newest_glibc_needed": max((w["needs_glibc"] for w in native),
                                   key=lambda v: tuple(map(int, v.split("."))), default=None),
    }


def _normal(name: str) -> str:
    """A distribution name as pip compares them (PEP 503: case, '-', '_' and '.' alike)."""
    return re.sub(r"[-_.]+", "-", name).lower()


DOCKERFILE = REPO_ROOT / "edge_container" / "Dockerfile"
# What would tie an image build to one architecture: a pinned platform, an arch name, a downloaded binary.
_ARCH_SPECIFIC = re.compile(r"--platform|amd64|x86[_-]64|aarch64|arm64|\bi[36]86\b|curl |wget |\.deb\b|apt-get",
                            re.IGNORECASE)


def dockerfile_check(path: Path = DOCKERFILE) -> dict:
    lines = path.read_text().splitlines()
    instructions = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    return {
        "base_images": [ln.split()[1] for ln in instructions if ln.upper().startswith("FROM ")],
        "architecture_specific_lines": [ln.strip() for ln in instructions if _ARCH_SPECIFIC.search(ln)],
        "installs": [ln.strip() for ln in instructions if "pip install" in ln],
    }


def lambda_report() -> dict:
    """The Lambda package's answer: every pin, per architecture, for the python3.12 runtime."""
    results = [check(name, platform_tags(arch, LAMBDA_GLIBC_MAX), LAMBDA_REQUIREMENTS)
               for name, arch in LAMBDA_ARCHES.items()]
    # The literal manylinux2014 question, for the record: ai-edge-litert has manylinux_2_27 wheels only, on
    # both architectures alike, so it fails for x86_64 (what the template shipped so far) as for arm64.
    strict = {name: check(name, [f"manylinux2014_{arch}"], LAMBDA_REQUIREMENTS) for name, arch in LAMBDA_ARCHES.items()}
    return {
        "benchmark": "lambda_arm64_wheels",
        "question": "does every pin of cloud_functions/requirements.txt install from binary wheels for the "
                    "python3.12 Lambda runtime (Amazon Linux 2023, glibc 2.34) on arm64 and x86_64?",
        "requirements": pins(LAMBDA_REQUIREMENTS),
        "python_version": PYTHON_VERSION,
        "platform_tags_offered": {arch: platform_tags(arch, LAMBDA_GLIBC_MAX) for arch in LAMBDA_ARCHES.values()},
        "glibc_max": ".".join(map(str, LAMBDA_GLIBC_MAX)),
        "pip": subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True,
                              text=True, check=True).stdout.split(" from ")[0],
        "ran_on": {"machine": platform.machine(), "system": platform.system(), "date": time.strftime("%Y-%m-%d")},
        "ok": all(r["ok"] and not r["unpinned"] for r in results),
        "platforms": results,
        "manylinux2014_only": {name: {"ok": r["ok"], "pip_exit_code": r["pip_exit_code"],
                                      "pip_errors": r["pip_errors"]} for name, r in strict.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="result file (default: bench/results/arm64_wheels.json, "
                                                 "or lambda_arm64_wheels.json with --lambda)")
    parser.add_argument("--lambda", dest="lambda_", action="store_true",
                        help="check cloud_functions/requirements.txt for the Lambda runtime instead")
    args = parser.parse_args()
    if args.lambda_:
        return _write(lambda_report(), args.out or REPO_ROOT / "bench" / "results" / "lambda_arm64_wheels.json")
    return _write(edge_report(), args.out or REPO_ROOT / "bench" / "results" / "arm64_wheels.json")


def _write(report: dict, out: Path) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"ok": report["ok"], **{r["docker_platform"]: {"ok": r["ok"], "wheels": len(r["wheels"]),
                                                                     "newest_glibc": r["newest_glibc_needed"]}
                                             for r in report["platforms"]}}))
    return 0 if report["ok"] else 1


def edge_report() -> dict:
    docker = dockerfile_check()
    results = [check(name, platform_tags(arch)) for name, arch in ARCHES.items()]
    # The literal manylinux2014 (glibc 2.17) question, for the record: stricter than the image needs.
    strict = {name: check(name, [f"manylinux2014_{arch}"]) for name, arch in ARCHES.items()}
    report = {
        "benchmark": "arm64_wheels",
        "question": "does every pin of edge_container/requirements.txt (and what it pulls) install from "
                    "binary wheels for CPython 3.12 on linux/arm64 and linux/amd64?",
        "requirements": pins(),
        "python_version": PYTHON_VERSION,
        "platform_tags_offered": {arch: platform_tags(arch) for arch in ARCHES.values()},
        "glibc_max": ".".join(map(str, GLIBC_MAX)),
        "pip": subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True,
                              text=True, check=True).stdout.split(" from ")[0],
        "ran_on": {"machine": platform.machine(), "system": platform.system(),
                   "date": time.strftime("%Y-%m-%d")},
        "ok": all(r["ok"] for r in results) and not docker["architecture_specific_lines"],
        # python:3.12-slim is a multi-platform image (linux/amd64 and linux/arm64/v8 among others); the
        # only install is pip from wheels, checked above
        "dockerfile": docker,
        "platforms": results,
        "manylinux2014_only": {name: {"ok": r["ok"], "pip_exit_code": r["pip_exit_code"],
                                      "pip_errors": r["pip_errors"]} for name, r in strict.items()},
    }
    return report


if __name__ == "__main__":
    sys.exit(main())
