"""Runs on the Greengrass core device as the component's Run step: fetch the cloud API key, become `docker run`.

The recipe's lifecycle (infra/greengrass/recipe.py) sets the environment; this reads it:

    GG_EDGE_IMAGE, GG_EDGE_CONTAINER, GG_EDGE_USER   the image (pulled by DockerApplicationManager), the
                                                     container's name and uid:gid
    GG_EDGE_MODEL_DIR                                the device's artifact folder, mounted read-only at /models
    GG_EDGE_SECRET_ARN                               the secret (deployed by aws.greengrass.SecretManager) whose
                                                     SecretString is the key, or a JSON object with "api_key"
    EDGE_*                                           passed to the container as they are

The key is asked for over Greengrass IPC (GetSecretValue; the recipe's accessControl allows that one
secret), put in this process's environment and handed to the container by name (`-e EDGE_CLOUD_API_KEY`):
it never appears on a command line, in `ps`, or on disk. The same holds for the token exchange service's
credentials (AWS_CONTAINER_*), which the edge's S3 polling and SigV4 signing use. Then this process
becomes the docker client (exec), so Greengrass supervises the container's lifetime and stop signal.

Standard library only, plus awsiotsdk for the IPC call (imported only here, installed by the recipe).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence

CONTAINER_MODEL_DIR = "/models"
CONTAINER_CACHE_DIR = "/var/cache/edge-models"  # the Dockerfile's EDGE_S3_CACHE_DIR, owned by its user
IPC_TIMEOUT_S = 10.0
# Greengrass sets these for a component that depends on the token exchange service; the AWS SDK's
# container credential provider reads them. AWS_REGION too, for the S3 client.
FORWARDED_AWS = ("AWS_REGION", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN")


class LaunchError(Exception):
    """A configuration problem on the device; printed as one line (Greengrass logs it) with exit code 2."""


def docker_argv(environ: Mapping[str, str]) -> list[str]:
    """The `docker run` command for `environ`. Values of EDGE_* and AWS_* variables are not in it: only
    their names (docker then reads each value from its own environment)."""
    image, name = _required(environ, "GG_EDGE_IMAGE"), _required(environ, "GG_EDGE_CONTAINER")
    model_dir = _required(environ, "GG_EDGE_MODEL_DIR")
    if not os.path.isabs(model_dir):
        raise LaunchError(f"ModelDir {model_dir!r} must be an absolute path")
    fixed = ("EDGE_MODEL_DIR", "EDGE_S3_CACHE_DIR")  # container paths, set below
    forwarded = sorted(k for k in environ if k.startswith("EDGE_") and k not in fixed)
    forwarded += [k for k in FORWARDED_AWS if k in environ]
    return [
        "docker", "run", "--rm", "--name", name,
        # host network: the device's clients reach it on EDGE_HOST:EDGE_PORT (loopback by default), and the
        # token exchange service listens on the device's loopback
        "--network", "host",
        "--user", environ.get("GG_EDGE_USER", "10001:10001"),
        "--read-only", "--tmpfs", "/tmp:rw,nosuid,nodev,size=64m",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--mount", f"type=bind,source={model_dir},target={CONTAINER_MODEL_DIR},readonly",
        # a named volume starts as a copy of the image's folder, so it belongs to the image's user
        "--mount", f"type=volume,source={name}-model-cache,target={CONTAINER_CACHE_DIR}",
        "--env", f"EDGE_MODEL_DIR={CONTAINER_MODEL_DIR}", "--env", f"EDGE_S3_CACHE_DIR={CONTAINER_CACHE_DIR}",
        *[arg for key in forwarded for arg in ("--env", key)],
        image,
    ]


def api_key(secret_string: str) -> str:
    """The key in a SecretString: the string itself, or the "api_key" field of a JSON object (the
    Secrets Manager console's key/value form)."""
    text = secret_string.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text).get("api_key")
        except (json.JSONDecodeError, AttributeError):
            value = None
        if not isinstance(value, str) or not value.strip():
            raise LaunchError('the secret is a JSON object without a non-empty string "api_key"')
        text = value.strip()
    if not text:
        raise LaunchError("the secret is empty")
    return text


def ipc_secret(secret_id: str) -> str:
    """The secret's SecretString, from the Greengrass nucleus over IPC."""
    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

    client = GreengrassCoreIPCClientV2()
    try:
        response = client.get_secret_value_async(secret_id=secret_id).result(timeout=IPC_TIMEOUT_S)
    finally:
        client.close()
    value = response.secret_value.secret_string if response.secret_value else None
    if value is None:
        raise LaunchError(f"secret {secret_id} has no SecretString (binary secrets are not supported)")
    return str(value)


def container_environment(environ: Mapping[str, str], fetch: Callable[[str], str] = ipc_secret) -> dict[str, str]:
    """`environ` plus EDGE_CLOUD_API_KEY from the secret; empty EDGE_* values are dropped (unset)."""
    unset = sorted(k for k, v in environ.items()
                   if k.startswith(("EDGE_", "GG_EDGE_")) and v.startswith("{configuration:"))
    if unset:  # Greengrass leaves a recipe variable as it is when the configuration has no such key
        raise LaunchError(f"the component configuration lacks the keys behind {', '.join(unset)}")
    env = {k: v for k, v in environ.items() if not (k.startswith("EDGE_") and not v.strip())}
    secret_arn = environ.get("GG_EDGE_SECRET_ARN", "").strip()
    if secret_arn:
        env["EDGE_CLOUD_API_KEY"] = api_key(fetch(secret_arn))
    elif env.get("EDGE_CLOUD_URL"):
        raise LaunchError("CloudUrl is set but CloudApiKeySecretArn is empty: the edge has no key to call it with")
    return env


def _required(environ: Mapping[str, str], key: str) -> str:
    value = environ.get(key, "").strip()
    if not value:
        raise LaunchError(f"{key} is not set (the component's recipe sets it from its configuration)")
    return value


def main(argv: Sequence[str] | None = None, *, environ: Mapping[str, str] | None = None,
         fetch: Callable[[str], str] = ipc_secret,
         execvpe: Callable[[str, list[str], dict[str, str]], object] = os.execvpe,
         run: Callable[..., object] = subprocess.run) -> int:
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        env = container_environment(os.environ if environ is None else environ, fetch)
        argv_ = docker_argv(env)
    except LaunchError as exc:
        print(f"launch_edge: error: {exc}", file=sys.stderr)
        return 2
    # A container left by a crash would hold the name; --rm removes it on a clean stop only.
    run(["docker", "rm", "--force", env["GG_EDGE_CONTAINER"]], capture_output=True, timeout=60, check=False)
    print(f"launch_edge: {' '.join(argv_)}", file=sys.stderr, flush=True)  # names only: no value is in it
    execvpe(argv_[0], argv_, env)
    return 0  # only when execvpe is a test double


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
