"""Where new model versions come from, and the watcher that polls them (`edge_container.reload`'s
`ModelManager` loads, verifies and swaps what they find).

    FolderSource   EDGE_MODEL_DIR, whose files may be replaced in place
    S3Source       `latest.json` that `model_build publish` writes (EDGE_S3_LATEST_URI), canary cohorts
    Reloader       polls the sources every EDGE_RELOAD_POLL_S; `POST /admin/reload` calls `reload` directly

Their log lines go out as `edge_container.reload`, the manager's.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_container.errors import ModelSourceUnavailable, ReloadRefused
from edge_container.reload import ModelManager
from edge_container.runtime import EdgeModel
from modelpack.errors import ArtifactError, ManifestError
from modelpack.manifest import MANIFEST_NAME, Manifest, Part, json_object
from modelpack.pointer import Pointer

EDGE_PARTS: tuple[Part, ...] = ("tokenizer", "edge")  # the files a device fetches: what it runs

log = logging.getLogger("edge_container.reload")


class FolderSource:
    """A folder whose files may be replaced in place: reload when its manifest or a named file changes."""

    name = "folder"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._seen: tuple[Any, ...] | None = None

    def fingerprint(self) -> tuple[Any, ...]:
        # stat() only, plus the small manifest: cheap enough to poll every few seconds.
        manifest = self.folder / MANIFEST_NAME
        try:
            raw = manifest.read_bytes()
        except OSError:
            return ("missing",)
        names: list[str] = []
        try:
            data = json.loads(raw)
            names = [data["tokenizer"]["file"], *(m["file"] for m in data["models"].values())]
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
        stats: list[tuple[str, int | None, int | None]] = []
        for name in names:
            try:
                st = (self.folder / str(name)).stat()
                stats.append((str(name), st.st_mtime_ns, st.st_size))
            except (OSError, ValueError):
                stats.append((str(name), None, None))
        return (hashlib.sha256(raw).hexdigest(), *stats)

    def mark_seen(self) -> None:
        self._seen = self.fingerprint()

    async def check(self, manager: ModelManager, *, force: bool = False) -> EdgeModel | None:
        fingerprint = self.fingerprint()
        if not force and fingerprint == self._seen:
            return None
        self._seen = fingerprint  # a refused state is not retried until the folder changes again
        if fingerprint == ("missing",):
            raise ReloadRefused(f"no {MANIFEST_NAME} in {self.folder}")
        if not force and manager.holds(fingerprint[0], changed=True):
            return None  # the version rolled back from, copied in again
        if not force and manager.ready and fingerprint[0] == manager.current.manifest_sha256 \
                and manager.current.folder == self.folder:
            manager.unpin(f"{self.folder} now holds the version serving")
            return None
        return await manager.load(self.folder, source=self.name, forced=force)


class S3Source:
    """Polls `latest.json` written by `model_build publish`; downloads a new version to a local cache.

    `s3_client` is a boto3 S3 client (injected; blocking calls run in a thread). A version found bad
    (manifest, checksums, load, smoke test) is refused and not fetched again until `latest.json` changes.
    When S3 cannot be read (an error, a missing object: e.g. `latest.json` read before the version's files
    landed), polls wait `backoff_s`, doubling up to `max_backoff_s`, then try again.

    During a staged rollout (`latest.json` with a `canary`), the device serves what
    `Pointer.for_device(device_id)` names: the canary if its id falls in the rollout's cohort, else the
    stable version; `cohort` says which (`canary` / `stable`), for metrics and status.
    """

    name = "s3"

    def __init__(self, s3_client: Any, *, bucket: str, latest_key: str, cache_dir: Path,
                 device_id: str = "", backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 on_cohort: Callable[[str, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._s3, self.bucket, self.latest_key, self.cache_dir = s3_client, bucket, latest_key, cache_dir
        self.device_id, self._on_cohort = device_id, on_cohort or (lambda cohort, version: None)
        self.cohort = "stable"
        self.backoff_s, self.max_backoff_s, self._clock = backoff_s, max_backoff_s, clock
        self._refused: str | None = None  # SHA-256 of the latest.json whose version was refused
        self._seen: str | None = None  # SHA-256 of the last latest.json acted on (installed, refused, held)
        self._failures = 0  # consecutive polls S3 could not be read
        self._retry_at = 0.0

    async def check(self, manager: ModelManager, *, force: bool = False) -> EdgeModel | None:
        if not force and self._clock() < self._retry_at:
            return None
        seen = self._seen
        try:
            raw = await asyncio.to_thread(self._get, self.latest_key)
            digest = hashlib.sha256(raw).hexdigest()
            self._seen = digest
            if not force and digest == self._refused:
                self._failures = 0
                return None
            pointer = self._pointer(raw, digest)
            if not force and manager.holds(pointer.manifest_sha256, changed=digest != seen):
                self._failures = 0
                return None
            if not force and manager.ready and pointer.manifest_sha256 == manager.current.manifest_sha256:
                self._failures = 0
                manager.unpin(f"s3://{self.bucket}/{self.latest_key} now names the version serving")
                return None
            folder = await asyncio.to_thread(self._download, pointer, digest)
        except ModelSourceUnavailable as exc:
            self._seen = seen  # not acted on: the change is looked at again on the next poll
            self._failures += 1
            delay = min(self.backoff_s * 2 ** (self._failures - 1), self.max_backoff_s)
            self._retry_at = self._clock() + delay
            manager.unavailable(f"s3://{self.bucket}/{self.latest_key}", self.name, exc, retry_in_s=delay)
            exc.retry_after_s = delay
            raise
        except _Refused as exc:  # verified bad before it reached the loader
            self._failures, self._refused = 0, exc.latest_digest
            raise manager.refused(exc.where, self.name, exc.error) from exc.error
        self._failures = 0
        try:
            return await manager.load(folder, source=self.name, forced=force)
        except ReloadRefused:
            self._refused = digest
            raise

    def _get(self, key: str) -> bytes:
        try:
            with self._s3.get_object(Bucket=self.bucket, Key=key)["Body"] as body:
                data: bytes = body.read()
                return data
        except Exception as exc:  # botocore's errors hang off the injected client; none is the artifact's
            raise ModelSourceUnavailable(f"s3://{self.bucket}/{key}: {exc}") from exc

    def _pointer(self, raw: bytes, digest: str) -> Pointer:
        where = f"s3://{self.bucket}/{self.latest_key}"
        try:
            published = Pointer.from_json(raw, where=where)
        except ManifestError as exc:
            raise _Refused(where, digest, exc) from exc
        mine = published.for_device(self.device_id)
        self.cohort = "canary" if published.canary is not None and mine.model_version != published.model_version \
            else "stable"
        self._on_cohort(self.cohort, mine.model_version)
        return mine

    def _download(self, pointer: Pointer, digest: str) -> Path:
        """The version `pointer` names, fetched into the cache; `digest` is the SHA-256 of the pointer."""
        where = f"s3://{self.bucket}/{pointer.manifest_key}"
        raw = self._get(pointer.manifest_key)
        try:
            pointer.check_manifest(raw, where)
            manifest = Manifest.from_dict(json_object(raw, where))
        except ArtifactError as exc:
            raise _Refused(where, digest, exc) from exc
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            target = self.cache_dir / pointer.model_version  # a safe folder name: the pointer checked it
            staging = Path(tempfile.mkdtemp(prefix=f".{pointer.model_version}-", dir=self.cache_dir))
        except OSError as exc:
            raise ModelSourceUnavailable(f"cannot write the model cache {self.cache_dir}: {exc}") from exc
        try:
            # What the edge runs, not the cloud's model (tens of MB a device never loads); checksums are
            # verified by the load that follows.
            for name in manifest.files(EDGE_PARTS):
                (staging / name).write_bytes(self._get(pointer.key_of(name)))
            (staging / MANIFEST_NAME).write_bytes(raw)
            if target.exists():
                shutil.rmtree(target)  # a loaded model holds its bytes in memory, not this folder
            staging.rename(target)
        except OSError as exc:  # a full disk is the cache's fault, not the artifact's
            raise ModelSourceUnavailable(f"cannot write the model cache {self.cache_dir}: {exc}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target


class _Refused(Exception):
    """Inside S3Source: the fetched manifest is bad (`error`), so the version `latest_digest` names is."""

    def __init__(self, where: str, latest_digest: str, error: ArtifactError) -> None:
        super().__init__(str(error))
        self.where, self.latest_digest, self.error = where, latest_digest, error


class Reloader:
    """Polls its sources every `poll_s` seconds; the admin endpoint calls `reload` directly."""

    def __init__(self, manager: ModelManager, sources: list[FolderSource | S3Source], *, poll_s: float) -> None:
        self.manager, self.sources, self.poll_s = manager, sources, poll_s
        self._task: asyncio.Task[None] | None = None

    def source(self, name: str) -> FolderSource | S3Source:
        for source in self.sources:
            if source.name == name:
                return source
        raise ReloadRefused(f"no {name!r} model source is configured")

    async def reload(self, name: str = "folder") -> EdgeModel:
        model = await self.source(name).check(self.manager, force=True)
        assert model is not None
        return model

    def start(self) -> None:
        if self.poll_s > 0 and self.sources:
            self._task = asyncio.create_task(self._loop(), name="model-reloader")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            for source in self.sources:
                try:
                    await source.check(self.manager)
                except (ReloadRefused, ModelSourceUnavailable) as exc:
                    log.debug("poll of %s: %s", source.name, exc)  # already logged; the current model serves
                except Exception:  # a poll must never kill the loop (e.g. S3 unreachable for a while)
                    log.exception("polling the %s model source failed", source.name)
