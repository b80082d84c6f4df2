"""Admin CLI for tenant budgets.

    python -m infra.budget_admin set-limit TENANT N   [--table T | --stack S] [--endpoint-url U] [--region R]
    python -m infra.budget_admin show TENANT          [--table T | --stack S] [--default-limit N] ...

The table comes from --table, else from the BudgetTableName output of --stack, else from $BUDGET_TABLE.
Prints the tenant's status for today (UTC) as JSON. Exit codes: 0 ok, 1 the operation failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from cloud_functions.budget import BudgetLedger
from cloud_functions.errors import CloudError

PROG = "python -m infra.budget_admin"


class AdminError(Exception):
    """A problem the operator can fix; printed as one line, never as a stack trace."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        status = _run(args)
    except AdminError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except CloudError as exc:
        cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
        print(f"{PROG}: error: {exc.message}{cause}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2))
    return 0


def _run(args: argparse.Namespace) -> dict[str, Any]:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    region = (
        getattr(args, "region", None) or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    )
    if not region:
        raise AdminError("no AWS region: pass --region or set AWS_REGION")
    config = Config(connect_timeout=5, read_timeout=10, retries={"mode": "standard", "max_attempts": 3})
    client_options = {
        "region_name": region,
        "endpoint_url": getattr(args, "endpoint_url", None),
        "config": config,
    }
    try:
        table = _table_name(args, client_options)
        ledger = BudgetLedger(
            table,
            dynamodb_client=boto3.client("dynamodb", **client_options),
            default_limit=getattr(args, "default_limit", None),
        )
        if args.command == "set-limit":
            return ledger.set_limit(args.tenant, args.limit).to_json()
        return ledger.status(args.tenant).to_json()
    except (BotoCoreError, ClientError) as exc:  # raised outside the ledger (stack lookup, client creation)
        raise AdminError(str(exc)) from exc


def _table_name(args: argparse.Namespace, client_options: dict[str, Any]) -> str:
    table = getattr(args, "table", None)
    stack = getattr(args, "stack", None)
    if table and stack:
        raise AdminError("pass --table or --stack, not both")
    if table:
        return str(table)
    if stack:
        import boto3

        stacks = boto3.client("cloudformation", **client_options).describe_stacks(StackName=stack)["Stacks"]
        for output in stacks[0].get("Outputs", []):
            if output["OutputKey"] == "BudgetTableName":
                return str(output["OutputValue"])
        raise AdminError(f"stack {stack!r} has no BudgetTableName output")
    if os.environ.get("BUDGET_TABLE"):
        return os.environ["BUDGET_TABLE"]
    raise AdminError("no budget table: pass --table or --stack, or set BUDGET_TABLE")


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _parser() -> argparse.ArgumentParser:
    # The connection flags are accepted before or after the sub-command; SUPPRESS keeps a sub-command's
    # missing flag from overwriting one given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--table", default=argparse.SUPPRESS, help="budget table name")
    common.add_argument(
        "--stack", default=argparse.SUPPRESS, help="read the table name from this stack's outputs"
    )
    common.add_argument("--endpoint-url", default=argparse.SUPPRESS, help="e.g. a local moto server")
    common.add_argument("--region", default=argparse.SUPPRESS, help="default: $AWS_REGION")

    parser = argparse.ArgumentParser(
        prog=PROG, description="Show or set tenants' daily budgets.", parents=[common]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    set_limit = commands.add_parser("set-limit", parents=[common], help="set a tenant's daily limit (units)")
    set_limit.add_argument("tenant")
    set_limit.add_argument("limit", type=non_negative_int, metavar="N")
    show = commands.add_parser("show", parents=[common], help="show a tenant's budget for today (UTC)")
    show.add_argument("tenant")
    show.add_argument(
        "--default-limit",
        type=non_negative_int,
        default=None,
        help="the deployment's DefaultDailyBudget, for tenants without a configured limit",
    )
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
