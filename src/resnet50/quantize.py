"""Static int8 quantization of the model with ONNX Runtime (QDQ, u8 activations, s8 weights).

Weights are quantized per output channel; activation ranges come from a calibration pass
over preprocessed images (generated photos by default, or a folder such as MLPerf's
calibration list). The ranges are saved beside the quantized model, which is cached by the
source model's checksum, so loading int8 never recalibrates. Global pooling, the classifier
and the softmax stay in float: they cost 0.05% of the MACs, and pooling the dequantized
map averages its rounding error away instead of adding a coarse 8-bit step to the features.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .constants import INPUT_NAME
from .errors import InvalidInputError
from .weights import ModelSource

# Relu is listed so the quantizer folds it into the ranges of what precedes it: ONNX Runtime
# then runs the whole body as QLinearConv/QLinearAdd in NHWC (measured 1.27x faster than
# leaving Relu in float between DequantizeLinear and QuantizeLinear).
QUANTIZED_OPS = ["Conv", "Add", "MaxPool", "Relu"]
DEFAULT_CALIBRATION_IMAGES = 64
_CALIBRATION_SEED = 20_000
_BATCH = 8


def _uses_vnni() -> bool:
    from .cpu import cpu_info

    return any(f in cpu_info()["features"] for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def _calibration_images(folder: str | os.PathLike | None, count: int) -> list:
    if folder is None:
        from .samples import synthetic_batch

        return synthetic_batch(count, seed=_CALIBRATION_SEED)
    from .files import expand_images

    files = expand_images([os.fspath(folder)])[:count]
    if not files:
        raise InvalidInputError(f"{folder}: no calibration images found")
    return files


class _Reader:
    """ONNX Runtime ``CalibrationDataReader`` over preprocessed batches."""

    def __init__(self, images: list):
        self._batches = self._iterate(images)

    @staticmethod
    def _iterate(images: list) -> Iterator[dict[str, np.ndarray]]:
        from .preprocess import preprocess

        for start in range(0, len(images), _BATCH):
            yield {INPUT_NAME: preprocess(images[start : start + _BATCH])[0]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # pragma: no cover - only used by some calibrators
        raise NotImplementedError


def variant_name(calibration: str | os.PathLike | None, count: int) -> str:
    """Cache name of the int8 variant: calibration set and kernel choice are part of it."""
    kernels = "vnni" if _uses_vnni() else "rr"
    what = f"{os.path.abspath(calibration) if calibration else 'generated'}:{count}:{kernels}:{','.join(QUANTIZED_OPS)}"
    return f"int8-{hashlib.sha1(what.encode()).hexdigest()[:10]}"


def quantize(
    source_path: str | os.PathLike,
    output_path: str | os.PathLike,
    calibration: str | os.PathLike | None = None,
    count: int = DEFAULT_CALIBRATION_IMAGES,
) -> Path:
    """Write the int8 QDQ model of ``source_path`` to ``output_path`` and its ranges beside it."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from .graph import ensure_opset
    from .variants import load_onnx

    # load_onnx refuses a file that is not this model before any time is spent on it;
    # per-channel QuantizeLinear/DequantizeLinear need opset 13.
    model = ensure_opset(load_onnx(source_path), 13)
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path.with_name(f".{output_path.name}.{os.getpid()}.tmp")
    quantize_static(
        model,
        tmp,
        _Reader(_calibration_images(calibration, count)),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=QUANTIZED_OPS,
        per_channel=True,
        reduce_range=not _uses_vnni(),  # without VNNI, u8*s8 pairs can saturate in 16-bit sums
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        calibration_cache_path=ranges_path(output_path),
    )
    tmp.replace(output_path)
    return output_path


def ranges_path(model_path: str | os.PathLike) -> Path:
    """Where the calibration ranges of a quantized model are kept."""
    return Path(model_path).with_suffix(".ranges.json")


def int8_model(
    source: ModelSource, calibration: str | os.PathLike | None = None, count: int = DEFAULT_CALIBRATION_IMAGES
) -> Path:
    """The cached int8 model of ``source``, quantized on first use."""
    from .variants import variant_path

    path = variant_path(source, variant_name(calibration, count))
    if not path.is_file():
        quantize(source.path, path, calibration, count)
    return path
