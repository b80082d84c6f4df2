"""The project's version, for every deployable (the edge's `/v2` and OpenAPI document, each CLI's `--version`).

Read from the installed distribution's metadata (`pip install .`); a source tree run as it is (`python -m
edge_container` in a checkout) has no metadata, so then from the `pyproject.toml` beside the packages, the
file the metadata would be built from; code copied without either (the edge image copies the packages
alone) says `0+unknown` rather than a number it cannot know.
"""

from __future__ import annotations

import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "edge-cloud-inference"
UNKNOWN = "0+unknown"
_SOURCE_ROOT = Path(__file__).resolve().parent.parent


@cache
def package_version(distribution: str = DISTRIBUTION, source_root: Path = _SOURCE_ROOT) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        pass
    try:
        project = tomllib.loads((source_root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError):
        return UNKNOWN
    if project.get("name") != distribution or not isinstance(project.get("version"), str):
        return UNKNOWN  # another project's file (a folder that holds these packages among others)
    return project["version"]


def version_line(program: str) -> str:
    """What `--version` prints."""
    return f"{program} ({DISTRIBUTION}) {package_version()}"
