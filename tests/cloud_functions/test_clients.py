"""The Lambda's AWS clients: each with bounded timeouts and retries, made only when asked for."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cloud_functions import clients

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("make", "service", "timeouts", "attempts"),
    [
        (clients.dynamodb, "dynamodb", (2, 3), 3),
        (clients.s3, "s3", (3, 10), 3),
        (clients.bedrock_runtime, "bedrock-runtime", (2, 8), 2),
        (clients.secretsmanager, "secretsmanager", (2, 3), 3),
        (clients.ssm, "ssm", (2, 3), 3),
    ],
)
def test_every_client_fails_in_seconds_after_a_bounded_number_of_attempts(
    make: Callable[[], Any], service: str, timeouts: tuple[int, int], attempts: int
) -> None:
    client = make()

    config = client.meta.config
    assert client.meta.service_model.service_name == service
    assert (config.connect_timeout, config.read_timeout) == timeouts
    assert config.retries == {"mode": "standard", "total_max_attempts": attempts}


def test_every_bedrock_attempt_ends_within_the_llms_time() -> None:
    """Issue 24 #3: 2 attempts of 3 s + 20 s (46 s) outlived the function and API Gateway's 29 s."""
    for timeout_s, attempts in [(20.0, 2), (22.0, 1), (12.0, 3)]:
        config = clients.bedrock_config(timeout_s=timeout_s, attempts=attempts)
        per_attempt = config["connect_timeout"] + config["read_timeout"]

        assert per_attempt * config["retries"]["total_max_attempts"] <= timeout_s
    with pytest.raises(ValueError):
        clients.bedrock_config(timeout_s=4, attempts=3)


def test_a_budget_call_cannot_eat_the_functions_25_seconds() -> None:
    """Every request writes the budget table: all the attempts of one call, timing out, end within 15 s."""
    dynamodb = clients.CLIENT_CONFIGS["dynamodb"]
    per_attempt = dynamodb["connect_timeout"] + dynamodb["read_timeout"]

    assert per_attempt * dynamodb["retries"]["total_max_attempts"] <= 15


def test_importing_the_clients_imports_no_aws_sdk() -> None:
    code = "import sys, cloud_functions.clients; assert 'boto3' not in sys.modules, 'boto3 imported'"
    clean_env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}

    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=clean_env, check=True, timeout=60)
