"""Values as JSON: what manifest.json's build section and metrics.json are written from."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

def jsonable(value: Any) -> Any:
    """Dataclasses, numpy scalars, tuples → JSON types, recursively; NaN and infinities → None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if np.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value

