"""infra.artifact: the model folder the stack serves must be an artifact."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.artifact import ensure_artifact
from infra.errors import StackError


def test_a_given_artifact_folder_is_served_as_it_is(tiny_artifact: Path) -> None:
    assert ensure_artifact(tiny_artifact, preset="quick") == tiny_artifact


def test_a_folder_without_a_manifest_is_refused_with_the_command_that_builds_one(tmp_path: Path) -> None:
    with pytest.raises(StackError, match=r"no manifest.json .*--preset quick --out"):
        ensure_artifact(tmp_path, preset="quick")
