"""Model versions: load, verify, swap atomically, roll back; watch a folder and (optionally) S3 for new ones.

A new version is verified before it can serve: manifest schema, SHA-256 of every file, a real interpreter
load and a smoke inference on every slot. Then one reference assignment swaps it in. Batches already
running hold the old `EdgeModel` and finish on it; the old one stays in memory for a rollback. A bad
artifact is refused (`ReloadRefused`) and changes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge_container.errors import NothingToRollBack, NotReady, ReloadRefused
from edge_container.metrics import Metrics
from edge_container.runtime import EdgeModel
from modelpack.errors import ArtifactError
from modelpack.manifest import MANIFEST_NAME, Manifest

log = logging.getLogger("edge_container.reload")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
Loader = Callable[[Path], EdgeModel]


class ModelManager:
    def __init__(self, loader: Loader, *, metrics: Metrics | None = None) -> None:
        self._loader, self._metrics = loader, metrics
        self._current: EdgeModel | None = None
        self._previous: EdgeModel | None = None
        self._lock = asyncio.Lock()
        self.source = ""
        self.last_error: dict[str, str] | None = None

    @property
    def ready(self) -> bool:
        return self._current is not None

    @property
    def current(self) -> EdgeModel:
        model = self._current
        if model is None:
            raise NotReady("no model is loaded yet")
        return model

    async def load(self, folder: Path, *, source: str) -> EdgeModel:
        async with self._lock:  # one load at a time; serving goes on meanwhile
            try:
                model = await asyncio.to_thread(self._loader, folder)
            except (ArtifactError, OSError) as exc:
                self.last_error = {"folder": str(folder), "source": source, "error": f"{type(exc).__name__}: {exc}",
                                   "at": datetime.now(UTC).isoformat(timespec="seconds")}
                self._count("refused")
                log.warning("model in %s refused, %s keeps serving: %s", folder,
                            self._current.version if self._current else "nothing", exc)
                raise ReloadRefused(f"artifact in {folder} refused: {exc}") from exc
            self._swap(model, source)
            self._count("loaded")
            log.info("serving model %s from %s (%s)", model.version, folder, source)
            return model

    async def rollback(self) -> EdgeModel:
        async with self._lock:
            if self._previous is None:
                raise NothingToRollBack("there is no previous model version in memory")
            self._swap(self._previous, "rollback")
            self._count("rollback")
            return self.current

    def status(self) -> dict[str, Any]:
        return {"ready": self.ready, "source": self.source,
                "current": self._current.describe() if self._current else None,
                "previous": self._previous.describe() if self._previous else None,
                "last_error": self.last_error}

    def _swap(self, model: EdgeModel, source: str) -> None:
        self._previous, self._current, self.source = self._current, model, source
        if self._metrics is not None:
            self._metrics.model_info.info({"version": model.version, "manifest_sha256": model.manifest_sha256,
                                           "precision": model.manifest.edge.precision, "source": source})
            self._metrics.model_loaded.set(model.loaded_at.timestamp())

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.reloads.labels(outcome).inc()


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
        if not force and manager.ready and fingerprint[0] == manager.current.manifest_sha256 \
                and manager.current.folder == self.folder:
            return None
        return await manager.load(self.folder, source=self.name)


class S3Source:
    """Polls `latest.json` written by `model_build publish`; downloads a new version to a local cache.

    `s3_client` is a boto3 S3 client (injected; blocking calls run in a thread).
    """

    name = "s3"

    def __init__(self, s3_client: Any, *, bucket: str, latest_key: str, cache_dir: Path) -> None:
        self._s3, self.bucket, self.latest_key, self.cache_dir = s3_client, bucket, latest_key, cache_dir
        self._refused: str | None = None

    async def check(self, manager: ModelManager, *, force: bool = False) -> EdgeModel | None:
        try:
            latest = await asyncio.to_thread(self._latest)
        except ReloadRefused as exc:
            log.warning("cannot read the latest model version from S3: %s", exc)
            raise
        sha = latest["manifest_sha256"]
        if not force and (sha == self._refused or (manager.ready and sha == manager.current.manifest_sha256)):
            return None
        try:
            folder = await asyncio.to_thread(self._download, latest)
            return await manager.load(folder, source=self.name)
        except ReloadRefused:
            self._refused = sha
            raise

    def _get(self, key: str) -> bytes:
        try:
            with self._s3.get_object(Bucket=self.bucket, Key=key)["Body"] as body:
                data: bytes = body.read()
                return data
        except Exception as exc:  # botocore's error classes hang off the injected client; all mean "refused"
            raise ReloadRefused(f"s3://{self.bucket}/{key}: {exc}") from exc

    def _latest(self) -> dict[str, str]:
        try:
            latest = json.loads(self._get(self.latest_key))
            version, key, sha = latest["model_version"], latest["manifest_key"], latest["manifest_sha256"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ReloadRefused(f"s3://{self.bucket}/{self.latest_key} is not a valid latest.json: {exc}") from exc
        if not (isinstance(version, str) and _VERSION.fullmatch(version)) or not isinstance(key, str) \
                or not isinstance(sha, str):
            raise ReloadRefused(f"s3://{self.bucket}/{self.latest_key}: bad model_version or manifest_key")
        return {"model_version": version, "manifest_key": key, "manifest_sha256": sha}

    def _download(self, latest: dict[str, str]) -> Path:
        raw = self._get(latest["manifest_key"])
        if hashlib.sha256(raw).hexdigest() != latest["manifest_sha256"]:
            raise ReloadRefused(f"{latest['manifest_key']}: SHA-256 differs from latest.json's manifest_sha256")
        try:
            manifest = Manifest.from_dict(json.loads(raw))
        except (ValueError, ArtifactError) as exc:
            raise ReloadRefused(f"{latest['manifest_key']}: {exc}") from exc
        base = latest["manifest_key"].rsplit("/", 1)[0] if "/" in latest["manifest_key"] else ""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        target = self.cache_dir / latest["model_version"]
        staging = Path(tempfile.mkdtemp(prefix=f".{latest['model_version']}-", dir=self.cache_dir))
        try:
            for name in manifest.files():  # checksums are verified by the load that follows
                (staging / name).write_bytes(self._get(f"{base}/{name}" if base else name))
            (staging / MANIFEST_NAME).write_bytes(raw)
            if target.exists():
                shutil.rmtree(target)  # a loaded model holds its bytes in memory, not this folder
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target


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
                except ReloadRefused as exc:
                    log.debug("poll of %s: %s", source.name, exc)  # already logged; the current model serves
                except Exception:  # a poll must never kill the loop (e.g. S3 unreachable for a while)
                    log.exception("polling the %s model source failed", source.name)
