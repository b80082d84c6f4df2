"""Hot reload: new versions verified and swapped under load with zero failed requests; bad ones refused."""

import asyncio
import dataclasses
import functools
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.exceptions import EndpointConnectionError
from moto import mock_aws

from edge_container.errors import ModelSourceUnavailable, ReloadRefused
from edge_container.model_sources import S3Source
from edge_container.reload import ModelManager
from edge_container.runtime import EdgeModel
from edge_container.wiring import EdgeStack
from model_build.publish import publish
from modelpack.manifest import load_manifest, write_manifest
from tests.edge_container.conftest import ADMIN_TOKEN, CLIENT_KEY, CONFIDENT, edge_settings, serve_edge
from tests.edge_container.test_debug import CA, connect
from tests.edge_container.unrunnable import make_unrunnable

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
        async with httpx.AsyncClient(base_url=base_url, timeout=30, headers={"x-api-key": CLIENT_KEY}) as client:
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
        # The damage lands before the manifest naming tiny-2 (manifest last, as an operator would): with the
        # manifest first, a poll between the two writes could load a sound tiny-2 and the test would race.
        if damage == "corrupt_model":
            data = bytearray((watched / "edge_int8.tflite").read_bytes())
            data[100] ^= 0xFF
            (watched / "edge_int8.tflite").write_bytes(bytes(data))
        elif damage == "missing_file":
            (watched / "tokenizer.json").unlink()
        if damage == "bad_manifest":
            (watched / "manifest.json").write_text('{"model_version": "tiny-3", "labels": "oops"}')
        else:
            copy_into(artifact_v2, watched, ("manifest.json",))  # names tiny-2, whose files are now damaged

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
        # Only what the edge runs is fetched: the cloud's model stays in the bucket.
        assert sorted(p.name for p in (tmp_path / "cache" / "tiny-2").iterdir()) == [
            "edge_int8.tflite", "manifest.json", "tokenizer.json"]
        s3.put_object(Bucket="models", Key="edge/tiny-2/edge_int8.tflite", Body=b"tampered")
        shutil.rmtree(tmp_path / "cache")
        r = client.post("/admin/reload", headers=ADMIN, json={"source": "s3"})
        assert r.status_code == 409 and "SHA-256" in r.json()["error"]["message"]
        assert version(client) == "tiny-2"  # still serving the verified copy held in memory
        assert client.post("/v1/predict", json={"text": CONFIDENT}).status_code == 200


@pytest.fixture
def unrunnable_v2(artifact_v2: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "unrunnable"
    shutil.copytree(artifact_v2, folder)
    make_unrunnable(folder)  # tiny-2, whose model loads but fails to invoke
    return folder


def last_error(client: httpx.Client) -> dict[str, str] | None:
    error: dict[str, str] | None = client.get("/admin/model", headers=ADMIN).json()["last_error"]
    return error


def test_a_model_that_loads_but_cannot_run_is_refused_with_its_reason(served: httpx.Client, watched: Path,
                                                                      unrunnable_v2: Path) -> None:
    copy_into(unrunnable_v2, watched)
    wait_for(lambda: last_error(served) is not None)
    error = last_error(served)
    assert error is not None and error["reason"] == "smoke" and error["source"] == "folder"
    assert "gather index out of bounds" in error["error"]
    assert version(served) == "tiny-1"
    r = served.post("/admin/reload", headers=ADMIN)
    assert r.status_code == 409 and r.json()["error"]["code"] == "RELOAD_REFUSED"
    assert "smoke inference" in r.json()["error"]["message"]
    assert 'edge_reload_failures_total{reason="smoke"} 2.0' in served.get("/metrics").text
    assert served.post("/v1/predict", json={"text": CONFIDENT}).status_code == 200


def test_a_manifest_with_a_nan_threshold_is_refused_naming_the_field(served: httpx.Client, watched: Path,
                                                                    artifact_v2: Path) -> None:
    manifest = json.loads((artifact_v2 / "manifest.json").read_text())
    manifest["routing"]["threshold"] = float("nan")  # written as NaN, which json.loads reads back
    copy_into(artifact_v2, watched, ("edge_int8.tflite",))
    # Written whole, then renamed in: a poll that lands mid-write would otherwise see an empty file first
    staged = watched / ".manifest.json.tmp"
    staged.write_text(json.dumps(manifest))
    staged.replace(watched / "manifest.json")
    wait_for(lambda: last_error(served) is not None)
    error = last_error(served)
    assert error is not None and error["reason"] == "manifest"
    assert "manifest.routing.threshold must be a finite number, got nan" in error["error"]
    model = served.get("/admin/model", headers=ADMIN)
    assert model.status_code == 200 and model.json()["current"]["routing"]["threshold"] == 0.6
    assert served.post("/admin/rollback", headers=ADMIN).status_code == 409  # nothing loaded to roll back from
    assert 'edge_reload_failures_total{reason="manifest"} 1.0' in served.get("/metrics").text


class RecordingS3:
    """The real (moto) client, with every get_object key recorded; `down` makes reads fail as S3 would."""

    def __init__(self, client: Any) -> None:
        self.client, self.gets, self.down = client, list[str](), 0

    def get_object(self, **kwargs: Any) -> Any:
        self.gets.append(kwargs["Key"])
        if self.down > 0:
            self.down -= 1
            raise EndpointConnectionError(endpoint_url="http://s3.test")
        return self.client.get_object(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def serve_from_s3(tmp_path: Path, s3: Any) -> Any:
    settings = edge_settings(tmp_path / "empty", s3_latest_uri="s3://models/edge/latest.json",
                             s3_cache_dir=tmp_path / "cache", reload_poll_s=0.05)
    return serve_edge(settings, s3_client=s3)


def test_a_refused_s3_version_is_not_downloaded_again_until_latest_json_changes(
        s3: Any, tiny_artifact: Path, unrunnable_v2: Path, tmp_path: Path) -> None:
    publish(tiny_artifact, bucket="models", prefix="edge", s3_client=s3)
    recording = RecordingS3(s3)
    with serve_from_s3(tmp_path, recording) as (client, _):
        publish(unrunnable_v2, bucket="models", prefix="edge", s3_client=s3,
                clock=lambda: datetime(2026, 1, 1, tzinfo=UTC))
        wait_for(lambda: last_error(client) is not None)
        error = last_error(client)
        assert error is not None and error["source"] == "s3" and error["reason"] == "smoke"
        time.sleep(0.5)  # ~10 more polls
        assert recording.gets.count("edge/tiny-2/edge_int8.tflite") == 1
        assert version(client) == "tiny-1"
        publish(unrunnable_v2, bucket="models", prefix="edge", s3_client=s3,  # latest.json rewritten
                clock=lambda: datetime(2026, 1, 2, tzinfo=UTC))
        wait_for(lambda: recording.gets.count("edge/tiny-2/edge_int8.tflite") == 2)
        time.sleep(0.3)
        assert recording.gets.count("edge/tiny-2/edge_int8.tflite") == 2
        assert 'edge_reload_failures_total{reason="smoke"} 2.0' in client.get("/metrics").text


def test_a_version_whose_files_land_after_latest_json_is_loaded_once_they_are_there(
        s3: Any, tiny_artifact: Path, artifact_v2: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    publish(tiny_artifact, bucket="models", prefix="edge", s3_client=s3)
    with serve_from_s3(tmp_path, s3) as (client, _):
        manifest = (artifact_v2 / "manifest.json").read_bytes()  # latest.json names tiny-2 before it exists
        latest = {"model_version": "tiny-2", "manifest_key": "edge/tiny-2/manifest.json",
                  "manifest_sha256": hashlib.sha256(manifest).hexdigest()}
        s3.put_object(Bucket="models", Key="edge/latest.json", Body=json.dumps(latest).encode())
        wait_for(lambda: last_error(client) is not None)
        error = last_error(client)
        assert error is not None and error["reason"] == "unavailable" and "NoSuchKey" in error["error"]
        assert any(r.levelname == "WARNING" and "cannot fetch the model" in r.getMessage() for r in caplog.records)
        for path in sorted(artifact_v2.iterdir()):  # the version's files land, manifest last
            if path.name != "manifest.json":
                s3.put_object(Bucket="models", Key=f"edge/tiny-2/{path.name}", Body=path.read_bytes())
        s3.put_object(Bucket="models", Key="edge/tiny-2/manifest.json", Body=manifest)
        wait_for(lambda: version(client) == "tiny-2", timeout=10)
        assert 'edge_reload_failures_total{reason="unavailable"}' in client.get("/metrics").text


def test_an_s3_blip_is_retried_with_backoff_not_refused(s3: Any, tiny_artifact: Path, tmp_path: Path) -> None:
    publish(tiny_artifact, bucket="models", prefix="edge", s3_client=s3)
    recording, now = RecordingS3(s3), [100.0]
    source = S3Source(recording, bucket="models", latest_key="edge/latest.json", cache_dir=tmp_path / "cache",
                      backoff_s=2.0, max_backoff_s=5.0, clock=lambda: now[0])
    manager = ModelManager(functools.partial(EdgeModel.load, slots=1))
    recording.down = 2
    for expected_backoff in (2.0, 4.0):
        with pytest.raises(ModelSourceUnavailable, match="Could not connect"):
            asyncio.run(source.check(manager))
        assert manager.last_error is not None and manager.last_error["retry_in_s"] == f"{expected_backoff:g}"
        calls = len(recording.gets)
        now[0] += expected_backoff - 0.1
        assert asyncio.run(source.check(manager)) is None and len(recording.gets) == calls  # backing off
        now[0] += 0.1
    model = asyncio.run(source.check(manager))  # S3 is back: the version loads, it was never marked refused
    assert model is not None and model.version == "tiny-1" and manager.ready


def test_a_malformed_latest_json_is_refused_naming_the_field_and_nothing_is_fetched(
        s3: Any, tiny_artifact: Path, tmp_path: Path) -> None:
    publish(tiny_artifact, bucket="models", prefix="edge", s3_client=s3)
    latest = json.loads(s3.get_object(Bucket="models", Key="edge/latest.json")["Body"].read())
    latest["model_version"] = "../../etc"  # would name a folder outside the cache
    s3.put_object(Bucket="models", Key="edge/latest.json", Body=json.dumps(latest).encode())
    recording = RecordingS3(s3)
    source = S3Source(recording, bucket="models", latest_key="edge/latest.json", cache_dir=tmp_path / "cache")
    manager = ModelManager(functools.partial(EdgeModel.load, slots=1))

    with pytest.raises(ReloadRefused, match="edge/latest.json: model_version must be"):
        asyncio.run(source.check(manager))

    assert manager.last_error is not None and manager.last_error["reason"] == "manifest"
    assert recording.gets == ["edge/latest.json"] and not (tmp_path / "cache").exists()
    assert asyncio.run(source.check(manager)) is None  # refused once: not again until latest.json changes


def test_the_edge_s3_client_has_timeouts_and_bounded_retries(s3: Any, tmp_path: Path) -> None:
    settings = edge_settings(tmp_path / "empty", s3_latest_uri="s3://models/edge/latest.json")
    stack = EdgeStack.create(settings)  # no client passed: the stack makes its own
    try:
        config = stack.reloader.source("s3")._s3.meta.config
        assert (config.connect_timeout, config.read_timeout) == (5, 30)
        assert config.retries == {"total_max_attempts": 3, "mode": "standard"}  # 1 try + 2 retries
    finally:
        asyncio.run(stack.stop())


# --------------------------------------------------------------------------- a rollback that holds

@pytest.fixture(scope="session")
def artifact_v3(artifact_v2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-3: the v2 files under a third version (a manifest of its own)."""
    folder = tmp_path_factory.mktemp("edge_v3") / "v3"
    shutil.copytree(artifact_v2, folder)
    write_manifest(dataclasses.replace(load_manifest(folder), model_version="tiny-3"), folder)
    return folder


def model_status(client: httpx.Client) -> dict[str, Any]:
    status: dict[str, Any] = client.get("/admin/model", headers=ADMIN).json()
    return status


def pin_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "edge_container.reload"
            and ("pinned" in r.getMessage() or "pin on" in r.getMessage())]


def test_a_rollback_holds_under_the_folder_watcher_until_a_newer_version_lands(
        served: httpx.Client, watched: Path, artifact_v2: Path, artifact_v3: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge_container.reload")
    copy_into(artifact_v2, watched)
    wait_for(lambda: version(served) == "tiny-2")

    rolled = served.post("/admin/rollback", headers=ADMIN)

    assert rolled.status_code == 200 and rolled.json()["current"]["model_version"] == "tiny-1"
    pin = rolled.json()["pinned"]
    assert (pin["version"], pin["rolled_back_from"], pin["reason"]) == ("tiny-1", "tiny-2", "rollback")
    time.sleep(0.5)  # ~10 polls of a folder that still holds tiny-2
    copy_into(artifact_v2, watched)  # tiny-2 copied in again (new mtimes): not a newer version
    time.sleep(0.5)
    assert version(served) == "tiny-1" and model_status(served)["pinned"]["version"] == "tiny-1"
    assert "edge_model_pinned 1.0" in served.get("/metrics").text

    copy_into(artifact_v3, watched)  # a newer version: it replaces the pinned one and lifts the pin
    wait_for(lambda: version(served) == "tiny-3")
    assert model_status(served)["pinned"] is None and "edge_model_pinned 0.0" in served.get("/metrics").text
    lines = pin_lines(caplog)
    assert len(lines) == 2, lines
    assert "rolled back from tiny-2 to tiny-1, pinned" in lines[0]
    assert lines[1] == "rollback pin on tiny-1 lifted: folder published tiny-3"


def test_admin_reload_lifts_the_pin(served: httpx.Client, watched: Path, artifact_v2: Path,
                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge_container.reload")
    copy_into(artifact_v2, watched)
    wait_for(lambda: version(served) == "tiny-2")
    assert served.post("/admin/rollback", headers=ADMIN).json()["pinned"]["version"] == "tiny-1"
    time.sleep(0.3)
    assert version(served) == "tiny-1"

    reloaded = served.post("/admin/reload", headers=ADMIN)

    assert reloaded.status_code == 200 and reloaded.json()["current"]["model_version"] == "tiny-2"
    assert reloaded.json()["pinned"] is None
    assert pin_lines(caplog)[-1] == "rollback pin on tiny-1 lifted: reload requested by the operator"
    assert "edge_model_pinned 0.0" in served.get("/metrics").text


def test_a_reload_of_the_version_serving_keeps_the_history_and_a_rollback_then_says_so(
        served: httpx.Client, watched: Path, artifact_v2: Path) -> None:
    same = served.post("/admin/reload", headers=ADMIN)  # tiny-1, which is serving
    assert same.status_code == 200 and same.json()["previous"] is None

    nothing = served.post("/admin/rollback", headers=ADMIN)

    assert nothing.status_code == 409 and nothing.json()["error"]["code"] == "NO_PREVIOUS_MODEL"
    assert "no different previous model version" in nothing.json()["error"]["message"]
    assert version(served) == "tiny-1"

    copy_into(artifact_v2, watched)
    wait_for(lambda: version(served) == "tiny-2")
    for _ in range(2):  # tiny-2 reloaded twice: tiny-1 stays the version a rollback goes back to
        again = served.post("/admin/reload", headers=ADMIN).json()
        assert again["current"]["model_version"] == "tiny-2" and again["previous"]["model_version"] == "tiny-1"
    back = served.post("/admin/rollback", headers=ADMIN)
    assert back.status_code == 200 and back.json()["current"]["model_version"] == "tiny-1"
    assert 'edge_model_reloads_total{outcome="unchanged"} 3.0' in served.get("/metrics").text


def test_a_rollback_holds_under_the_s3_watcher_until_a_newer_version_is_published(
        s3: Any, tiny_artifact: Path, artifact_v2: Path, artifact_v3: Path, tmp_path: Path) -> None:
    publish(tiny_artifact, bucket="models", prefix="edge", s3_client=s3)
    recording = RecordingS3(s3)

    def polls_later(n: int) -> None:
        done = recording.gets.count("edge/latest.json")
        wait_for(lambda: recording.gets.count("edge/latest.json") >= done + n)

    with serve_from_s3(tmp_path, recording) as (client, _):
        publish(artifact_v2, bucket="models", prefix="edge", s3_client=s3)
        wait_for(lambda: version(client) == "tiny-2")

        assert client.post("/admin/rollback", headers=ADMIN).json()["current"]["model_version"] == "tiny-1"
        polls_later(10)
        assert version(client) == "tiny-1"
        publish(artifact_v2, bucket="models", prefix="edge", s3_client=s3,  # latest.json rewritten: still tiny-2
                clock=lambda: datetime(2026, 1, 2, tzinfo=UTC))
        polls_later(10)
        assert version(client) == "tiny-1" and model_status(client)["pinned"]["rolled_back_from"] == "tiny-2"

        publish(artifact_v3, bucket="models", prefix="edge", s3_client=s3)
        wait_for(lambda: version(client) == "tiny-3")
        assert model_status(client)["pinned"] is None


def test_the_debug_listener_shows_the_pin(tmp_path: Path, watched: Path, artifact_v2: Path) -> None:
    operators, devices = CA(tmp_path, "operators"), CA(tmp_path, "devices")
    server, operator = devices.issue("edge-1", server=True), operators.issue("alice")
    settings = edge_settings(watched, reload_poll_s=0.05, debug_port=0, debug_tls_cert=server.cert,
                             debug_tls_key=server.key, debug_tls_client_ca=operators.pem)
    pki: dict[str, object] = {"device_ca": devices}
    with serve_edge(settings) as (client, stack), connect(stack.debug_port or 0, pki, operator) as debug:
        copy_into(artifact_v2, watched)
        wait_for(lambda: version(client) == "tiny-2")

        rolled = debug.post("/debug/rollback").json()

        assert rolled["pinned"]["version"] == "tiny-1" and rolled["history"][-1]["event"] == "pinned"
        time.sleep(0.3)
        assert debug.get("/debug/model").json()["pinned"]["rolled_back_from"] == "tiny-2"
        assert "edge_model_pinned 1.0" in debug.get("/debug/metrics").text
        reloaded = debug.post("/debug/reload", json={"source": "folder"}).json()
        assert reloaded["current"]["model_version"] == "tiny-2" and reloaded["pinned"] is None
        assert reloaded["history"][-1] == {**reloaded["history"][-1], "event": "unpinned",
                                           "reason": "reload requested by the operator"}
