"""Model versions: load, verify, swap atomically, roll back; watch a folder and (optionally) S3 for new ones.

A new version is verified before it can serve: manifest schema, SHA-256 of every file, a real interpreter
load and a smoke inference on every slot. Then one reference assignment swaps it in. Batches already
running hold the old `EdgeModel` and finish on it; the old one stays in memory for a rollback. A bad
artifact is refused (`ReloadRefused`) and changes nothing; whatever failed, the reason is in `last_error`
and `edge_reload_failures_total{reason}`. A source that cannot be read (S3 down, a version's objects not
there yet) is not the artifact's fault: `ModelSourceUnavailable`, retried on later polls with backoff.

The version serving, loaded again (same manifest SHA-256), changes nothing: `current` and `previous` stay,
so a rollback still reaches the last *different* version. A rollback pins the version it goes back to
(`Pin`): the watchers install nothing until the operator reloads (`POST /admin/reload`) or a source
publishes, after its last look before the rollback, a version other than the one rolled back from.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge_container.errors import ModelSourceUnavailable, NothingToRollBack, NotReady, ReloadRefused
from edge_container.metrics import Metrics
from edge_container.runtime import EdgeModel
from modelpack.errors import ArtifactError, ChecksumMismatch, ManifestError, ModelNotRunnable
from modelpack.manifest import MANIFEST_NAME, Manifest, json_object
from modelpack.pointer import Pointer

log = logging.getLogger("edge_container.reload")
Loader = Callable[[Path], EdgeModel]
_OPERATOR_RELOAD = "reload requested by the operator"


@dataclass(frozen=True, slots=True)
class Pin:
    """A rollback in force: `version` serves until POST /admin/reload or a newly published version other than
    `rolled_back_from` (whose manifest is `from_sha256`: republishing it does not lift the pin)."""

    version: str
    rolled_back_from: str
    from_sha256: str
    since: str

    def describe(self) -> dict[str, str]:
        return {"version": self.version, "reason": "rollback", "rolled_back_from": self.rolled_back_from,
                "since": self.since, "until": f"POST /admin/reload, or a newly published version other than "
                                              f"{self.rolled_back_from}"}


class ModelManager:
    def __init__(self, loader: Loader, *, metrics: Metrics | None = None) -> None:
        self._loader, self._metrics = loader, metrics
        self._current: EdgeModel | None = None
        self._previous: EdgeModel | None = None
        self._lock = asyncio.Lock()
        self.source = ""
        self.pin: Pin | None = None
        self.last_error: dict[str, str] | None = None
        self.history: deque[dict[str, str]] = deque(maxlen=50)  # newest last: loads, refusals, rollbacks

    @property
    def ready(self) -> bool:
        return self._current is not None

    @property
    def current(self) -> EdgeModel:
        model = self._current
        if model is None:
            raise NotReady("no model is loaded yet")
        return model

    async def load(self, folder: Path, *, source: str, forced: bool = False) -> EdgeModel:
        """Verify and load `folder`; swap it in unless it is the version serving. `forced`: the operator asked
        (POST /admin/reload), which also lifts a rollback's pin."""
        async with self._lock:  # one load at a time; serving goes on meanwhile
            try:
                model = await asyncio.to_thread(self._loader, folder)
            except Exception as exc:  # every failure of a candidate is a refusal; the current model serves on
                raise self.refused(str(folder), source, exc) from exc
            current = self._current
            if current is not None and model.manifest_sha256 == current.manifest_sha256:
                # Verified again, but not swapped: rotating the same version into `previous` would leave a
                # rollback nothing different to go back to. The warm instance serving stays.
                self._event("unchanged", version=model.version, source=source)
                self._count("unchanged")
                log.info("model %s from %s (%s) is the version serving: nothing swapped", model.version, folder,
                         source)
                if forced:
                    self.unpin(_OPERATOR_RELOAD)
                return current
            self._swap(model, source)
            self._count("loaded")
            log.info("serving model %s from %s (%s)", model.version, folder, source)
            self.unpin(_OPERATOR_RELOAD if forced else f"{source} published {model.version}")
            return model

    async def rollback(self) -> EdgeModel:
        """Back to the previous version, pinned there (see `Pin`)."""
        async with self._lock:
            previous, current = self._previous, self._current
            if previous is None or current is None or previous.manifest_sha256 == current.manifest_sha256:
                raise NothingToRollBack("there is no different previous model version in memory to roll back "
                                        "to (a reload of the version serving does not make one)")
            self._swap(previous, "rollback")
            self._count("rollback")
            self.pin = Pin(previous.version, current.version, current.manifest_sha256, _now())
            self._event("pinned", version=previous.version, rolled_back_from=current.version)
            if self._metrics is not None:
                self._metrics.model_pinned.set(1)
            log.info("rolled back from %s to %s, pinned: the model watchers install nothing until POST "
                     "/admin/reload or a newly published version other than %s", current.version,
                     previous.version, current.version)
            return previous

    def holds(self, published_sha256: str, *, changed: bool) -> bool:
        """Whether a rollback's pin keeps a source from acting on what it publishes: it does unless the
        publication `changed` since the source last looked and names another version than the one rolled
        back from."""
        pin = self.pin
        return pin is not None and (not changed or published_sha256 == pin.from_sha256)

    def unpin(self, reason: str) -> None:
        pin, self.pin = self.pin, None
        if pin is None:
            return
        self._event("unpinned", version=pin.version, reason=reason)
        if self._metrics is not None:
            self._metrics.model_pinned.set(0)
        log.info("rollback pin on %s lifted: %s", pin.version, reason)

    def refused(self, where: str, source: str, exc: Exception) -> ReloadRefused:
        """Record a verified-bad candidate (in `last_error`, the log and the metrics); the error to raise."""
        reason = refusal_reason(exc)
        self._failed(where, source, reason, exc)
        self._count("refused")
        log.warning("model in %s refused (%s), %s keeps serving: %s", where, reason, self._serving(), exc,
                    exc_info=reason == "internal")  # not a flaw we know: keep the traceback
        return ReloadRefused(f"artifact in {where} refused: {exc}")

    def unavailable(self, where: str, source: str, exc: Exception, *, retry_in_s: float) -> None:
        """Record a candidate that could not be fetched (it will be retried); nothing is refused."""
        self._failed(where, source, "unavailable", exc, retry_in_s=f"{retry_in_s:g}")
        log.warning("cannot fetch the model at %s (retried in %gs), %s keeps serving: %s", where, retry_in_s,
                    self._serving(), exc)

    def _failed(self, where: str, source: str, reason: str, exc: Exception, **extra: str) -> None:
        self.last_error = {"folder": where, "source": source, "reason": reason,
                           "error": f"{type(exc).__name__}: {exc}",
                           "at": _now(), **extra}
        self._event("refused" if reason != "unavailable" else "unavailable", where=where, source=source,
                    reason=reason)
        if self._metrics is not None:
            self._metrics.reload_failures.labels(reason).inc()
            self._metrics.last_reload_error.info({"reason": reason, "source": source})
            self._metrics.last_reload_error_at.set_to_current_time()

    def _serving(self) -> str:
        return self._current.version if self._current else "nothing"

    def status(self) -> dict[str, Any]:
        return {"ready": self.ready, "source": self.source,
                "current": self._current.describe() if self._current else None,
                "previous": self._previous.describe() if self._previous else None,
                "pinned": self.pin.describe() if self.pin else None,
                "last_error": self.last_error}

    def _event(self, event: str, **fields: str) -> None:
        self.history.append({"at": _now(), "event": event, **fields})

    def _swap(self, model: EdgeModel, source: str) -> None:
        self._previous, self._current, self.source = self._current, model, source
        self._event("serving", version=model.version, source=source)
        if self._metrics is not None:
            self._metrics.model_info.info({"version": model.version, "manifest_sha256": model.manifest_sha256,
                                           "precision": model.manifest.edge.precision, "source": source})
            self._metrics.model_loaded.set(model.loaded_at.timestamp())
            self._metrics.last_reload_error.info({"reason": "none", "source": source})

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.reloads.labels(outcome).inc()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def refusal_reason(exc: BaseException) -> str:
    """The `reason` label of a refused candidate."""
    for kind, reason in ((ChecksumMismatch, "checksum"), (ManifestError, "manifest"),
                         (ModelNotRunnable, "smoke"), (ArtifactError, "load"), (OSError, "io")):
        if isinstance(exc, kind):
            return reason
    return "internal"


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
            for name in manifest.files():  # checksums are verified by the load that follows
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
