"""Content-addressed stage cache: a stage whose inputs did not change is loaded instead of recomputed.

A key is the SHA-256 of a JSON description of everything the stage's output depends on (data digest,
stage config, upstream keys, a code version the stage bumps when its logic changes).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def stage_key(stage: str, **inputs: Any) -> str:
    blob = json.dumps({"stage": stage, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def default_cache_dir() -> Path:
    return Path(os.environ.get("MODEL_BUILD_CACHE", ".cache/model_build"))


class StageCache:
    def __init__(self, root: Path | None, *, enabled: bool = True):
        self.root = root or default_cache_dir()
        self.enabled = enabled

    def cached(
        self,
        stage: str,
        key: str,
        compute: Callable[[Path], None],
    ) -> tuple[Path, bool]:
        """Folder holding the stage's outputs for `key`, and whether it came from the cache.

        `compute(folder)` writes the outputs into a scratch folder, which is renamed into place only when
        it returns: an interrupted build never leaves a half-written entry behind.
        """
        final = self.root / stage / key
        if self.enabled and (final / ".done").exists():
            return final, True
        final.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
        try:
            compute(scratch)
            (scratch / ".done").write_text(key)
            if final.exists():
                shutil.rmtree(final)
            scratch.rename(final)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        return final, False
