"""ModelStore: the cloud model from a packaged folder, or from S3 (moto) as model_build publishes it."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cloud_functions.model_store import CLOUD_PARTS, ModelStore, ModelStoreError, verify_parts
from cloud_functions.settings import Settings
from model_build.publish import publish
from modelpack.manifest import load_manifest

from .conftest import Aws


@pytest.fixture
def published(aws: Aws, tiny_artifact: Path) -> str:
    """The tiny artifact published to the template's model bucket under models/ (version tiny-1)."""
    publish(tiny_artifact, bucket=aws.model_bucket, prefix="models", s3_client=aws.s3)
    return f"s3://{aws.model_bucket}/models/"


def _store(uri: str, tmp_path: Path, aws: Aws) -> ModelStore:
    return ModelStore(uri, cache_dir=tmp_path / "cache", s3_client=aws.s3)


# --------------------------------------------------------------------------- packaged folder


def test_a_packaged_folder_without_the_edge_model_is_enough_for_the_cloud(
    tiny_artifact: Path, tmp_path: Path
) -> None:
    folder = shutil.copytree(tiny_artifact, tmp_path / "model")
    (folder / "edge_int8.tflite").unlink()

    model = ModelStore(str(folder), cache_dir=tmp_path / "cache").fetch()

    assert model.folder == folder and model.model_version == "tiny-1"
    assert model.parts == CLOUD_PARTS and model.downloaded == ()
    with pytest.raises(ModelStoreError, match="edge_int8.tflite is named in the manifest but missing"):
        ModelStore(str(folder), cache_dir=tmp_path / "cache").fetch(["edge"])


def test_a_packaged_folder_can_be_named_by_its_manifest(tiny_artifact: Path, tmp_path: Path) -> None:
    model = ModelStore(str(tiny_artifact / "manifest.json"), cache_dir=tmp_path).fetch()

    assert model.folder == tiny_artifact


def test_a_corrupt_packaged_model_is_refused(tiny_artifact: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny_artifact, tmp_path / "model")
    (folder / "cloud.tflite").write_bytes(b"not a model")

    with pytest.raises(ModelStoreError, match="cloud.tflite: SHA-256 .* does not match"):
        ModelStore(str(folder), cache_dir=tmp_path / "cache").fetch()


def test_a_missing_packaged_folder_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(ModelStoreError, match="no manifest.json"):
        ModelStore(str(tmp_path / "nowhere"), cache_dir=tmp_path).fetch()


# --------------------------------------------------------------------------- S3


@pytest.mark.parametrize(
    "suffix", ["", "latest.json", "tiny-1/", "tiny-1", "tiny-1/manifest.json"], ids=repr
)
def test_every_way_of_naming_a_published_model_reaches_the_same_files(
    published: str, aws: Aws, tmp_path: Path, suffix: str
) -> None:
    model = _store(published + suffix, tmp_path, aws).fetch()

    assert model.model_version == "tiny-1"
    assert model.source == f"s3://{aws.model_bucket}/models/tiny-1/manifest.json"
    assert model.folder == tmp_path / "cache" / "tiny-1"
    # Only what the cloud loads is fetched: the edge model stays in the bucket.
    assert sorted(model.downloaded) == ["cloud.tflite", "tokenizer.json"]
    cached = sorted(p.name for p in model.folder.iterdir())
    assert cached == ["cloud.tflite", "manifest.json", "tokenizer.json"]
    verify_parts(load_manifest(model.folder, verify=False), model.folder, CLOUD_PARTS)


def test_a_valid_cache_is_reused_and_a_damaged_file_fetched_again(
    published: str, aws: Aws, tmp_path: Path
) -> None:
    store = _store(published, tmp_path, aws)
    first = store.fetch()
    assert store.fetch().downloaded == ()

    (first.folder / "cloud.tflite").write_bytes(b"bit rot")

    again = store.fetch()
    assert again.downloaded == ("cloud.tflite",)
    verify_parts(again.manifest, again.folder, CLOUD_PARTS)


def test_the_manifest_alone_can_be_fetched(published: str, aws: Aws, tmp_path: Path) -> None:
    model = _store(published, tmp_path, aws).fetch(parts=())

    assert model.manifest.labels == ("balance", "greeting", "timer", "weather", "oos")
    assert [p.name for p in model.folder.iterdir()] == ["manifest.json"]


def test_a_tampered_object_is_refused_and_never_lands_under_its_name(
    published: str, aws: Aws, tmp_path: Path
) -> None:
    aws.s3.put_object(Bucket=aws.model_bucket, Key="models/tiny-1/cloud.tflite", Body=b"evil")

    with pytest.raises(ModelStoreError, match=r"cloud.tflite: SHA-256 .* does not match the manifest"):
        _store(published, tmp_path, aws).fetch()

    folder = tmp_path / "cache" / "tiny-1"
    assert not (folder / "cloud.tflite").exists() and not (folder / "manifest.json").exists()
    assert not list(folder.glob(".*.part"))


def test_a_pointer_whose_manifest_changed_is_refused(published: str, aws: Aws, tmp_path: Path) -> None:
    key = "models/tiny-1/manifest.json"
    manifest = json.loads(aws.s3.get_object(Bucket=aws.model_bucket, Key=key)["Body"].read())
    manifest["created_at"] = "2027-01-01T00:00:00+00:00"
    aws.s3.put_object(Bucket=aws.model_bucket, Key=key, Body=json.dumps(manifest).encode())

    with pytest.raises(ModelStoreError, match="differs from the pointer's manifest_sha256"):
        _store(published, tmp_path, aws).fetch()


def test_a_pointer_may_omit_the_manifest_digest(published: str, aws: Aws, tmp_path: Path) -> None:
    pointer = {"model_version": "tiny-1", "manifest_key": "models/tiny-1/manifest.json"}
    aws.s3.put_object(Bucket=aws.model_bucket, Key="pins/prod.json", Body=json.dumps(pointer).encode())

    model = _store(f"s3://{aws.model_bucket}/pins/prod.json", tmp_path, aws).fetch()

    assert model.model_version == "tiny-1"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3://{bucket}/nothing/", "holds neither manifest.json nor latest.json"),
        ("s3://{bucket}/nothing/latest.json", "does not exist"),
        ("s3://no-such-bucket-here/models/", "NoSuchBucket"),
    ],
)
def test_missing_models_are_store_errors_naming_the_place(
    published: str, aws: Aws, tmp_path: Path, uri: str, message: str
) -> None:
    with pytest.raises(ModelStoreError, match=message):
        _store(uri.format(bucket=aws.model_bucket), tmp_path, aws).fetch()


def test_a_pointer_that_is_not_a_pointer_is_refused(aws: Aws, tmp_path: Path) -> None:
    aws.s3.put_object(Bucket=aws.model_bucket, Key="m/latest.json", Body=b'{"manifest_key": "m/x.bin"}')

    with pytest.raises(ModelStoreError, match="manifest_key must name a manifest.json"):
        _store(f"s3://{aws.model_bucket}/m/", tmp_path, aws).fetch()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"manifest_sha256": "NOT-A-DIGEST"}, "manifest_sha256 must be a lower-case hex SHA-256"),
        ({"model_version": "../../etc"}, "model_version must be 1 to 128 letters"),
        ({"manifest_key": 7}, "manifest_key must name a manifest.json, got 7"),
    ],
)
def test_a_malformed_pointer_is_refused_naming_the_field(
    published: str, aws: Aws, tmp_path: Path, change: dict[str, object], message: str
) -> None:
    key = "models/latest.json"
    pointer = json.loads(aws.s3.get_object(Bucket=aws.model_bucket, Key=key)["Body"].read()) | change
    aws.s3.put_object(Bucket=aws.model_bucket, Key=key, Body=json.dumps(pointer).encode())

    with pytest.raises(ModelStoreError, match=f"s3://{aws.model_bucket}/{key}: .*{message}"):
        _store(published, tmp_path, aws).fetch()


def test_a_version_that_is_not_a_safe_folder_name_gets_a_digest(
    tiny_artifact: Path, aws: Aws, tmp_path: Path
) -> None:
    folder = shutil.copytree(tiny_artifact, tmp_path / "artifact")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["model_version"] = "../../etc"
    data = json.dumps(manifest).encode()
    for path in folder.iterdir():
        body = data if path.name == "manifest.json" else path.read_bytes()
        aws.s3.put_object(Bucket=aws.model_bucket, Key=f"odd/{path.name}", Body=body)

    model = _store(f"s3://{aws.model_bucket}/odd/", tmp_path, aws).fetch()

    assert model.folder.parent == tmp_path / "cache"
    assert model.folder.name == "v-" + hashlib.sha256(b"../../etc").hexdigest()[:32]


# --------------------------------------------------------------------------- last good version


def test_the_last_version_that_loaded_is_remembered_and_verified_again_before_use(
    published: str, aws: Aws, tmp_path: Path
) -> None:
    assert _store(published, tmp_path, aws).last_good() is None
    model = _store(published, tmp_path, aws).fetch()
    _store(published, tmp_path, aws).remember(model)

    again = _store(published, tmp_path, aws).last_good()  # a cold start: a new store, the same /tmp

    assert again is not None
    assert (again.model_version, again.folder, again.source) == ("tiny-1", model.folder, model.source)
    assert again.parts == CLOUD_PARTS and again.downloaded == ()
    (model.folder / "cloud.tflite").write_bytes(b"bit rot in /tmp")
    assert _store(published, tmp_path, aws).last_good() is None  # never served unverified


def test_a_remembered_version_of_another_model_uri_is_not_used(
    published: str, aws: Aws, tmp_path: Path
) -> None:
    store = _store(published, tmp_path, aws)
    store.remember(store.fetch())

    assert _store(f"s3://{aws.model_bucket}/other/", tmp_path, aws).last_good() is None


def test_the_default_s3_client_has_timeouts_and_bounded_retries(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"BUDGET_TABLE": "b", "IDEMPOTENCY_TABLE": "i", "MODEL_URI": "s3://bucket/models/",
         "MODEL_CACHE_DIR": str(tmp_path)}
    )

    store = ModelStore.from_settings(settings)

    config = store._s3.meta.config  # type: ignore[union-attr]
    assert (config.connect_timeout, config.read_timeout) == (3, 10)
    assert config.retries == {"mode": "standard", "total_max_attempts": 3}  # the first try + 2 retries


def test_a_cloud_with_a_neighbour_offset_fetches_both_of_its_files_and_serves_the_offset(
    neighbours_artifact: Path, aws: Aws, tmp_path: Path
) -> None:
    from cloud_functions.litert_backend import LiteRTBackend
    from modelpack.classifier import Classifier

    publish(neighbours_artifact, bucket=aws.model_bucket, prefix="models", s3_client=aws.s3)
    model = _store(f"s3://{aws.model_bucket}/models/", tmp_path, aws).fetch()

    assert sorted(model.downloaded) == ["bank.npy", "cloud.tflite", "embedder.tflite", "tokenizer.json"]
    texts = ["what is my account balance", "tell me about dinosaurs"]
    served = LiteRTBackend.load(model)._classifier.logits(texts)
    plain = Classifier(load_manifest(neighbours_artifact), neighbours_artifact, "cloud")
    offsets = plain.neighbours.offsets(plain.tokenizer.encode(texts))
    bare = plain.model.logits(plain.tokenizer.encode(texts))
    np.testing.assert_allclose(served, bare + offsets[:, None], atol=1e-5)
