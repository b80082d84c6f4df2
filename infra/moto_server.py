"""A serialised moto server, and the template's tables and bucket created in it.

moto is not thread-safe: concurrent requests to the stock (threaded) server or to the in-process mock can
let conditional writes through that DynamoDB would refuse, so a concurrency test against them proves
nothing. This server handles ONE request at a time (werkzeug without threads), which is what makes
conditional writes behave like DynamoDB's under concurrent clients (~150-200 requests/s here).

    python -m infra.moto_server --port 5000          # serve until Ctrl-C; prints "READY http://host:port"

    with SerialisedMotoServer() as server:           # tests / benchmarks: subprocess on a free port
        client = boto3.client("dynamodb", endpoint_url=server.endpoint_url, ...)

`create_template_resources` creates the DynamoDB tables and S3 buckets of template.yaml from the template's
own resource definitions (key schema, attributes, TTL, PITR, bucket settings): one source of truth.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_PATH = REPO_ROOT / "template.yaml"
READY_PREFIX = "READY "


# --------------------------------------------------------------------------- the server


def serve(
    host: str = "127.0.0.1", port: int = 5000, *, on_ready: Callable[[str], None] | None = None
) -> None:
    """Run a single-threaded moto server until interrupted. `port=0` binds a free port; `on_ready` gets
    the endpoint URL once the socket is listening."""
    import logging

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    from infra import moto_rollback

    # `make_server` is what `werkzeug.serving.run_simple(..., threaded=False)` runs, minus the reloader;
    # it also tells us the port when 0 was asked for.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request is noise here
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server(host, port, app, threaded=False, processes=1, request_handler=MotoRequestHandler)
    bound_host, bound_port = server.server_address[:2]
    if on_ready is not None:
        on_ready(f"http://{bound_host}:{bound_port}")
    try:
        with moto_rollback.installed():  # one request at a time: item-level transaction backups are safe
            server.serve_forever()
    finally:
        server.server_close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.moto_server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000, help="0 picks a free port (default: %(default)s)")
    args = parser.parse_args(argv)
    # Stop cleanly on SIGTERM (what SerialisedMotoServer.stop sends) and on Ctrl-C, even when started in the
    # background by a shell that ignores SIGINT for background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        serve(args.host, args.port, on_ready=lambda url: print(READY_PREFIX + url, flush=True))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"error: cannot serve on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


class SerialisedMotoServer:
    """Context manager running `python -m infra.moto_server` in a subprocess on a free port.

    A subprocess, not a thread: the server's moto state stays apart from any in-process `mock_aws`, and
    its request handling does not compete with the clients for this process's GIL.
    """

    def __init__(self, *, host: str = "127.0.0.1", start_timeout_s: float = 30.0) -> None:
        self._host = host
        self._start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[str] | None = None
        self._log: Any = None
        self.endpoint_url = ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> str:
        if self._process is not None:
            raise RuntimeError("server already started")
        # stderr goes to a file, not a pipe: an unread pipe fills up and blocks the server.
        self._log = tempfile.TemporaryFile(mode="w+", prefix="moto-server-", suffix=".log")  # noqa: SIM115
        python_path = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(python_path)}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "infra.moto_server", "--host", self._host, "--port", "0"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        stdout = self._process.stdout
        assert stdout is not None
        threading.Thread(target=_drain, args=(stdout, lines), daemon=True).start()
        deadline = time.monotonic() + self._start_timeout_s
        while True:
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                line = ""
            if line.startswith(READY_PREFIX):
                self.endpoint_url = line[len(READY_PREFIX) :].strip()
                return self.endpoint_url
            if self._process.poll() is not None or time.monotonic() > deadline:
                log = self._read_log()
                self.stop()
                raise RuntimeError(f"moto server did not start:\n{log}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if process is not None and process.stdout is not None:
            process.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def client(self, service: str, *, max_pool_connections: int = 32) -> Any:
        """A boto3 client of this server: fake credentials, us-east-1, generous timeouts (one request at a
        time means queueing), and no retries, so a timeout shows up instead of being silently resent."""
        import boto3
        from botocore.config import Config

        if not self.endpoint_url:
            raise RuntimeError("server not started")
        config = Config(
            connect_timeout=10,
            read_timeout=60,
            retries={"mode": "standard", "max_attempts": 1},
            max_pool_connections=max_pool_connections,
        )
        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=config,
        )

    def reset(self) -> None:
        """Forget every resource the server holds (moto's /moto-api/reset)."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def _read_log(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return str(self._log.read())[-4000:]


def _drain(stream: Any, lines: queue.Queue[str]) -> None:
    """Forward the server's stdout for its whole life (ends at EOF), so the pipe never fills up."""
    for line in stream:
        lines.put(line)


# --------------------------------------------------------------------------- template resources


class _CfnLoader(yaml.SafeLoader):
    """A YAML loader that reads CloudFormation's short-form intrinsics (!Ref, !Sub, !GetAtt ...) as the
    long form (`{"Ref": ...}`, `{"Fn::Sub": ...}`), so a template can be read without cfn-lint."""


def _construct_intrinsic(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, yaml.MappingNode)
        value = loader.construct_mapping(node, deep=True)
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{tag_suffix}": value}


_CfnLoader.add_multi_constructor("!", _construct_intrinsic)


def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        template: dict[str, Any] = yaml.load(handle, Loader=_CfnLoader)
    return template


@dataclass(frozen=True, slots=True)
class TemplateResources:
    """Physical names of the created resources, by the template's logical id."""

    tables: Mapping[str, str]
    buckets: Mapping[str, str]


def create_template_resources(
    *,
    dynamodb_client: Any,
    s3_client: Any,
    prefix: str = "local",
    template: Mapping[str, Any] | None = None,
) -> TemplateResources:
    """Create every AWS::DynamoDB::Table and AWS::S3::Bucket of the template, named `<prefix>-<logical id>`
    (lower-cased for buckets). Only literal properties are supported: an intrinsic in a property that
    shapes a table (keys, billing) raises ValueError rather than being guessed."""
    template = load_template() if template is None else template
    tables: dict[str, str] = {}
    buckets: dict[str, str] = {}
    for logical_id, resource in template.get("Resources", {}).items():
        kind, properties = resource.get("Type"), resource.get("Properties", {})
        if kind == "AWS::DynamoDB::Table":
            name = f"{prefix}-{logical_id}"
            _create_table(dynamodb_client, name, logical_id, properties)
            tables[logical_id] = name
        elif kind == "AWS::S3::Bucket":
            name = f"{prefix}-{logical_id}".lower()
            _create_bucket(s3_client, name, logical_id, properties)
            buckets[logical_id] = name
    return TemplateResources(tables=tables, buckets=buckets)


def _literal(logical_id: str, name: str, value: Any) -> Any:
    if isinstance(value, dict) and any(key == "Ref" or key.startswith("Fn::") for key in value):
        raise ValueError(f"{logical_id}.{name} uses an intrinsic function; it cannot be created locally")
    return value


def _create_table(client: Any, name: str, logical_id: str, properties: Mapping[str, Any]) -> None:
    request: dict[str, Any] = {
        "TableName": name,
        "KeySchema": _literal(logical_id, "KeySchema", properties["KeySchema"]),
        "AttributeDefinitions": _literal(
            logical_id, "AttributeDefinitions", properties["AttributeDefinitions"]
        ),
        "BillingMode": _literal(logical_id, "BillingMode", properties.get("BillingMode", "PROVISIONED")),
    }
    if request["BillingMode"] == "PROVISIONED":
        request["ProvisionedThroughput"] = _literal(
            logical_id, "ProvisionedThroughput", properties["ProvisionedThroughput"]
        )
    for index_kind in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
        if index_kind in properties:
            request[index_kind] = _literal(logical_id, index_kind, properties[index_kind])
    client.create_table(**request)
    client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 50})
    ttl = properties.get("TimeToLiveSpecification")
    if ttl and ttl.get("Enabled"):
        client.update_time_to_live(
            TableName=name,
            TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True},
        )
    pitr = properties.get("PointInTimeRecoverySpecification")
    if pitr and pitr.get("PointInTimeRecoveryEnabled"):
        client.update_continuous_backups(
            TableName=name,
            PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
        )


def _create_bucket(client: Any, name: str, logical_id: str, properties: Mapping[str, Any]) -> None:
    client.create_bucket(Bucket=name)  # us-east-1: no LocationConstraint
    if "VersioningConfiguration" in properties:
        status = _literal(logical_id, "VersioningConfiguration", properties["VersioningConfiguration"])[
            "Status"
        ]
        client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": status})
    if "BucketEncryption" in properties:
        cfn_rules = _literal(logical_id, "BucketEncryption", properties["BucketEncryption"])[
            "ServerSideEncryptionConfiguration"
        ]
        # CloudFormation and the S3 API spell the default-encryption rule differently.
        rules = [
            {
                "ApplyServerSideEncryptionByDefault": rule["ServerSideEncryptionByDefault"],
                **({"BucketKeyEnabled": rule["BucketKeyEnabled"]} if "BucketKeyEnabled" in rule else {}),
            }
            for rule in cfn_rules
        ]
        client.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": rules})
    if "PublicAccessBlockConfiguration" in properties:
        client.put_public_access_block(
            Bucket=name,
            PublicAccessBlockConfiguration=_literal(
                logical_id, "PublicAccessBlockConfiguration", properties["PublicAccessBlockConfiguration"]
            ),
        )


if __name__ == "__main__":
    raise SystemExit(main())
