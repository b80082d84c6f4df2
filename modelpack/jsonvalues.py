"""Strict readers of decoded JSON values, for the wire types in `modelpack.cloud_api`.

Each reader returns the value in its Python type or raises `ContractViolation` naming where the bad value
sits (`results[3].confidence`) and what it is, described briefly: a log line never holds a huge or deeply
nested value's repr.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

MAX_COUNT = 2**53  # budgets and costs end up in float gauges: larger is a broken message, not a budget


class ContractViolation(ValueError):
    """A message that breaks the cloud API contract; the message says where (`results[3].confidence`)."""


def obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ContractViolation(f"{where} is {kind(value)}, not an object")
    return value


def string(value: Any, where: str, *, empty: bool = False) -> str:
    if not isinstance(value, str) or not (value or empty):
        raise ContractViolation(f"{where} is {kind(value)}, not a {'' if empty else 'non-empty '}string")
    return value


def opt_string(value: Any, where: str) -> str | None:
    return None if value is None else string(value, where)


def probability(value: Any, where: str) -> float:
    # NaN fails the range check too: every comparison with it is false.
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ContractViolation(f"{where} is {kind(value)}, not a number in [0, 1]")
    return float(value)


def count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise ContractViolation(f"{where} is {kind(value)}, not a whole number in [0, 2^53]")
    return value


def array(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ContractViolation(f"{where} is {kind(value)}, not a list")
    return value


def aware_time(value: Any, where: str) -> datetime | None:
    """None when absent. A time without an offset is refused, not guessed: the contract is ISO 8601 with an
    offset (the cloud writes `+00:00`), and a budget's reset time decides how long the edge stops escalating."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise ContractViolation(f"{where} is {kind(value)}, not an ISO 8601 time")
    if parsed.utcoffset() is None:
        raise ContractViolation(f"{where} {value[:40]!r} has no timezone offset")
    return parsed


def kind(value: Any) -> str:
    """A short description of a bad value for logs: never the value's whole repr (it may be huge or deep)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value) if not math.isfinite(value) else f"{value:.6g}"
    if isinstance(value, int):
        return str(value) if abs(value) < 10**18 else "a huge integer"
    if isinstance(value, str):
        return f"the string {value[:40]!r}" if value else "the empty string"
    return "a list" if isinstance(value, list) else "an object" if isinstance(value, dict) else type(value).__name__
