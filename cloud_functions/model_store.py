"""The cloud model's files on local disk: fetched from S3 into a cache, or read from a packaged folder.

    MODEL_URI = s3://bucket/models/v7/                 a version folder (holds manifest.json)
                s3://bucket/models/                    a publish prefix (holds latest.json -> a version)
                s3://bucket/models/latest.json         an explicit pointer
                s3://bucket/models/v7/manifest.json    an explicit manifest
                /var/task/model or model/              a folder packaged with the function

A pointer is what `model_build/publish.py` writes: {"model_version", "manifest_key", "manifest_sha256", ...}
(`modelpack.pointer.Pointer`, read as the edge reads it; a hand-written pin may leave out manifest_sha256).
Files land in `<cache_dir>/<model_version>/` and are checked against the manifest's SHA-256 while they
stream in. Only the files a runtime loads are fetched and verified (the cloud needs the tokenizer and the
cloud model, not the edge model): `parts` names them. A cached copy is reused when its manifest is the
same and its files still hash right; anything else is downloaded again, written to a temporary name and
renamed into place, so a crash never leaves a half-written file under a real name.

Every failure is a `ModelStoreError` whose message names the object or file; callers turn it into the
client-facing `ModelUnavailable` without leaking bucket names.

Last good version: once a fetched version has also loaded, the caller `remember`s it in
`<cache_dir>/last-good.json`. When a later cold start in the same execution environment cannot have the
current version (latest.json names a corrupt, missing or unloadable one, or S3 is unreachable),
`last_good` hands back that folder, verified again file by file, so the function keeps answering with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from cloud_functions import clients  # timeouts and retries: cloud_functions/clients.py
from modelpack.errors import ArtifactError
from modelpack.manifest import (
    MANIFEST_NAME,
    Manifest,
    Part,
    check_sha256,
    json_object,
    load_manifest,
    sha256_file,
    verify_files,
)
from modelpack.pointer import POINTER_NAME, Pointer, is_valid_version

if TYPE_CHECKING:
    from cloud_functions.settings import Settings

CLOUD_PARTS: tuple[Part, ...] = ("tokenizer", "cloud")
LAST_GOOD_NAME = "last-good.json"
logger = logging.getLogger(__name__)

_S3_URI = re.compile(r"^s3://(?P<bucket>[^/]+)/(?P<key>.*)$")
_CHUNK = 1 << 20
_MAX_SMALL_OBJECT = 1 << 20  # manifest and pointer: a few KB; refuse anything absurd before parsing


class ModelStoreError(Exception):
    """The model could not be fetched or failed verification. The message names what and where."""


class S3Client(Protocol):
    def get_object(self, **kwargs: Any) -> dict[str, Any]: ...
    def head_object(self, **kwargs: Any) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class LocalModel:
    """A verified model folder: every file of `parts` is present and matches the manifest."""

    manifest: Manifest
    folder: Path
    source: str  # the manifest's location: s3://bucket/key or a local path
    parts: tuple[Part, ...]
    downloaded: tuple[str, ...]  # file names fetched from S3 by this call (empty: cache hit / local)

    @property
    def model_version(self) -> str:
        return self.manifest.model_version


class ModelStore:
    def __init__(self, uri: str, *, cache_dir: Path, s3_client: S3Client | None = None) -> None:
        match = _S3_URI.match(uri)
        if match is not None and s3_client is None:
            raise ValueError("an s3:// model URI needs an s3_client")
        self.uri = uri
        self._cache_dir = Path(cache_dir)
        self._s3 = s3_client
        self._bucket, self._key = (match["bucket"], match["key"]) if match else (None, None)

    @classmethod
    def from_settings(cls, settings: Settings, *, s3_client: S3Client | None = None) -> ModelStore:
        if settings.model_is_remote and s3_client is None:
            s3_client = clients.s3()
        return cls(settings.model_uri, cache_dir=settings.model_cache_dir, s3_client=s3_client)

    def fetch(self, parts: Iterable[Part] = CLOUD_PARTS) -> LocalModel:
        wanted = tuple(dict.fromkeys(parts))
        if self._bucket is None:
            return self._local(wanted)
        return self._remote(wanted)

    def remember(self, model: LocalModel) -> None:
        """Record `model` (fetched by this store, and loaded by its caller) as the last good version.
        Best effort: a full /tmp costs the fallback, never the request."""
        if self._bucket is None or model.folder.parent != self._cache_dir:
            return  # a packaged folder is read-only and always there: it needs no fallback
        record = {"uri": self.uri, "folder": model.folder.name, "model_version": model.model_version,
                  "source": model.source}
        try:
            _atomic_write(self._cache_dir / LAST_GOOD_NAME, json.dumps(record).encode())
        except OSError as exc:
            logger.warning("could not remember %s as the last good model: %s", model.model_version, exc)

    def last_good(self, parts: Iterable[Part] = CLOUD_PARTS) -> LocalModel | None:
        """The remembered version of this store's URI with every file of `parts` verified again, or None
        when there is none or it no longer verifies (a /tmp of another container's life can rot)."""
        wanted = tuple(dict.fromkeys(parts))
        try:
            record = json.loads((self._cache_dir / LAST_GOOD_NAME).read_bytes())
            name, source, uri = record["folder"], record["source"], record["uri"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if uri != self.uri or not is_valid_version(name):  # a cache folder is named like a version
            return None
        folder = self._cache_dir / name
        try:
            manifest = load_manifest(folder, verify=False)
            verify_parts(manifest, folder, wanted)
        except (ArtifactError, ModelStoreError, OSError) as exc:
            logger.warning("the last good model in %s is no longer usable: %s", folder, exc)
            return None
        return LocalModel(manifest, folder, str(source), wanted, ())

    # ------------------------------------------------------------------ packaged folder

    def _local(self, parts: tuple[Part, ...]) -> LocalModel:
        path = Path(self.uri)
        folder = path.parent if path.name == MANIFEST_NAME else path
        try:
            manifest = load_manifest(folder, verify=False)
        except ArtifactError as exc:
            raise ModelStoreError(f"{folder}: {exc}") from exc
        verify_parts(manifest, folder, parts)
        return LocalModel(manifest, folder, str(folder / MANIFEST_NAME), parts, ())

    # ------------------------------------------------------------------ S3

    def _remote(self, parts: tuple[Part, ...]) -> LocalModel:
        manifest_key, pointer = self._resolve_manifest_key()
        manifest_bytes = self._get_small(manifest_key)
        if pointer is not None:
            with _store_errors():
                pointer.check_manifest(manifest_bytes, f"s3://{self._bucket}/{manifest_key}")
        manifest = _parse_manifest(manifest_bytes, f"s3://{self._bucket}/{manifest_key}")
        folder = self._cache_dir / _cache_name(manifest.model_version)
        prefix = manifest_key[: -len(MANIFEST_NAME)]
        downloaded: list[str] = []

        cached_manifest = folder / MANIFEST_NAME
        if not (cached_manifest.is_file() and cached_manifest.read_bytes() == manifest_bytes):
            # Another build under the same version name, or a first fetch: start the folder afresh.
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        for name, sha256 in manifest.files(parts).items():
            path = folder / name
            if path.is_file() and sha256_file(path) == sha256:
                continue
            self._download(prefix + name, path, sha256)
            downloaded.append(name)
        # The manifest goes last: a cached manifest means its files were complete when it was written.
        _atomic_write(cached_manifest, manifest_bytes)
        return LocalModel(
            manifest, folder, f"s3://{self._bucket}/{manifest_key}", parts, tuple(downloaded)
        )

    def _resolve_manifest_key(self) -> tuple[str, Pointer | None]:
        """(manifest key, the pointer that named it, if one did)."""
        key = self._key or ""
        if key.endswith(".json") and not key.endswith(MANIFEST_NAME):
            return self._follow_pointer(key)
        if key.endswith(MANIFEST_NAME):
            return key, None
        prefix = key if key.endswith("/") or not key else key + "/"
        if self._exists(prefix + MANIFEST_NAME):
            return prefix + MANIFEST_NAME, None
        if self._exists(prefix + POINTER_NAME):
            return self._follow_pointer(prefix + POINTER_NAME)
        raise ModelStoreError(
            f"s3://{self._bucket}/{prefix} holds neither {MANIFEST_NAME} nor {POINTER_NAME}"
        )

    def _follow_pointer(self, key: str) -> tuple[str, Pointer]:
        # A pin written by hand (MODEL_URI=s3://bucket/pins/prod.json) may leave manifest_sha256 out.
        with _store_errors():
            pointer = Pointer.from_json(self._get_small(key), where=f"s3://{self._bucket}/{key}",
                                        require_sha256=False)
        return pointer.manifest_key, pointer

    def _exists(self, key: str) -> bool:
        try:
            self._call("head_object", key)
        except _Missing:
            return False
        return True

    def _get_small(self, key: str) -> bytes:
        try:
            response = self._get(key)
        except _Missing:
            raise ModelStoreError(f"s3://{self._bucket}/{key} does not exist") from None
        with response["Body"] as body:
            data: bytes = body.read(_MAX_SMALL_OBJECT + 1)
        if len(data) > _MAX_SMALL_OBJECT:
            raise ModelStoreError(f"s3://{self._bucket}/{key} is larger than {_MAX_SMALL_OBJECT} bytes")
        return data

    def _download(self, key: str, path: Path, sha256: str) -> None:
        where = f"s3://{self._bucket}/{key}"
        try:
            response = self._get(key)
        except _Missing:
            raise ModelStoreError(f"{where} is named in the manifest but missing") from None
        digest = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, response["Body"] as body:
                for chunk in iter(lambda: body.read(_CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
            with _store_errors():
                check_sha256(where, digest.hexdigest(), sha256)
            os.replace(tmp, path)
        except (BotoCoreError, OSError) as exc:  # a read timeout mid-stream, a full /tmp
            raise ModelStoreError(f"{where}: download failed: {exc}") from exc
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _get(self, key: str) -> dict[str, Any]:
        return self._call("get_object", key)

    def _call(self, method: str, key: str) -> dict[str, Any]:
        try:
            response: dict[str, Any] = getattr(self._s3, method)(Bucket=self._bucket, Key=key)
            return response
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                raise _Missing from exc
            raise ModelStoreError(f"s3://{self._bucket}/{key}: {code or exc}") from exc
        except BotoCoreError as exc:
            raise ModelStoreError(f"s3://{self._bucket}/{key}: {exc}") from exc


class _Missing(Exception):
    pass


def verify_parts(manifest: Manifest, folder: Path, parts: Iterable[Part]) -> None:
    """`modelpack.manifest.verify_files` over the files of `parts`, failing as a `ModelStoreError`."""
    with _store_errors():
        verify_files(manifest, folder, parts)


@contextmanager
def _store_errors() -> Iterator[None]:
    """modelpack's verdicts on the artifact (checksums, pointer, manifest) as `ModelStoreError`, same words."""
    try:
        yield
    except ArtifactError as exc:
        raise ModelStoreError(str(exc)) from exc


def _parse_manifest(data: bytes, where: str) -> Manifest:
    with _store_errors():
        raw = json_object(data, where)
    try:
        return Manifest.from_dict(raw)
    except (ArtifactError, AttributeError, TypeError) as exc:
        raise ModelStoreError(f"{where}: {exc}") from exc


def _cache_name(model_version: str) -> str:
    """A folder name for the version; one that is not a safe path part gets a digest of itself."""
    if is_valid_version(model_version):
        return model_version
    return "v-" + hashlib.sha256(model_version.encode()).hexdigest()[:32]


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
