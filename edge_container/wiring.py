"""Everything the app needs, built from Settings in one place; outside clients can be passed in."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx

from edge_container.auth import EscalationLimiter
from edge_container.breaker import CircuitBreaker
from edge_container.cloud import CloudClient, SigV4Signer
from edge_container.errors import ConfigurationError
from edge_container.escalation import Escalation
from edge_container.feedback import FeedbackStore
from edge_container.feedback_writer import FeedbackShipper, FeedbackWriter
from edge_container.metrics import Metrics
from edge_container.model_sources import FolderSource, Reloader, S3Source
from edge_container.peers import Peers
from edge_container.policies import Policy, make_policy
from edge_container.reload import ModelManager
from edge_container.runtime import EdgeModel
from edge_container.service import EdgeService
from edge_container.settings import Settings
from modelpack.manifest import MANIFEST_NAME

log = logging.getLogger("edge_container")
# botocore's defaults wait 60 s to connect and 60 s per read, and a stalled poll holds up every later
# one; a failed poll is retried by the reloader's own backoff, so botocore retries only a little.
CLOUD_KEEPALIVE_S = 5.0  # httpx's default, stated: idle pooled connections to the cloud are dropped after it
S3_CLIENT_CONFIG: dict[str, Any] = {"connect_timeout": 5, "read_timeout": 30,
                                    "retries": {"total_max_attempts": 3, "mode": "standard"}}


@dataclass
class EdgeStack:
    settings: Settings
    metrics: Metrics
    models: ModelManager
    service: EdgeService
    reloader: Reloader
    folder: FolderSource
    http: httpx.AsyncClient | None
    executor: ThreadPoolExecutor | None  # None: inference on the event-loop thread (EDGE_WORKERS=0)
    _owns_http: bool = field(default=False, repr=False)
    debug_port: int | None = None  # the mutual-TLS debug listener's port, once serving (None: off)
    shipper: FeedbackShipper | None = None  # ships feedback to S3 (EDGE_FEEDBACK_S3_URI)
    peers: Peers | None = None  # the sibling processes (EDGE_PROCESSES > 1)

    @classmethod
    def create(cls, settings: Settings, *, http: httpx.AsyncClient | None = None, s3_client: Any = None,
               aws_credentials: Any = None, policy: Policy | None = None) -> EdgeStack:
        """Build, start nothing. `http`, `s3_client` and `aws_credentials` default to real ones, made here."""
        metrics = Metrics()
        models = ModelManager(partial(EdgeModel.load, slots=settings.interpreters), metrics=metrics)
        owns_http = http is None and settings.cloud_enabled
        if owns_http:
            limit = settings.cloud_max_connections
            # Idle connections are dropped after CLOUD_KEEPALIVE_S, which must be shorter than the cloud side
            # keeps them (the local API: 75 s), or a call can go out on a connection the server is closing.
            http = httpx.AsyncClient(limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit,
                                                         keepalive_expiry=CLOUD_KEEPALIVE_S),
                                     timeout=settings.cloud_timeout_ms / 1000.0)
        executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="edge-infer") if settings.workers else None
        policy = policy or make_policy(settings.policy, settings)
        cloud = _cloud(settings, http, metrics, aws_credentials)
        escalation = Escalation(cloud, policy=policy, metrics=metrics, batch_wait_s=settings.cloud_batch_wait_ms / 1000.0)
        service = EdgeService(
            models=models, policy=policy, escalation=escalation,
            executor=executor, metrics=metrics, max_batch_size=settings.max_batch_size,
            max_wait_s=settings.max_wait_ms / 1000.0, queue_size=settings.queue_size, workers=settings.interpreters,
            default_deadline_ms=settings.default_deadline_ms,
            limiter=EscalationLimiter(rate=settings.client_escalations_per_s, burst=settings.client_escalation_burst),
            feedback=_feedback(settings, metrics))
        metrics.device.info({"device_id": settings.device, "cohort": "stable", "target_version": ""})
        metrics.watch_oos_share(service.policy.estimated_oos_share)
        folder = FolderSource(settings.model_dir)
        sources: list[FolderSource | S3Source] = [folder]
        if (settings.s3_latest_uri or settings.feedback_s3_uri) and s3_client is None:
            import boto3  # optional dependency: only with EDGE_S3_LATEST_URI / EDGE_FEEDBACK_S3_URI
            from botocore.config import Config

            s3_client = boto3.client("s3", config=Config(**S3_CLIENT_CONFIG))
        if settings.s3_latest_uri:
            bucket, key = settings.s3_location
            sources.append(S3Source(s3_client, bucket=bucket, latest_key=key, cache_dir=settings.s3_cache_dir,
                                    device_id=settings.device, on_cohort=lambda cohort, version: metrics.device.info(
                                        {"device_id": settings.device, "cohort": cohort, "target_version": version})))
        reloader = Reloader(models, sources, poll_s=settings.reload_poll_s)
        stack = cls(settings, metrics, models, service, reloader, folder, http, executor, owns_http)
        if settings.is_child:
            assert settings.peers_dir is not None and settings.process_index is not None
            stack.peers = Peers(settings.peers_dir, index=settings.process_index, expected=settings.processes)
        # One shipper per server: the store is one file that every process writes (SQLite locks it).
        if settings.feedback_s3_uri and service.feedback is not None and settings.is_primary:
            bucket, prefix = settings.feedback_s3_location
            stack.shipper = FeedbackShipper(service.feedback, s3_client, bucket=bucket, prefix=prefix,
                                            device=settings.device, interval_s=settings.feedback_ship_s,
                                            on_result=lambda outcome, n: metrics.feedback_shipped.labels(outcome).inc(n))
        return stack

    async def start(self) -> None:
        """Load and warm the model (readiness waits for this), then start serving and watching."""
        if (self.settings.model_dir / MANIFEST_NAME).is_file():
            self.folder.mark_seen()
            await self.models.load(self.settings.model_dir, source="folder")
        elif self.settings.s3_latest_uri:
            await self.reloader.reload("s3")
        else:
            raise ConfigurationError(f"no {MANIFEST_NAME} in EDGE_MODEL_DIR={self.settings.model_dir} "
                                     "and no EDGE_S3_LATEST_URI to fetch one from", key="EDGE_MODEL_DIR")
        await self.service.start()
        self.reloader.start()
        if self.shipper is not None:
            self.shipper.start()
        log.info("edge ready: model %s, policy %s, cloud %s", self.models.current.version,
                 self.service.policy.name, self.settings.cloud_url or "disabled")

    async def stop(self) -> None:
        if self.shipper is not None:
            await self.shipper.stop()
        await self.reloader.stop()
        await self.service.stop()
        if self._owns_http and self.http is not None:
            await self.http.aclose()
        if self.peers is not None:
            await self.peers.close()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
        if self.service.feedback is not None:
            self.service.feedback.close()

    @property
    def ready(self) -> bool:
        return self.models.ready and self.service.batcher.running


def _feedback(settings: Settings, metrics: Metrics) -> FeedbackWriter | None:
    """The feedback store's writer when EDGE_FEEDBACK_PATH is set (the store opens on the first record)."""
    if settings.feedback_path is None:
        return None
    path = settings.feedback_path
    opener = partial(FeedbackStore.open, path, mode=settings.feedback_mode,  # type: ignore[arg-type]
                     max_bytes=settings.feedback_max_mb * 2**20, max_age_s=settings.feedback_max_age_days * 86400)
    return FeedbackWriter(opener, metrics=metrics)


def _cloud(settings: Settings, http: httpx.AsyncClient | None, metrics: Metrics,
           credentials: Any) -> CloudClient | None:
    """The cloud client with its circuit breaker, or None without EDGE_CLOUD_URL."""
    if not settings.cloud_enabled:
        return None
    assert http is not None
    breaker = CircuitBreaker(failures=settings.breaker_failures, reset_s=settings.breaker_reset_s,
                             on_change=metrics.circuit.state)
    return CloudClient(
        http, url=settings.cloud_infer_url, api_key=settings.cloud_api_key, breaker=breaker,
        timeout_s=settings.cloud_timeout_ms / 1000.0, retries=settings.cloud_retries,
        backoff_s=settings.cloud_backoff_ms / 1000.0, signer=_signer(settings, credentials),
        on_error=lambda kind: metrics.cloud_errors.labels(kind).inc(),
        on_bytes=lambda direction, n: metrics.cloud_bytes.labels(direction).inc(n),
        max_texts=settings.cloud_max_texts, max_text_chars=settings.cloud_max_text_chars)


def _signer(settings: Settings, credentials: Any) -> SigV4Signer | None:
    if not settings.cloud_sigv4_region:
        return None
    if credentials is None:
        import botocore.session  # optional dependency: only with EDGE_CLOUD_SIGV4_REGION

        credentials = botocore.session.get_session().get_credentials()
        if credentials is None:
            raise ConfigurationError("EDGE_CLOUD_SIGV4_REGION is set but no AWS credentials were found",
                                     key="EDGE_CLOUD_SIGV4_REGION")
    return SigV4Signer(credentials, region=settings.cloud_sigv4_region, service=settings.cloud_sigv4_service)
