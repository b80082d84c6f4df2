"""Upload an artifact folder to S3 under `{prefix}/{version}/`, manifest last, then update latest.json.

Nothing is uploaded unless the manifest passes the very validation the runtimes apply on load
(`modelpack.manifest.Manifest.from_dict`, every named file's SHA-256 by `modelpack.manifest.verify_file`):
what publish accepts, the edge and the cloud will accept. `latest.json` is `modelpack.pointer.Pointer`,
the type both runtimes read it with.
"""

from __future__ import annotations

import hashlib
import mimetypes
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from model_build.errors import PublishError
from modelpack.errors import ArtifactError, ManifestError
from modelpack.manifest import MANIFEST_NAME, Manifest, json_object, verify_file
from modelpack.pointer import POINTER_NAME, VERSION_RULE, Canary, Pointer, is_valid_version


@dataclass(frozen=True)
class PublishResult:
    bucket: str
    version: str
    manifest_key: str
    manifest_sha256: str
    latest_key: str
    uploaded: tuple[str, ...]  # in upload order; the manifest is last
    published_at: str
    republished: bool  # True when this version was already there with the same manifest
    canary: float | None = None  # the fleet fraction pointed at it, when published as a canary

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "uploaded": list(self.uploaded)}


def publish(
    artifact_dir: Path | str,
    *,
    bucket: str,
    prefix: str = "models",
    s3_client: Any,
    version: str | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    allow_failed_gates: bool = False,
    canary: float | None = None,
) -> PublishResult:
    """Upload the version, then point `latest.json` at it; with `canary` (a fraction in (0, 1]), point only
    that stable, device-hashed share of the fleet at it and leave the rest on the current version (again
    with another fraction: widen or narrow the same rollout). `promote` / `abort` finish or undo it."""
    folder = Path(artifact_dir)
    manifest_bytes, manifest = _read_manifest(folder)
    gates = (manifest.get("build") or {}).get("gates") or {}
    if gates.get("passed") is False and not allow_failed_gates:
        raise PublishError(f"{folder} failed its build gates ({'; '.join(gates.get('failures', []))}); "
                           "fix the build, or publish it anyway with --allow-failed-gates")
    version = version or manifest["model_version"]
    if not is_valid_version(version):
        raise PublishError(f"version {version!r} is not a safe S3 key part ({VERSION_RULE})")
    if canary is not None and not 0.0 < canary <= 1.0:
        raise PublishError(f"--canary must be a fraction in (0, 1], got {canary}")
    _check_named_files(manifest, folder)
    try:
        Manifest.from_dict(manifest)
    except ManifestError as exc:
        raise PublishError(f"{folder / MANIFEST_NAME}: {exc}") from None
    latest_key = _key(prefix, POINTER_NAME)
    current = _current_pointer(s3_client, bucket, latest_key) if canary is not None else None
    if canary is not None and (current is None or current.model_version == version):
        raise PublishError(f"a canary needs another version already published at s3://{bucket}/{latest_key} "
                           f"to stay on ({'none' if current is None else current.model_version + ' is this one'})")
    manifest_key, uploaded, existing = _upload_version(folder, manifest_bytes, bucket, _key(prefix, version),
                                                       s3_client)
    manifest_sha256 = hashlib.sha256(manifest_bytes).hexdigest()
    published_at = clock().astimezone(UTC).isoformat(timespec="seconds")
    if canary is None:
        latest = Pointer(version, manifest_key, manifest_sha256, published_at)
    else:
        assert current is not None
        latest = replace(current.stable(), canary=Canary(version, manifest_key, manifest_sha256, canary, published_at))
    _put(s3_client, bucket, latest_key, latest.to_json().encode(), "application/json")
    return PublishResult(bucket=bucket, version=version, manifest_key=manifest_key,
                         manifest_sha256=manifest_sha256, latest_key=latest_key, uploaded=tuple(uploaded),
                         published_at=published_at, republished=existing is not None, canary=canary)


def promote(*, bucket: str, prefix: str = "models", s3_client: Any) -> Pointer:
    """Finish a staged rollout: the canary's version becomes every device's. Returns the pointer written."""
    latest_key = _key(prefix, POINTER_NAME)
    current = _current_pointer(s3_client, bucket, latest_key)
    if current is None or current.canary is None:
        raise PublishError(f"s3://{bucket}/{latest_key} has no canary to promote")
    c = current.canary
    latest = Pointer(c.model_version, c.manifest_key, c.manifest_sha256, c.published_at)
    _put(s3_client, bucket, latest_key, latest.to_json().encode(), "application/json")
    return latest


def abort(*, bucket: str, prefix: str = "models", s3_client: Any) -> Pointer:
    """Undo a staged rollout: every device goes back to the stable version (the canary's files stay, unused)."""
    latest_key = _key(prefix, POINTER_NAME)
    current = _current_pointer(s3_client, bucket, latest_key)
    if current is None or current.canary is None:
        raise PublishError(f"s3://{bucket}/{latest_key} has no canary to abort")
    latest = current.stable()
    _put(s3_client, bucket, latest_key, latest.to_json().encode(), "application/json")
    return latest


def _key(prefix: str, name: str) -> str:
    return "/".join(part for part in (prefix.strip("/"), name) if part)


def _current_pointer(s3_client: Any, bucket: str, latest_key: str) -> Pointer | None:
    raw = _get_or_none(s3_client, bucket, latest_key)
    if raw is None:
        return None
    try:
        return Pointer.from_json(raw, where=f"s3://{bucket}/{latest_key}")
    except ManifestError as exc:
        raise PublishError(str(exc)) from None


def _upload_version(folder: Path, manifest_bytes: bytes, bucket: str, base: str,
                    s3_client: Any) -> tuple[str, list[str], bytes | None]:
    """Upload the folder under `base/`, the manifest last; (manifest key, keys uploaded, what was there)."""
    manifest_key = f"{base}/{MANIFEST_NAME}"
    existing = _get_or_none(s3_client, bucket, manifest_key)
    if existing is not None and existing != manifest_bytes:
        raise PublishError(
            f"s3://{bucket}/{manifest_key} already exists with a different manifest "
            f"(SHA-256 {hashlib.sha256(existing).hexdigest()}, local {hashlib.sha256(manifest_bytes).hexdigest()}); "
            "published versions are immutable: bump model_version"
        )
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p != folder / MANIFEST_NAME)
    uploaded: list[str] = []
    # The manifest goes last: a reader that finds it can rely on every file it names being there.
    for path in [*files, folder / MANIFEST_NAME]:
        key = f"{base}/{path.relative_to(folder).as_posix()}"
        with path.open("rb") as body:
            _put(s3_client, bucket, key, body, _content_type(path))
        uploaded.append(key)
    return manifest_key, uploaded, existing


def _read_manifest(folder: Path) -> tuple[bytes, dict[str, Any]]:
    if not folder.is_dir():
        raise PublishError(f"{folder}: not an artifact folder")
    path = folder / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PublishError(f"{folder}: no {MANIFEST_NAME}; build the artifact first") from None
    try:
        manifest = json_object(raw, str(path))
    except ManifestError as exc:
        raise PublishError(str(exc)) from None
    if not isinstance(manifest.get("model_version"), str) or not manifest["model_version"]:
        raise PublishError(f"{path}: 'model_version' must be a non-empty string")
    return raw, manifest


def _named_files(node: Any) -> Iterator[tuple[str, str]]:
    # Schema-agnostic on purpose: any {"file", "sha256"} entry anywhere is a file the runtimes will fetch.
    if isinstance(node, dict):
        if isinstance(node.get("file"), str) and isinstance(node.get("sha256"), str):
            yield node["file"], node["sha256"]
        for value in node.values():
            yield from _named_files(value)
    elif isinstance(node, list):
        for value in node:
            yield from _named_files(value)


def _check_named_files(manifest: dict[str, Any], folder: Path) -> None:
    for name, expected in _named_files(manifest):
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise PublishError(f"{folder / MANIFEST_NAME} names {name!r}, outside the artifact folder")
        try:
            verify_file(folder / name, expected)
        except ArtifactError as exc:
            raise PublishError(f"{folder} differs from its {MANIFEST_NAME}: {exc}") from None


def _content_type(path: Path) -> str:
    if path.suffix == ".json":
        return "application/json"
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def _get_or_none(s3: Any, bucket: str, key: str) -> bytes | None:
    try:
        with s3.get_object(Bucket=bucket, Key=key)["Body"] as body:
            return body.read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchKey":
            return None
        raise _publish_error(exc, bucket, key) from None
    except BotoCoreError as exc:
        raise _publish_error(exc, bucket, key) from None


def _put(s3: Any, bucket: str, key: str, body: Any, content_type: str) -> None:
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
    except (ClientError, BotoCoreError) as exc:
        raise _publish_error(exc, bucket, key) from None


def _publish_error(exc: Exception, bucket: str, key: str) -> PublishError:
    if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
        return PublishError(f"bucket {bucket!r} does not exist")
    return PublishError(f"s3://{bucket}/{key}: {exc}")
