"""Typed access to the fields of a parsed JSON document, with errors that name the full path of the bad one.

Private to modelpack: `modelpack.manifest` reads the manifest with `Reader`; `modelpack.pointer` checks the
pointer's digest with `is_sha256`, the rule the manifest's own digests follow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from modelpack.errors import ManifestError

_HEX = frozenset("0123456789abcdef")


def is_sha256(value: Any) -> bool:
    """True for a SHA-256 written as the manifests write it: 64 lower-case hex digits."""
    return isinstance(value, str) and len(value) == 64 and all(c in _HEX for c in value)


class Reader:
    """Typed field access with errors that name the full path of the bad field."""

    def __init__(self, raw: Any, where: str) -> None:
        if not isinstance(raw, Mapping):
            raise ManifestError(f"{where} must be an object")
        self.raw, self.where = raw, where

    def required(self, key: str) -> Any:
        """The value at `key`, which must be there (JSON null counts as there)."""
        if key not in self.raw:
            raise ManifestError(f"{self.where}.{key} is missing")
        return self.raw[key]

    def fail(self, key: str, what: str) -> ManifestError:
        """The error to raise: the value at `key` is not `what` it must be."""
        return ManifestError(f"{self.where}.{key} must be {what}, got {self.raw.get(key)!r}")

    def sub(self, key: str) -> Reader:
        return Reader(self.required(key), f"{self.where}.{key}")

    def str(self, key: str) -> str:
        value = self.required(key)
        if not isinstance(value, str) or not value:
            raise self.fail(key, "a non-empty string")
        return value

    def opt_str(self, key: str) -> str | None:
        return None if self.raw.get(key) is None else self.str(key)

    def int(self, key: str, *, minimum: int | None = None) -> int:
        value = self.required(key)
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
            raise self.fail(key, "an integer" + ("" if minimum is None else f" >= {minimum}"))
        return value

    def opt_int(self, key: str) -> int | None:
        return None if self.raw.get(key) is None else self.int(key)

    def float(self, key: str, *, low: float | None = None, high: float | None = None,
              low_open: bool = False) -> float:
        """A finite number in [low, high] (or (low, high] with `low_open`); NaN and infinities never pass."""
        value = self.required(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, "a number")
        below = low is not None and (value <= low if low_open else value < low)
        if not math.isfinite(value) or below or (high is not None and value > high):
            raise self.fail(key, "a finite number" + span(low, high, low_open))
        return float(value)

    def opt_float(self, key: str, **bounds: float) -> float | None:
        return None if self.raw.get(key) is None else self.float(key, **bounds)

    def bool(self, key: str) -> bool:
        value = self.required(key)
        if not isinstance(value, bool):
            raise self.fail(key, "true or false")
        return value

    def choice(self, key: str, allowed: frozenset[str]) -> str:
        value = self.str(key)
        if value not in allowed:
            raise self.fail(key, f"one of {sorted(allowed)}")
        return value

    def str_list(self, key: str) -> list[str]:
        value = self.required(key)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(key, "a list of non-empty strings")
        return value

    def shape(self, key: str) -> tuple[int, ...]:
        value = self.required(key)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and (v > 0 or v == -1) for v in value):
            raise self.fail(key, "a list of positive integers or -1")
        return tuple(value)

    def sha256(self, key: str) -> str:
        value = self.str(key)
        if not is_sha256(value):
            raise self.fail(key, "a lower-case hex SHA-256")
        return value

    def file(self, key: str) -> str:
        value = self.str(key)
        if "/" in value or "\\" in value or value.startswith("."):
            raise self.fail(key, "a plain file name inside the artifact folder")
        return value

    def opt_mapping(self, key: str) -> Mapping[str, Any]:
        value = self.raw.get(key) or {}
        if not isinstance(value, Mapping):
            raise self.fail(key, "an object")
        return dict(value)



def span(low: float | None, high: float | None, low_open: bool) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>' if low_open else '>='} {low}"
    if low is None:
        return f" <= {high}"
    return f" in {'(' if low_open else '['}{low}, {high}]"


def require_finite(node: Any, where: str) -> None:
    """Free-form sections too: json.loads reads NaN and Infinity, which no later reader can rely on."""
    if isinstance(node, float) and not math.isfinite(node):
        raise ManifestError(f"{where} must be a finite number, got {node!r}")
    if isinstance(node, Mapping):
        for key, value in node.items():
            require_finite(value, f"{where}.{key}")
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            require_finite(value, f"{where}[{i}]")
