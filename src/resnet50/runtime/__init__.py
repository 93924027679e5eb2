"""Inference backends, one module each, behind the small :class:`Backend` interface."""

from __future__ import annotations

from .base import Backend, TensorSpec, check_interface

__all__ = ["Backend", "TensorSpec", "check_interface", "create_backend"]


def create_backend(name: str, model_path: str, *, threads: int | None = None, **options) -> Backend:
    """Open ``model_path`` with the named backend ("onnxruntime", "openvino" or "torch")."""
    from ..errors import BackendUnavailableError

    if name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model_path, threads=threads, **options)
    if name == "openvino":
        from .openvino import OpenVinoBackend

        return OpenVinoBackend(model_path, threads=threads, **options)
    if name == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend(model_path, threads=threads, **options)
    raise BackendUnavailableError(f"unknown backend {name!r}; choose onnxruntime, openvino or torch")
