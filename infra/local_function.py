"""The function each local execution environment runs: `cloud_functions.handler` with a runtime of its own.

    tables = resolve_tables(dynamodb_endpoint, create=True, prefix="local", budget=None, idempotency=None)
    setup = FunctionSetup(model_uri, dynamodb_endpoint, tables, model_cache_dir)   # picklable
    handler = setup(index)                    # in environment `index`: clients, settings, ledger built

What a Lambda execution environment builds at its cold start, built in it: boto3 clients (never shared
between processes), the settings from the environment, the handler's runtime (`handler.use_runtime`);
the model still loads on the first inference, as in Lambda. Each environment caches models in a folder
of its own (`<cache>/env-<index>`), as each Lambda environment has its own /tmp: environments fetching
the same version at once would otherwise replace each other's files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.lambda_pool import Handler

# Imported once by the fork server, so that environments start as forks that already hold them.
PRELOAD = ("cloud_functions.handler",)


def powertools_environ(*, emit_metrics: bool) -> dict[str, str]:
    """The Powertools settings Lambda's configuration gives the handler; they are read when the handler
    module is imported, so they belong in the environment before it is. Metrics off unless asked for
    (locally they are only EMF lines on stdout)."""
    environ = {"POWERTOOLS_SERVICE_NAME": "inference", "POWERTOOLS_METRICS_NAMESPACE": "EdgeCloudInferenceLocal"}
    if not emit_metrics:
        environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    return environ


@dataclass(frozen=True, slots=True)
class Tables:
    budget: str
    idempotency: str


def dynamodb_client(endpoint_url: str | None) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=2, read_timeout=10, retries={"mode": "standard", "total_max_attempts": 3})
    return boto3.client("dynamodb", endpoint_url=endpoint_url, config=config)


def resolve_tables(endpoint_url: str | None, *, create: bool, prefix: str, budget: str | None,
                   idempotency: str | None) -> Tables:
    """The tables the function uses: the names given, else `<prefix>-<LogicalId>`; with `create`, the
    template's tables are created first (once, before any environment starts)."""
    if create:
        from infra.moto_server import create_template_resources, load_template

        template = load_template()
        tables_only = {"Resources": {name: r for name, r in template["Resources"].items()
                                     if r["Type"] == "AWS::DynamoDB::Table"}}
        created = create_template_resources(dynamodb_client=dynamodb_client(endpoint_url), s3_client=None,
                                            template=tables_only, prefix=prefix)
        budget = budget or created.tables["BudgetTable"]
        idempotency = idempotency or created.tables["IdempotencyTable"]
    return Tables(budget or f"{prefix}-BudgetTable", idempotency or f"{prefix}-IdempotencyTable")


@dataclass(frozen=True, slots=True)
class FunctionSetup:
    """How an environment builds the handler's runtime: sent to each new environment, called there."""

    model_uri: str
    dynamodb_endpoint: str | None
    tables: Tables
    model_cache_dir: str  # environment i caches in <model_cache_dir>/env-<i>
    backend: Any = None  # an InferenceBackend instead of the model (tests: one that sleeps); picklable

    def __call__(self, index: int) -> Handler:
        from cloud_functions import handler
        from cloud_functions.settings import Settings

        environ = {
            **os.environ,
            "BUDGET_TABLE": self.tables.budget,
            "IDEMPOTENCY_TABLE": self.tables.idempotency,
            "MODEL_URI": self.model_uri,
            "MODEL_CACHE_DIR": str(Path(self.model_cache_dir) / f"env-{index}"),
        }
        runtime = handler.build_runtime(Settings.from_env(environ), backend=self.backend,
                                        dynamodb_client=dynamodb_client(self.dynamodb_endpoint))
        handler.use_runtime(runtime)
        return handler.lambda_handler
