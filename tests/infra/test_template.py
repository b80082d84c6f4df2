"""template.yaml: lint-clean, translates offline, wires the right resources, and deploys (minus what moto
cannot create) so that the table names reach the function's environment."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import io
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer
from cfnlint.api import ManualArgs, lint, lint_file
from moto import mock_aws
from samtranslator.translator.transform import transform

from cloud_functions.budget_table import PARTITION_KEY, SORT_KEY, TTL_ATTRIBUTE
from cloud_functions.settings import Settings
from infra.moto_server import TEMPLATE_PATH, create_template_resources, load_template

CODE_BUCKET, CODE_KEY = "sam-artifacts", "inference.zip"
# moto 5.2.5's CloudFormation cannot create these (RestApi from a swagger Body has no Name; Stage,
# Deployment, ApiKey and UsagePlan fail; Alarm and BucketPolicy are unsupported). They are checked on the
# translated template instead; anything that references them is dropped with them.
MOTO_CANNOT_CREATE = re.compile(r"^AWS::ApiGateway::|^AWS::CloudWatch::Alarm$|^AWS::S3::BucketPolicy$")


@pytest.fixture(autouse=True)
def fake_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")  # samtranslator builds ARNs from it
    monkeypatch.setenv("AWS_REGION", "us-east-1")


class _NoManagedPolicies:
    """samtranslator asks this only for bare managed-policy names; the template uses none."""

    def load(self) -> dict[str, str]:
        return {}


@pytest.fixture(scope="module")
def translated() -> dict[str, Any]:
    """The SAM template as plain CloudFormation, translated offline (local CodeUri rewritten to s3://)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        sam = load_template()
        sam["Resources"]["InferenceFunction"]["Properties"]["CodeUri"] = f"s3://{CODE_BUCKET}/{CODE_KEY}"
        return transform(sam, {}, _NoManagedPolicies())  # type: ignore[arg-type]


def _resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def _references(node: Any) -> Iterator[str]:
    """Logical ids and parameters named by Ref / GetAtt / Sub anywhere under node (not AWS:: pseudo ones)."""
    yield from (name for name in _all_references(node) if not name.startswith("AWS::"))


def _all_references(node: Any) -> Iterator[str]:
    if isinstance(node, list):
        for item in node:
            yield from _all_references(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                yield value
            elif key == "Fn::GetAtt":
                yield value[0] if isinstance(value, list) else value.split(".")[0]
            elif key == "Fn::Sub":
                text, variables = (value, {}) if isinstance(value, str) else (value[0], value[1])
                local = set(variables)
                yield from (m.split(".")[0] for m in re.findall(r"\$\{([^}!]+)\}", text) if m not in local)
                yield from _all_references(variables)
            else:
                yield from _all_references(value)


# --------------------------------------------------------------------------- lint


def test_cfn_lint_finds_nothing() -> None:
    matches = lint_file(Path(TEMPLATE_PATH), config=ManualArgs(regions=["us-east-1"]))

    assert [str(match) for match in matches] == []


# What SAM itself emits: DependsOn next to a Ref (W3005), and parameters it inlines at transform time
# (usage-plan quota values) that then look unused (W2001).
_SAM_OUTPUT_WARNINGS = {"W3005", "W2001"}


def test_cfn_lint_finds_no_error_in_the_translated_template(translated: dict[str, Any]) -> None:
    """cfn-lint 1.x validates SAM resources by schema only; the translated template also gets the
    value and reference checks (runtime names, GetAtt targets, ...) that the SAM schemas skip."""
    matches = lint(json.dumps(translated), regions=["us-east-1"])

    unexpected = [str(m) for m in matches if m.rule.id not in _SAM_OUTPUT_WARNINGS]
    assert unexpected == []


# --------------------------------------------------------------------------- translated template


def test_the_function_runs_the_handler_on_python312_with_its_log_group(translated: dict[str, Any]) -> None:
    function = translated["Resources"]["InferenceFunction"]
    assert function["Type"] == "AWS::Lambda::Function"
    properties = function["Properties"]
    assert properties["Runtime"] == "python3.12"
    assert properties["Handler"] == "cloud_functions.handler.lambda_handler"
    assert properties["Code"] == {"S3Bucket": CODE_BUCKET, "S3Key": CODE_KEY}
    assert properties["LoggingConfig"] == {"LogGroup": {"Ref": "InferenceFunctionLogGroup"}}
    log_group = translated["Resources"]["InferenceFunctionLogGroup"]["Properties"]
    assert log_group["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_the_function_environment_covers_every_setting(translated: dict[str, Any]) -> None:
    env = translated["Resources"]["InferenceFunction"]["Properties"]["Environment"]["Variables"]

    assert env["BUDGET_TABLE"] == {"Ref": "BudgetTable"}
    assert env["IDEMPOTENCY_TABLE"] == {"Ref": "IdempotencyTable"}
    assert {field.name.upper() for field in dataclasses.fields(Settings)} <= set(env)
    assert set(_references(env["MODEL_URI"])) == {"ModelBucket", "ModelUri"}


def test_every_api_method_requires_an_api_key(translated: dict[str, Any]) -> None:
    (api,) = _resources(translated, "AWS::ApiGateway::RestApi").values()
    body = api["Properties"]["Body"]
    methods = [(path, verb, spec) for path, verbs in body["paths"].items() for verb, spec in verbs.items()]

    assert {(path, verb) for path, verb, _ in methods} == {("/v1/infer", "post"), ("/v1/budget", "get")}
    for path, verb, spec in methods:
        assert spec["security"] == [{"api_key": []}], f"{verb} {path} does not require an API key"
    assert body["securityDefinitions"]["api_key"] == {"type": "apiKey", "name": "x-api-key", "in": "header"}


def test_a_usage_plan_throttles_and_caps_the_api_key(translated: dict[str, Any]) -> None:
    (plan_id, plan), *_ = _resources(translated, "AWS::ApiGateway::UsagePlan").items()
    (key_id, key), *_ = _resources(translated, "AWS::ApiGateway::ApiKey").items()
    (link,) = _resources(translated, "AWS::ApiGateway::UsagePlanKey").values()

    assert set(plan["Properties"]["Throttle"]) == {"RateLimit", "BurstLimit"}
    assert plan["Properties"]["Quota"]["Period"] == "DAY"
    assert plan["Properties"]["ApiStages"][0]["ApiId"] == {"Ref": "InferenceApi"}
    assert key["Properties"]["Enabled"] is True
    assert link["Properties"] == {
        "KeyId": {"Ref": key_id},
        "KeyType": "API_KEY",
        "UsagePlanId": {"Ref": plan_id},
    }


def test_the_budget_table_matches_the_ledger(translated: dict[str, Any]) -> None:
    table = translated["Resources"]["BudgetTable"]["Properties"]

    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["KeySchema"] == [
        {"AttributeName": PARTITION_KEY, "KeyType": "HASH"},
        {"AttributeName": SORT_KEY, "KeyType": "RANGE"},
    ]
    assert table["TimeToLiveSpecification"] == {"AttributeName": TTL_ATTRIBUTE, "Enabled": True}
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert translated["Resources"]["BudgetTable"]["DeletionPolicy"] == "Retain"


def test_the_idempotency_table_matches_powertools_defaults(translated: dict[str, Any]) -> None:
    table = translated["Resources"]["IdempotencyTable"]["Properties"]
    defaults = inspect.signature(DynamoDBPersistenceLayer.__init__).parameters

    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["KeySchema"] == [{"AttributeName": defaults["key_attr"].default, "KeyType": "HASH"}]
    assert table["TimeToLiveSpecification"] == {
        "AttributeName": defaults["expiry_attr"].default,
        "Enabled": True,
    }
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}


def test_the_model_bucket_is_private_encrypted_and_versioned(translated: dict[str, Any]) -> None:
    bucket = translated["Resources"]["ModelBucket"]["Properties"]

    rule = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms"}
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert bucket["PublicAccessBlockConfiguration"] == dict.fromkeys(
        ["BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"], True
    )
    (policy,) = _resources(translated, "AWS::S3::BucketPolicy").values()
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Deny"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": False}}


def test_the_function_may_touch_exactly_its_tables_and_its_bucket(translated: dict[str, Any]) -> None:
    role = translated["Resources"]["InferenceFunctionRole"]["Properties"]
    statements = [s for policy in role["Policies"] for s in policy["PolicyDocument"]["Statement"]]
    by_service: dict[str, set[str]] = {}
    actions_on: dict[str, set[str]] = {}
    for statement in statements:
        assert statement["Effect"] == "Allow"
        resources = (
            statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        )
        assert "*" not in resources
        named = set(_references(resources))
        for action in statement["Action"]:
            by_service.setdefault(action.split(":")[0], set()).update(named)
            for logical_id in named:
                actions_on.setdefault(logical_id, set()).add(action)

    assert by_service == {"dynamodb": {"BudgetTable", "IdempotencyTable"}, "s3": {"ModelBucket"}}
    assert actions_on["BudgetTable"] == {
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:ConditionCheckItem",
    }
    assert actions_on["IdempotencyTable"] == {
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
    }
    assert all(action.startswith(("s3:Get", "s3:List")) for action in actions_on["ModelBucket"])
    assert set(role["ManagedPolicyArns"]) == {
        "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
        "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess",
    }


def test_an_alarm_watches_the_functions_errors(translated: dict[str, Any]) -> None:
    (alarm,) = _resources(translated, "AWS::CloudWatch::Alarm").values()
    properties = alarm["Properties"]

    assert (properties["Namespace"], properties["MetricName"]) == ("AWS/Lambda", "Errors")
    assert properties["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "InferenceFunction"}}]


def test_parameters_and_outputs(translated: dict[str, Any]) -> None:
    assert {"Stage", "DefaultDailyBudget", "CostPerRequest", "CostPerText", "ModelUri"} <= set(
        translated["Parameters"]
    )
    outputs = translated["Outputs"]
    assert set(_references(outputs["ApiUrl"]["Value"])) >= {"InferenceApi", "Stage"}
    assert outputs["ApiKeyId"]["Value"] == {"Ref": "InferenceApiApiKey"}
    assert outputs["ModelBucketName"]["Value"] == {"Ref": "ModelBucket"}
    assert outputs["BudgetTableName"]["Value"] == {"Ref": "BudgetTable"}
    assert set(_resources(translated, "AWS::ApiGateway::ApiKey")) == {"InferenceApiApiKey"}


# --------------------------------------------------------------------------- deployed in moto


def _creatable_by_moto(template: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    stack = copy.deepcopy(template)
    dropped = {name for name, r in stack["Resources"].items() if MOTO_CANNOT_CREATE.match(r["Type"])}
    while dependants := {
        name
        for name, r in stack["Resources"].items()
        if name not in dropped and set(_references(r)) & dropped
    }:
        dropped |= dependants
    for name in dropped:
        del stack["Resources"][name]
    for name in [name for name, o in stack["Outputs"].items() if set(_references(o)) & dropped]:
        del stack["Outputs"][name]
    return stack, dropped


def test_the_stack_deploys_and_table_names_reach_the_function(translated: dict[str, Any]) -> None:
    stack, dropped = _creatable_by_moto(translated)
    # Only the API side (and the resources bound to it) may be missing from the moto stack.
    assert {"BudgetTable", "IdempotencyTable", "ModelBucket", "InferenceFunction"}.isdisjoint(dropped)

    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=CODE_BUCKET)
        package = io.BytesIO()
        with zipfile.ZipFile(package, "w") as archive:
            archive.writestr("cloud_functions/__init__.py", "")
        s3.put_object(Bucket=CODE_BUCKET, Key=CODE_KEY, Body=package.getvalue())
        cloudformation = boto3.client("cloudformation")

        cloudformation.create_stack(
            StackName="edge-cloud",
            TemplateBody=json.dumps(stack),
            Capabilities=["CAPABILITY_IAM"],
            Parameters=[{"ParameterKey": "Stage", "ParameterValue": "dev"}],
        )

        (described,) = cloudformation.describe_stacks(StackName="edge-cloud")["Stacks"]
        assert described["StackStatus"] == "CREATE_COMPLETE"
        physical = {
            r["LogicalResourceId"]: r["PhysicalResourceId"]
            for r in cloudformation.describe_stack_resources(StackName="edge-cloud")["StackResources"]
        }
        outputs = {o["OutputKey"]: o["OutputValue"] for o in described["Outputs"]}
        env = boto3.client("lambda").get_function_configuration(FunctionName=physical["InferenceFunction"])[
            "Environment"
        ]["Variables"]
        budget_table = boto3.client("dynamodb").describe_table(TableName=physical["BudgetTable"])["Table"]

    assert env["BUDGET_TABLE"] == physical["BudgetTable"] == outputs["BudgetTableName"]
    assert env["IDEMPOTENCY_TABLE"] == physical["IdempotencyTable"]
    assert env["MODEL_URI"] == f"s3://{physical['ModelBucket']}/models/"
    assert outputs["ModelBucketName"] == physical["ModelBucket"]
    assert [k["AttributeName"] for k in budget_table["KeySchema"]] == [PARTITION_KEY, SORT_KEY]
    settings = Settings.from_env({name: str(value) for name, value in env.items()})
    assert settings.budget_table == physical["BudgetTable"]


# --------------------------------------------------------------------------- samconfig


def test_samconfig_environments_override_only_declared_parameters_with_allowed_values() -> None:
    import tomllib

    config = tomllib.loads((TEMPLATE_PATH.parent / "infra" / "samconfig.toml").read_text(encoding="utf-8"))
    parameters = load_template()["Parameters"]

    for environment in ("default", "prod"):
        assert config[environment]["global"]["parameters"]["region"] == "us-east-1"
        deploy = config[environment]["deploy"]["parameters"]
        assert deploy["capabilities"] == "CAPABILITY_IAM"
        overrides = dict(item.split("=", 1) for item in deploy["parameter_overrides"])
        assert set(overrides) <= set(parameters), f"{environment}: unknown parameter"
        for name, value in overrides.items():
            declared = parameters[name]
            if "AllowedValues" in declared:
                assert value in {str(v) for v in declared["AllowedValues"]}, f"{environment}: {name}={value}"
            if "MinValue" in declared:
                assert int(value) >= declared["MinValue"], f"{environment}: {name}={value}"
        assert overrides["Stage"] == ("dev" if environment == "default" else "prod")


# --------------------------------------------------------------------------- local resources


def test_local_tables_and_bucket_are_built_from_the_template_definitions() -> None:
    template = load_template()

    with mock_aws():
        dynamodb, s3 = boto3.client("dynamodb"), boto3.client("s3")
        created = create_template_resources(dynamodb_client=dynamodb, s3_client=s3, prefix="t")
        tables = {
            logical: (
                dynamodb.describe_table(TableName=name)["Table"],
                dynamodb.describe_time_to_live(TableName=name)["TimeToLiveDescription"],
                dynamodb.describe_continuous_backups(TableName=name)["ContinuousBackupsDescription"],
            )
            for logical, name in created.tables.items()
        }
        bucket = created.buckets["ModelBucket"]
        versioning = s3.get_bucket_versioning(Bucket=bucket)["Status"]
        encryption = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
        public_access = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]

    assert (
        set(tables)
        == set(_resources(template, "AWS::DynamoDB::Table"))
        == {"BudgetTable", "IdempotencyTable"}
    )
    for logical, (table, ttl, backups) in tables.items():
        declared = template["Resources"][logical]["Properties"]
        assert table["KeySchema"] == declared["KeySchema"]
        assert sorted(table["AttributeDefinitions"], key=str) == sorted(
            declared["AttributeDefinitions"], key=str
        )
        assert table["BillingModeSummary"]["BillingMode"] == declared["BillingMode"]
        assert ttl == {
            "TimeToLiveStatus": "ENABLED",
            "AttributeName": declared["TimeToLiveSpecification"]["AttributeName"],
        }
        assert backups["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED"
    declared_bucket = template["Resources"]["ModelBucket"]["Properties"]
    assert versioning == declared_bucket["VersioningConfiguration"]["Status"]
    assert (
        encryption["ApplyServerSideEncryptionByDefault"]
        == declared_bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0][
            "ServerSideEncryptionByDefault"
        ]
    )
    assert public_access == declared_bucket["PublicAccessBlockConfiguration"]


def test_a_table_shaped_by_an_intrinsic_is_refused_rather_than_guessed() -> None:
    template = {
        "Resources": {
            "T": {
                "Type": "AWS::DynamoDB::Table",
                "Properties": {
                    "KeySchema": {"Fn::If": ["Cond", [], []]},
                    "AttributeDefinitions": [],
                    "BillingMode": "PAY_PER_REQUEST",
                },
            }
        }
    }

    with mock_aws(), pytest.raises(ValueError, match=r"T\.KeySchema"):
        create_template_resources(
            dynamodb_client=boto3.client("dynamodb"), s3_client=boto3.client("s3"), template=template
        )
