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

from cloud_functions.budget_items import PARTITION_KEY, SORT_KEY, TTL_ATTRIBUTE
from cloud_functions.settings import Settings
from infra.moto_server import TEMPLATE_PATH, create_template_resources, load_template
from modelpack.cloud_api import ErrorBody

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
    return _translate(load_template())


def _translate(sam: dict[str, Any]) -> dict[str, Any]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        sam = copy.deepcopy(sam)
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


_NO_VALUE = object()


def configured(template: dict[str, Any], **parameters: str) -> dict[str, Any]:
    """The template as CloudFormation would see it with these parameter values (defaults for the rest):
    conditions evaluated, every Fn::If resolved, AWS::NoValue and conditional resources/outputs dropped."""
    values = {name: str(p.get("Default", "")) for name, p in template.get("Parameters", {}).items()}
    values.update(parameters)
    conditions: dict[str, bool] = {}

    def condition(node: Any) -> bool:
        if isinstance(node, dict) and len(node) == 1:
            (key, arg), = node.items()
            if key == "Fn::Equals":
                return value(arg[0]) == value(arg[1])
            if key == "Fn::Not":
                return not condition(arg[0])
            if key == "Fn::And":
                return all(condition(a) for a in arg)
            if key == "Fn::Or":
                return any(condition(a) for a in arg)
            if key in ("Condition", "Fn::Condition"):
                return named(arg)
        raise AssertionError(f"cannot evaluate condition {node!r}")

    def value(node: Any) -> Any:
        if isinstance(node, dict) and set(node) == {"Ref"} and node["Ref"] in values:
            return values[node["Ref"]]
        return node

    def named(name: str) -> bool:
        if name not in conditions:
            conditions[name] = condition(template["Conditions"][name])
        return conditions[name]

    def resolve(node: Any) -> Any:
        if isinstance(node, list):
            return [r for r in (resolve(item) for item in node) if r is not _NO_VALUE]
        if isinstance(node, dict):
            if set(node) == {"Fn::If"}:
                name, then, otherwise = node["Fn::If"]
                return resolve(then if named(name) else otherwise)
            if node == {"Ref": "AWS::NoValue"}:
                return _NO_VALUE
            return {k: r for k, r in ((k, resolve(v)) for k, v in node.items()) if r is not _NO_VALUE}
        return node

    result = copy.deepcopy(template)
    for section in ("Resources", "Outputs"):
        result[section] = {
            name: resolve({k: v for k, v in item.items() if k != "Condition"})
            for name, item in result.get(section, {}).items()
            if "Condition" not in item or named(item["Condition"])
        }
    return result


AUTH_MODES = ("ApiKey", "Iam")
BACKENDS = ("litert", "bedrock", "openai")
SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:edge-llm-key-AbCdEf"
PARAMETER_NAME = "/edge/llm-api-key"


# --------------------------------------------------------------------------- lint


def test_cfn_lint_finds_nothing() -> None:
    matches = lint_file(Path(TEMPLATE_PATH), config=ManualArgs(regions=["us-east-1"]))

    assert [str(match) for match in matches] == []


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("auth_mode", AUTH_MODES)
def test_cfn_lint_finds_nothing_in_every_auth_mode_and_backend(auth_mode: str, backend: str) -> None:
    """Each deployable combination as its own template (the parameters' defaults set to it), linted as
    SAM and again as the CloudFormation it translates to."""
    sam = _with_defaults(load_template(), AuthMode=auth_mode, InferenceBackend=backend,
                         LlmModelId="" if backend == "litert" else "amazon.nova-micro-v1:0",
                         OpenAiBaseUrl="https://llm.example.com/v1" if backend == "openai" else "",
                         OpenAiApiKeySecretArn=SECRET_ARN if backend == "openai" else "")

    assert [str(m) for m in lint(json.dumps(sam), regions=["us-east-1"])] == []
    cloudformation = _translate(sam)
    unexpected = [str(m) for m in lint(json.dumps(cloudformation), regions=["us-east-1"])
                  if m.rule.id not in _SAM_OUTPUT_WARNINGS]
    assert unexpected == []


# What SAM itself emits: DependsOn next to a Ref (W3005), and parameters it inlines at transform time
# (usage-plan quota values) that then look unused (W2001).
_SAM_OUTPUT_WARNINGS = {"W3005", "W2001"}


def _with_defaults(template: dict[str, Any], **defaults: str) -> dict[str, Any]:
    changed = copy.deepcopy(template)
    for name, value in defaults.items():
        changed["Parameters"][name]["Default"] = value
    return changed


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


@pytest.mark.parametrize(("auth_mode", "scheme"), [("ApiKey", "api_key"), ("Iam", "sigv4")])
def test_every_api_method_is_authorised_the_way_auth_mode_says(
    translated: dict[str, Any], auth_mode: str, scheme: str
) -> None:
    """Issue 24 #1: every method required an API key, so a device signing with SigV4 got 403."""
    stack = configured(translated, AuthMode=auth_mode)
    (api,) = _resources(stack, "AWS::ApiGateway::RestApi").values()
    body = api["Properties"]["Body"]
    methods = [(path, verb, spec) for path, verbs in body["paths"].items() for verb, spec in verbs.items()]

    assert {(path, verb) for path, verb, _ in methods} == {("/v1/infer", "post"), ("/v1/budget", "get")}
    for path, verb, spec in methods:
        assert spec["security"] == [{scheme: []}], f"{verb} {path}"
    schemes = body["components"]["securitySchemes"]
    assert schemes["api_key"] == {"type": "apiKey", "name": "x-api-key", "in": "header"}
    assert schemes["sigv4"]["x-amazon-apigateway-authtype"] == "awsSigv4"
    environment = stack["Resources"]["InferenceFunction"]["Properties"]["Environment"]["Variables"]
    assert environment["AUTH_MODE"] == {"ApiKey": "apikey", "Iam": "iam"}[auth_mode]  # the handler follows


def test_a_stack_switched_to_another_auth_mode_is_redeployed(monkeypatch: pytest.MonkeyPatch) -> None:
    """SAM hashes the template, not parameter values, into the deployment's id: without AlwaysDeploy a
    switch of AuthMode would update the API's definition and leave the stage on the old deployment."""
    import samtranslator.model.apigateway as sam_apigateway

    assert load_template()["Resources"]["InferenceApi"]["Properties"]["AlwaysDeploy"] is True
    # AlwaysDeploy hashes the deploy time in whole seconds: two translations, a second apart, without a race
    monkeypatch.setattr(sam_apigateway.time, "time", lambda: 1_800_000_000.0)
    (deployment_id,) = _resources(_translate(load_template()), "AWS::ApiGateway::Deployment")
    monkeypatch.setattr(sam_apigateway.time, "time", lambda: 1_800_000_001.0)
    again = _translate(load_template())

    assert deployment_id not in again["Resources"]


def test_in_api_key_mode_a_usage_plan_throttles_and_caps_the_api_key(translated: dict[str, Any]) -> None:
    stack = configured(translated, AuthMode="ApiKey")
    (plan_id, plan), *_ = _resources(stack, "AWS::ApiGateway::UsagePlan").items()
    (key_id, key), *_ = _resources(stack, "AWS::ApiGateway::ApiKey").items()
    (link,) = _resources(stack, "AWS::ApiGateway::UsagePlanKey").values()

    assert set(plan["Properties"]["Throttle"]) == {"RateLimit", "BurstLimit"}
    assert plan["Properties"]["Quota"]["Period"] == "DAY"
    assert plan["Properties"]["ApiStages"][0]["ApiId"] == {"Ref": "InferenceApi"}
    assert plan["Properties"]["ApiStages"][0]["Stage"] == {"Ref": "InferenceApiStage"}
    assert key["Properties"]["Enabled"] is True
    assert link["Properties"] == {
        "KeyId": {"Ref": key_id},
        "KeyType": "API_KEY",
        "UsagePlanId": {"Ref": plan_id},
    }


def test_in_iam_mode_there_is_no_api_key_and_the_output_names_what_to_allow(translated: dict[str, Any]) -> None:
    stack = configured(translated, AuthMode="Iam")

    assert _resources(stack, "AWS::ApiGateway::ApiKey") == {}
    assert _resources(stack, "AWS::ApiGateway::UsagePlan") == {}
    assert "ApiKeyId" not in stack["Outputs"]
    invoke = stack["Outputs"]["ApiInvokeResource"]["Value"]["Fn::Sub"]
    assert invoke.startswith("arn:${AWS::Partition}:execute-api:") and invoke.endswith("/${Stage}/*/v1/*")
    # Throttling still applies to the stage as a whole.
    (stage,) = _resources(stack, "AWS::ApiGateway::Stage").values()
    assert stage["Properties"]["MethodSettings"][0]["ThrottlingRateLimit"] == {"Ref": "ApiRateLimit"}


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


def _statements(stack: dict[str, Any]) -> list[dict[str, Any]]:
    role = stack["Resources"]["InferenceFunctionRole"]["Properties"]
    return [s for policy in role["Policies"] for s in policy["PolicyDocument"]["Statement"]]


def _actions_on(statements: list[dict[str, Any]]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    by_service: dict[str, set[str]] = {}
    actions_on: dict[str, set[str]] = {}
    for statement in statements:
        assert statement["Effect"] == "Allow"
        resources = (
            statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        )
        assert "*" not in resources
        named = set(_references(resources))
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        for action in actions:
            by_service.setdefault(action.split(":")[0], set()).update(named)
            for logical_id in named:
                actions_on.setdefault(logical_id, set()).add(action)
    return by_service, actions_on


def test_the_function_may_touch_exactly_its_tables_and_its_bucket(translated: dict[str, Any]) -> None:
    role = translated["Resources"]["InferenceFunctionRole"]["Properties"]
    by_service, actions_on = _actions_on(_statements(configured(translated, InferenceBackend="litert")))

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


def test_the_bedrock_backend_may_invoke_its_one_model_and_nothing_else(translated: dict[str, Any]) -> None:
    """Issue 24 #2: the template granted no bedrock:InvokeModel, so the documented backend could not run."""
    stack = configured(translated, InferenceBackend="bedrock", LlmModelId="amazon.nova-micro-v1:0")
    (statement,) = [s for s in _statements(stack) if s.get("Sid") == "BedrockModel"]
    environment = stack["Resources"]["InferenceFunction"]["Properties"]["Environment"]["Variables"]

    assert statement["Action"] == "bedrock:InvokeModel"
    assert statement["Resource"] == {
        "Fn::Sub": "arn:${AWS::Partition}:bedrock:${AWS::Region}::foundation-model/${LlmModelId}"
    }
    assert environment["INFERENCE_BACKEND"] == {"Ref": "InferenceBackend"}
    assert environment["LLM_MODEL_ID"] == {"Ref": "LlmModelId"}
    assert {"LLM_INPUT_USD_PER_MTOK", "LLM_OUTPUT_USD_PER_MTOK", "TOP_K", "LLM_TIMEOUT_S"} <= set(environment)
    for backend in ("litert", "openai"):
        assert not any(s.get("Sid") == "BedrockModel" for s in _statements(configured(translated,
                                                                                      InferenceBackend=backend)))


@pytest.mark.parametrize(
    ("parameters", "sid", "action", "resource"),
    [
        ({"OpenAiApiKeySecretArn": SECRET_ARN}, "OpenAiApiKeySecret", "secretsmanager:GetSecretValue",
         {"Ref": "OpenAiApiKeySecretArn"}),
        ({"OpenAiApiKeyParameter": PARAMETER_NAME}, "OpenAiApiKeyParameter", "ssm:GetParameter",
         {"Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter${OpenAiApiKeyParameter}"}),
    ],
    ids=["secrets-manager", "ssm"],
)
def test_the_openai_backend_may_read_its_api_key_and_nothing_else(
    translated: dict[str, Any], parameters: dict[str, str], sid: str, action: str, resource: Any
) -> None:
    stack = configured(translated, InferenceBackend="openai", **parameters)
    extra = [s for s in _statements(stack) if s.get("Sid", "").startswith(("OpenAi", "Bedrock"))]

    assert [(s["Sid"], s["Action"], s["Resource"]) for s in extra] == [(sid, action, resource)]
    assert not any(s.get("Sid", "").startswith("OpenAi")
                   for s in _statements(configured(translated, InferenceBackend="litert", **parameters)))


def test_no_template_parameter_can_carry_an_api_key_in_plain_text() -> None:
    """The LLM's key lives in Secrets Manager or SSM; the template names where, never the key itself
    (a parameter's value is visible to anyone who can describe the stack)."""
    parameters = load_template()["Parameters"]

    assert not [name for name in parameters if re.search(r"(?i)key$|secret$|token$|password", name)]
    assert parameters["OpenAiApiKeySecretArn"]["AllowedPattern"].startswith("^(arn:aws")
    assert parameters["OpenAiApiKeyParameter"]["AllowedPattern"].startswith("^(/")


def test_an_alarm_watches_the_functions_errors(translated: dict[str, Any]) -> None:
    alarms = {a["Properties"]["MetricName"]: a["Properties"]
              for a in _resources(translated, "AWS::CloudWatch::Alarm").values()}
    properties = alarms["Errors"]

    assert (properties["Namespace"], properties["MetricName"]) == ("AWS/Lambda", "Errors")
    assert properties["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "InferenceFunction"}}]


def test_an_alarm_watches_the_handled_5xx_the_function_counts(translated: dict[str, Any]) -> None:
    """Issue 24 #3: a handled 5xx is a normal return for Lambda, so AWS/Lambda Errors never saw one and the
    ServerErrors EMF metric had no alarm. The alarm must name the metric exactly as Powertools emits it:
    the function's namespace, and its service name as the only dimension
    (tests/cloud_functions/test_handler.py pins what a 5xx emits)."""
    environment = translated["Resources"]["InferenceFunction"]["Properties"]["Environment"]["Variables"]
    (alarm,) = [a["Properties"] for a in _resources(translated, "AWS::CloudWatch::Alarm").values()
                if a["Properties"]["MetricName"] == "ServerErrors"]

    assert alarm["Namespace"] == environment["POWERTOOLS_METRICS_NAMESPACE"]
    assert alarm["Dimensions"] == [{"Name": "service", "Value": environment["POWERTOOLS_SERVICE_NAME"]}]
    assert environment["POWERTOOLS_SERVICE_NAME"] == {"Ref": "AWS::StackName"}  # one per stack: no cross-talk
    assert (alarm["Statistic"], alarm["ComparisonOperator"], alarm["Threshold"]) == (
        "Sum", "GreaterThanOrEqualToThreshold", 1)
    assert alarm["TreatMissingData"] == "notBreaching"


# API Gateway's REST integration limit: past it the caller gets a 504 while the function runs on.
INTEGRATION_LIMIT_S = 29


def test_the_function_times_out_before_api_gateway_gives_up(translated: dict[str, Any]) -> None:
    """Issue 24 #3: Timeout 30 outlived API Gateway's 29 s, so a slow call was charged after its caller
    had already been told 504."""
    timeout = translated["Resources"]["InferenceFunction"]["Properties"]["Timeout"]
    llm = load_template()["Parameters"]["LlmTimeoutSeconds"]

    assert timeout < INTEGRATION_LIMIT_S
    assert llm["MaxValue"] + 3 <= timeout  # an LLM call leaves the ledger's writes a few seconds


def _render(response_template: str, *, response_type: str, message: str, request_id: str) -> Any:
    """What API Gateway makes of a gateway response's mapping template ($context variables substituted;
    messageString is the message as a quoted JSON string)."""
    return json.loads(
        response_template.replace("$context.error.messageString", json.dumps(message))
        .replace("$context.error.responseType", response_type)
        .replace("$context.requestId", request_id)
    )


@pytest.mark.parametrize(
    ("response_type", "message"),
    [
        ("INVALID_API_KEY", "Forbidden"),
        ("MISSING_AUTHENTICATION_TOKEN", "Missing Authentication Token"),
        ("INVALID_SIGNATURE", 'The request signature we calculated does not match the signature you provided.'),
        ("ACCESS_DENIED", "User: arn:aws:sts::123456789012:assumed-role/edge/d1 is not authorized"),
        ("THROTTLED", "Too Many Requests"),
        ("QUOTA_EXCEEDED", "Limit Exceeded"),
        ("REQUEST_TOO_LARGE", "Request Too Long"),
        ("INTEGRATION_TIMEOUT", "Endpoint request timed out"),
        ("INTEGRATION_FAILURE", "Internal server error"),
    ],
)
def test_api_gateways_own_errors_carry_the_projects_error_body(
    translated: dict[str, Any], response_type: str, message: str
) -> None:
    """Issue 24 #3: without GatewayResponses, API Gateway's 403/429/504 said {"message": ...}."""
    (api,) = _resources(translated, "AWS::ApiGateway::RestApi").values()
    responses = api["Properties"]["Body"]["x-amazon-apigateway-gateway-responses"]
    default = "DEFAULT_4XX" if response_type not in ("INTEGRATION_TIMEOUT", "INTEGRATION_FAILURE") else "DEFAULT_5XX"
    response = responses.get(response_type, responses[default])

    body = _render(response["responseTemplates"]["application/json"], response_type=response_type,
                   message=message, request_id="c6af9ac6-7b61-11e6-9a41-93e8deadbeef")

    error = ErrorBody.from_json(body)
    assert (error.code, error.message) == (response_type, message)
    assert error.details == {"request_id": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"}
    assert "statusCode" not in response  # API Gateway's own status stays (403, 429, 413, 504)


def test_api_access_logs_carry_the_request_id_and_no_api_key(translated: dict[str, Any]) -> None:
    (stage,) = _resources(translated, "AWS::ApiGateway::Stage").values()
    setting = stage["Properties"]["AccessLogSetting"]
    log_group = translated["Resources"]["ApiAccessLogGroup"]["Properties"]

    assert setting["DestinationArn"] == {"Fn::GetAtt": ["ApiAccessLogGroup", "Arn"]}
    assert log_group["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    fields = json.loads(setting["Format"])  # every value a quoted $context variable: one JSON line
    assert fields["request_id"] == "$context.requestId"  # the function logs it as correlation_id
    assert {"status", "error_type", "integration_latency_ms", "ip"} <= set(fields)
    assert "$context.identity.apiKey" not in setting["Format"].replace("$context.identity.apiKeyId", "")


@pytest.mark.parametrize(("logs_role", "creates"), [("Create", True), ("Existing", False)])
def test_api_gateways_logs_role_is_set_once_per_account_and_the_api_waits_for_it(
    translated: dict[str, Any], logs_role: str, creates: bool
) -> None:
    stack = configured(translated, ApiGatewayLogsRole=logs_role)

    assert bool(_resources(stack, "AWS::ApiGateway::Account")) is creates
    assert stack["Resources"]["InferenceApi"]["DependsOn"] == "ApiGatewayLogsReady"
    ready = stack["Resources"]["ApiGatewayLogsReady"]["Metadata"]
    assert ready["AccountLogsRole"] == ({"Ref": "ApiGatewayAccount"} if creates else "")


def test_parameters_and_outputs(translated: dict[str, Any]) -> None:
    assert {"Stage", "DefaultDailyBudget", "CostPerRequest", "CostPerText", "ModelUri", "AuthMode",
            "InferenceBackend", "LlmModelId"} <= set(translated["Parameters"])
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
