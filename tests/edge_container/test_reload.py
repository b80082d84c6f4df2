"""Hot reload: new versions verified and swapped under load with zero failed requests; bad ones refused."""

import asyncio
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from moto import mock_aws

from edge_container.errors import ReloadRefused
from edge_container.wiring import EdgeStack
from model_build.publish import publish
from tests.edge_container.conftest import ADMIN_TOKEN, CONFIDENT, edge_settings, serve_edge

ADMIN = {"x-admin-token": ADMIN_TOKEN}


def copy_into(src: Path, dst: Path, names: tuple[str, ...] = ("tokenizer.json", "edge_int8.tflite", "cloud.tflite",
                                                              "manifest.json")) -> None:
    """Replace files in place, manifest last, the way an operator (or rsync) would."""
    for name in names:
        shutil.copyfile(src / name, dst / name)


def under_load(base_url: str, action: Callable[[], None], *, clients: int = 6, seconds: float = 2.0) -> list[list[str]]:
    """Keep `clients` loops sending requests while `action` runs in a thread; each loop's versions, in order."""
    async def loop(client: httpx.AsyncClient, stop: asyncio.Event, seen: list[str]) -> None:
        while not stop.is_set():
            r = await client.post("/v1/predict", json={"texts": [CONFIDENT, "hello there"], "route": "edge"})
            assert r.status_code == 200, r.text
            seen.extend(res["model_versions"]["edge"] for res in r.json()["results"])

    async def main() -> list[list[str]]:
        stop, seen = asyncio.Event(), [list[str]() for _ in range(clients)]
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            tasks = [asyncio.create_task(loop(client, stop, s)) for s in seen]
            await asyncio.sleep(0.2)
            await asyncio.to_thread(action)
            await asyncio.sleep(seconds)
            stop.set()
            await asyncio.gather(*tasks)  # re-raises the first failed request, if any
        return seen

    return asyncio.run(main())


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def watched(tiny_artifact: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    shutil.copytree(tiny_artifact, folder)
    return folder


@pytest.fixture
def served(watched: Path) -> Iterator[httpx.Client]:
    with serve_edge(edge_settings(watched, reload_poll_s=0.05)) as (client, _):
        yield client


def version(client: httpx.Client) -> str:
    return client.get("/admin/model", headers=ADMIN).json()["current"]["model_version"]


def test_a_new_version_in_the_folder_is_swapped_in_under_load(served: httpx.Client, watched: Path,
                                                              artifact_v2: Path) -> None:
    seen = under_load(str(served.base_url), lambda: copy_into(artifact_v2, watched))
    assert version(served) == "tiny-2"
    for versions in seen:  # every request answered; each client saw v1, then only v2
        assert versions and versions[0] == "tiny-1" and versions[-1] == "tiny-2"
        assert versions == sorted(versions)
    metrics = served.get("/metrics").text
    assert 'edge_model_reloads_total{outcome="loaded"} 2.0' in metrics and 'version="tiny-2"' in metrics


def test_admin_reload_and_rollback_under_load(served: httpx.Client, watched: Path, artifact_v2: Path) -> None:
    served.post("/admin/reload", headers=ADMIN)
    copy_into(artifact_v2, watched)
    wait_for(lambda: version(served) == "tiny-2")

    def rollback_then_forward() -> None:
        assert served.post("/admin/rollback", headers=ADMIN).json()["current"]["model_version"] == "tiny-1"
        time.sleep(0.3)
        r = served.post("/admin/rollback", headers=ADMIN)  # the previous of a rollback is the version left
        assert r.json()["current"]["model_version"] == "tiny-2"

    seen = under_load(str(served.base_url), rollback_then_forward, seconds=0.5)
    assert all(v in ("tiny-1", "tiny-2") for versions in seen for v in versions)
    assert any("tiny-1" in versions for versions in seen)
    reloaded = served.post("/admin/reload", headers=ADMIN, json={"source": "folder"})
    assert reloaded.status_code == 200 and reloaded.json()["current"]["model_version"] == "tiny-2"


@pytest.mark.parametrize("damage", ["corrupt_model", "missing_file", "bad_manifest"])
def test_a_bad_artifact_is_refused_and_the_old_version_keeps_serving(served: httpx.Client, watched: Path,
                                                                     artifact_v2: Path, damage: str) -> None:
    def break_it() -> None:
        copy_into(artifact_v2, watched, ("manifest.json",))  # names tiny-2...
        if damage == "corrupt_model":  # ... whose model file is now corrupt
            data = bytearray((watched / "edge_int8.tflite").read_bytes())
            data[100] ^= 0xFF
            (watched / "edge_int8.tflite").write_bytes(bytes(data))
        elif damage == "missing_file":
            (watched / "tokenizer.json").unlink()
        else:
            (watched / "manifest.json").write_text('{"model_version": "tiny-3", "labels": "oops"}')

    seen = under_load(str(served.base_url), break_it, seconds=0.5)
    assert {v for versions in seen for v in versions} == {"tiny-1"}
    status = served.get("/admin/model", headers=ADMIN).json()
    assert status["current"]["model_version"] == "tiny-1" and status["last_error"]["source"] == "folder"
    r = served.post("/admin/reload", headers=ADMIN)
    assert r.status_code == 409 and r.json()["error"]["code"] == "RELOAD_REFUSED"
    assert 'edge_model_reloads_total{outcome="refused"}' in served.get("/metrics").text
    assert served.post("/v1/predict", json={"text": CONFIDENT}).status_code == 200


def test_rollback_without_a_previous_version_is_refused(served: httpx.Client) -> None:
    r = served.post("/admin/rollback", headers=ADMIN)
    assert r.status_code == 409 and r.json()["error"]["code"] == "NO_PREVIOUS_MODEL"


def test_the_service_refuses_to_start_on_a_corrupt_artifact(watched: Path) -> None:
    (watched / "edge_int8.tflite").write_bytes(b"corrupt")
    stack = EdgeStack.create(edge_settings(watched))
    with pytest.raises(ReloadRefused, match="SHA-256"):
        asyncio.run(stack.start())
    asyncio.run(stack.stop())
    assert not stack.ready


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="models")
        yield client


def test_versions_published_to_s3_are_fetched_verified_and_swapped(s3: Any, tiny_artifact: Path, artifact_v2: Path,
                                                                   tmp_path: Path) -> None:
    publish(tiny_artifact, bucket="models", prefix="edge", s3_client=s3)
    settings = edge_settings(tmp_path / "empty", s3_latest_uri="s3://models/edge/latest.json",
                             s3_cache_dir=tmp_path / "cache")
    with serve_edge(settings, s3_client=s3) as (client, _):
        assert version(client) == "tiny-1"  # started from S3: no local model at all
        publish(artifact_v2, bucket="models", prefix="edge", s3_client=s3)
        assert client.post("/admin/reload", headers=ADMIN, json={"source": "s3"}).status_code == 200
        assert version(client) == "tiny-2" and (tmp_path / "cache" / "tiny-2" / "manifest.json").is_file()
        s3.put_object(Bucket="models", Key="edge/tiny-2/edge_int8.tflite", Body=b"tampered")
        shutil.rmtree(tmp_path / "cache")
        r = client.post("/admin/reload", headers=ADMIN, json={"source": "s3"})
        assert r.status_code == 409 and "SHA-256" in r.json()["error"]["message"]
        assert version(client) == "tiny-2"  # still serving the verified copy held in memory
        assert client.post("/v1/predict", json={"text": CONFIDENT}).status_code == 200
