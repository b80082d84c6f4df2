"""Typed errors of the build pipeline. The CLI maps every BuildError to a one-line message and exit code 2."""


class BuildError(Exception):
    """Base class: a problem the user can fix (bad input, bad option, missing file)."""


class DataError(BuildError):
    """A data file is missing, unreadable or malformed. The message names the file and, when known, the row."""


class FetchError(BuildError):
    """Downloading a data set failed or its checksum did not match."""


class ConversionError(BuildError):
    """A model could not be converted, or the converted graph breaks a promise (e.g. float ops in int8)."""


class GateError(BuildError):
    """A built model failed an accuracy or size gate."""


class PublishError(BuildError):
    """Uploading an artifact failed or the artifact folder is incomplete."""
