"""The model the local stack serves: a given artifact folder, or artifacts/latest, built first if missing.

    model_dir = ensure_artifact(None, preset="fast")     # artifacts/latest; a build in the foreground if needed
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from infra.errors import StackError
from infra.processes import REPO_ROOT

DEFAULT_ARTIFACT = REPO_ROOT / "artifacts" / "latest"
MANIFEST_NAME = "manifest.json"
_BUILD_MINUTES = {"full": 18, "fast": 6, "quick": 2}  # measured alone on a 2-core AMD EPYC (README)


def ensure_artifact(model_dir: Path | str | None, *, preset: str, data: Path | None = None,
                    log: Callable[[str], None] = print) -> Path:
    """`model_dir` if given (it must hold a manifest); else artifacts/latest, built first if it has none.
    The build runs in the foreground: its progress bars go straight to the terminal."""
    if model_dir is not None:
        folder = Path(model_dir)
        if not (folder / MANIFEST_NAME).is_file():
            raise StackError(f"{folder}: no {MANIFEST_NAME} (not an artifact folder); build one with "
                             f"`python -m model_build build --preset {preset} --out {folder}`")
        return folder
    if (DEFAULT_ARTIFACT / MANIFEST_NAME).is_file():
        return DEFAULT_ARTIFACT
    command = [sys.executable, "-m", "model_build", "build", "--preset", preset, "--out", str(DEFAULT_ARTIFACT)]
    if data is not None:
        command += ["--data", str(data)]
    unlabeled = os.environ.get("UNLABELED")  # the Makefile's: CLINC150's wiki pool, when it is there
    if preset != "quick" and unlabeled and Path(unlabeled).is_file():
        command += ["--unlabeled", unlabeled]
    log(f"no model in {DEFAULT_ARTIFACT.relative_to(REPO_ROOT)} yet: building it ({preset} preset; "
        f"about {_BUILD_MINUTES[preset]} minutes on 2 cores)")
    log("$ " + " ".join(command[1:]))
    if subprocess.call(command, cwd=REPO_ROOT) != 0:
        raise StackError("the model build failed (see above); fix it, or pass --model-dir DIR")
    return DEFAULT_ARTIFACT
