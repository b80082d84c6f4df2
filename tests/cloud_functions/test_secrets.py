"""The LLM's API key from Secrets Manager or SSM (moto), cached for a while and read again when refused."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from cloud_functions.inference import BackendError
from cloud_functions.secrets import CachedSecret, from_secrets_manager, from_ssm

KEY = "sk-test-0123456789abcdef"


@pytest.fixture
def aws_clients(fake_aws_credentials: None) -> Iterator[tuple[Any, Any]]:
    with mock_aws():
        yield boto3.client("secretsmanager"), boto3.client("ssm")


@pytest.mark.parametrize("stored", [KEY, f"  {KEY}\n", f'{{"api_key": "{KEY}", "note": "rotated monthly"}}'],
                         ids=["plain", "padded", "json"])
def test_a_key_is_read_from_secrets_manager(aws_clients: tuple[Any, Any], stored: str) -> None:
    secrets, _ = aws_clients
    arn = secrets.create_secret(Name="edge/llm-key", SecretString=stored)["ARN"]

    assert from_secrets_manager(secrets, arn)() == KEY


def test_a_key_is_read_from_an_ssm_secure_string(aws_clients: tuple[Any, Any]) -> None:
    _, ssm = aws_clients
    ssm.put_parameter(Name="/edge/llm-key", Value=KEY, Type="SecureString")

    assert from_ssm(ssm, "/edge/llm-key")() == KEY


@pytest.mark.parametrize(
    ("stored", "problem"),
    [(None, "ResourceNotFoundException"), ('{"token": "x"}', "without a string api_key")],
    ids=["missing", "json-without-api-key"],
)
def test_a_key_that_cannot_be_had_is_a_backend_error_that_never_shows_a_key(
    aws_clients: tuple[Any, Any], stored: str | None, problem: str
) -> None:
    secrets, _ = aws_clients
    if stored is not None:
        secrets.create_secret(Name="edge/llm-key", SecretString=stored)

    with pytest.raises(BackendError, match=problem) as caught:
        from_secrets_manager(secrets, "edge/llm-key")()

    assert "edge/llm-key" in str(caught.value) and KEY not in str(caught.value)


def test_a_missing_ssm_parameter_is_a_backend_error(aws_clients: tuple[Any, Any]) -> None:
    _, ssm = aws_clients

    with pytest.raises(BackendError, match="ParameterNotFound"):
        from_ssm(ssm, "/edge/none")()


def test_the_key_is_cached_for_its_ttl_and_read_again_when_invalidated() -> None:
    values = iter(["first", "second", "third"])
    now = [0.0]
    reads: list[str] = []

    def fetch() -> str:
        reads.append(value := next(values))
        return value

    secret = CachedSecret(fetch, ttl_s=300, clock=lambda: now[0])

    assert [secret.get(), secret.get()] == ["first", "first"]
    now[0] = 299.0
    assert secret.get() == "first"
    now[0] = 300.0
    assert secret.get() == "second"  # rotated keys are picked up within the TTL
    secret.invalidate()
    assert secret.get() == "third"
    assert reads == ["first", "second", "third"]
