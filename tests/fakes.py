"""Stand-ins for a loaded model where a test controls what ``run`` returns."""

from __future__ import annotations

import types

import numpy as np

from resnet50.core.registry import MLPERF_CLASSES, MLPERF_PREPROCESSING, get
from resnet50.processing.preprocess import normalize


class FakeModel:
    """What the apps read from a :class:`resnet50.ResNet50` besides ``run``: synthetic weights,
    the MLPerf preprocessing and 1001-class layout, fp32 on one stream. Subclasses define ``run``."""

    weights, precision, use_native, input_dtype = "synthetic", "fp32", False, np.dtype(np.float32)
    preprocessing, classes = MLPERF_PREPROCESSING, MLPERF_CLASSES
    source = types.SimpleNamespace(weights=get("synthetic"))
    weights_entry = get("synthetic")
    backend = types.SimpleNamespace(streams=1)

    def input_from_crops(self, crops: np.ndarray) -> np.ndarray:
        return normalize(crops, self.preprocessing)
