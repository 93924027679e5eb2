"""Runnable model files derived from a source model, built once and cached by checksum.

A variant is named by its precision and whether the pre/postprocessing is fused
(``native``). The plain fp32 variant is the source file itself.
"""

from __future__ import annotations

import os
from pathlib import Path

from resnet50.core.errors import ModelFileError
from resnet50.core.registry import ClassLayout, Weights
from resnet50.derived.files import cached_variant, check_source, load_onnx, proto_specs
from resnet50.derived.quantize import DEFAULT_CALIBRATION_IMAGES, int8_model, variant_name
from resnet50.derived.torchvision import convert_checkpoint
from resnet50.graph.interface import class_count
from resnet50.graph.rewrite import with_topk, with_uint8_input
from resnet50.weights.source import ModelSource


def native(base_path: Path, weights: Weights):
    """The base model with uint8 input (normalization inside) and fused top-k over the foreground."""
    model = load_onnx(base_path)
    classes = weights.classes
    count = class_count(proto_specs(model)[1])
    if count and count != classes.count:  # a fine-tune: its own class count, no background
        classes = ClassLayout(count=count, background=False)
    return with_topk(with_uint8_input(model, weights.preprocessing), classes)


def fp32_file(source: ModelSource) -> Path:
    """The fp32 ONNX file of a source: the file itself, or a checkpoint's converted graph."""
    return convert_checkpoint(source.path) if source.is_checkpoint else source.path


def model_file(
    source: ModelSource, precision: str = "fp32", use_native: bool = False, calibration: str | os.PathLike | None = None
) -> Path:
    """The file to run for this source, precision and postprocessing choice."""
    check_source(source)  # a user's file that ONNX Runtime cannot run is refused by its name, first
    if precision in ("fp32", "bf16", "fp16"):  # the backend's execution precision of the fp32 file
        base, name = fp32_file(source), "fp32"
    elif precision == "int8":
        base = int8_model(source, fp32_file(source), calibration)
        name = variant_name(calibration, DEFAULT_CALIBRATION_IMAGES)
    else:
        raise ModelFileError(f"precision {precision!r} has no ONNX model file; choose fp32, bf16, fp16 or int8")
    if not use_native:
        return base
    return cached_variant(source, f"{name}-native", lambda _: native(base, source.weights))
