"""Derived model files: reading ONNX with a clear error, and the checksum-keyed cache they live in."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from resnet50.core.cache import cache_dir
from resnet50.core.errors import ModelFileError, first_line
from resnet50.core.memory import release_free_memory
from resnet50.graph.interface import TensorSpec, check_interface, class_count
from resnet50.graph.io import write_model
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
    """Write ``model`` to ``path`` so that a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_model(model, tmp)
    tmp.replace(path)
    return path


_ORT_DTYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(int64)": "int64"}


def check_runs(path: str | os.PathLike, name: str | os.PathLike | None = None) -> None:
    """Refuse a model that ONNX Runtime cannot load, or cannot run on one image of zeros (a weight
    of the wrong shape only fails then), as :class:`ModelFileError` naming ``name`` (default
    ``path``): the user's file, checked before anything derived from it is built and cached."""
    import numpy as np
    import onnxruntime as ort

    name = os.fspath(name or path)
    options = ort.SessionOptions()
    options.log_severity_level = 4  # its error becomes ours; ONNX Runtime's own log line would name no file
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelFileError(f"{name}: not a readable ONNX model (truncated or not ONNX?): {first_line(exc)}") from None
    feeds = {}
    for spec in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape]
        feeds[spec.name] = np.ones(shape, _ORT_DTYPES.get(spec.type, "float32"))
    try:
        session.run(None, feeds)
    except Exception as exc:
        raise ModelFileError(f"{name}: ONNX Runtime cannot run this model: {first_line(exc)}") from None


def check_source(source: ModelSource) -> None:
    """:func:`check_runs` on a model file the user named (``--model``, ``$RESNET50_MODEL``), once per
    checksum (remembered in the cache); the fetched and the built files are ours and trusted."""
    if source.origin not in ("argument", "RESNET50_MODEL") or source.is_checkpoint:
        return  # a checkpoint is converted by the package into a graph of its own
    memo = cache_dir() / "checked" / f"{source.md5}.ok"
    if memo.is_file():
        return
    check_runs(source.path)
    release_free_memory()
    with contextlib.suppress(OSError):  # a read-only cache only costs another check next time
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.touch()


def cached_variant(source: ModelSource, name: str, build: Callable[[Path], object]) -> Path:
    """The cached file of variant ``name``; ``build(source_path)`` makes its ModelProto once,
    after :func:`check_source` has accepted the source (a broken one leaves nothing cached)."""
    path = variant_path(source, name)
    if not path.is_file():
        check_source(source)
        save_atomic(build(source.path), path)
        release_free_memory()
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
