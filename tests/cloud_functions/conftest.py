"""Cloud-tier fixtures: fake AWS credentials, moto tables built from template.yaml, a settable clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from moto import mock_aws

from cloud_functions.budget import BudgetLedger
from infra.moto_server import SerialisedMotoServer, create_template_resources

_AWS_ENV_TO_CLEAR = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_DYNAMODB",
    "AWS_ENDPOINT_URL_S3",
)


@pytest.fixture(autouse=True)
def fake_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never reach a real account: fake keys, us-east-1, no profile or endpoint from the developer's shell."""
    for name in _AWS_ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 3, 14, 12, 0, tzinfo=UTC))


@dataclass(frozen=True)
class Aws:
    dynamodb: Any
    s3: Any
    budget_table: str
    idempotency_table: str
    model_bucket: str


@pytest.fixture
def aws(fake_aws_credentials: None) -> Iterator[Aws]:
    """In-process moto with the template's tables and bucket. Fine for one caller at a time only."""
    with mock_aws():
        dynamodb, s3 = boto3.client("dynamodb"), boto3.client("s3")
        created = create_template_resources(dynamodb_client=dynamodb, s3_client=s3, prefix="test")
        yield Aws(
            dynamodb=dynamodb,
            s3=s3,
            budget_table=created.tables["BudgetTable"],
            idempotency_table=created.tables["IdempotencyTable"],
            model_bucket=created.buckets["ModelBucket"],
        )


@pytest.fixture
def make_ledger(aws: Aws, clock: FakeClock) -> Callable[..., BudgetLedger]:
    def make(*, default_limit: int | None = 100, **options: Any) -> BudgetLedger:
        options.setdefault("sleep", lambda _seconds: None)
        return BudgetLedger(
            aws.budget_table,
            dynamodb_client=aws.dynamodb,
            default_limit=default_limit,
            clock=clock,
            **options,
        )

    return make


@pytest.fixture(scope="session")
def moto_server() -> Iterator[SerialisedMotoServer]:
    with SerialisedMotoServer() as server:
        yield server


@dataclass(frozen=True)
class ServerTables:
    dynamodb: Any
    budget_table: str


@pytest.fixture
def server_tables(moto_server: SerialisedMotoServer) -> ServerTables:
    """The template's tables in a freshly reset serialised moto server (safe under concurrent clients)."""
    moto_server.reset()
    dynamodb = moto_server.client("dynamodb")
    created = create_template_resources(dynamodb_client=dynamodb, s3_client=moto_server.client("s3"))
    return ServerTables(dynamodb=dynamodb, budget_table=created.tables["BudgetTable"])
