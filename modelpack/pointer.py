"""`latest.json`: the publish pointer, which names the version both runtimes should serve.

`model_build publish` uploads a version's files under `<prefix>/<model_version>/`, its manifest last, then
writes `<prefix>/latest.json` with `Pointer.to_json`; the edge polls it and the cloud follows it at cold
start, both through `Pointer.from_json`. Stdlib only, like the manifest: one definition, one test of it.

    {"model_version": "v7", "manifest_key": "models/v7/manifest.json",
     "manifest_sha256": "<SHA-256 of those manifest bytes>", "published_at": "2026-12-01T10:00:00+00:00"}

A version name is also a folder name (the runtimes' download caches) and an S3 key part: `VERSION_PATTERN`.

A staged rollout (`model_build publish --canary 0.1`) adds a `canary` object naming the new version and the
fraction of the fleet that serves it:

    {..., "canary": {"model_version": "v8", "manifest_key": "models/v8/manifest.json",
                     "manifest_sha256": "...", "fraction": 0.1, "published_at": "..."}}

`Pointer.for_device(device_id)` is what one device serves: the canary when the device's stable hash of
(canary version, device id) falls below the fraction, else the pointer's own version. The hash is uniform and
stable: the same device gets the same answer on every poll, raising the fraction only adds devices, and each
rollout (another version) picks another cohort. Readers that know nothing of canaries (an older edge, the
cloud) ignore the key and serve the stable version.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from modelpack._fields import is_sha256
from modelpack.errors import ChecksumMismatch, ManifestError
from modelpack.manifest import MANIFEST_NAME, json_object

POINTER_NAME = "latest.json"
VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
VERSION_RULE = "1 to 128 letters, digits, '.', '_', '+' or '-', the first a letter or digit"


class PointerError(ManifestError):
    """A pointer (`latest.json`, or a pin written like one) is malformed; the message names each bad field."""


def is_valid_version(version: object) -> bool:
    """True when `version` is a safe model version name (`VERSION_PATTERN`): no path separator, no `..`."""
    return isinstance(version, str) and VERSION_PATTERN.fullmatch(version) is not None


@dataclass(frozen=True)
class Canary:
    """The version a fraction of the fleet serves during a staged rollout."""

    model_version: str
    manifest_key: str
    manifest_sha256: str
    fraction: float  # in (0, 1]
    published_at: str | None = None

    def __post_init__(self) -> None:
        problems = _problems(asdict(self), require_sha256=True, where="canary.")
        if problems:
            raise PointerError(f"pointer: {'; '.join(problems)}")

    def includes(self, device_id: str) -> bool:
        """Whether `device_id` is in this rollout's cohort (stable for a given canary version)."""
        digest = hashlib.sha256(f"{self.model_version}\x1f{device_id}".encode("utf-8", "surrogatepass")).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.fraction


@dataclass(frozen=True)
class Pointer:
    model_version: str
    manifest_key: str  # the S3 key of the version's manifest.json
    manifest_sha256: str | None = None  # publish always writes it; a hand-written pin may leave it out
    published_at: str | None = None  # ISO 8601, UTC
    canary: Canary | None = None  # a staged rollout in progress

    def __post_init__(self) -> None:
        fields = {k: v for k, v in asdict(self).items() if k != "canary"}
        problems = _problems(fields, require_sha256=False)
        if self.canary is not None and self.canary.model_version == self.model_version:
            problems.append("canary.model_version must differ from model_version")
        if problems:
            raise PointerError(f"pointer: {'; '.join(problems)}")

    def to_json(self) -> str:
        """The text publish writes (absent fields left out)."""
        return json.dumps(_without_none(asdict(self)), indent=2) + "\n"

    def for_device(self, device_id: str) -> Pointer:
        """The pointer one device follows: the canary's version if the device is in its cohort, else this
        pointer's own; never with a canary itself."""
        c = self.canary
        if c is not None and c.includes(device_id):
            return Pointer(c.model_version, c.manifest_key, c.manifest_sha256, c.published_at)
        return Pointer(self.model_version, self.manifest_key, self.manifest_sha256, self.published_at)

    def stable(self) -> Pointer:
        """This pointer without its canary (what `abort` writes)."""
        return Pointer(self.model_version, self.manifest_key, self.manifest_sha256, self.published_at)

    @classmethod
    def from_json(cls, data: bytes | str, *, where: str = POINTER_NAME, require_sha256: bool = True) -> Pointer:
        """Parse a pointer; `PointerError` (a `ManifestError`) naming `where` and every bad field otherwise.
        Keys it does not know are ignored, so a later publish may add some. `require_sha256`: refuse a
        pointer without `manifest_sha256` (the edge compares it with the manifest it serves)."""
        try:
            raw = json_object(data, where)
        except ManifestError as exc:
            raise PointerError(str(exc)) from None
        problems = _problems(raw, require_sha256=require_sha256)
        canary = raw.get("canary")
        if canary is not None:
            problems += _problems(canary, require_sha256=True, where="canary.") if isinstance(canary, dict) \
                else [f"canary must be an object, got {canary!r}"]
        if problems:
            raise PointerError(f"{where}: {'; '.join(problems)}")
        try:
            return cls(raw["model_version"], raw["manifest_key"], raw.get("manifest_sha256"), raw.get("published_at"),
                       None if canary is None else Canary(canary["model_version"], canary["manifest_key"],
                                                          canary["manifest_sha256"], float(canary["fraction"]),
                                                          canary.get("published_at")))
        except PointerError as exc:
            raise PointerError(f"{where}: {str(exc).removeprefix('pointer: ')}") from None

    def key_of(self, name: str) -> str:
        """The S3 key of `name`, a file of the version the pointer names (it lies beside the manifest)."""
        return self.manifest_key[: -len(MANIFEST_NAME)] + name

    def check_manifest(self, data: bytes, where: str) -> None:
        """Raise `ChecksumMismatch` naming `where` unless `data`, the manifest fetched from `manifest_key`,
        is the one the pointer was written for (when it says: `manifest_sha256` may be absent)."""
        actual = hashlib.sha256(data).hexdigest()
        if self.manifest_sha256 is not None and actual != self.manifest_sha256:
            raise ChecksumMismatch(f"{where}: SHA-256 {actual} differs from the pointer's manifest_sha256 "
                                   f"{self.manifest_sha256}")


def _problems(raw: Mapping[str, Any], *, require_sha256: bool, where: str = "") -> list[str]:
    """What is wrong with the fields of a pointer (or, with `where="canary."`, of its canary), each in a few
    words naming it; empty when nothing is."""
    checks: list[tuple[str, str, Callable[[Any], bool], bool]] = [
        ("model_version", f"be {VERSION_RULE}", is_valid_version, True),
        ("manifest_key", f"name a {MANIFEST_NAME}", _is_manifest_key, True),
        ("manifest_sha256", "be a lower-case hex SHA-256", is_sha256, require_sha256),
        ("published_at", "be an ISO 8601 time", _is_iso_time, False),
    ]
    if where == "canary.":
        checks.append(("fraction", "be a number in (0, 1]", _is_fraction, True))
    problems = []
    for key, rule, valid, required in checks:
        value = raw.get(key)
        if key not in raw and required:
            problems.append(f"{where}{key} is missing")
        elif (value is not None or required) and not valid(value):
            problems.append(f"{where}{key} must {rule}, got {value!r}")
    return problems


def _is_fraction(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0.0 < value <= 1.0


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    return value


def _is_manifest_key(key: object) -> bool:
    return isinstance(key, str) and (key == MANIFEST_NAME or key.endswith("/" + MANIFEST_NAME))


def _is_iso_time(value: object) -> bool:
    try:
        return isinstance(value, str) and bool(datetime.fromisoformat(value))
    except ValueError:
        return False
