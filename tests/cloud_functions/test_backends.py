"""Choosing and loading a backend: the loader, lazy loading, the last good model while the current fails."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from cloud_functions.backends import LazyBackend, StaleBackend, backend_loader
from cloud_functions.bedrock_backend import BedrockBackend
from cloud_functions.errors import ModelUnavailable
from cloud_functions.inference import BackendError
from cloud_functions.litert_backend import LiteRTBackend
from cloud_functions.model_store import ModelStoreError
from cloud_functions.settings import InferenceSettings, Settings
from modelpack.classifier import Classifier

LABELS = ("balance", "greeting", "timer", "weather", "oos")
TEXTS = ["what is my account balance", "set a timer for five minutes", "hello there"]
MODEL_ID = "anthropic.claude-3-haiku-20240307-v1:0"


# --------------------------------------------------------------------------- the loader


def _settings(model_dir: Path) -> Settings:
    return Settings.from_env({"BUDGET_TABLE": "b", "IDEMPOTENCY_TABLE": "i", "MODEL_URI": str(model_dir)})


def test_the_loader_builds_the_packaged_teacher_by_default(tiny_artifact: Path) -> None:
    backend = backend_loader(_settings(tiny_artifact), InferenceSettings())()

    assert isinstance(backend, LiteRTBackend)
    assert backend.labels == LABELS and backend.model_version == "tiny-1"


def test_the_bedrock_loader_takes_the_labels_from_the_manifest_alone(tiny_artifact: Path) -> None:
    client = boto3.client("bedrock-runtime", region_name="us-east-1")  # never called: nothing to stub
    options = InferenceSettings.from_env({"INFERENCE_BACKEND": "bedrock", "LLM_MODEL_ID": MODEL_ID})

    backend = backend_loader(_settings(tiny_artifact), options, bedrock_client=client)()

    assert isinstance(backend, BedrockBackend)
    assert backend.labels == LABELS and backend.model_version == f"bedrock:{MODEL_ID}"


def test_the_openai_loader_reads_its_key_from_secrets_manager_and_answers(
    tiny_artifact: Path, fake_aws_credentials: None
) -> None:
    from moto import mock_aws

    from cloud_functions.http_transport import HttpTransport
    from cloud_functions.openai_backend import OpenAIBackend

    from .chat_server import ChatServer

    with mock_aws(), ChatServer(lambda text: ("timer", 0.9, 0.9), api_key="sk-from-the-secret") as server:
        secrets = boto3.client("secretsmanager")
        arn = secrets.create_secret(Name="edge/llm", SecretString='{"api_key": "sk-from-the-secret"}')["ARN"]
        options = InferenceSettings.from_env({
            "INFERENCE_BACKEND": "openai", "LLM_MODEL_ID": "llama-3.1-8b-instruct",
            "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY_SECRET_ARN": arn,
            "LLM_INPUT_USD_PER_MTOK": "0.05", "LLM_OUTPUT_USD_PER_MTOK": "0.08",
        })
        loader = backend_loader(_settings(tiny_artifact), options, secrets_client=secrets)

        backend = loader()
        (result,) = backend.infer(["set a timer"]).results
        assert isinstance(backend, OpenAIBackend) and backend.labels == LABELS
        assert result.label == "timer"
        assert server.seen[0].headers["authorization"] == "Bearer sk-from-the-secret"
        assert loader._http() is loader._http()  # one transport for every version built
        assert isinstance(loader._http(), HttpTransport)
        loader._http().close()


# --------------------------------------------------------------------------- lazy loading


def _teacher(folder: Path) -> LiteRTBackend:
    return LiteRTBackend(Classifier.from_folder(folder, "cloud"))


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_lazy_backend_loads_once_and_retries_a_failed_load_after_a_pause(tiny_artifact: Path) -> None:
    attempts: list[float] = []
    clock = _Clock()
    real = _teacher(tiny_artifact)

    def load() -> LiteRTBackend:
        attempts.append(clock.now)
        if len(attempts) == 1:
            raise ModelStoreError("s3://bucket/models/: connection reset")
        return real

    lazy = LazyBackend(load, retry_after_s=5.0, clock=clock)
    assert not lazy.ready

    with pytest.raises(ModelUnavailable) as caught:
        lazy()
    assert "s3://" not in caught.value.message  # the client never sees where the model lives
    clock.now = 4.0
    with pytest.raises(ModelUnavailable):
        lazy()  # within the pause: no second attempt
    clock.now = 5.0

    assert lazy() is real and lazy() is real
    assert attempts == [0.0, 5.0] and lazy.ready


def test_a_lazy_backend_serves_the_last_good_model_while_the_current_one_fails_then_returns_to_it(
    tiny_artifact: Path,
) -> None:
    attempts: list[float] = []
    clock = _Clock()
    last_good, current = _teacher(tiny_artifact), _teacher(tiny_artifact)
    published_ok = False

    def load() -> LiteRTBackend:
        attempts.append(clock.now)
        if not published_ok:
            raise ModelStoreError("s3://bucket/models/tiny-2/cloud.tflite: SHA-256 does not match")
        return current

    lazy = LazyBackend(load, fallback=lambda: last_good, retry_after_s=5.0, stale_retry_after_s=60.0,
                       clock=clock)

    stale = lazy()
    assert isinstance(stale, StaleBackend) and stale.inner is last_good
    assert stale.reason == "latest_model_unavailable" and "s3://" not in stale.reason
    assert (stale.model_version, stale.labels) == (last_good.model_version, last_good.labels)
    assert stale.infer(TEXTS) == last_good.infer(TEXTS)
    clock.now = 59.0
    assert lazy() is stale  # within the pause: S3 is not asked again
    clock.now = 60.0
    assert lazy() is stale  # asked again, still broken: keep serving the last good one
    published_ok, clock.now = True, 120.0

    assert lazy() is current and lazy() is current
    assert attempts == [0.0, 60.0, 120.0] and lazy.last_error is None


@pytest.mark.parametrize("outcome", ["nothing cached", "cached but broken"])
def test_a_lazy_backend_without_a_usable_last_good_model_is_unavailable(outcome: str) -> None:
    def load() -> LiteRTBackend:
        raise ModelStoreError("s3://bucket/models/latest.json does not exist")

    def fallback() -> LiteRTBackend | None:
        if outcome == "nothing cached":
            return None
        raise BackendError("the cached model cannot be loaded")

    with pytest.raises(ModelUnavailable):
        LazyBackend(load, fallback=fallback)()
