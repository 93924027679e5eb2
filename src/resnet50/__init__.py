"""MLPerf ResNet50 v1.5 image classification: ``load``, ``preprocess``, run, ``postprocess``."""

from __future__ import annotations

from .errors import (
    BackendUnavailableError,
    ChecksumError,
    DownloadError,
    ImageDecodeError,
    InputNotFoundError,
    InvalidInputError,
    ModelFileError,
    ResNet50Error,
)
from .model import ResNet50
from .postprocess import Classification, Prediction, postprocess
from .preprocess import PreprocessContext, preprocess

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "ChecksumError",
    "Classification",
    "DownloadError",
    "ImageDecodeError",
    "InputNotFoundError",
    "InvalidInputError",
    "ModelFileError",
    "Prediction",
    "PreprocessContext",
    "ResNet50",
    "ResNet50Error",
    "postprocess",
    "preprocess",
]
