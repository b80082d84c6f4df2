"""The local stack's one error type, and how a refused call to the cloud is told in its messages."""

from __future__ import annotations

from typing import Any

from modelpack.cloud_api import ErrorBody


class StackError(Exception):
    """Something the user can fix (a port in use, no artifact, a child that would not start): one line,
    plus the tail of the child's log when there is one."""


def refusal(response: Any) -> str:
    """A non-200 answer of the cloud API (an httpx response) in a few words: its error code and message
    (`modelpack.cloud_api.ErrorBody`), or the start of the body when it has none (a gateway's 403 or 502)."""
    try:
        error = ErrorBody.from_json(response.json())
    except ValueError:  # not JSON at all
        error = ErrorBody("", "")
    if error.code:
        return f"{error.code}: {error.message}"
    return str(response.text[:300])
