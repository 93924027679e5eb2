"""Derived model files: reading ONNX with a clear error, and the checksum-keyed cache they live in."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from resnet50.core.cache import cache_dir
from resnet50.core.errors import ModelFileError
from resnet50.graph.interface import TensorSpec, check_interface, class_count
from resnet50.weights.source import ModelSource

VARIANTS_VERSION = 1
_ONNX_TYPES = {1: "float32", 2: "uint8", 7: "int64", 10: "float16"}


def load_onnx(path: str | os.PathLike):
    """``onnx.load`` that reports a bad file as :class:`ModelFileError`."""
    import onnx

    try:
        model = onnx.load(os.fspath(path))
    except Exception as exc:
        raise ModelFileError(f"{path}: not a readable ONNX model (truncated or not ONNX?): {exc}") from None
    check_interface(str(path), *proto_specs(model))
    return model


def proto_specs(model) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Graph inputs (less initializers) and outputs of an ONNX model as :class:`TensorSpec`."""
    initializers = {t.name for t in model.graph.initializer}

    def spec(value) -> TensorSpec:
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in tensor.shape.dim)
        return TensorSpec(value.name, _ONNX_TYPES.get(tensor.elem_type, str(tensor.elem_type)), dims)

    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in model.graph.output]


def variant_path(source: ModelSource, name: str) -> Path:
    return cache_dir() / "variants" / f"{source.md5[:16]}-v{VARIANTS_VERSION}-{name}.onnx"


def save_atomic(model, path: Path) -> Path:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    onnx.save(model, os.fspath(tmp))
    tmp.replace(path)
    return path


def cached_variant(source: ModelSource, name: str, build: Callable[[Path], object]) -> Path:
    """The cached file of variant ``name``; ``build(source_path)`` makes its ModelProto once."""
    path = variant_path(source, name)
    if not path.is_file():
        save_atomic(build(source.path), path)
    return path


def output_classes(path: str | os.PathLike) -> int | None:
    """The class count of a model file's softmax output, from its graph (weights not interpreted);
    None for a fused top-k model or an unreadable file (the loader reports those)."""
    import onnx

    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception:
        return None
    return class_count(proto_specs(model)[1])
