"""The Greengrass v2 component recipe for the edge container, built from a few checked options.

The component runs the edge image (pulled from ECR by `aws.greengrass.DockerApplicationManager`, with
credentials from `aws.greengrass.TokenExchangeService`) through `launch_edge.py`, a small S3 artifact that
asks `aws.greengrass.SecretManager` (IPC `GetSecretValue`) for the cloud API key and then becomes
`docker run`. Every value an operator may change per deployment is component configuration; the
lifecycle hands it to the launcher as environment variables (`Setenv`), never through a shell command
line, and the launcher passes the EDGE_* ones (and the key) to the container by name only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from modelpack.policy_names import POLICY_NAMES

RECIPE_FORMAT_VERSION = "2020-01-25"
DEFAULT_COMPONENT_NAME = "com.example.EdgeInference"
LAUNCHER_FILE = "launch_edge.py"
AWSIOTSDK = "awsiotsdk==1.31.0"  # the launcher's only dependency, installed on the device in a venv
ARCHITECTURES = ("aarch64", "amd64")  # Greengrass's names for linux/arm64 and linux/amd64
CONTAINER_USER = "10001:10001"  # the Dockerfile's USER

# Component configuration key -> the variable the launcher reads. EDGE_* go to the container as they
# are (edge_container/settings.py reads them); GG_EDGE_* are the launcher's own.
CONFIGURATION_ENV = {
    "CloudUrl": "EDGE_CLOUD_URL",
    "S3LatestUri": "EDGE_S3_LATEST_URI",
    "ListenAddress": "EDGE_HOST",
    "Port": "EDGE_PORT",
    "Policy": "EDGE_POLICY",
    "LogLevel": "EDGE_LOG_LEVEL",
    "ReloadPollSeconds": "EDGE_RELOAD_POLL_S",
    "ModelDir": "GG_EDGE_MODEL_DIR",
    "CloudApiKeySecretArn": "GG_EDGE_SECRET_ARN",
}

_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
                     r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
                     r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$")
_REPO_PATH = r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
_REFERENCE = r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})|@(?P<digest>sha256:[a-f0-9]{64}))?"
_PRIVATE_ECR = re.compile(rf"^\d{{12}}\.dkr\.ecr\.[a-z]{{2}}(?:-[a-z]+)+-\d\.amazonaws\.com(?:\.cn)?/{_REPO_PATH}"
                          rf"{_REFERENCE}$")
_PUBLIC_ECR = re.compile(rf"^public\.ecr\.aws/{_REPO_PATH}{_REFERENCE}$")
_SECRET_ARN = re.compile(r"^arn:aws(?:-cn|-us-gov)?:secretsmanager:[a-z]{2}(?:-[a-z]+)+-\d:\d{12}:secret:"
                         r"[A-Za-z0-9/_+=.@-]+$")
_S3_ARTIFACT = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/(?:[^\s]+/)?" + re.escape(LAUNCHER_FILE) + "$")
_S3_LATEST = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/.+\.json$")  # the edge's S3_URI (edge_container/_env.py)
_COMPONENT_NAME = re.compile(r"^[a-zA-Z0-9-_.]{1,128}$")  # the recipe schema's pattern and length
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


class RecipeError(ValueError):
    """An option that cannot make a valid component; the message names the option."""


@dataclass(frozen=True, slots=True)
class RecipeOptions:
    image_uri: str  # <account>.dkr.ecr.<region>.amazonaws.com/<repo>:<tag> or @sha256:<digest>
    version: str  # the component version (semantic)
    launcher_uri: str  # s3://<bucket>/.../launch_edge.py: where `infra/greengrass/launch_edge.py` is uploaded
    secret_arn: str  # the Secrets Manager secret holding the cloud API key
    component_name: str = DEFAULT_COMPONENT_NAME
    publisher: str = "edge-cloud-inference"
    cloud_url: str = ""  # empty: edge only until a deployment sets CloudUrl
    model_dir: str = "/var/lib/edge-inference/models"  # the device's artifact folder, mounted read-only
    s3_latest_uri: str = ""
    listen_address: str = "127.0.0.1"  # the device's own clients; 0.0.0.0 exposes it to the network
    port: int = 8080
    policy: str = "threshold"
    log_level: str = "info"
    reload_poll_s: float = 10.0
    container_name: str = "edge-inference"
    architectures: tuple[str, ...] = field(default=ARCHITECTURES)

    @property
    def image(self) -> str:
        return self.image_uri.removeprefix("docker:")


def check(options: RecipeOptions) -> None:
    """Raise RecipeError for the first option that is wrong."""
    image = options.image
    if not (_PRIVATE_ECR.match(image) or _PUBLIC_ECR.match(image)):
        raise RecipeError(f"--image-uri {options.image_uri!r} is not an ECR image URI: expected "
                          "<account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag> (or @sha256:<digest>, "
                          "or public.ecr.aws/<alias>/<repository>:<tag>)")
    match = _PRIVATE_ECR.match(image) or _PUBLIC_ECR.match(image)
    assert match is not None
    if not (match["tag"] or match["digest"]):
        raise RecipeError(f"--image-uri {options.image_uri!r} has no tag or digest: a component version must "
                          "name one image")
    if match["tag"] == "latest":
        raise RecipeError(f"--image-uri {options.image_uri!r}: 'latest' moves; a component version must name one "
                          "image (use a version tag or @sha256:<digest>)")
    if not _SEMVER.match(options.version) or len(options.version) > 64:
        raise RecipeError(f"--version {options.version!r} is not a semantic version (MAJOR.MINOR.PATCH, e.g. 1.4.0)")
    if not _COMPONENT_NAME.match(options.component_name) or options.component_name.startswith("aws.greengrass."):
        raise RecipeError(f"--component-name {options.component_name!r}: letters, digits, '-', '_' and '.' only, "
                          "at most 128, and not under aws.greengrass. (AWS's own components)")
    if not _S3_ARTIFACT.match(options.launcher_uri):
        raise RecipeError(f"--launcher-uri {options.launcher_uri!r} must be s3://<bucket>/<key>/{LAUNCHER_FILE} "
                          "(the lifecycle runs the artifact by that file name)")
    if not _SECRET_ARN.match(options.secret_arn):
        raise RecipeError(f"--secret-arn {options.secret_arn!r} is not a Secrets Manager secret ARN "
                          "(arn:aws:secretsmanager:<region>:<account>:secret:<name>)")
    if options.cloud_url and not re.match(r"^https://[^/?#\s]+(/[^?#\s]*)?$", options.cloud_url):
        raise RecipeError(f"--cloud-url {options.cloud_url!r} must be an https:// base URL without query or "
                          "fragment (the API key travels with every call)")
    if not PurePosixPath(options.model_dir).is_absolute():
        raise RecipeError(f"--model-dir {options.model_dir!r} must be an absolute path on the device")
    if options.s3_latest_uri and not _S3_LATEST.match(options.s3_latest_uri):
        raise RecipeError(f"--s3-latest-uri {options.s3_latest_uri!r} must be s3://<bucket>/<prefix>/latest.json")
    if not 1 <= options.port <= 65535:
        raise RecipeError(f"--port {options.port} must be in [1, 65535]")
    if options.policy not in POLICY_NAMES:
        raise RecipeError(f"--policy {options.policy!r} must be one of {', '.join(POLICY_NAMES)}")
    if options.log_level not in _LOG_LEVELS:
        raise RecipeError(f"--log-level {options.log_level!r} must be one of {', '.join(_LOG_LEVELS)}")
    if options.reload_poll_s < 0:
        raise RecipeError(f"--reload-poll-s {options.reload_poll_s} must be >= 0")
    if not re.match(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$", options.container_name):
        raise RecipeError(f"--container-name {options.container_name!r} is not a Docker container name")
    unknown = set(options.architectures) - set(ARCHITECTURES)
    if not options.architectures or unknown:
        raise RecipeError(f"--architectures: choose from {', '.join(ARCHITECTURES)} (the image's platforms); "
                          f"got {', '.join(options.architectures) or 'none'}")


def default_configuration(options: RecipeOptions) -> dict[str, Any]:
    """What a deployment may override (configuration merge). Numbers are strings: Greengrass stores JSON
    numbers as floats, and the launcher passes values on as text anyway."""
    return {
        "CloudUrl": options.cloud_url,
        "CloudApiKeySecretArn": options.secret_arn,
        "ModelDir": options.model_dir,
        "S3LatestUri": options.s3_latest_uri,
        "ListenAddress": options.listen_address,
        "Port": str(options.port),
        "Policy": options.policy,
        "LogLevel": options.log_level,
        "ReloadPollSeconds": f"{options.reload_poll_s:g}",
        "accessControl": {
            "aws.greengrass.SecretManager": {
                f"{options.component_name}:secrets:1": {
                    "policyDescription": "Read the edge's cloud API key, and no other secret.",
                    "operations": ["aws.greengrass#GetSecretValue"],
                    "resources": [options.secret_arn],
                },
            },
        },
    }


def _lifecycle(options: RecipeOptions) -> dict[str, Any]:
    venv = "{work:path}/ipc-venv"
    marker = f"{venv}/.{AWSIOTSDK.replace('==', '-')}"
    return {
        "Install": {
            # The launcher needs the Greengrass IPC client; the container does not (it gets the key as an
            # environment variable), so it is installed here, once per pin, not in the image.
            "Skipif": f"exists {marker}",
            "Script": f"python3 -m venv {venv} && {venv}/bin/python -m pip install --quiet "
                      f"--disable-pip-version-check '{AWSIOTSDK}' && touch {marker}",
            "Timeout": 600,
        },
        "Run": {
            "Script": f"exec {venv}/bin/python -u {{artifacts:path}}/{LAUNCHER_FILE}",
            "Setenv": {
                "GG_EDGE_IMAGE": options.image,
                "GG_EDGE_CONTAINER": options.container_name,
                "GG_EDGE_USER": CONTAINER_USER,
                **{env: f"{{configuration:/{key}}}" for key, env in CONFIGURATION_ENV.items()},
            },
        },
        "Shutdown": {
            "Script": f"docker stop --time 15 {options.container_name} >/dev/null 2>&1 || true",
            "Timeout": 30,
        },
    }


def build_recipe(options: RecipeOptions) -> dict[str, Any]:
    check(options)
    artifacts = [
        {"URI": f"docker:{options.image}"},
        {"URI": options.launcher_uri, "Permission": {"Read": "OWNER", "Execute": "NONE"}},
    ]
    return {
        "RecipeFormatVersion": RECIPE_FORMAT_VERSION,
        "ComponentName": options.component_name,
        "ComponentVersion": options.version,
        "ComponentDescription": "Edge-cloud inference: the int8 LiteRT edge service in Docker; escalates the "
                                "texts it is unsure of to the cloud tier.",
        "ComponentPublisher": options.publisher,
        "ComponentDependencies": {
            "aws.greengrass.DockerApplicationManager": {"VersionRequirement": "~2.0.0", "DependencyType": "HARD"},
            "aws.greengrass.TokenExchangeService": {"VersionRequirement": "^2.0.0", "DependencyType": "HARD"},
            "aws.greengrass.SecretManager": {"VersionRequirement": "^2.1.0", "DependencyType": "HARD"},
        },
        "ComponentConfiguration": {"DefaultConfiguration": default_configuration(options)},
        "Manifests": [
            {"Name": f"linux-{arch}", "Platform": {"os": "linux", "architecture": arch},
             "Lifecycle": _lifecycle(options), "Artifacts": artifacts}
            for arch in options.architectures
        ],
    }


def lower_keys(node: Any) -> Any:
    """Keys lower-cased at every level: Greengrass matches recipe keys case-insensitively and the schema
    spells them in lower case (the GDK CLI validates the same way)."""
    if isinstance(node, dict):
        return {str(k).lower(): lower_keys(v) for k, v in node.items()}
    if isinstance(node, list):
        return [lower_keys(v) for v in node]
    return node
