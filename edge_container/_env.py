"""The edge's reader of EDGE_* values: the shared `modelpack.env.EnvReader`, plus the edge's bounds (worded
`must be in [low, high]`) and its own kinds (URLs, secrets from a variable or a file, client keys, S3 URIs).

`edge_container.settings` hands it the environment; every failure is a `ConfigurationError` naming the key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from edge_container.auth import ClientKey
from edge_container.errors import ConfigurationError
from modelpack.env import EnvReader

CLIENT_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
MIN_KEY_CHARS = 16
S3_PREFIX = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(?:/(?P<prefix>.*))?$")
S3_URI = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])/(?P<key>.+\.json)$")


class EdgeEnv(EnvReader):
    """The shared reader, plus the edge's bounds (worded `must be in [low, high]`) and its own kinds."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        super().__init__(environ, ConfigurationError)

    def integer(self, key: str, default: int, *, low: int, high: int | None = None) -> int:
        value = self.int_or_none(key)
        if value is None:
            return default
        if value < low or (high is not None and value > high):
            raise self._out_of_range(key, low, high)
        return value

    def number(self, key: str, default: float, *, low: float, high: float | None = None) -> float:
        value = self.opt_number(key, low=low, high=high)
        return default if value is None else value

    def opt_number(self, key: str, *, low: float, high: float | None = None) -> float | None:
        value = self.float_or_none(key)
        if value is not None and not (low <= value <= (high if high is not None else float("inf"))):
            raise self._out_of_range(key, low, high)
        return value

    def _out_of_range(self, key: str, low: float, high: float | None) -> Exception:
        return self.bad(key, self.raw(key), f"must be in [{low}, {high if high is not None else '∞'}]")

    def opt_url(self, key: str) -> str | None:
        raw = self.raw(key)
        if not raw:
            return None
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise self.bad(key, raw, "must be an http(s) base URL without query or fragment")
        return raw

    def client_keys(self, key: str, file_key: str) -> tuple[ClientKey, ...]:
        """`client_id:key` entries, comma-separated in `key` or one per line in the file `file_key` names
        (blank lines and # comments skipped). A file keeps keys out of the process environment."""
        raw, path = self.raw(key), self.raw(file_key)
        if raw and path:
            raise ConfigurationError(f"set {key} or {file_key}, not both", key=key)
        if path:
            try:
                lines = Path(path).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigurationError(f"{file_key}={path!r} cannot be read: {exc}", key=file_key) from None
            entries, where = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")], file_key
        else:
            entries, where = [e.strip() for e in raw.split(",") if e.strip()], key
        keys: list[ClientKey] = []
        for n, entry in enumerate(entries, 1):
            client_id, sep, secret = entry.partition(":")
            client_id, secret = client_id.strip(), secret.strip()
            # The message names the entry by position and id only: a key must never reach a log.
            if not sep or not CLIENT_ID.match(client_id):
                raise ConfigurationError(f"{where}: entry {n} is not client_id:key (id of letters, digits, . _ -)",
                                         key=where)
            if len(secret) < MIN_KEY_CHARS:
                raise ConfigurationError(f"{where}: the key of client {client_id!r} is shorter than "
                                         f"{MIN_KEY_CHARS} characters", key=where)
            if any(k.client_id == client_id for k in keys):
                raise ConfigurationError(f"{where}: client {client_id!r} appears twice", key=where)
            if any(k.key == secret for k in keys):
                raise ConfigurationError(f"{where}: client {client_id!r} reuses another client's key", key=where)
            keys.append(ClientKey(client_id, secret))
        return tuple(keys)

    def secret(self, key: str, file_key: str) -> str | None:
        """A secret from `key`, or from the file `file_key` names (its content, stripped): a file keeps it out
        of the process environment (a Kubernetes Secret volume, a Greengrass-written file). Not both."""
        raw, path = self.opt_text(key), self.opt_text(file_key)
        if raw and path:
            raise ConfigurationError(f"set {key} or {file_key}, not both", key=key)
        if path is None:
            return raw
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"{file_key}={path!r} cannot be read: {type(exc).__name__}", key=file_key) \
                from None
        if not value:
            raise ConfigurationError(f"{file_key}={path!r} is empty", key=file_key)
        return value

    def opt_s3_uri(self, key: str) -> str | None:
        raw = self.raw(key)
        if raw and not S3_URI.match(raw):
            raise self.bad(key, raw, "must be s3://<bucket>/<prefix>/latest.json")
        return raw or None
