"""infra/greengrass: the recipe the generator writes is valid against Greengrass's own recipe JSON Schema
(keys lower-cased, as the GDK CLI validates), the validator rejects broken recipes, the configuration it
hands the container is one edge_container.settings accepts, and the device launcher keeps the API key off
every command line."""

from __future__ import annotations

import copy
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from edge_container.settings import Settings
from infra.greengrass import launch_edge
from infra.greengrass.__main__ import main as cli
from infra.greengrass.recipe import CONFIGURATION_ENV, RecipeError, RecipeOptions, build_recipe, lower_keys
from modelpack.policy_names import POLICY_NAMES

REPO = Path(__file__).resolve().parents[2]
GREENGRASS = REPO / "infra" / "greengrass"
SCHEMA_PATH = GREENGRASS / "recipe_schema.json"
SHARED_SCHEMA = REPO.parent / "shared" / "schemas" / "greengrass_recipe_schema.json"
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/edge-inference:1.4.0"
SECRET = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:edge-cloud-api-key-AbCdEf"
LAUNCHER = "s3://my-greengrass-artifacts/com.example.EdgeInference/1.4.0/launch_edge.py"
CLOUD = "https://abcdef1234.execute-api.eu-west-1.amazonaws.com/dev"
EXAMPLE_ARGS = ["--image-uri", IMAGE, "--version", "1.4.0", "--secret-arn", SECRET, "--launcher-uri", LAUNCHER,
                "--cloud-url", CLOUD]
API_KEY = "k" * 40


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def options(**overrides: Any) -> RecipeOptions:
    return RecipeOptions(**{"image_uri": IMAGE, "version": "1.4.0", "launcher_uri": LAUNCHER, "secret_arn": SECRET,
                            "cloud_url": CLOUD, **overrides})


def errors(validator: jsonschema.Draft7Validator, recipe: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(lower_keys(recipe))]


# --- the schema -------------------------------------------------------------------------------------------
def test_the_vendored_schema_is_the_shared_copy_byte_for_byte() -> None:
    if not SHARED_SCHEMA.is_file():
        pytest.skip(f"no {SHARED_SCHEMA} beside this checkout to compare with")
    assert SCHEMA_PATH.read_bytes() == SHARED_SCHEMA.read_bytes()


# --- valid recipes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [
    {},
    {"cloud_url": "", "s3_latest_uri": "s3://edge-models/models/latest.json"},
    {"image_uri": "docker:123456789012.dkr.ecr.us-east-1.amazonaws.com/team/edge@sha256:" + "a" * 64},
    {"image_uri": "public.ecr.aws/my-alias/edge-inference:2.0.0-rc.1", "version": "2.0.0-rc.1"},
    {"architectures": ("aarch64",), "listen_address": "0.0.0.0", "port": 9080, "policy": "margin"},
], ids=["default", "s3-no-cloud", "digest", "public-ecr", "arm64-only"])
def test_generated_recipes_are_valid_against_the_greengrass_schema(validator: jsonschema.Draft7Validator,
                                                                   overrides: dict[str, Any]) -> None:
    assert errors(validator, build_recipe(options(**overrides))) == []


def test_the_schema_only_accepts_the_recipe_with_its_keys_lower_cased(validator: jsonschema.Draft7Validator) -> None:
    # The schema spells every key in lower case and forbids others: validating the recipe as written (in
    # Greengrass's documented CamelCase) fails, which is why the keys are folded first, as Greengrass does.
    recipe = build_recipe(options())
    assert not validator.is_valid(recipe)
    assert validator.is_valid(lower_keys(recipe))


# --- the validator catches broken recipes ------------------------------------------------------------------
def _broken(mutate: Any) -> dict[str, Any]:
    recipe = copy.deepcopy(build_recipe(options()))
    mutate(recipe)
    return recipe


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda r: r.pop("ComponentVersion"), "'componentversion' is a required property"),
    (lambda r: r.pop("Manifests"), "'manifests' is a required property"),
    (lambda r: r.update(RecipeFormatVersion="2021-01-01"), "is not one of ['2020-01-25']"),
    (lambda r: r.update(ComponentName="com.example/edge"), "does not match"),
    (lambda r: r.update(Deployment={"rollout": "all"}), "Additional properties are not allowed"),
    (lambda r: r["ComponentDependencies"]["aws.greengrass.SecretManager"].pop("VersionRequirement"),
     "'versionrequirement' is a required property"),
    (lambda r: r["ComponentDependencies"]["aws.greengrass.SecretManager"].update(DependencyType="MAYBE"),
     "does not match"),
    (lambda r: r["Manifests"][0]["Artifacts"][0].pop("URI"), "'uri' is a required property"),
    (lambda r: r["Manifests"][0]["Artifacts"][1].update(Permission={"Read": "EVERYONE"}), "does not match"),
], ids=["no-version", "no-manifests", "format-version", "component-name", "unknown-key", "dependency-version",
        "dependency-type", "artifact-uri", "artifact-permission"])
def test_the_schema_rejects_a_broken_recipe(validator: jsonschema.Draft7Validator, mutate: Any, expected: str) -> None:
    found = errors(validator, _broken(mutate))
    assert any(expected in e for e in found), found


# --- what the recipe says -----------------------------------------------------------------------------------
def test_the_recipe_pulls_the_image_from_ecr_and_reads_the_key_through_secret_manager() -> None:
    recipe = build_recipe(options())
    assert {"aws.greengrass.DockerApplicationManager", "aws.greengrass.TokenExchangeService",
            "aws.greengrass.SecretManager"} <= set(recipe["ComponentDependencies"])
    config = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    policy = config["accessControl"]["aws.greengrass.SecretManager"]["com.example.EdgeInference:secrets:1"]
    assert policy["operations"] == ["aws.greengrass#GetSecretValue"] and policy["resources"] == [SECRET]
    assert config["CloudUrl"] == CLOUD and config["CloudApiKeySecretArn"] == SECRET
    assert [m["Platform"] for m in recipe["Manifests"]] == [{"os": "linux", "architecture": "aarch64"},
                                                           {"os": "linux", "architecture": "amd64"}]
    for manifest in recipe["Manifests"]:
        assert [a["URI"] for a in manifest["Artifacts"]] == [f"docker:{IMAGE}", LAUNCHER]
        run = manifest["Lifecycle"]["Run"]
        assert run["Setenv"]["GG_EDGE_IMAGE"] == IMAGE
        # Configuration reaches the launcher as environment, never spliced into the shell script.
        assert "{configuration:" not in run["Script"] + manifest["Lifecycle"]["Install"]["Script"]
        assert {v for k, v in run["Setenv"].items() if "{configuration:" in v} == {
            f"{{configuration:/{key}}}" for key in CONFIGURATION_ENV}


def test_every_configuration_key_the_lifecycle_reads_has_a_default() -> None:
    recipe = build_recipe(options())
    config = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    used = set(re.findall(r"\{configuration:/([A-Za-z0-9]+)\}", json.dumps(recipe["Manifests"])))
    assert used == set(CONFIGURATION_ENV) and used <= set(config)


def test_the_container_gets_edge_variables_that_settings_reads_and_accepts(tmp_path: Path) -> None:
    recipe = build_recipe(options(s3_latest_uri="s3://edge-models/models/latest.json"))
    config = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    setenv = recipe["Manifests"][0]["Lifecycle"]["Run"]["Setenv"]
    environ = {**{k: v for k, v in setenv.items() if "{configuration:" not in v},
               **{env: config[key] for key, env in CONFIGURATION_ENV.items()}, "GG_EDGE_MODEL_DIR": str(tmp_path)}
    env = launch_edge.container_environment(environ, fetch=lambda arn: API_KEY)
    names = set(re.findall(r'"(EDGE_[A-Z0-9_]+)"', (REPO / "edge_container" / "settings.py").read_text()))
    argv = launch_edge.docker_argv(env)
    passed = {argv[i + 1].split("=")[0] for i, a in enumerate(argv) if a == "--env"}
    assert passed <= names, passed - names
    settings = Settings.from_env({k: v for k, v in env.items() if k in passed} | {
        "EDGE_MODEL_DIR": "/models", "EDGE_S3_CACHE_DIR": "/var/cache/edge-models"})
    assert settings.cloud_url == CLOUD and settings.cloud_api_key == API_KEY
    assert settings.host == "127.0.0.1" and settings.port == 8080 and settings.reload_poll_s == 10.0
    assert settings.s3_latest_uri == "s3://edge-models/models/latest.json"


def test_the_container_runs_as_the_images_user_on_its_port() -> None:
    dockerfile = (REPO / "edge_container" / "Dockerfile").read_text()
    user = re.search(r"^USER (\d+)$", dockerfile, re.MULTILINE)
    port = re.search(r"^EXPOSE (\d+)$", dockerfile, re.MULTILINE)
    assert user and port
    recipe = build_recipe(options())
    assert recipe["Manifests"][0]["Lifecycle"]["Run"]["Setenv"]["GG_EDGE_USER"] == f"{user[1]}:{user[1]}"
    assert recipe["ComponentConfiguration"]["DefaultConfiguration"]["Port"] == port[1]


def test_the_committed_example_recipe_is_what_the_generator_writes(tmp_path: Path) -> None:
    assert cli([*EXAMPLE_ARGS, "--out", str(tmp_path / "recipe.json")]) == 0
    assert (tmp_path / "recipe.json").read_text() == (GREENGRASS / "recipe.example.json").read_text()


# --- bad input ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("overrides", "names"), [
    ({"version": "1.4"}, "--version"),
    ({"version": "v1.4.0"}, "--version"),
    ({"version": "01.4.0"}, "--version"),
    ({"image_uri": "edge-inference:1.4.0"}, "--image-uri"),
    ({"image_uri": "docker.io/library/python:3.12"}, "--image-uri"),
    ({"image_uri": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/edge-inference"}, "no tag or digest"),
    ({"image_uri": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/edge-inference:latest"}, "'latest' moves"),
    ({"image_uri": "12345.dkr.ecr.eu-west-1.amazonaws.com/edge-inference:1.0.0"}, "--image-uri"),
    ({"secret_arn": "edge-api-key"}, "--secret-arn"),
    ({"launcher_uri": "s3://bucket/launcher.py"}, "--launcher-uri"),
    ({"cloud_url": "http://api.example.com/dev"}, "--cloud-url"),
    ({"model_dir": "models"}, "--model-dir"),
    ({"s3_latest_uri": "s3://bucket/latest"}, "--s3-latest-uri"),
    ({"component_name": "aws.greengrass.Edge"}, "--component-name"),
    ({"policy": "smart"}, "--policy"),
    ({"architectures": ("arm",)}, "--architectures"),
])
def test_bad_options_are_refused_naming_the_option(overrides: dict[str, Any], names: str) -> None:
    with pytest.raises(RecipeError, match=re.escape(names)):
        build_recipe(options(**overrides))


def test_the_cli_writes_a_valid_recipe_and_refuses_bad_input_with_exit_2(
        tmp_path: Path, validator: jsonschema.Draft7Validator) -> None:
    out = tmp_path / "recipe.json"
    ok = subprocess.run([sys.executable, "-m", "infra.greengrass", *EXAMPLE_ARGS, "--out", str(out)], cwd=REPO,
                        capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0, ok.stderr
    assert errors(validator, json.loads(out.read_text())) == []
    bad = subprocess.run([sys.executable, "-m", "infra.greengrass", *EXAMPLE_ARGS, "--version", "1.4",
                          "--out", str(tmp_path / "bad.json")], cwd=REPO, capture_output=True, text=True, timeout=60,
                         check=False)
    assert bad.returncode == 2 and "error: --version '1.4' is not a semantic version" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad.json").exists()


# --- the launcher ---------------------------------------------------------------------------------------------
def launcher_environ(model_dir: Path, **extra: str) -> dict[str, str]:
    recipe = build_recipe(options())
    config = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    setenv = recipe["Manifests"][0]["Lifecycle"]["Run"]["Setenv"]
    environ = {k: v for k, v in setenv.items() if "{configuration:" not in v}
    environ.update({env: config[key] for key, env in CONFIGURATION_ENV.items()})
    environ.update({"GG_EDGE_MODEL_DIR": str(model_dir), "PATH": "/usr/bin:/bin",
                    "AWS_CONTAINER_AUTHORIZATION_TOKEN": "tes-token-value", **extra})
    return environ


def test_the_launcher_passes_the_key_by_name_and_runs_a_locked_down_container(tmp_path: Path) -> None:
    calls: list[tuple[str, list[str], dict[str, str]]] = []
    asked: list[str] = []

    def fetch(arn: str) -> str:
        asked.append(arn)
        return json.dumps({"api_key": API_KEY})

    code = launch_edge.main([], environ=launcher_environ(tmp_path), fetch=fetch,
                            execvpe=lambda f, a, e: calls.append((f, a, e)), run=lambda *a, **k: None)
    assert code == 0 and asked == [SECRET]
    [(file, argv, env)] = calls
    assert file == "docker" and argv[:3] == ["docker", "run", "--rm"] and argv[-1] == IMAGE
    assert env["EDGE_CLOUD_API_KEY"] == API_KEY and env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] == "tes-token-value"
    assert not any(API_KEY in a or "tes-token-value" in a for a in argv)
    pairs = list(itertools.pairwise(argv))
    assert ("--env", "EDGE_CLOUD_API_KEY") in pairs and ("--env", "AWS_CONTAINER_AUTHORIZATION_TOKEN") in pairs
    assert ("--env", "EDGE_S3_LATEST_URI") not in pairs  # empty in the configuration: left unset
    assert ("--user", "10001:10001") in pairs and "--read-only" in argv and ("--cap-drop", "ALL") in pairs
    assert ("--mount", f"type=bind,source={tmp_path},target=/models,readonly") in pairs


@pytest.mark.parametrize(("extra", "message"), [
    ({"GG_EDGE_SECRET_ARN": ""}, "CloudApiKeySecretArn is empty"),
    ({"GG_EDGE_MODEL_DIR": "{configuration:/ModelDir}"}, "lacks the keys behind GG_EDGE_MODEL_DIR"),
    ({"GG_EDGE_MODEL_DIR": "relative/models"}, "must be an absolute path"),
])
def test_the_launcher_stops_with_one_line_on_bad_configuration(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: dict[str, str], message: str) -> None:
    code = launch_edge.main([], environ=launcher_environ(tmp_path, **extra), fetch=lambda arn: API_KEY,
                            execvpe=lambda *a: pytest.fail("must not start docker"), run=lambda *a, **k: None)
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


@pytest.mark.parametrize("secret", ["", "  ", '{"key": "x"}', '{"api_key": ""}', "{not json"])
def test_an_unusable_secret_is_refused(secret: str) -> None:
    with pytest.raises(launch_edge.LaunchError):
        launch_edge.api_key(secret)


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_the_generator_offers_every_edge_policy(policy: str) -> None:
    recipe = build_recipe(options(policy=policy))
    assert recipe["ComponentConfiguration"]["DefaultConfiguration"]["Policy"] == policy
    assert Settings.from_env({"EDGE_POLICY": policy}).policy == policy  # what the container does with it
