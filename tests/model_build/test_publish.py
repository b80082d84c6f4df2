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
from modelpack.pointer import Pointer

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
def s3(aws_credentials: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingS3]:
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield RecordingS3(client)


def _model(file: str, content: bytes) -> dict[str, Any]:
    return {"file": file, "sha256": hashlib.sha256(content).hexdigest(), "size_bytes": len(content),
            "precision": "fp32", "inputs": [{"name": "input_ids", "dtype": "int32", "shape": [-1, -1]}],
            "output": {"dtype": "float32", "shape": [-1, 2], "logits": True}, "temperature": 1.0}


def manifest_for(version: str, model: bytes, tokenizer: bytes) -> dict[str, Any]:
    """A manifest the runtimes accept (publish validates with their reader); the files need not be real."""
    return {"format_version": 1, "model_version": version, "labels": ["yes", "no"], "oos_label": None,
            "tokenizer": {"file": "tokenizer.json", "sha256": hashlib.sha256(tokenizer).hexdigest(),
                          "max_seq_len": 16, "length_buckets": [8, 16], "pad_id": 0},
            "models": {"edge": _model("edge.tflite", model), "cloud": _model("cloud.tflite", model)},
            "routing": {"score": "max_prob", "threshold": 0.6, "target_joint_over_teacher": 0.99,
                        "traffic_oos_fraction": None, "expected_escalation_rate": 0.2}}


def make_artifact(folder: Path, version: str = "v1", model: bytes = b"\x00tflite-bytes",
                  manifest: dict[str, Any] | None = None) -> Path:
    tokenizer = b'{"vocab": {}}'
    (folder / "assets").mkdir(parents=True)
    (folder / "edge.tflite").write_bytes(model)
    (folder / "cloud.tflite").write_bytes(model)
    (folder / "tokenizer.json").write_bytes(tokenizer)
    (folder / "assets" / "notes.txt").write_text("not named in the manifest, uploaded all the same")
    (folder / "manifest.json").write_text(json.dumps(manifest or manifest_for(version, model, tokenizer)))
    return folder


def read(s3: RecordingS3, key: str) -> dict[str, Any]:
    return s3.get_object(Bucket=BUCKET, Key=key)


def test_uploads_every_file_manifest_last_then_latest(s3: RecordingS3, tmp_path: Path) -> None:
    art = make_artifact(tmp_path / "art")

    result = publish(art, bucket=BUCKET, s3_client=s3, clock=lambda: FIXED_NOW)

    assert s3.puts == ["models/v1/assets/notes.txt", "models/v1/cloud.tflite", "models/v1/edge.tflite",
                       "models/v1/tokenizer.json", "models/v1/manifest.json", "models/latest.json"]
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


def test_latest_json_is_the_pointer_both_runtimes_read(s3: RecordingS3, tmp_path: Path) -> None:
    art = make_artifact(tmp_path / "art")

    result = publish(art, bucket=BUCKET, s3_client=s3, clock=lambda: FIXED_NOW)

    pointer = Pointer.from_json(read(s3, result.latest_key)["Body"].read(), where=result.latest_key)
    assert pointer == Pointer("v1", result.manifest_key, result.manifest_sha256, result.published_at)
    pointer.check_manifest(read(s3, pointer.manifest_key)["Body"].read(), pointer.manifest_key)
    assert read(s3, pointer.key_of("edge.tflite"))["Body"].read() == b"\x00tflite-bytes"


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


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("threshold", float("nan"), r"manifest\.routing\.threshold must be a finite number, got nan"),
        ("threshold", float("inf"), r"manifest\.routing\.threshold must be a finite number, got inf"),
        ("threshold", 1.5, r"manifest\.routing\.threshold must be a number in \[0\.0, 1\.0\] for score 'max_prob'"),
        ("expected_escalation_rate", float("nan"), r"routing\.expected_escalation_rate must be a finite number in"),
        ("temperature", float("nan"), r"manifest\.models\.edge\.temperature must be a finite number in"),
        ("temperature", 0.0, r"manifest\.models\.edge\.temperature must be a finite number in"),
    ],
)
def test_a_manifest_number_that_is_not_finite_or_out_of_range_is_refused_before_any_upload(
    s3: RecordingS3, tmp_path: Path, field: str, value: float, message: str
) -> None:
    manifest = manifest_for("v1", b"\x00tflite-bytes", b'{"vocab": {}}')
    section = manifest["models"]["edge"] if field == "temperature" else manifest["routing"]
    section[field] = value  # json.dumps writes NaN / Infinity, and json.loads reads them back
    art = make_artifact(tmp_path / "art", manifest=manifest)

    with pytest.raises(PublishError, match=message):
        publish(art, bucket=BUCKET, s3_client=s3)

    assert s3.puts == []


def test_an_artifact_whose_gates_failed_is_published_only_when_asked(s3: RecordingS3, tmp_path: Path) -> None:
    raw = manifest_for("v1", b"\x00tflite-bytes", b'{"vocab": {}}')
    raw["build"] = {"gates": {"passed": False, "failures": ["int8 weights are 30.0% of the fp32 weights"]}}
    art = make_artifact(tmp_path / "art", manifest=raw)
    with pytest.raises(PublishError, match="failed its build gates.*30.0%.*--allow-failed-gates"):
        publish(art, bucket=BUCKET, s3_client=s3, clock=lambda: FIXED_NOW)
    assert s3.puts == []
    publish(art, bucket=BUCKET, s3_client=s3, clock=lambda: FIXED_NOW, allow_failed_gates=True)
    assert s3.puts[-1] == "models/latest.json"


def test_the_cli_stages_a_rollout_then_promotes_or_aborts_it(s3: RecordingS3, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from model_build.cli import main

    def latest() -> Pointer:
        return Pointer.from_json(s3.client.get_object(Bucket=BUCKET, Key="models/latest.json")["Body"].read())

    v1, v2 = make_artifact(tmp_path / "a", "v1"), make_artifact(tmp_path / "b", "v2", model=b"\x00other")
    assert main(["publish", str(v1), "--bucket", BUCKET]) == 0
    assert main(["publish", str(v2), "--bucket", BUCKET, "--canary", "0.2"]) == 0
    pointer = latest()
    assert pointer.model_version == "v1" and pointer.canary is not None and pointer.canary.model_version == "v2"
    assert main(["publish", "--bucket", BUCKET, "--abort"]) == 0
    assert latest().canary is None and latest().model_version == "v1"
    assert main(["publish", str(v2), "--bucket", BUCKET, "--canary", "0.5"]) == 0  # the same version again
    assert latest().canary.fraction == 0.5  # type: ignore[union-attr]
    assert main(["publish", "--bucket", BUCKET, "--promote"]) == 0
    assert latest().model_version == "v2" and latest().canary is None
    capsys.readouterr()
    assert main(["publish", "--bucket", BUCKET, "--promote"]) == 2
    assert "no canary to promote" in capsys.readouterr().err
    assert main(["publish", "--bucket", BUCKET]) == 2
    assert "needs the artifact folder" in capsys.readouterr().err
    assert main(["publish", str(v1), "--bucket", BUCKET, "--abort"]) == 2
    assert "take no artifact folder" in capsys.readouterr().err
