"""Static int8 quantization of the model with ONNX Runtime (QDQ, u8 activations, s8 weights).

Weights are quantized per output channel; activation ranges come from a calibration pass
over preprocessed images (generated photos by default, or a folder or list file such as
MLPerf's calibration list). The ranges are saved beside the quantized model, which is cached by the
source model's checksum, so loading int8 never recalibrates. The graph is optimized first
(batch norm folded, Pads moved into the convolutions), so the MLPerf file's tf2onnx layout
quantizes to the same fused graph as ours.

The classifier, pooling and softmax stay float; so does the bias ``Add`` of tf2onnx's ``MatMul``
+ ``Add`` classifier, which the quantizer would otherwise round to ~90 distinct logits out of
1001, tying the top classes. They cost 0.05% of the MACs. An int8 classifier was tried: no faster
beyond noise, and further from fp32 in top-1 agreement (docs/performance.md).
"""

from __future__ import annotations

import collections
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from resnet50.core.constants import INPUT_NAME
from resnet50.core.cpu import cpu_info
from resnet50.core.errors import InvalidInputError, ModelFileError
from resnet50.core.files import LIST_SUFFIXES, expand_images, read_list_file
from resnet50.core.registry import MLPERF_PREPROCESSING, Preprocessing
from resnet50.core.samples import synthetic_batch
from resnet50.derived.files import load_onnx, variant_path
from resnet50.graph.rewrite import consumers_of, ensure_opset, fold_pads_into_convs
from resnet50.processing.preprocess import preprocess
from resnet50.weights.source import ModelSource

# Relu is listed so the quantizer folds it into the ranges of what precedes it: ONNX Runtime
# then runs the whole body as QLinearConv/QLinearAdd in NHWC (faster than leaving Relu in
# float between DequantizeLinear and QuantizeLinear).
QUANTIZED_OPS = ["Conv", "Add", "MaxPool", "Relu"]
_CLASSIFIER_OPS = ("Gemm", "MatMul")
_RECIPE = 2  # 2: the graph optimized first, nothing after the classifier quantized
DEFAULT_CALIBRATION_IMAGES = 64
_CALIBRATION_SEED = 20_000
_BATCH = 8


def _uses_vnni() -> bool:
    return any(f in cpu_info()["features"] for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def _calibration_images(source: str | os.PathLike | None, count: int) -> list:
    """The first ``count`` calibration images: generated photos, the images of a folder (sorted),
    or those a list file names (one path per line, relative to the list, e.g. MLPerf's
    ``cal_image_list_option_1.txt`` placed in the validation folder)."""
    if source is None:
        return synthetic_batch(count, seed=_CALIBRATION_SEED)
    if Path(source).is_file() and Path(source).suffix.lower() in LIST_SUFFIXES:
        files = [os.path.abspath(p) for p in read_list_file(source)[:count]]
    else:
        files = expand_images([os.fspath(source)])[:count]
    if not files:
        raise InvalidInputError(f"{source}: no calibration images found")
    return files


class _Reader:
    """ONNX Runtime ``CalibrationDataReader`` over preprocessed batches."""

    def __init__(self, images: list, preprocessing: Preprocessing):
        self._batches = self._iterate(images, preprocessing)

    @staticmethod
    def _iterate(images: list, preprocessing: Preprocessing) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(images), _BATCH):
            yield {INPUT_NAME: preprocess(images[start : start + _BATCH], preprocessing=preprocessing)[0]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # pragma: no cover - only used by some calibrators
        raise NotImplementedError


def _optimized(model, source_path: str | os.PathLike):
    """``model`` as ONNX Runtime's basic optimizer leaves it (batch norm folded into the
    convolutions, tf2onnx's MatMul + Add classifier as one Gemm, constants folded), with zero
    Pads moved into the convolutions.

    The quantizer works on the graph as written: on the MLPerf file's layout (unfolded batch
    norm, explicit Pads) int8 ran at about half speed without this, on ONNX Runtime and OpenVINO
    (docs/performance.md).
    """
    import tempfile

    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="resnet50-quantize-") as scratch:
        given, optimized = Path(scratch) / "given.onnx", Path(scratch) / "optimized.onnx"
        onnx.save(model, given)  # from a path: handed a ModelProto, it moves the weights out of the graph
        quant_pre_process(given, optimized, skip_symbolic_shape=True)
        result = onnx.load(optimized)
    # quant_pre_process logs a failed optimization and goes on with the graph as it was.
    if any(node.op_type == "BatchNormalization" for node in result.graph.node):
        raise ModelFileError(
            f"{source_path}: ONNX Runtime could not fold batch norm into the convolutions before int8 "
            "quantization (its error is logged above); use the fp32 or bf16 precision"
        )
    return fold_pads_into_convs(result)


def _name_nodes(model) -> None:
    """Give every unnamed or twice-used node a name of its own: the quantizer excludes nodes by name."""
    counts = collections.Counter(node.name for node in model.graph.node)
    taken = set(counts)
    for index, node in enumerate(model.graph.node):
        if not node.name or counts[node.name] > 1:
            counts[node.name] -= 1
            name = f"{node.name or node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def _after_classifier(model) -> list[str]:
    """Names of the nodes downstream of the classifier (its bias ``Add``, the softmax...), whose
    values must stay float."""

    consumers = consumers_of(model.graph)
    pending = [out for node in model.graph.node if node.op_type in _CLASSIFIER_OPS for out in node.output]
    found: dict[int, str] = {}
    while pending:
        for node in consumers.get(pending.pop(), []):
            if id(node) not in found:
                found[id(node)] = node.name
                pending.extend(node.output)
    return list(found.values())


def variant_name(calibration: str | os.PathLike | None, count: int) -> str:
    """Cache name of the int8 variant: calibration set, kernel choice, recipe and the ONNX Runtime
    that optimized and quantized the graph are part of it."""
    import onnxruntime

    kernels = "vnni" if _uses_vnni() else "rr"
    source = os.path.abspath(calibration) if calibration else "generated"
    what = f"{source}:{count}:{kernels}:{','.join(QUANTIZED_OPS)}:{_RECIPE}:{onnxruntime.__version__}"
    return f"int8-{hashlib.sha1(what.encode()).hexdigest()[:10]}"


def quantize(
    source_path: str | os.PathLike,
    output_path: str | os.PathLike,
    calibration: str | os.PathLike | None = None,
    count: int = DEFAULT_CALIBRATION_IMAGES,
    preprocessing: Preprocessing = MLPERF_PREPROCESSING,
) -> Path:
    """Write the int8 QDQ model of ``source_path`` to ``output_path`` and its ranges beside it,
    calibrated on images preprocessed as the weights were trained (``preprocessing``)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    # load_onnx refuses a file that is not this model before any time is spent on it;
    # per-channel QuantizeLinear/DequantizeLinear need opset 13.
    model = _optimized(ensure_opset(load_onnx(source_path), 13), source_path)
    _name_nodes(model)
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path.with_name(f".{output_path.name}.{os.getpid()}.tmp")
    quantize_static(
        model,
        tmp,
        _Reader(_calibration_images(calibration, count), preprocessing),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=QUANTIZED_OPS,
        per_channel=True,
        reduce_range=not _uses_vnni(),  # without VNNI, u8*s8 pairs can saturate in 16-bit sums
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        calibration_cache_path=ranges_path(output_path),
        nodes_to_exclude=_after_classifier(model),
    )
    tmp.replace(output_path)
    return output_path


def ranges_path(model_path: str | os.PathLike) -> Path:
    """Where the calibration ranges of a quantized model are kept."""
    return Path(model_path).with_suffix(".ranges.json")


def int8_model(
    source: ModelSource,
    fp32_path: str | os.PathLike,
    calibration: str | os.PathLike | None = None,
    count: int = DEFAULT_CALIBRATION_IMAGES,
) -> Path:
    """The cached int8 model of ``source`` (whose fp32 graph is ``fp32_path``), quantized on first use."""
    path = variant_path(source, variant_name(calibration, count))
    if not path.is_file():
        quantize(fp32_path, path, calibration, count, source.weights.preprocessing)
    return path
