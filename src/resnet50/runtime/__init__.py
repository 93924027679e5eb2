"""Inference backends, one module each, behind the small :class:`Backend` interface."""

from __future__ import annotations

from resnet50.graph.interface import TensorSpec, check_interface
from resnet50.runtime.base import Backend

__all__ = ["Backend", "TensorSpec", "check_interface", "create_backend"]


def create_backend(name: str, model_path: str, *, threads: int | None = None, **options) -> Backend:
    """Open ``model_path`` with the named backend ("onnxruntime", "openvino" or "torch")."""
    from resnet50.core.errors import BackendUnavailableError

    if name == "onnxruntime":
        from resnet50.runtime.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model_path, threads=threads, **options)
    if name == "openvino":
        from resnet50.runtime.openvino import OpenVinoBackend

        return OpenVinoBackend(model_path, threads=threads, **options)
    if name == "torch":
        from resnet50.runtime.torch.backend import TorchBackend

        return TorchBackend(model_path, threads=threads, **options)
    raise BackendUnavailableError(f"unknown backend {name!r}; choose onnxruntime, openvino or torch")
