"""Errors raised while loading or running a model artifact."""


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
