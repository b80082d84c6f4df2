"""SigV4 as API Gateway checks it (template.yaml's AuthMode=Iam), for the local stack.

    credentials = load_iam_credentials(os.environ)   # $LOCAL_IAM_CREDENTIALS: KEY_ID:SECRET:ARN,...
    credential = verify_sigv4(method, path, query, headers, body, {c.access_key_id: c for c in credentials},
                              region="us-east-1", now=datetime.now(UTC))
    event["requestContext"]["identity"].update(credential.identity())

An unsigned request is `Refusal` MISSING_AUTHENTICATION_TOKEN; one whose signature does not verify (unknown
key, wrong signature, more than 5 minutes off, another region or service) INVALID_SIGNATURE, each with
API Gateway's message. The credentials are local stand-ins for the devices' IAM credentials, read from the
environment only (never a command line, which `ps` shows to every user).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from infra.api_gateway import Refusal

IAM_CREDENTIALS_ENV = "LOCAL_IAM_CREDENTIALS"


@dataclass(frozen=True, slots=True)
class IamCredential:
    access_key_id: str
    secret_access_key: str
    principal_arn: str  # what API Gateway puts in identity.userArn, e.g. an assumed-role session's ARN

    def identity(self) -> dict[str, Any]:
        """The requestContext.identity fields API Gateway fills for a verified SigV4 caller."""
        account = self.principal_arn.split(":")[4] if self.principal_arn.count(":") >= 5 else None
        resource = self.principal_arn.rsplit(":", 1)[-1]
        kind, _, rest = resource.partition("/")
        unique = hashlib.sha256(self.principal_arn.encode()).hexdigest()[:16].upper()
        caller = f"AROA{unique}:{rest.rsplit('/', 1)[-1]}" if kind == "assumed-role" else f"AIDA{unique}"
        return {"apiKey": None, "apiKeyId": None, "accessKey": self.access_key_id, "accountId": account,
                "caller": caller, "user": caller, "userArn": self.principal_arn}


def parse_iam_credentials(entries: Sequence[str]) -> list[IamCredential]:
    """ACCESS_KEY_ID:SECRET:PRINCIPAL_ARN entries; blanks and # comments skipped. Never echoes an entry."""
    credentials = []
    for n, entry in enumerate((e.strip() for e in entries), start=1):
        if not entry or entry.startswith("#"):
            continue
        key_id, secret, arn = (entry.split(":", 2) + ["", ""])[:3]
        if not key_id or not secret or not arn.startswith("arn:"):
            raise ValueError(f"entry {n}: not ACCESS_KEY_ID:SECRET_ACCESS_KEY:PRINCIPAL_ARN")
        credentials.append(IamCredential(key_id, secret, arn))
    return credentials


def load_iam_credentials(environ: Mapping[str, str]) -> list[IamCredential]:
    """$LOCAL_IAM_CREDENTIALS (comma-separated): local stand-ins for the devices' IAM credentials."""
    try:
        credentials = parse_iam_credentials(environ.get(IAM_CREDENTIALS_ENV, "").split(","))
    except ValueError as exc:
        raise ValueError(f"${IAM_CREDENTIALS_ENV}: {exc}") from None
    if not credentials:
        raise ValueError(f"${IAM_CREDENTIALS_ENV}: no credentials (ACCESS_KEY_ID:SECRET:PRINCIPAL_ARN)")
    return credentials


_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)"
    r"/aws4_request,\s*SignedHeaders=(?P<signed>[a-z0-9;-]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)
_SKEW = timedelta(minutes=5)  # API Gateway refuses a signature more than 5 minutes off its clock


def verify_sigv4(
    method: str,
    path: str,
    query: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    credentials: Mapping[str, IamCredential],
    *,
    region: str,
    now: datetime,
    service: str = "execute-api",
) -> IamCredential:
    """The credential whose SigV4 signature `headers` carry, recomputed over this very request (the
    signed headers, the path, the query and the body's hash) with botocore's signer; `Refusal` otherwise."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    lowered: dict[str, str] = {}
    for name, value in headers:
        lowered[name.lower()] = value
    authorization = lowered.get("authorization")
    if not authorization:
        raise Refusal("MISSING_AUTHENTICATION_TOKEN", 403, "Missing Authentication Token")
    match = _AUTHORIZATION.match(authorization)
    if match is None:
        raise Refusal("INVALID_SIGNATURE", 403, "Authorization header requires 'Credential', 'Signature' and "
                      "'SignedHeaders' parameters.")
    credential = credentials.get(match["key"])
    if credential is None:
        raise Refusal("INVALID_SIGNATURE", 403, "The security token included in the request is invalid.")
    amz_date = lowered.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise Refusal("INVALID_SIGNATURE", 403, "Authorization header requires existence of either a "
                      "'X-Amz-Date' or a 'Date' header.") from None
    if abs(now - signed_at) > _SKEW:
        raise Refusal("INVALID_SIGNATURE", 403, f"Signature expired: {amz_date} is now earlier than "
                      f"{(now - _SKEW).strftime('%Y%m%dT%H%M%SZ')}")
    if (match["date"], match["region"], match["service"]) != (amz_date[:8], region, service):
        raise Refusal("INVALID_SIGNATURE", 403, "Credential should be scoped to a valid region and service.")
    signed = match["signed"].split(";")
    if "host" not in signed or any(name not in lowered for name in signed):
        raise Refusal("INVALID_SIGNATURE", 403, "The request signature we calculated does not match the "
                      "signature you provided.")
    url = f"http://{lowered['host']}{path}" + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=url, data=body, headers={name: lowered[name] for name in signed})
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(credential.access_key_id, credential.secret_access_key), service, region)
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    if not hmac.compare_digest(expected, match["signature"]):
        raise Refusal("INVALID_SIGNATURE", 403, "The request signature we calculated does not match the "
                      "signature you provided. Check your AWS Secret Access Key and signing method.")
    return credential
