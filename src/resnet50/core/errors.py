"""The package's exception hierarchy.

Every error a user can cause derives from :class:`ResNet50Error` and names the input and
what is wrong with it, so the CLI can print one line and the server can answer a 4xx.
"""

from __future__ import annotations


class ResNet50Error(Exception):
    """Base class of every error raised on purpose by this package."""


class InvalidInputError(ResNet50Error, ValueError):
    """An input (image, tensor, argument) that cannot be used as given."""


class ImageDecodeError(InvalidInputError):
    """Bytes or a file that do not decode to an image."""


class InputNotFoundError(ResNet50Error, FileNotFoundError):
    """A path given as input that does not exist."""


class ModelFileError(ResNet50Error, ValueError):
    """A model file that is missing, corrupt, or not a ResNet50 of the MLPerf interface."""


class ChecksumError(ModelFileError):
    """A downloaded or supplied model file whose checksum does not match."""


class DownloadError(ResNet50Error, ConnectionError):
    """A download that failed; the message says how to get the file by hand."""


class BackendUnavailableError(ResNet50Error, RuntimeError):
    """A backend, device or precision that this machine or install cannot run."""


def first_line(exc: BaseException) -> str:
    """The first line of a library's error message (the rest is its internals), else its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
