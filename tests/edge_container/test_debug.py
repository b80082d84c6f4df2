"""The remote debugging listener over mutual TLS, against the real listener on loopback, with a CA, server
and client certificates made here (`cryptography`): no certificate, another CA's, or an expired one is
refused in the handshake; the operator's is served, with every secret redacted."""

from __future__ import annotations

import datetime as dt
import io
import ipaddress
import json
import logging
import ssl
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_container.errors import ConfigurationError
from edge_container.settings import Settings
from tests.edge_container.conftest import CLIENT_KEY, UNSURE, FakeCloud, edge_settings, serve_edge

NOW = dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


class CA:
    def __init__(self, folder: Path, name: str) -> None:
        self.folder, self.name = folder, name
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                    critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.pem = folder / f"{name}.pem"
        self.pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, common_name: str, *, server: bool = False, expired: bool = False) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        start, end = (NOW - dt.timedelta(days=10), NOW - dt.timedelta(days=1)) if expired else \
            (NOW - dt.timedelta(hours=1), NOW + dt.timedelta(days=7))
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                   .issuer_name(self.cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                         else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        stem = self.folder / f"{self.name}-{common_name}"
        cert_path, key_path = stem.with_suffix(".crt"), stem.with_suffix(".key")
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)
        return Issued(cert_path, key_path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("pki")
    operators, device, stranger = CA(folder, "operators"), CA(folder, "devices"), CA(folder, "stranger")
    return {"operators": operators, "device_ca": device, "server": device.issue("edge-1", server=True),
            "operator": operators.issue("alice"), "expired": operators.issue("bob", expired=True),
            "stranger": stranger.issue("mallory")}


@pytest.fixture(scope="module")
def debug_edge(pki: dict[str, object], tiny_artifact: Path, fake_cloud: FakeCloud) -> Iterator[tuple[int, object]]:
    server, operators = pki["server"], pki["operators"]
    assert isinstance(server, Issued) and isinstance(operators, CA)
    settings = edge_settings(tiny_artifact, cloud_url=fake_cloud.url, cloud_api_key="cloud-secret-0123456789",
                             admin_token="admin-secret-0123456789", debug_port=0, debug_tls_cert=server.cert,
                             debug_tls_key=server.key, debug_tls_client_ca=operators.pem)
    with serve_edge(settings) as (client, stack):
        client.post("/v1/predict", json={"text": UNSURE})  # something in the metrics
        # A careless log line holding two secrets: the listener must never show them.
        logging.getLogger("edge_container.test").warning("calling with cloud-secret-0123456789 / %s", CLIENT_KEY)
        assert stack.debug_port
        yield stack.debug_port, pki


def connect(port: int, pki: dict[str, object], client: Issued | None) -> httpx.Client:
    device_ca = pki["device_ca"]
    assert isinstance(device_ca, CA)
    context = ssl.create_default_context(cafile=str(device_ca.pem))  # the client checks the device, too
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    return httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=context, timeout=10)


def refused(port: int, pki: dict[str, object], client: Issued | None) -> bool:
    with connect(port, pki, client) as http:
        try:
            http.get("/debug/model")
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
            return True  # TLS 1.3 reports a refused client certificate on the first read
    return False


def test_no_client_certificate_is_refused(debug_edge: tuple[int, dict[str, object]]) -> None:
    port, pki = debug_edge
    assert refused(port, pki, None)


def test_a_certificate_of_another_ca_is_refused(debug_edge: tuple[int, dict[str, object]]) -> None:
    port, pki = debug_edge
    assert refused(port, pki, pki["stranger"])  # type: ignore[arg-type]


def test_an_expired_certificate_of_the_right_ca_is_refused(debug_edge: tuple[int, dict[str, object]]) -> None:
    port, pki = debug_edge
    assert refused(port, pki, pki["expired"])  # type: ignore[arg-type]


def test_the_operators_certificate_is_served_everything_redacted(debug_edge: tuple[int, dict[str, object]]) -> None:
    port, pki = debug_edge
    assert not refused(port, pki, pki["operator"])  # type: ignore[arg-type]
    with connect(port, pki, pki["operator"]) as http:  # type: ignore[arg-type]
        model = http.get("/debug/model").json()
        config = http.get("/debug/config").json()
        logs = http.get("/debug/logs", params={"lines": 50}).json()["lines"]
        metrics = http.get("/debug/metrics").text
        bundle = http.get("/debug/bundle")
        too_many = http.get("/debug/logs", params={"lines": 5000})
        reloaded = http.post("/debug/reload", json={"source": "folder"})
    assert model["current"]["model_version"] == "tiny-1" and model["history"][0]["event"] == "serving"
    assert config["cloud_api_key"] == config["admin_token"] == "[redacted]"
    assert config["client_keys"] == [{"client_id": "tests", "key": "[redacted]"}]
    assert any("calling with [redacted] / [redacted]" in line for line in logs)
    assert "edge_texts_total" in metrics and too_many.status_code == 400
    assert reloaded.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(bundle.content), mode="r:gz") as tar:
        names = set(tar.getnames())
        everything = b"".join(tar.extractfile(m).read() for m in tar.getmembers())  # type: ignore[union-attr]
    assert names == {"logs.txt", "model.json", "config.json", "metrics.txt", "system.json"}
    assert json.loads(tar_member(bundle.content, "config.json"))["device"]
    for secret in (b"cloud-secret-0123456789", b"admin-secret-0123456789", CLIENT_KEY.encode()):
        assert secret not in everything


def tar_member(content: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as tar:
        member = tar.extractfile(name)
        assert member is not None
        return member.read()


def test_the_listener_needs_its_certificates(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="EDGE_DEBUG_TLS_CERT must name a readable PEM file"):
        Settings.from_env({"EDGE_DEBUG_PORT": "8443"})
    (tmp_path / "c.pem").write_text("x")
    with pytest.raises(ConfigurationError, match="EDGE_DEBUG_TLS_CLIENT_CA"):
        Settings.from_env({"EDGE_DEBUG_PORT": "8443", "EDGE_DEBUG_TLS_CERT": str(tmp_path / "c.pem"),
                           "EDGE_DEBUG_TLS_KEY": str(tmp_path / "c.pem")})
    assert Settings.from_env({}).debug_port is None
