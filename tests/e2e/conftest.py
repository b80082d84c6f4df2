"""End-to-end fixtures: the local stack (`infra.stack.LocalStack`, the code behind `make up`) on free
loopback ports, serving the real tiny artifact, and the same artifacts loaded directly for reference."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.stack import LocalStack
from modelpack.classifier import Classifier
from modelpack.manifest import Manifest, load_manifest

# Generous limits: two shared cores run moto, the cloud, the edge, the client and often a model build, and
# these tests are about routing and recovery, not about the local stand-in's speed.
EDGE_ENV = {
    "EDGE_BREAKER_FAILURES": "3",
    "EDGE_BREAKER_RESET_S": "1",
    "EDGE_CLOUD_RETRIES": "1",
    "EDGE_CLOUD_TIMEOUT_MS": "10000",
    "EDGE_DEFAULT_DEADLINE_MS": "20000",
}


@dataclass(frozen=True)
class Reference:
    """One artifact version loaded directly, outside the stack: what its answers must be."""

    manifest: Manifest
    edge: Classifier
    cloud: Classifier


@pytest.fixture(scope="session")
def references(tiny_artifact: Path, tiny_artifact_v2: Path) -> dict[str, Reference]:
    """By model version (tiny-1, tiny-2): responses name the versions that answered them."""
    out = {}
    for folder in (tiny_artifact, tiny_artifact_v2):
        manifest = load_manifest(folder)
        out[manifest.model_version] = Reference(manifest, Classifier(manifest, folder, "edge"),
                                                Classifier(manifest, folder, "cloud"))
    return out


@pytest.fixture(scope="module")
def stack(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(tiny_artifact, work_dir=tmp_path_factory.mktemp("stack"), daily_budget=100_000,
                    reload_poll_s=0.5, edge_env=EDGE_ENV) as running:
        yield running
