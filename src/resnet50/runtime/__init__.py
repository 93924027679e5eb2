"""Inference backends, one module each, behind the small :class:`Backend` interface."""

from __future__ import annotations

import importlib

from resnet50.core.errors import BackendUnavailableError
from resnet50.graph.interface import TensorSpec, check_interface
from resnet50.runtime.base import Backend

__all__ = ["Backend", "TensorSpec", "check_interface", "create_backend"]

#: Backend name → (module, class); each module imports its library only when opened.
BACKEND_CLASSES = {
    "onnxruntime": ("resnet50.runtime.onnxruntime", "OnnxRuntimeBackend"),
    "openvino": ("resnet50.runtime.openvino", "OpenVinoBackend"),
    "torch": ("resnet50.runtime.torch.backend", "TorchBackend"),
}


def create_backend(name: str, model_path: str, *, threads: int | None = None, **options) -> Backend:
    """Open ``model_path`` with the named backend ("onnxruntime", "openvino" or "torch")."""
    if name not in BACKEND_CLASSES:
        raise BackendUnavailableError(f"unknown backend {name!r}; choose {', '.join(BACKEND_CLASSES)}")
    module, cls = BACKEND_CLASSES[name]
    return getattr(importlib.import_module(module), cls)(model_path, threads=threads, **options)
