"""Formatting for the build report: values as text (``n/a`` where a number is missing) and the generic
Markdown pieces the sections are made of (fact lists, metric tables, leftover keys)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

NA = "n/a"


def fact_lines(
    section: Mapping[str, Any],
    facts: Sequence[tuple[str, str, Callable[[Any], str]]],
    *,
    required: Sequence[str] = (),
) -> list[str]:
    lines = []
    for key, label, fmt in facts:
        if key in section:
            value = section[key]
            # For the traffic mix, None is a statement ("split as is"), not a missing number.
            shown = fmt(value) if fmt is fmt_mix or not missing(value) else NA
            lines.append(f"- {label}: {shown}")
        elif key in required:
            lines.append(f"- {label}: {NA}")
    return lines


def table_lines(
    section: Mapping[str, Any],
    rows: Sequence[tuple[str, str, Callable[[Any], str], bool]],
) -> list[str]:
    lines = ["| metric | value |", "|---|---:|"]
    for key, label, fmt, required in rows:
        if required or key in section:
            value = section.get(key)
            lines.append(f"| {label} | {NA if missing(value) else fmt(value)} |")
    return lines


def extra_lines(section: Mapping[str, Any], used: set[str]) -> list[str]:
    rest = {key: value for key, value in section.items() if key not in used}
    return ([""] + generic_lines(rest)) if rest else []


def generic_lines(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [f"- {key}: {fmt_scalar(item)}" for key, item in value.items()]
    if isinstance(value, list):
        return [f"- {fmt_scalar(item)}" for item in value]
    return [fmt_scalar(value)]


def fmt_scalar(value: Any) -> str:
    if missing(value):
        return NA
    if isinstance(value, bool):
        return fmt_yes_no(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return fmt_num(value)
    if isinstance(value, dict | list):
        return f"`{value}`"
    return str(value)


def plain(value: Any) -> Any:
    """Dataclasses → dicts, numpy scalars/arrays → Python values, recursively."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain({field.name: getattr(value, field.name) for field in dataclasses.fields(value)})
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return value.as_posix()
    return value


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt_num(value: Any, digits: int = 4) -> str:
    if not is_number(value):
        return NA if missing(value) else str(value)
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def fmt_int(value: Any) -> str:
    return f"{int(value):,}" if is_number(value) else (NA if missing(value) else str(value))


def fmt_pct(value: Any, digits: int = 2) -> str:
    return f"{100.0 * value:.{digits}f} %" if is_number(value) else NA


def fmt_pp(value: Any) -> str:
    return f"{100.0 * value:+.2f} pp" if is_number(value) else NA


def fmt_ms(value: Any) -> str:
    return f"{value:.2f} ms" if is_number(value) else NA


def fmt_seconds(value: Any) -> str:
    if not is_number(value):
        return NA
    if value < 60.0:
        return f"{value:.1f} s"
    minutes, seconds = divmod(float(value), 60.0)
    return f"{int(minutes)} min {seconds:04.1f} s"


def fmt_bytes(value: Any) -> str:
    if not is_number(value):
        return NA
    size = float(value)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024.0 or unit == "MiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024.0
    return NA  # unreachable: the loop always returns at MiB


def fmt_times(value: Any) -> str:
    return f"{value:.2f}×" if is_number(value) else NA


def fmt_mix(value: Any) -> str:
    return "split as is (no re-weighting)" if missing(value) else f"{fmt_pct(value, 1)} oos"


def fmt_yes_no(value: Any) -> str:
    return NA if value is None else ("yes" if value else "**no**")


def ratio_of(numerator: Any, denominator: Any) -> float | None:
    if is_number(numerator) and is_number(denominator) and denominator != 0:
        return float(numerator) / float(denominator)
    return None


def difference(a: Any, b: Any) -> float | None:
    return float(a) - float(b) if is_number(a) and is_number(b) else None


def fmt_unit(value: Any, unit: Any) -> str:
    if not is_number(value):
        return NA if missing(value) else str(value)
    formats: dict[str, Callable[[Any], str]] = {
        "fraction": fmt_pct,
        "pp": fmt_pp,
        "bytes": fmt_bytes,
        "ms": fmt_ms,
        "s": fmt_seconds,
        "x": lambda v: f"{fmt_num(v)}×",
    }
    if unit in formats:
        return formats[str(unit)](value)
    return f"{fmt_num(value)} {unit}" if unit else fmt_num(value)
