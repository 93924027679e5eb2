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
from pathlib import Path

import numpy as np

from resnet50.core.constants import INPUT_NAME
from resnet50.core.cpu import cpu_info
from resnet50.core.errors import InvalidInputError, ModelFileError, first_line
from resnet50.core.files import LIST_SUFFIXES, expand_inputs, read_list_file
from resnet50.core.memory import release_free_memory
from resnet50.core.progress import Task, task
from resnet50.core.registry import MLPERF_PREPROCESSING, Preprocessing
from resnet50.core.samples import synthetic_batch
from resnet50.derived.files import proto_specs, variant_path
from resnet50.graph.interface import check_interface
from resnet50.graph.rewrite import consumers_of, ensure_opset, fold_pads_into_convs, opset_of
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
        files = expand_inputs([os.fspath(source)])[0][:count]
    if not files:
        raise InvalidInputError(f"{source}: no calibration images found")
    return files


def _optimized_file(source_path: str | os.PathLike, scratch: Path) -> Path:
    """The source model at opset 13 or newer (per-channel QuantizeLinear/DequantizeLinear need it),
    as ONNX Runtime's basic optimizer leaves it (batch norm folded into the convolutions, tf2onnx's
    MatMul + Add classifier as one Gemm, constants folded), shape-inferred, with zero Pads moved
    into the convolutions and every node named: ``scratch/model.onnx``, its weights in
    ``scratch/weights.data``.

    The quantizer works on the graph as written: on the MLPerf file's layout (unfolded batch
    norm, explicit Pads) int8 ran at about half speed without this, on ONNX Runtime and OpenVINO
    (docs/performance.md). These are the steps of
    ONNX Runtime's ``quant_pre_process``, but ONNX Runtime reads the file itself and writes the
    weights apart (external data): Python only ever holds the graph, never a copy of the weights.
    """
    import onnx
    from onnxruntime.quantization.quant_utils import add_pre_process_metadata

    given = _ort_rewrite(source_path, scratch / "given.onnx", "given.data", source_path, optimize=False)
    model = onnx.load(given, load_external_data=False)  # the graph; the weights stay in given.data
    check_interface(os.fspath(source_path), *proto_specs(model))
    if opset_of(model) < 13:
        onnx.save(ensure_opset(model, 13), given)  # the converter keeps the external-data references
    optimized = _ort_rewrite(given, scratch / "optimized.onnx", "weights.data", source_path, optimize=True)
    inferred = scratch / "inferred.onnx"
    onnx.shape_inference.infer_shapes_path(os.fspath(optimized), os.fspath(inferred))
    model = onnx.load(inferred, load_external_data=False)
    if any(node.op_type == "BatchNormalization" for node in model.graph.node):
        raise ModelFileError(
            f"{source_path}: ONNX Runtime could not fold batch norm into the convolutions before int8 "
            "quantization; use the fp32 or bf16 precision"
        )
    model = fold_pads_into_convs(model)
    _name_nodes(model)
    add_pre_process_metadata(model)
    path = scratch / "model.onnx"
    onnx.save(model, path)  # its initializers still point at weights.data beside it
    return path


def _ort_rewrite(path, target: Path, data: str, source_path, *, optimize: bool) -> Path:
    """``path`` as ONNX Runtime saves it, basic-optimized or as it is, to ``target`` with its
    weights in ``data`` beside it; an unreadable model is an error naming ``source_path``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    levels = ort.GraphOptimizationLevel
    options.graph_optimization_level = levels.ORT_ENABLE_BASIC if optimize else levels.ORT_DISABLE_ALL
    options.optimized_model_filepath = os.fspath(target)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", data)
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelFileError(
            f"{source_path}: not a readable ONNX model (truncated or not ONNX?): {first_line(exc)}"
        ) from None
    del session
    release_free_memory()
    return target


def tensors_to_calibrate(model) -> list[str]:
    """The float tensors that ONNX Runtime's calibrators range: inputs and outputs of the nodes
    of :data:`QUANTIZED_OPS` that have a known type and are not weights, in graph order."""
    import onnx

    infos = {v.name: v for v in (*model.graph.value_info, *model.graph.output, *model.graph.input)}
    weights = {t.name for t in model.graph.initializer}
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    found: dict[str, None] = {}
    for node in model.graph.node:
        if node.op_type not in QUANTIZED_OPS:
            continue
        for name in (*node.input, *node.output):
            info = infos.get(name)
            typed = info is not None and info.type.HasField("tensor_type")
            if typed and name not in weights and info.type.tensor_type.elem_type in floats:
                found[name] = None
    return list(found)


def calibrate(
    model_path: Path,
    images: list,
    progress: Task | None = None,
    source_path: str | os.PathLike | None = None,
    preprocessing: Preprocessing = MLPERF_PREPROCESSING,
):
    """MinMax ranges of :func:`tensors_to_calibrate` over ``images``, as ONNX Runtime's
    ``MinMaxCalibrater`` computes them, but streamed: one image at a time through a copy of the
    graph that outputs only each tensor's minimum and maximum. Memory holds one image's
    activations and two floats per tensor (ONNX Runtime's calibrator keeps the outputs of every
    batch, gigabytes of them); the minimum of per-image minima is the minimum over the set,
    exactly. Images are preprocessed as the weights were trained (``preprocessing``). Returns ONNX
    Runtime's ``TensorsData``, which ``quantize_static`` reads as its calibration cache. Errors name
    ``source_path`` (default ``model_path``), the user's file.
    """
    import onnx
    import onnxruntime as ort
    from onnx import helper
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

    source_path = source_path or model_path
    model = onnx.load(model_path, load_external_data=False)
    names = tensors_to_calibrate(model)
    index = {name: i for i, name in enumerate(names)}
    nodes = list(model.graph.node)

    def ranged(tensors) -> list:  # each tensor's ReduceMin and ReduceMax, run as soon as it exists
        return [
            helper.make_node(op, [name], [f"{name}__{op}"], name=f"resnet50_range_{op}_{index[name]}", keepdims=0)
            for name in tensors
            if name in index
            for op in ("ReduceMin", "ReduceMax")
        ]

    del model.graph.node[:]
    model.graph.node.extend(ranged(i.name for i in model.graph.input))
    for node in nodes:
        model.graph.node.extend([node, *ranged(node.output)])
    del model.graph.output[:]
    for name in names:
        for op in ("ReduceMin", "ReduceMax"):
            model.graph.output.append(helper.make_tensor_value_info(f"{name}__{op}", onnx.TensorProto.FLOAT, []))
    augmented = model_path.with_name("calibrate.onnx")
    onnx.save(model, augmented)  # beside model.onnx: the same weights.data
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a failure becomes our error, naming the source file
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # as ONNX Runtime calibrates
    options.enable_mem_pattern = False  # a memory plan for the whole graph would hold every activation at once
    session = ort.InferenceSession(os.fspath(augmented), options, providers=["CPUExecutionProvider"])
    lows = np.full(len(names), np.inf, np.float32)
    highs = np.full(len(names), -np.inf, np.float32)
    for image in images:
        tensor = preprocess([image], preprocessing=preprocessing)[0]
        try:
            outputs = session.run(None, {INPUT_NAME: tensor})
        except Exception as exc:  # a weight of the wrong shape fails only when run
            raise ModelFileError(f"{source_path}: ONNX Runtime cannot run this model: {first_line(exc)}") from None
        np.minimum(lows, np.asarray(outputs[0::2], np.float32), out=lows)
        np.maximum(highs, np.asarray(outputs[1::2], np.float32), out=highs)
        if progress is not None:
            progress.update()
    del session
    ranges = {
        name: TensorData(lowest=np.array([low], np.float32), highest=np.array([high], np.float32))
        for name, low, high in zip(names, lows, highs)
    }
    return TensorsData(CalibrationMethod.MinMax, ranges)


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
    calibrated on images preprocessed as the weights were trained (``preprocessing``).

    Takes seconds, once per source and calibration set: said on stderr (a bar on a terminal,
    see :mod:`resnet50.core.progress`).
    """
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    images = _calibration_images(calibration, count)
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path.with_name(f".{output_path.name}.{os.getpid()}.tmp")
    tmp_ranges = ranges_path(tmp)
    what = f"quantizing to int8, calibrated on {len(images)} images (first run only)"
    with task(what, len(images) + 2) as progress, tempfile.TemporaryDirectory(prefix="resnet50-quantize-") as scratch:
        progress.stage("optimizing the graph")
        prepared = _optimized_file(source_path, Path(scratch))
        progress.update()
        progress.stage("calibrating")
        save_tensors_data(calibrate(prepared, images, progress, source_path, preprocessing), tmp_ranges)
        release_free_memory()
        progress.stage("quantizing the weights")
        quantize_static(
            os.fspath(prepared),
            tmp,
            None,  # the ranges come from the calibration cache just written
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=QUANTIZED_OPS,
            per_channel=True,
            reduce_range=not _uses_vnni(),  # without VNNI, u8*s8 pairs can saturate in 16-bit sums
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            calibration_cache_path=tmp_ranges,
            nodes_to_exclude=_after_classifier(onnx.load(prepared, load_external_data=False)),
        )
        progress.update()
    release_free_memory()
    tmp_ranges.replace(ranges_path(output_path))
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
