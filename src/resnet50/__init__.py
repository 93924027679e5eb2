"""MLPerf ResNet50 v1.5 image classification: ``load``, ``preprocess``, run, ``postprocess``."""

from __future__ import annotations

from resnet50.api.model import ResNet50
from resnet50.core.errors import (
    BackendUnavailableError,
    ChecksumError,
    DownloadError,
    ImageDecodeError,
    InputNotFoundError,
    InvalidInputError,
    ModelFileError,
    ResNet50Error,
)
from resnet50.processing.postprocess import Classification, Prediction, postprocess
from resnet50.processing.preprocess import PreprocessContext, preprocess

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
