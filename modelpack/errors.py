"""Errors of the system: the API error base both tiers' typed errors share, and the artifact errors."""

from __future__ import annotations

from typing import Any, ClassVar


class ApiError(Exception):
    """An error a client can see: its HTTP `status` and a stable `code` (part of the API contract: never change a
    published code). The edge's `EdgeError` and the cloud's `CloudError` derive from it; each tier maps its
    errors to `{"error": {"code", "message", ...details}}` responses in one place with `body()`/`headers()`."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "INTERNAL_ERROR"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.details}}

    def headers(self) -> dict[str, str]:
        return {}


class ArtifactError(Exception):
    """Base class: the artifact cannot be used."""


class ManifestError(ArtifactError):
    """manifest.json is missing, malformed, or names something that is not there."""


class ChecksumMismatch(ArtifactError):
    """A file's SHA-256 differs from the manifest's: the artifact is corrupt or was tampered with."""


class RuntimeUnavailable(ArtifactError):
    """No TFLite interpreter (ai-edge-litert, or the legacy tflite-runtime) can be imported."""


class ModelNotRunnable(ArtifactError):
    """The model loads, but an inference on it fails or gives unusable output (found by the smoke test)."""
