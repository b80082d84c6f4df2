"""Typed reads of environment variables, shared by the edge's and the cloud's settings modules.

`EnvReader` reads one mapping (`os.environ`, or a dict in tests). A value is stripped of surrounding
white space, and an empty value counts as unset. A bad value raises the error its caller supplies
(`error(message, key=...)`, each tier's own `ConfigurationError`), so this module depends on neither
tier and each keeps its error type and its HTTP mapping. Messages name the variable and quote the value:
`environment variable EDGE_PORT='http' is not an integer`.

Bounds are left to the callers: each tier words its own range messages, and clients of each rely on them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Protocol, TypeVar

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
T = TypeVar("T")


class ErrorFactory(Protocol):
    """What a reader raises: `ConfigurationError(message, key=key)` of either tier fits."""

    def __call__(self, message: str, *, key: str) -> Exception: ...


class EnvReader:
    def __init__(self, environ: Mapping[str, str], error: ErrorFactory) -> None:
        self._environ = environ
        self._error = error

    def raw(self, key: str) -> str:
        """The stripped value, "" when unset."""
        return self._environ.get(key, "").strip()

    def error(self, message: str, key: str) -> Exception:
        return self._error(message, key=key)

    def bad(self, key: str, raw: str, what: str) -> Exception:
        """The error for a value that is set but unusable: `environment variable KEY='raw' <what>`."""
        return self.error(f"environment variable {key}={raw!r} {what}", key)

    def text(self, key: str, default: str | None = None) -> str:
        """The value, else `default`; with no default a missing value is an error."""
        value = self.raw(key)
        if value:
            return value
        if default is None:
            raise self.error(f"environment variable {key} is missing or empty", key)
        return default

    def opt_text(self, key: str) -> str | None:
        return self.raw(key) or None

    def choice(self, key: str, allowed: tuple[str, ...], *, default: str) -> str:
        value = self.text(key, default)
        if value not in allowed:
            raise self.bad(key, value, f"must be one of {', '.join(allowed)}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        raw = self.raw(key).lower()
        if not raw:
            return default
        if raw in TRUE_WORDS:
            return True
        if raw in FALSE_WORDS:
            return False
        raise self.bad(key, raw, "is not a boolean (true/false)")

    def int_or_none(self, key: str) -> int | None:
        return self._parsed(key, int, ValueError, "is not an integer")

    def float_or_none(self, key: str) -> float | None:
        return self._parsed(key, float, ValueError, "is not a number")

    def decimal_or_none(self, key: str) -> Decimal | None:
        """An exact decimal (prices); "NaN" and "Infinity" parse, so callers check `is_finite()`."""
        return self._parsed(key, Decimal, InvalidOperation, "is not a number")

    def _parsed(self, key: str, parse: Callable[[str], T], fails: type[Exception], what: str) -> T | None:
        raw = self.raw(key)
        if not raw:
            return None
        try:
            return parse(raw)
        except fails:
            raise self.bad(key, raw, what) from None
