"""Named inputs several benches take (`--artifact NAME=DIR`, `--ood NAME=FILE`), all checked before any model
runs: a bad one is the parser's one-line refusal (exit 2), never a stack trace half-way through."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from model_build.errors import BuildError
from modelpack.errors import ArtifactError

T = TypeVar("T")


def named(parser: argparse.ArgumentParser, flag: str, specs: list[str], load: Callable[[Path], T],
          *, what: str = "DIR") -> dict[str, T]:
    """`{name: load(path)}` for each NAME=PATH of `flag`, in order; names are unique."""
    found: dict[str, T] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not (sep and name and path):
            parser.error(f"{flag} {spec}: expected NAME={what}")
        if name in found:
            parser.error(f"{flag} {spec}: the name {name!r} is given twice")
        try:  # a missing or broken file, no build config, no data to rebuild it from
            found[name] = load(Path(path))
        except (ArtifactError, BuildError) as exc:
            parser.error(f"{flag} {spec}: {exc}")
    return found


def add_artifact_and_ood_args(parser: argparse.ArgumentParser) -> None:
    """The arguments of the benches that compare built artifacts on out-of-domain files (`open_set`,
    `cloud_knn`): `--artifact NAME=DIR`, `--ood NAME=FILE` (each repeatable) and `--data`."""
    parser.add_argument("--artifact", action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--ood", action="append", required=True, metavar="NAME=FILE")
    parser.add_argument("--data", type=Path, help="the data the artifacts were built from (default: their manifest's)")
