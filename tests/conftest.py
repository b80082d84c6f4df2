"""Shared fixtures: small and real (a real tiny LiteRT artifact, fake AWS credentials for moto)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLINC = REPO / "data" / "clinc150" / "data_full.json"


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real artifact folder (int8 edge + float cloud model, tokenizer, manifest). Treat as read-only:
    copy it (shutil.copytree) before changing anything."""
    from tests.fixtures.tiny_artifact import make_tiny_artifact

    return make_tiny_artifact(tmp_path_factory.mktemp("tiny_artifact"), version="tiny-1", seed=0)


@pytest.fixture(scope="session")
def tiny_artifact_v2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second version of the tiny artifact (different seed), e.g. for hot-reload tests."""
    from tests.fixtures.tiny_artifact import make_tiny_artifact

    return make_tiny_artifact(tmp_path_factory.mktemp("tiny_artifact_v2"), version="tiny-2", seed=1)


@pytest.fixture(scope="session")
def neighbours_artifact(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny artifact with a neighbour offset on its cloud model (`models.cloud.neighbours`). Read-only."""
    import shutil

    from tests.fixtures.tiny_artifact import add_neighbours

    return add_neighbours(shutil.copytree(tiny_artifact, tmp_path_factory.mktemp("neighbours") / "artifact"))


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials so no test can ever reach a real AWS account."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The grouped tests (`xdist_group`: real builds sharing a module's or the session's artifacts, minutes
    each) first, so that under `make test`'s two workers the longest units start first and the run does not
    end on one of them while the other worker idles. Stable otherwise: the collection order stays."""
    items.sort(key=lambda item: item.get_closest_marker("xdist_group") is None)
