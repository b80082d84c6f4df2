import hashlib
import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from model_build.errors import PublishError
from model_build.publish import publish

BUCKET = "models-bucket"
FIXED_NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


class RecordingS3:
    """The real (moto) client, with every put_object key recorded in call order."""

    def __init__(self, client: Any) -> None:
        self.client, self.puts = client, []

    def put_object(self, **kwargs: Any) -> Any:
        self.puts.append(kwargs["Key"])
        return self.client.put_object(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingS3]:
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield RecordingS3(client)


def make_artifact(folder: Path, version: str = "v1", model: bytes = b"\x00tflite-bytes") -> Path:
    (folder / "assets").mkdir(parents=True)
    (folder / "edge.tflite").write_bytes(model)
    (folder / "assets" / "tokenizer.json").write_text('{"vocab": {}}')
    manifest = {"model_version": version,
                "edge": {"file": "edge.tflite", "sha256": hashlib.sha256(model).hexdigest()}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def read(s3: RecordingS3, key: str) -> dict[str, Any]:
    return s3.get_object(Bucket=BUCKET, Key=key)


def test_uploads_every_file_manifest_last_then_latest(s3: RecordingS3, tmp_path: Path) -> None:
    art = make_artifact(tmp_path / "art")

    result = publish(art, bucket=BUCKET, s3_client=s3, clock=lambda: FIXED_NOW)

    assert s3.puts == ["models/v1/assets/tokenizer.json", "models/v1/edge.tflite",
                       "models/v1/manifest.json", "models/latest.json"]
    assert result.uploaded == tuple(s3.puts[:-1]) and result.latest_key == "models/latest.json"
    assert read(s3, "models/v1/edge.tflite")["Body"].read() == b"\x00tflite-bytes"
    assert read(s3, "models/v1/manifest.json")["ContentType"] == "application/json"
    assert read(s3, "models/v1/edge.tflite")["ContentType"] == "application/octet-stream"
    latest = read(s3, "models/latest.json")
    assert latest["ContentType"] == "application/json"
    assert json.loads(latest["Body"].read()) == {
        "model_version": "v1",
        "manifest_key": "models/v1/manifest.json",
        "manifest_sha256": hashlib.sha256((art / "manifest.json").read_bytes()).hexdigest(),
        "published_at": "2025-01-02T03:04:05+00:00",
    }
    assert not result.republished and result.as_dict()["uploaded"] == list(result.uploaded)


def test_explicit_version_and_prefix(s3: RecordingS3, tmp_path: Path) -> None:
    art = make_artifact(tmp_path / "art")

    result = publish(art, bucket=BUCKET, prefix="/edge/models/", s3_client=s3, version="2025.01-rc1")

    assert result.manifest_key == "edge/models/2025.01-rc1/manifest.json"
    assert json.loads(read(s3, "edge/models/latest.json")["Body"].read())["model_version"] == "2025.01-rc1"


def test_republishing_identical_content_is_allowed(s3: RecordingS3, tmp_path: Path) -> None:
    art = make_artifact(tmp_path / "art")
    publish(art, bucket=BUCKET, s3_client=s3)

    again = publish(art, bucket=BUCKET, s3_client=s3)

    assert again.republished


def test_same_version_with_different_manifest_is_refused(s3: RecordingS3, tmp_path: Path) -> None:
    publish(make_artifact(tmp_path / "a", model=b"first"), bucket=BUCKET, s3_client=s3)
    first_latest = read(s3, "models/latest.json")["Body"].read()
    s3.puts.clear()

    with pytest.raises(PublishError, match="already exists with a different manifest"):
        publish(make_artifact(tmp_path / "b", model=b"second"), bucket=BUCKET, s3_client=s3)

    assert s3.puts == []  # nothing overwritten
    assert read(s3, "models/v1/edge.tflite")["Body"].read() == b"first"
    assert read(s3, "models/latest.json")["Body"].read() == first_latest


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (None, "no manifest.json"),
        ("{not json", "not valid JSON"),
        ("[]", "must hold a JSON object"),
        ('{"model_version": ""}', "'model_version' must be a non-empty string"),
        ('{"model_version": "../v1"}', "not a safe S3 key part"),
        ('{"model_version": "v1", "edge": {"file": "gone.tflite", "sha256": "0"}}', "but missing"),
        ('{"model_version": "v1", "edge": {"file": "edge.tflite", "sha256": "0"}}', "differs from"),
        ('{"model_version": "v1", "edge": {"file": "../x", "sha256": "0"}}', "outside the artifact"),
    ],
)
def test_bad_artifact_is_refused_before_any_upload(
    s3: RecordingS3, tmp_path: Path, manifest: str | None, message: str
) -> None:
    art = make_artifact(tmp_path / "art")
    if manifest is None:
        (art / "manifest.json").unlink()
    else:
        (art / "manifest.json").write_text(manifest)

    with pytest.raises(PublishError, match=message):
        publish(art, bucket=BUCKET, s3_client=s3)

    assert s3.puts == []


def test_missing_bucket_is_a_publish_error(s3: RecordingS3, tmp_path: Path) -> None:
    with pytest.raises(PublishError, match="bucket 'no-such-bucket' does not exist"):
        publish(make_artifact(tmp_path / "art"), bucket="no-such-bucket", s3_client=s3)
