"""The model-zoo API: ``ResNet50.load()``, ``preprocess``, ``run``, ``postprocess``."""

from __future__ import annotations

import asyncio
import functools
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from resnet50.core.constants import INPUT_NAME, INPUT_SIZE, TOPK_INPUT, UINT8_INPUT_NAME
from resnet50.core.cpu import cpu_info, physical_cores
from resnet50.core.errors import InvalidInputError, ModelFileError
from resnet50.core.labels import labels, read_labels
from resnet50.core.options import DEFAULT_BACKEND, DEFAULT_DEVICE, DEFAULT_PRECISION, choose
from resnet50.core.registry import ClassLayout, Weights, with_classes
from resnet50.derived.files import output_classes
from resnet50.derived.variants import model_file
from resnet50.processing.postprocess import Classification, postprocess
from resnet50.processing.preprocess import ImageInput, PreprocessContext, normalize, preprocess, preprocess_one
from resnet50.runtime import Backend, check_interface, create_backend
from resnet50.runtime.torch.backend import require_cuda
from resnet50.weights.source import ModelSource, resolve, warn_if_synthetic

#: What each backend is told beyond threads and streams.
_BACKEND_OPTIONS = {
    "onnxruntime": lambda **o: {"spin_wait": o["spin_wait"]},
    "openvino": lambda **o: {"precision": o["precision"], "batch_size": o["batch_size"]},
    "torch": lambda **o: {
        "device": "cuda",
        "precision": o["precision"],
        "native": o["native"],
        "preprocessing": o["source"].weights.preprocessing,
        "classes": o["classes"],
    },
}


def _classes_and_names(
    source: ModelSource, path: Path, labels_file: str | os.PathLike | None
) -> tuple[ClassLayout, tuple[str, ...]]:
    """The class layout of the file that runs and the names of its classes (``names[class_id]``)."""
    entry = source.weights
    count = entry.classes.count if source.verified else (output_classes(path) or entry.classes.count)
    classes = entry.classes if count == entry.classes.count else ClassLayout(count=count, background=False)
    if labels_file is not None:
        return classes, read_labels(labels_file, classes.foreground)
    if classes.foreground != 1000:
        raise ModelFileError(
            f"{source.path}: the model has {classes.foreground} classes, not ImageNet's 1000; "
            "name them with --labels FILE (one name per line)"
        )
    return classes, labels()


class ResNet50:
    """ResNet50 v1.5 image classifier: a weights entry's file, preprocessing and classes on a backend."""

    def __init__(
        self,
        backend: Backend,
        source: ModelSource,
        *,
        precision: str,
        device: str,
        use_native: bool,
        classes: ClassLayout | None = None,
        names: tuple[str, ...] | None = None,
    ):
        self.backend = backend
        self.source = source
        self.precision = precision
        self.device = device
        self.use_native = use_native
        self.classes = classes or source.weights.classes
        self.names = names or labels()
        self.weights_entry = with_classes(source.weights, self.classes.count)
        self.preprocessing = source.weights.preprocessing
        names_in = {spec.name for spec in backend.inputs}
        self.input_name = UINT8_INPUT_NAME if UINT8_INPUT_NAME in names_in else INPUT_NAME
        self.input_dtype = np.dtype(np.uint8 if self.input_name == UINT8_INPUT_NAME else np.float32)
        self._takes_top_k = TOPK_INPUT in names_in

    @classmethod
    def load(
        cls,
        precision: str = DEFAULT_PRECISION,
        device: str = DEFAULT_DEVICE,
        use_native: bool = False,
        *,
        weights: str | Weights | None = None,
        model: str | os.PathLike | None = None,
        labels: str | os.PathLike | None = None,
        threads: int | None = None,
        streams: int = 1,
        backend: str | None = DEFAULT_BACKEND,
        calibration: str | os.PathLike | None = None,
        spin_wait: bool = False,
        batch_size: int | None = None,
    ) -> ResNet50:
        """Load the model: ``weights`` names a registry entry (``resnet50 weights`` lists them) and
        ``model`` its file (a ``.pth`` checkpoint is converted once); with neither, the fetched
        MLPerf file when present, else synthetic weights (said once on stderr).

        ``(device, backend, precision)`` must be a row of :data:`resnet50.core.options.OPTIONS`;
        ``backend="auto"`` takes the fastest installed backend for the precision. ``labels`` is a
        file of class names, one per line, for a fine-tune with its own classes.
        ``use_native=True`` fuses normalization and top-k into the graph: ``preprocess`` then
        gives the uint8 crop and ``run`` returns the top-k directly. ``calibration`` is a folder
        of images, or a list file of them (.txt, paths relative to it), that int8 calibrates on:
        the first 64 (default: generated photos). ``streams=N`` splits the threads into N
        independent model runs that may proceed at once (``run`` from N threads).
        ``spin_wait=True`` keeps ONNX Runtime's idle threads busy-waiting: lower batch-1 latency
        when nothing else needs the cores. ``batch_size`` is the batch ``run`` will mostly get:
        OpenVINO compiles for exactly that size (other sizes still run, on a second model
        compiled when one first comes); the other backends ignore it.
        """
        option = choose(device, backend, precision, spin_wait=spin_wait)
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise InvalidInputError(f"batch_size must be a whole number of at least 1, got {batch_size!r}")
        if threads is not None and threads < 1:
            raise InvalidInputError(f"threads must be at least 1, got {threads}")
        if streams > 1 and not option.streams:
            raise InvalidInputError(f"streams apply to the CPU backends only, not {option.backend} on {device}")
        most_streams = threads or physical_cores()
        if not 1 <= streams <= most_streams:
            raise InvalidInputError(f"streams must be in 1..threads ({most_streams}), got {streams}")
        if option.device == "cuda":
            require_cuda()  # one clear line before any model file is built
        source = resolve(model, weights)
        on_cpu = option.device == "cpu"
        path = model_file(source, precision if on_cpu else "fp32", use_native and on_cpu, calibration)
        classes, names = _classes_and_names(source, path, labels)
        extra = _BACKEND_OPTIONS[option.backend](
            precision=precision, batch_size=batch_size, spin_wait=spin_wait, native=use_native, source=source,
            classes=classes,
        )  # fmt: skip
        runtime = create_backend(option.backend, os.fspath(path), threads=threads, streams=streams, **extra)
        check_interface(os.fspath(source.path), runtime.inputs, runtime.outputs)
        warn_if_synthetic(source)
        return cls(
            runtime, source, precision=precision, device=device, use_native=use_native, classes=classes, names=names
        )

    @classmethod
    async def load_async(cls, *args: Any, **kwargs: Any) -> ResNet50:
        """:meth:`load` in a worker thread, so the event loop keeps running."""
        return await asyncio.to_thread(functools.partial(cls.load, *args, **kwargs))

    @property
    def weights(self) -> str:
        """What results say they come from: the entry's name ("synthetic", "mlperf-opset11", ...)
        when the file's checksum proves it, else "custom"."""
        return self.source.kind

    def preprocess(self, image: ImageInput | list[ImageInput]) -> tuple[np.ndarray, PreprocessContext]:
        """Image(s) → the tensor this model takes (float32, or uint8 when native) and context."""
        return preprocess(image, with_scaling=self.input_dtype == np.float32, preprocessing=self.preprocessing)

    def crop(self, image: ImageInput, source: str | None = None) -> tuple[np.ndarray, tuple[int, int]]:
        """One image → (its uint8 RGB CHW crop, original (height, width)), by this model's preprocessing."""
        return preprocess_one(image, source, self.preprocessing)

    def input_from_crops(self, crops: np.ndarray) -> np.ndarray:
        """uint8 crops ``[N,3,224,224]`` → what :meth:`run` takes (the crops themselves when native)."""
        return crops if self.input_dtype == np.uint8 else normalize(crops, self.preprocessing)

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
        if not 1 <= top_k <= self.classes.foreground:
            raise InvalidInputError(f"top_k must be in 1..{self.classes.foreground}, got {top_k}")
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
        return postprocess(outputs, ctx, top_k, self.classes, self.names)

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
            "weights_entry": self.weights_entry.name,
            "preprocessing": self.preprocessing.name,
            "classes": self.classes.foreground,
            "md5": self.source.md5,
            "mlperf_release": self.source.release,
            "mlperf_division": self.weights_entry.mlperf_division if self.source.verified else None,
            "runtime_model": self.backend.model_path,
            "precision": self.precision,
            "device": self.device,
            "use_native": self.use_native,
            "input": f"{self.input_name} {self.input_dtype}[N,3,224,224]",
            **self.backend.describe(),
            "python": platform.python_version(),
            "cpu": cpu_info(),
        }
