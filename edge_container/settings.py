"""The service's configuration: one frozen object built once at start-up from EDGE_* variables.

This is the only module that reads `os.environ`. A bad value fails start-up with a `ConfigurationError`
naming the variable; nothing is half-configured.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_container._env import S3_PREFIX, S3_URI, EdgeEnv
from edge_container.auth import ClientKey
from edge_container.errors import ConfigurationError
from edge_container.logs import LOG_FORMATS, LogFormat
from modelpack.limits import CLOUD_MAX_TEXT_CHARS, CLOUD_MAX_TEXTS
from modelpack.policy_names import POLICY_NAMES


@dataclass(frozen=True, slots=True)
class Settings:
    model_dir: Path = Path("/models")
    model_name: str = "edge"  # the Open Inference Protocol model name
    host: str = "127.0.0.1"  # loopback unless told otherwise; the container image sets 0.0.0.0
    port: int = 8080
    log_level: str = "info"
    log_format: LogFormat = "text"  # json: one object a line (edge_container.logs)
    access_log: bool = False
    # How long an idle client connection stays open. Longer than clients keep pooled connections (httpx 5 s,
    # requests/urllib3 until closed, Go 90 s): a server that closes first races the client's next request on
    # that connection, which then fails or is retried. uvicorn's own default is 5 s.
    keep_alive_s: float = 75.0
    # Connection hygiene on the HTTP listeners, per process (edge_container.http_limits): the request head's
    # size and header count (431 above), the time a whole head / body may take to arrive (408), and how many
    # connections may be open, in all and per client address (503 at accept). 1,024 is well above the 64 the
    # load benchmarks open; keep it below the open-files limit (`ulimit -n`), which the entry point checks.
    max_header_bytes: int = 16384
    max_headers: int = 100
    head_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 1024
    max_connections_per_client: int = 256  # one address behind a NAT or a proxy is many clients
    # Routing
    policy: str = "threshold"
    target_escalation_rate: float | None = None  # adaptive/random; None = the manifest's expected rate
    margin_threshold: float | None = None  # None = the manifest's threshold if it routes on margin, else 0.2
    entropy_threshold: float | None = None  # on neg_entropy; None = manifest's if it routes on it, else 0.5
    adaptive_window: int = 1000
    pace_window_s: float = 300.0  # paced: time constant of the escalation demand estimate
    pace_reserve: float = 0.05  # paced: share of the budget left unpaced (high priority, estimate error)
    shift_window: int = 2000  # shift_aware: texts the oos-share estimate is made on
    shift_estimator: str = "em"  # shift_aware: em (Saerens et al.) or bbse (soft black-box shift estimation)
    # shift_aware: the threshold is the table's at this one-sided upper confidence bound of the share; 0.5:
    # at the estimate itself (bench/results/shift.md measures what a higher bound buys and costs)
    shift_confidence: float = 0.5
    # Batching and the interpreter pool
    max_batch_size: int = 32
    max_wait_ms: float = 0.0  # 0: take what is queued when an interpreter frees up, never wait for more
    queue_size: int = 256
    # Interpreter threads; 0 runs each batch on the event-loop thread itself (one interpreter, no thread
    # hand-off): the faster choice with EDGE_PROCESSES at one per core (bench/results/edge_profile.md),
    # and the default when EDGE_PROCESSES > 1.
    workers: int = 2
    # Server processes on the one port (edge_container.processes); > 1 makes `serve` a supervisor. The
    # supervisor sets the other two for each child: its index and the folder where siblings find each other.
    processes: int = 1
    process_index: int | None = None
    peers_dir: Path | None = None
    # Cloud
    cloud_url: str | None = None
    cloud_api_key: str | None = None
    cloud_sigv4_region: str | None = None  # set to sign requests with SigV4 (IAM-authorised API)
    cloud_sigv4_service: str = "execute-api"
    cloud_timeout_ms: int = 800
    cloud_retries: int = 2
    cloud_backoff_ms: int = 50
    cloud_max_connections: int = 32
    cloud_batch_wait_ms: float = 0.0  # > 0: escalations of several requests share one call (waiting at most this)
    # The cloud's per-call limits (its MAX_TEXTS_PER_CALL / MAX_CHARS_PER_TEXT): escalations are chunked and
    # cut to these. Set them only for a cloud deployed with other limits.
    cloud_max_texts: int = CLOUD_MAX_TEXTS
    cloud_max_text_chars: int = CLOUD_MAX_TEXT_CHARS
    breaker_failures: int = 5
    breaker_reset_s: float = 30.0
    default_deadline_ms: int = 2000
    # Request limits
    max_texts: int = 64
    max_text_chars: int = 1000
    max_body_bytes: int = 1 << 20
    # Who may call: client keys for the inference routes; escalations each client may cause
    client_keys: tuple[ClientKey, ...] = ()
    client_escalations_per_s: float = 20.0  # escalated texts/s per client (refill); 0 disables the limit
    client_escalation_burst: int = 256
    # Model management
    admin_token: str | None = None
    reload_poll_s: float = 10.0  # 0 disables watching the folder (and S3)
    s3_latest_uri: str | None = None
    s3_cache_dir: Path = Path("/tmp/edge-models")
    device_id: str = ""  # names this device in a staged rollout's cohort; "" = the host name
    # Remote debugging over mutual TLS (edge_container.debug); None = off
    debug_port: int | None = None
    debug_host: str | None = None  # None = EDGE_HOST
    debug_tls_cert: Path | None = None
    debug_tls_key: Path | None = None
    debug_tls_client_ca: Path | None = None  # the operators' CA: only its client certificates get in
    # Feedback: cloud-answered escalations kept on the device (edge_container.feedback); None = off
    feedback_path: Path | None = None
    feedback_mode: str = "text"  # text | hash (only a keyed hash of each text: monitoring, not training)
    feedback_max_mb: int = 64
    feedback_max_age_days: float = 30.0
    feedback_s3_uri: str | None = None  # s3://bucket/prefix: ship the store's new records there
    feedback_ship_s: float = 300.0

    @property
    def device(self) -> str:
        """The id this device has in a staged rollout: EDGE_DEVICE_ID, else the host name."""
        return self.device_id or socket.gethostname()

    @property
    def interpreters(self) -> int:
        """Interpreter slots per process: one per worker thread, one for the inline mode (workers 0)."""
        return max(1, self.workers)

    @property
    def is_child(self) -> bool:
        """One of several processes (EDGE_PROCESSES > 1), started by the supervisor."""
        return self.process_index is not None

    @property
    def is_primary(self) -> bool:
        """The process that runs what must run once per server: the debug listener, the feedback shipper."""
        return self.process_index in (None, 0)

    @property
    def cloud_enabled(self) -> bool:
        return self.cloud_url is not None

    @property
    def cloud_infer_url(self) -> str:
        assert self.cloud_url is not None
        return self.cloud_url.rstrip("/") + "/v1/infer"

    @property
    def feedback_s3_location(self) -> tuple[str, str]:
        """(bucket, prefix) of EDGE_FEEDBACK_S3_URI."""
        match = S3_PREFIX.match(self.feedback_s3_uri or "")
        assert match is not None
        return match["bucket"], (match["prefix"] or "").strip("/")

    @property
    def s3_location(self) -> tuple[str, str]:
        """(bucket, key of latest.json)."""
        match = S3_URI.match(self.s3_latest_uri or "")
        assert match is not None
        return match["bucket"], match["key"]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = EdgeEnv(os.environ if environ is None else environ)
        d = cls()  # defaults live on the fields above, in one place
        settings = cls(**_service(env, d), **_routing(env, d), **_batching(env, d), **_cloud(env, d),
                       **_limits(env, d), **_models(env, d), **_feedback(env, d), **_debug(env))
        if settings.cloud_url and not (settings.cloud_api_key or settings.cloud_sigv4_region):
            raise ConfigurationError(
                "EDGE_CLOUD_URL is set but neither EDGE_CLOUD_API_KEY nor EDGE_CLOUD_SIGV4_REGION is",
                key="EDGE_CLOUD_API_KEY",
            )
        if settings.admin_token is not None and len(settings.admin_token) < 16:
            raise ConfigurationError("EDGE_ADMIN_TOKEN must be at least 16 characters", key="EDGE_ADMIN_TOKEN")
        return settings


def _service(env: EdgeEnv, d: Settings) -> dict[str, Any]:
    """Where the model is and how the service listens and logs."""
    return {
        "model_dir": Path(env.text("EDGE_MODEL_DIR", str(d.model_dir))),
        "model_name": env.text("EDGE_MODEL_NAME", d.model_name),
        "host": env.text("EDGE_HOST", d.host),
        "port": env.integer("EDGE_PORT", d.port, low=0, high=65535),
        "log_level": env.choice("EDGE_LOG_LEVEL", ("critical", "error", "warning", "info", "debug"),
                             default=d.log_level),
        "log_format": env.choice("EDGE_LOG_FORMAT", LOG_FORMATS, default=d.log_format),
        "access_log": env.boolean("EDGE_ACCESS_LOG", d.access_log),
        "keep_alive_s": env.number("EDGE_KEEP_ALIVE_S", d.keep_alive_s, low=1.0, high=3600.0),
        **_connections(env, d),
    }


def _connections(env: EdgeEnv, d: Settings) -> dict[str, Any]:
    """What a client connection may hold (edge_container.http_limits)."""
    total = env.integer("EDGE_MAX_CONNECTIONS", d.max_connections, low=1, high=1_000_000)
    per_client = env.integer("EDGE_MAX_CONNECTIONS_PER_CLIENT", min(d.max_connections_per_client, total), low=1)
    if per_client > total:
        raise env.bad("EDGE_MAX_CONNECTIONS_PER_CLIENT", env.raw("EDGE_MAX_CONNECTIONS_PER_CLIENT"),
                      f"must be at most EDGE_MAX_CONNECTIONS ({total})")
    return {
        "max_header_bytes": env.integer("EDGE_MAX_HEADER_BYTES", d.max_header_bytes, low=1024, high=1 << 20),
        "max_headers": env.integer("EDGE_MAX_HEADERS", d.max_headers, low=8, high=10_000),
        "head_timeout_s": env.number("EDGE_HEAD_TIMEOUT_S", d.head_timeout_s, low=0.1, high=600.0),
        "body_timeout_s": env.number("EDGE_BODY_TIMEOUT_S", d.body_timeout_s, low=0.1, high=3600.0),
        "max_connections": total,
        "max_connections_per_client": per_client,
    }


def _routing(env: EdgeEnv, d: Settings) -> dict[str, Any]:
    """Which policy routes, and its knobs."""
    return {
        "policy": env.choice("EDGE_POLICY", POLICY_NAMES, default=d.policy),
        "target_escalation_rate": env.opt_number("EDGE_TARGET_ESCALATION_RATE", low=0.0, high=1.0),
        "margin_threshold": env.opt_number("EDGE_MARGIN_THRESHOLD", low=0.0, high=1.0),
        "entropy_threshold": env.opt_number("EDGE_ENTROPY_THRESHOLD", low=0.0, high=1.0),
        "adaptive_window": env.integer("EDGE_ADAPTIVE_WINDOW", d.adaptive_window, low=10),
        "pace_window_s": env.number("EDGE_PACE_WINDOW_S", d.pace_window_s, low=1.0),
        "pace_reserve": env.number("EDGE_PACE_RESERVE", d.pace_reserve, low=0.0, high=0.9),
        "shift_window": env.integer("EDGE_SHIFT_WINDOW", d.shift_window, low=100, high=100_000),
        "shift_estimator": env.choice("EDGE_SHIFT_ESTIMATOR", ("em", "bbse"), default=d.shift_estimator),
        "shift_confidence": env.number("EDGE_SHIFT_CONFIDENCE", d.shift_confidence, low=0.5, high=0.999),
    }


def _batching(env: EdgeEnv, d: Settings) -> dict[str, Any]:
    """The batcher and the interpreter pool."""
    return {
        "max_batch_size": env.integer("EDGE_MAX_BATCH_SIZE", d.max_batch_size, low=1, high=4096),
        "max_wait_ms": env.number("EDGE_MAX_WAIT_MS", d.max_wait_ms, low=0.0, high=1000.0),
        "queue_size": env.integer("EDGE_QUEUE_SIZE", d.queue_size, low=1),
        **(processes := _processes(env, d)),
        # Several processes: each runs its batches on its own event loop unless told otherwise
        "workers": env.integer("EDGE_WORKERS", 0 if processes["processes"] > 1 else d.workers, low=0, high=64),
    }


def _processes(env: EdgeEnv, d: Settings) -> dict[str, Any]:
    processes = env.integer("EDGE_PROCESSES", d.processes, low=1, high=64)
    index = env.int_or_none("EDGE_PROCESS_INDEX")
    raw_dir = env.opt_text("EDGE_PEERS_DIR")
    if index is not None and not (0 <= index < processes and raw_dir is not None and Path(raw_dir).is_dir()):
        raise ConfigurationError("EDGE_PROCESS_INDEX is set by the supervisor (EDGE_PROCESSES > 1) with "
                                 "EDGE_PEERS_DIR: it must be in [0, EDGE_PROCESSES) and the folder must exist",
                                 key="EDGE_PROCESS_INDEX")
    return {"processes": processes, "process_index": index,
            "peers_dir": Path(raw_dir) if raw_dir is not None and index is not None else None}


def _cloud(env: EdgeEnv, d: Settings) -> dict[str, Any]:
    """The cloud tier: where, how to authenticate, timeouts, retries, limits, breaker."""
    return {
        "cloud_url": env.opt_url("EDGE_CLOUD_URL"),
        "cloud_api_key": env.secret("EDGE_CLOUD_API_KEY", "EDGE_CLOUD_API_KEY_FILE"),
        "cloud_sigv4_region": env.opt_text("EDGE_CLOUD_SIGV4_REGION"),
        "cloud_sigv4_service": env.text("EDGE_CLOUD_SIGV4_SERVICE", d.cloud_sigv4_service),
        "cloud_timeout_ms": env.integer("EDGE_CLOUD_TIMEOUT_MS", d.cloud_timeout_ms, low=1, high=120_000),
        "cloud_retries": env.integer("EDGE_CLOUD_RETRIES", d.cloud_retries, low=0, high=10),
        "cloud_backoff_ms": env.integer("EDGE_CLOUD_BACKOFF_MS", d.cloud_backoff_ms, low=0, high=60_000),
        "cloud_max_connections": env.integer("EDGE_CLOUD_MAX_CONNECTIONS", d.cloud_max_connections, low=1),
        "cloud_batch_wait_ms": env.number("EDGE_CLOUD_BATCH_WAIT_MS", d.cloud_batch_wait_ms, low=0.0, high=1000.0),
        "cloud_max_texts": env.integer("EDGE_CLOUD_MAX_TEXTS", d.cloud_max_texts, low=1),
        "cloud_max_text_chars": env.integer("EDGE_CLOUD_MAX_TEXT_CHARS", d.cloud_max_text_chars, low=1),
        "breaker_failures": env.integer("EDGE_BREAKER_FAILURES", d.breaker_failures, low=1),
        "breaker_reset_s": env.number("EDGE_BREAKER_RESET_S", d.breaker_reset_s, low=0.0),
        "default_deadline_ms": env.integer("EDGE_DEFAULT_DEADLINE_MS", d.default_deadline_ms, low=1, high=600_000),
    }


def _limits(env: EdgeEnv, d: Settings) -> dict[str, Any]:
    """Request limits and who may call."""
    return {
        "max_texts": env.integer("EDGE_MAX_TEXTS", d.max_texts, low=1),
        "max_text_chars": env.integer("EDGE_MAX_TEXT_CHARS", d.max_text_chars, low=1),
        "max_body_bytes": env.integer("EDGE_MAX_BODY_BYTES", d.max_body_bytes, low=64),
        "client_keys": env.client_keys("EDGE_CLIENT_KEYS", "EDGE_CLIENT_KEYS_FILE"),
        "client_escalations_per_s": env.number("EDGE_CLIENT_ESCALATIONS_PER_S", d.client_escalations_per_s,
                                            low=0.0),
        "client_escalation_burst": env.integer("EDGE_CLIENT_ESCALATION_BURST", d.client_escalation_burst, low=1),
    }


def _models(env: EdgeEnv, d: Settings) -> dict[str, Any]:
    """Model management: admin, reloads, S3, the device's rollout id."""
    return {
        "admin_token": env.secret("EDGE_ADMIN_TOKEN", "EDGE_ADMIN_TOKEN_FILE"),
        "reload_poll_s": env.number("EDGE_RELOAD_POLL_S", d.reload_poll_s, low=0.0),
        "s3_latest_uri": env.opt_s3_uri("EDGE_S3_LATEST_URI"),
        "s3_cache_dir": Path(env.text("EDGE_S3_CACHE_DIR", str(d.s3_cache_dir))),
        "device_id": env.text("EDGE_DEVICE_ID", d.device_id),
    }


def _debug(env: EdgeEnv) -> dict[str, Any]:
    """The mutual-TLS debug listener: with EDGE_DEBUG_PORT, its certificate, key and client CA must exist."""
    port = env.int_or_none("EDGE_DEBUG_PORT")
    if port is not None and not 0 <= port <= 65535:
        raise env.bad("EDGE_DEBUG_PORT", env.raw("EDGE_DEBUG_PORT"), "must be in [0, 65535]")
    files: dict[str, Path | None] = {}
    for field, key in (("debug_tls_cert", "EDGE_DEBUG_TLS_CERT"), ("debug_tls_key", "EDGE_DEBUG_TLS_KEY"),
                       ("debug_tls_client_ca", "EDGE_DEBUG_TLS_CLIENT_CA")):
        raw = env.opt_text(key)
        if port is not None and (raw is None or not Path(raw).is_file()):
            raise ConfigurationError(f"EDGE_DEBUG_PORT is set: {key} must name a readable PEM file"
                                     + ("" if raw is None else f" ({raw!r} is not a file)"), key=key)
        files[field] = None if raw is None else Path(raw)
    return {"debug_port": port, "debug_host": env.opt_text("EDGE_DEBUG_HOST"), **files}


def _feedback_s3(env: EdgeEnv, path: str | None) -> str | None:
    uri = env.opt_text("EDGE_FEEDBACK_S3_URI")
    if uri is None:
        return None
    if not S3_PREFIX.match(uri):
        raise env.bad("EDGE_FEEDBACK_S3_URI", uri, "must be s3://<bucket>[/<prefix>]")
    if path is None:
        raise ConfigurationError("EDGE_FEEDBACK_S3_URI ships the feedback store: set EDGE_FEEDBACK_PATH too",
                                 key="EDGE_FEEDBACK_S3_URI")
    return uri


def _feedback(env: EdgeEnv, d: Settings) -> dict[str, Any]:
    """The feedback store (off unless EDGE_FEEDBACK_PATH is set)."""
    path = env.opt_text("EDGE_FEEDBACK_PATH")
    return {
        "feedback_path": None if path is None else Path(path),
        "feedback_mode": env.choice("EDGE_FEEDBACK_MODE", ("text", "hash"), default=d.feedback_mode),
        "feedback_max_mb": env.integer("EDGE_FEEDBACK_MAX_MB", d.feedback_max_mb, low=1, high=1 << 20),
        "feedback_max_age_days": env.number("EDGE_FEEDBACK_MAX_AGE_DAYS", d.feedback_max_age_days, low=0.01),
        "feedback_s3_uri": _feedback_s3(env, path),
        "feedback_ship_s": env.number("EDGE_FEEDBACK_SHIP_S", d.feedback_ship_s, low=0.05),
    }
