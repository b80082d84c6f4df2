"""Model versions: load, verify, swap atomically, roll back (`ModelManager`). Where new ones come from (a
folder, S3) and the watcher that polls them: `edge_container.model_sources`.

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
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge_container.errors import NothingToRollBack, NotReady, ReloadRefused
from edge_container.metrics import Metrics
from edge_container.runtime import EdgeModel
from modelpack.errors import ArtifactError, ChecksumMismatch, ManifestError, ModelNotRunnable

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
