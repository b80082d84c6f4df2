"""Which backend answers, built when first needed, and what answers while the current model cannot be had.

`LazyBackend` builds the backend on first use, so a GET of the budget never waits for a model, and a
failed load is retried (after a short pause) by a later request instead of poisoning the execution
environment. When the current version cannot be had but the execution environment still holds the last
version that loaded, that one answers, wrapped in `StaleBackend` (the response says
`"model_status": "stale"`), and the current one is tried again every `stale_retry_after_s`.
`BackendLoader` is what it calls: it fetches the artifact and builds the configured backend (the
protocol: `cloud_functions.inference`; the backends: `litert_backend`, `bedrock_backend`, `openai_backend`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from cloud_functions import clients
from cloud_functions.bedrock_backend import BedrockBackend, BedrockRuntimeClient
from cloud_functions.errors import ModelUnavailable
from cloud_functions.http_transport import HttpTransport
from cloud_functions.inference import BackendError, Inference, InferenceBackend
from cloud_functions.litert_backend import LiteRTBackend
from cloud_functions.model_store import CLOUD_PARTS, LocalModel, ModelStore, ModelStoreError, Part
from cloud_functions.openai_backend import OpenAIBackend
from cloud_functions.pricing import TokenPrices
from cloud_functions.secrets import CachedSecret, from_secrets_manager, from_ssm
from cloud_functions.settings import LLM_BACKENDS
from modelpack.errors import ArtifactError

if TYPE_CHECKING:
    from cloud_functions.settings import InferenceSettings, Settings

logger = logging.getLogger(__name__)

STALE_REASON = "latest_model_unavailable"  # client-facing and stable; the log line carries the details
_LOAD_ERRORS = (ModelStoreError, BackendError, ArtifactError)


@dataclass(frozen=True, slots=True)
class StaleBackend:
    """The last version that loaded in this execution environment, answering because the current one
    could not be fetched, verified or loaded. `reason` is safe to show clients (no bucket or key names)."""

    inner: InferenceBackend
    reason: str = STALE_REASON

    @property
    def model_version(self) -> str:
        return self.inner.model_version

    @property
    def labels(self) -> tuple[str, ...]:
        return self.inner.labels

    def infer(self, texts: Sequence[str]) -> Inference:
        return self.inner.infer(texts)

    def max_cost_usd(self, texts: Sequence[str]) -> Decimal:
        return self.inner.max_cost_usd(texts)


class LazyBackend:
    """Builds a backend on first use and keeps it. A failed build falls back to `fallback()` (the last
    good version, or None) as a `StaleBackend`; with no fallback it raises `ModelUnavailable`. The next
    build is tried only after `retry_after_s` (`stale_retry_after_s` while a stale backend answers: each
    try may download a whole model), so a broken model store costs one attempt per pause, not one per
    request."""

    def __init__(
        self,
        load: Callable[[], InferenceBackend],
        *,
        fallback: Callable[[], InferenceBackend | None] | None = None,
        retry_after_s: float = 5.0,
        stale_retry_after_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._fallback = fallback
        self._retry_after_s = retry_after_s
        self._stale_retry_after_s = stale_retry_after_s
        self._clock = clock
        self._backend: InferenceBackend | None = None
        self._failed_at: float | None = None
        self.last_error: Exception | None = None

    @property
    def ready(self) -> bool:
        return self._backend is not None

    def __call__(self) -> InferenceBackend:
        backend = self._backend
        if backend is not None and not isinstance(backend, StaleBackend):
            return backend
        now = self._clock()
        pause = self._retry_after_s if backend is None else self._stale_retry_after_s
        if self._failed_at is not None and now - self._failed_at < pause:
            if backend is not None:
                return backend
            raise ModelUnavailable("the model failed to load; it is retried shortly") from self.last_error
        try:
            self._backend = self._load()
        except _LOAD_ERRORS as exc:
            self._failed_at, self.last_error = now, exc
            if backend is None:
                backend = self._backend = self._last_good(exc)
            else:
                logger.warning("the current model is still unavailable; %s answers: %s",
                               backend.model_version, exc)
            if backend is None:
                raise ModelUnavailable("the model could not be loaded") from exc
            return backend
        self._failed_at = self.last_error = None
        return self._backend

    def _last_good(self, cause: Exception) -> StaleBackend | None:
        if self._fallback is None:
            return None
        try:
            previous = self._fallback()
        except _LOAD_ERRORS as exc:
            logger.warning("the last good model cannot be loaded either: %s", exc)
            return None
        if previous is None:
            return None
        logger.warning("the current model is unavailable; the last good version %s answers: %s",
                       previous.model_version, cause)
        return StaleBackend(previous)


class BackendLoader:
    """What `LazyBackend` calls: fetch the artifact (only the manifest for an LLM: its labels) and build the
    backend; a version that also built is remembered as the last good one, which `last_good` builds again.
    Clients not injected are made here (`cloud_functions.clients`); the LLM's HTTP transport and API key
    are made once and shared by every version built (a kept-alive connection, one cached key)."""

    def __init__(
        self,
        settings: Settings,
        options: InferenceSettings,
        *,
        s3_client: Any = None,
        bedrock_client: BedrockRuntimeClient | None = None,
        secrets_client: Any = None,
        transport: HttpTransport | None = None,
    ) -> None:
        self._settings = settings
        self._options = options
        self._s3_client = s3_client
        self._bedrock_client = bedrock_client
        self._secrets_client = secrets_client
        self._transport = transport
        self._api_key: CachedSecret | None = None
        self._parts: tuple[Part, ...] = () if options.backend in LLM_BACKENDS else CLOUD_PARTS
        self._store: ModelStore | None = None

    def __call__(self) -> InferenceBackend:
        store = self._model_store()
        model = store.fetch(self._parts)
        backend = self._build(model)
        store.remember(model)  # only now: a version that verifies but cannot load is no last good one
        return backend

    def last_good(self) -> InferenceBackend | None:
        model = self._model_store().last_good(self._parts)
        return None if model is None else self._build(model)

    def _model_store(self) -> ModelStore:
        if self._store is None:
            self._store = ModelStore.from_settings(self._settings, s3_client=self._s3_client)
        return self._store

    def _build(self, model: LocalModel) -> InferenceBackend:
        options = self._options
        if options.backend == "bedrock":  # the label list is all Bedrock needs
            return BedrockBackend(
                self._bedrock_client or clients.bedrock_runtime(
                    timeout_s=options.llm_timeout_s, attempts=options.llm_max_attempts),
                model_id=options.llm_model_id,
                labels=model.manifest.labels,
                oos_label=model.manifest.oos_label,
                input_usd_per_mtok=options.llm_input_usd_per_mtok,
                output_usd_per_mtok=options.llm_output_usd_per_mtok,
            )
        if options.backend == "openai":
            return OpenAIBackend(
                self._http(),
                model=options.llm_model_id,
                labels=model.manifest.labels,
                oos_label=model.manifest.oos_label,
                prices=TokenPrices(options.llm_input_usd_per_mtok, options.llm_output_usd_per_mtok),
                api_key=self._key(),
                key_header=options.openai_api_key_header,
                timeout_s=options.llm_timeout_s,
                max_attempts=options.llm_max_attempts,
                logprobs=options.openai_logprobs,
            )
        return LiteRTBackend.load(model, top_k=options.top_k)

    def _http(self) -> HttpTransport:
        if self._transport is None:
            self._transport = HttpTransport(self._options.openai_base_url)
        return self._transport

    def _key(self) -> CachedSecret | None:
        options = self._options
        if self._api_key is None and options.openai_api_key_secret_arn:
            client = self._secrets_client or clients.secretsmanager()
            self._api_key = CachedSecret(from_secrets_manager(client, options.openai_api_key_secret_arn),
                                         ttl_s=options.secret_ttl_s)
        elif self._api_key is None and options.openai_api_key_parameter:
            client = self._secrets_client or clients.ssm()
            self._api_key = CachedSecret(from_ssm(client, options.openai_api_key_parameter),
                                         ttl_s=options.secret_ttl_s)
        return self._api_key  # None: a server that takes no key (a self-hosted one on a private network)


def backend_loader(
    settings: Settings,
    options: InferenceSettings,
    *,
    s3_client: Any = None,
    bedrock_client: BedrockRuntimeClient | None = None,
    secrets_client: Any = None,
    transport: HttpTransport | None = None,
) -> BackendLoader:
    return BackendLoader(settings, options, s3_client=s3_client, bedrock_client=bedrock_client,
                         secrets_client=secrets_client, transport=transport)
