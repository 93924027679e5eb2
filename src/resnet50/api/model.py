"""The model-zoo API: ``ResNet50.load()``, ``preprocess``, ``run``, ``postprocess``."""

from __future__ import annotations

import asyncio
import functools
import os
import platform
from typing import Any

import numpy as np

from resnet50.core.constants import INPUT_NAME, INPUT_SIZE, NUM_CLASSES, TOPK_INPUT, UINT8_INPUT_NAME
from resnet50.core.cpu import cpu_info, physical_cores
from resnet50.core.errors import InvalidInputError
from resnet50.derived.variants import model_file
from resnet50.processing.postprocess import Classification, postprocess
from resnet50.processing.preprocess import ImageInput, PreprocessContext, preprocess
from resnet50.runtime import Backend, check_interface, create_backend
from resnet50.runtime.torch.backend import require_cuda
from resnet50.weights.source import ModelSource, resolve, warn_if_synthetic

PRECISIONS = ("fp32", "int8", "bf16", "fp16")
BACKENDS = ("onnxruntime", "openvino", "torch")
DEVICES = ("cpu", "cuda")


class ResNet50:
    """MLPerf ResNet50 v1.5 image classifier (1001 classes, index 0 background)."""

    def __init__(self, backend: Backend, source: ModelSource, *, precision: str, device: str, use_native: bool):
        self.backend = backend
        self.source = source
        self.precision = precision
        self.device = device
        self.use_native = use_native
        names = {spec.name for spec in backend.inputs}
        self.input_name = UINT8_INPUT_NAME if UINT8_INPUT_NAME in names else INPUT_NAME
        self.input_dtype = np.dtype(np.uint8 if self.input_name == UINT8_INPUT_NAME else np.float32)
        self._takes_top_k = TOPK_INPUT in names

    @classmethod
    def load(
        cls,
        precision: str = "fp32",
        device: str = "cpu",
        use_native: bool = False,
        *,
        model: str | os.PathLike | None = None,
        threads: int | None = None,
        streams: int = 1,
        backend: str | None = None,
        calibration: str | os.PathLike | None = None,
        spin_wait: bool = False,
        batch_size: int | None = None,
    ) -> ResNet50:
        """Load the model: MLPerf weights when present (``model``, ``$RESNET50_MODEL`` or
        ``resnet50 fetch``), else synthetic ones (said once on stderr).

        ``use_native=True`` fuses mean subtraction and top-k into the graph: ``preprocess``
        then gives the uint8 crop and ``run`` returns the top-k directly. ``precision`` is
        "fp32" (exact), "int8" (calibrated static quantization), "bf16" (OpenVINO on CPU, torch
        on CUDA) or "fp16" (CUDA); ``backend`` is "onnxruntime" (default), "openvino"
        (``pip install 'resnet50[openvino]'``) or "torch" (``device="cuda"``, ``resnet50[cuda]``).
        ``calibration`` is a folder of images, or a list file of them (.txt, paths relative to
        it), that int8 calibrates on: the first 64 (default: generated photos; with the real
        weights, MLPerf's calibration images). ``streams=N`` splits the threads
        into N independent model runs that may proceed at once (``run`` from N threads): a
        server's concurrent requests then do not wait on each other's cores. ``spin_wait=True``
        keeps ONNX Runtime's idle inference threads busy-waiting: lower batch-1 latency when
        nothing else needs the cores (a benchmark, a LoadGen run), slower everything else when
        something does. ``batch_size`` is the batch ``run`` will mostly get: OpenVINO compiles
        the model for exactly that size (int8 batch 1 here, four runs: 0.8-2.9% more images/s
        on two streams, p90 up to 1.1 ms lower on one; no clear gain at batch 8). Other sizes
        still run, on a second model compiled when the first one comes (that batch waits ~0.3 s,
        ~1 s without OpenVINO's cache, and memory grows by 50-130 MB). The other backends take
        any size as fast and ignore it.
        """
        if precision not in PRECISIONS:
            raise InvalidInputError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        if device not in DEVICES:
            raise InvalidInputError(f"device {device!r} is not one of {', '.join(DEVICES)}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise InvalidInputError(f"batch_size must be a whole number of at least 1, got {batch_size!r}")
        if threads is not None and threads < 1:
            raise InvalidInputError(f"threads must be at least 1, got {threads}")
        most_streams = threads or physical_cores()
        if not 1 <= streams <= most_streams:
            raise InvalidInputError(f"streams must be in 1..threads ({most_streams}), got {streams}")
        if streams > 1 and device == "cuda":
            raise InvalidInputError("streams apply to the CPU backends only")
        if spin_wait and (device == "cuda" or backend not in (None, "onnxruntime") or precision == "bf16"):
            raise InvalidInputError("spin_wait applies to the onnxruntime backend on the CPU only")
        if device == "cuda":
            return cls._load_cuda(precision, use_native, model, backend)
        if precision == "fp16":
            raise InvalidInputError("precision 'fp16' needs device 'cuda' (the CPU runs fp32, int8 and bf16)")
        if backend == "torch":
            raise InvalidInputError("backend 'torch' runs device 'cuda' only")
        backend = backend or ("openvino" if precision == "bf16" else "onnxruntime")
        if backend not in BACKENDS:
            raise InvalidInputError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
        if precision == "bf16" and backend != "openvino":
            raise InvalidInputError("precision 'bf16' runs on the openvino backend only")
        source = resolve(model)
        path = model_file(source, precision, use_native, calibration)
        if backend == "openvino":
            options = {"precision": precision, "batch_size": batch_size}
        else:
            options = {"spin_wait": spin_wait}
        runtime = create_backend(backend, os.fspath(path), threads=threads, streams=streams, **options)
        check_interface(os.fspath(source.path), runtime.inputs, runtime.outputs)
        warn_if_synthetic(source)
        return cls(runtime, source, precision=precision, device=device, use_native=use_native)

    @classmethod
    def _load_cuda(cls, precision: str, use_native: bool, model, backend: str | None) -> ResNet50:
        """The ONNX model converted to PyTorch (cached by md5) on the GPU: fp32 (TF32), fp16 or bf16."""
        if backend not in (None, "torch"):
            raise InvalidInputError(f"device 'cuda' runs on the torch backend, not {backend!r}")
        if precision == "int8":
            raise InvalidInputError("precision 'int8' runs on the CPU only; on device 'cuda' use fp32, fp16 or bf16")
        require_cuda()  # one clear line before any model file is built
        source = resolve(model)
        runtime = create_backend("torch", os.fspath(source.path), device="cuda", precision=precision, native=use_native)
        check_interface(os.fspath(source.path), runtime.inputs, runtime.outputs)
        warn_if_synthetic(source)
        return cls(runtime, source, precision=precision, device="cuda", use_native=use_native)

    @classmethod
    async def load_async(cls, *args: Any, **kwargs: Any) -> ResNet50:
        """:meth:`load` in a worker thread, so the event loop keeps running."""
        return await asyncio.to_thread(functools.partial(cls.load, *args, **kwargs))

    @property
    def weights(self) -> str:
        """ "synthetic", "mlperf" or "custom"."""
        return self.source.weights

    def preprocess(self, image: ImageInput | list[ImageInput]) -> tuple[np.ndarray, PreprocessContext]:
        """Image(s) → the tensor this model takes (float32, or uint8 when native) and context."""
        return preprocess(image, with_scaling=self.input_dtype == np.float32)

    def check_tensor(self, tensor: np.ndarray) -> None:
        """Refuse a tensor of the wrong type or shape, naming what was expected."""
        if not isinstance(tensor, np.ndarray):
            raise InvalidInputError(f"input tensor must be a numpy array, got {type(tensor).__name__}")
        expected = f"{self.input_dtype}[N,3,{INPUT_SIZE},{INPUT_SIZE}]"
        if tensor.dtype != self.input_dtype:
            hint = " (use_native models take the uint8 crop)" if self.use_native else ""
            raise InvalidInputError(f"input tensor has dtype {tensor.dtype}, expected {expected}{hint}")
        if tensor.ndim != 4 or tensor.shape[1:] != (3, INPUT_SIZE, INPUT_SIZE) or tensor.shape[0] < 1:
            raise InvalidInputError(f"input tensor has shape {list(tensor.shape)}, expected {expected}")

    def run(self, tensor: np.ndarray, top_k: int = 5) -> dict[str, np.ndarray]:
        """One batch of any size → the model's named outputs."""
        self.check_tensor(tensor)
        if not 1 <= top_k <= NUM_CLASSES - 1:
            raise InvalidInputError(f"top_k must be in 1..{NUM_CLASSES - 1}, got {top_k}")
        feeds = {self.input_name: np.ascontiguousarray(tensor)}
        if self._takes_top_k:
            feeds[TOPK_INPUT] = np.array([top_k], np.int64)
        return self.backend.run(feeds)

    __call__ = run

    async def run_async(self, tensor: np.ndarray, top_k: int = 5) -> dict[str, np.ndarray]:
        """:meth:`run` in a worker thread (the backend releases the GIL)."""
        return await asyncio.to_thread(self.run, tensor, top_k)

    def postprocess(
        self, outputs: dict[str, np.ndarray], ctx: PreprocessContext | None = None, top_k: int = 5
    ) -> Classification | list[Classification]:
        """Outputs → label, class id, score and top-k (one result, or a list for a list)."""
        return postprocess(outputs, ctx, top_k)

    def classify(self, image: ImageInput | list[ImageInput], top_k: int = 5) -> Classification | list[Classification]:
        """preprocess → run → postprocess in one call."""
        tensor, ctx = self.preprocess(image)
        return self.postprocess(self.run(tensor, top_k), ctx, top_k)

    def info(self) -> dict:
        """What is running: model file, weights, checksum, backend, precision, threads, CPU."""
        return {
            "model": os.fspath(self.source.path),
            "model_origin": self.source.origin,
            "weights": self.weights,
            "md5": self.source.md5,
            "mlperf_release": self.source.release,
            "runtime_model": self.backend.model_path,
            "precision": self.precision,
            "device": self.device,
            "use_native": self.use_native,
            "input": f"{self.input_name} {self.input_dtype}[N,3,224,224]",
            **self.backend.describe(),
            "python": platform.python_version(),
            "cpu": cpu_info(),
        }
