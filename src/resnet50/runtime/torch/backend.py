"""PyTorch backend: the ONNX model converted to a torch module, on CUDA (or on CPU as a reference).

On CUDA: fp32 with TF32 tensor cores, fp16 or bf16 weights; channels-last memory;
CUDA graphs captured per batch size on first use (replayed with the input copied into
a static buffer); optional ``torch.compile`` whose compile time is measured and whose
Inductor artefacts are cached under the package cache. Inputs arrive through a pinned
staging buffer and a non-blocking copy. Softmax, arg-max and top-k are computed in float32.

torch is an optional extra: importing this module needs no torch; opening it without torch
or without a CUDA device raises :class:`BackendUnavailableError` with one line saying which.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from typing import Any

import numpy as np

from resnet50.core.cache import cache_dir
from resnet50.core.constants import (
    ARGMAX_OUTPUT,
    INPUT_NAME,
    INPUT_SIZE,
    SOFTMAX_OUTPUT,
    TOPK_INPUT,
    TOPK_OUTPUT_IDS,
    TOPK_OUTPUT_SCORES,
    UINT8_INPUT_NAME,
)
from resnet50.core.errors import BackendUnavailableError, InvalidInputError
from resnet50.core.registry import MLPERF_CLASSES, MLPERF_PREPROCESSING, ClassLayout, Preprocessing
from resnet50.graph.interface import TensorSpec
from resnet50.runtime.base import Backend
from resnet50.runtime.torch.convert import build_module, load_converted

PRECISIONS = ("fp32", "fp16", "bf16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
MAX_GRAPHS = 16  # distinct batch sizes kept as CUDA graphs; others run eagerly


def import_torch():
    """``torch``, or :class:`BackendUnavailableError` saying it is not installed."""
    try:
        import torch
    except ImportError:
        raise BackendUnavailableError(
            "device 'cuda' needs PyTorch, which is not installed (pip install 'resnet50[cuda]')"
        ) from None
    return torch


def require_cuda():
    """``torch`` with a usable CUDA device, or :class:`BackendUnavailableError` saying what is missing."""
    torch = import_torch()
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA support (a CPU-only wheel)"
        raise BackendUnavailableError(
            f"device 'cuda': no CUDA device available (torch {torch.__version__} has {build}; "
            "check nvidia-smi and CUDA_VISIBLE_DEVICES)"
        )
    return torch


class TorchBackend(Backend):
    """ResNet50 v1.5 on PyTorch; same inputs and outputs as the ONNX model (or its native variant)."""

    name = "torch"

    def __init__(
        self,
        model_path: str,
        *,
        device: str = "cuda",
        precision: str = "fp32",
        native: bool = False,
        channels_last: bool | None = None,
        cuda_graphs: bool | None = None,
        compile_mode: str | None = None,
        threads: int | None = None,
        streams: int = 1,
        preprocessing: Preprocessing = MLPERF_PREPROCESSING,
        classes: ClassLayout = MLPERF_CLASSES,
    ):
        super().__init__(model_path)
        if streams != 1:
            raise InvalidInputError("the torch backend runs one stream (CUDA orders its own work)")
        if precision not in PRECISIONS:
            raise InvalidInputError(
                f"precision {precision!r} is not one of {', '.join(PRECISIONS)} for the torch backend"
            )
        if compile_mode is not None and compile_mode not in COMPILE_MODES:
            raise InvalidInputError(f"compile mode {compile_mode!r} is not one of {', '.join(COMPILE_MODES)}")
        if device not in ("cuda", "cpu") and not device.startswith("cuda:"):
            raise InvalidInputError(f"device {device!r} is not cuda, cuda:N or cpu")
        torch = require_cuda() if device.startswith("cuda") else import_torch()
        self.torch = torch
        self.device = torch.device(device)
        on_cuda = self.device.type == "cuda"
        self.precision = precision
        self.native = native
        self.channels_last = on_cuda if channels_last is None else channels_last
        self.cuda_graphs = on_cuda if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and not on_cuda:
            raise BackendUnavailableError("CUDA graphs need device 'cuda'")
        self.compile_mode = compile_mode
        if compile_mode in ("reduce-overhead", "max-autotune"):
            self.cuda_graphs = False  # these modes capture CUDA graphs themselves
        if on_cuda:
            torch.backends.cudnn.benchmark = True
            if precision == "fp32":  # process-wide switches: set, never cleared, so backends do not fight
                torch.backends.cuda.matmul.allow_tf32 = True
                torch.backends.cudnn.allow_tf32 = True
        elif threads:
            torch.set_num_threads(threads)
        self.threads = threads or torch.get_num_threads()

        start = time.perf_counter()
        converted, self.from_cache = load_converted(model_path)
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        module = build_module(converted).to(self.device, self.dtype)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module
        self.load_seconds = time.perf_counter() - start
        self.preprocessing = preprocessing
        self.classes = classes
        as_tensor = functools.partial(torch.tensor, dtype=torch.float32, device=self.device)
        self.means = as_tensor(preprocessing.mean).view(1, 3, 1, 1)
        self.stds = as_tensor(preprocessing.std).view(1, 3, 1, 1)
        self.forward_fn = self._compiled() if compile_mode else module
        self.compile_seconds: dict[int, float] = {}
        self._graphs: dict[tuple[int, str, int], Any] = {}  # (batch, input dtype, top_k) → captured graph
        self._staging: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def _compiled(self):
        os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
        os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
        if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir() / "torch" / "inductor")
        return self.torch.compile(self.module, mode=self.compile_mode, dynamic=False)

    # -- interface ----------------------------------------------------------------------
    @property
    def inputs(self) -> list[TensorSpec]:
        if self.native:
            return [
                TensorSpec(UINT8_INPUT_NAME, "uint8", ("N", 3, INPUT_SIZE, INPUT_SIZE)),
                TensorSpec(TOPK_INPUT, "int64", (1,)),
            ]
        return [TensorSpec(INPUT_NAME, "float32", ("N", 3, INPUT_SIZE, INPUT_SIZE))]

    @property
    def outputs(self) -> list[TensorSpec]:
        if self.native:
            return [
                TensorSpec(TOPK_OUTPUT_SCORES, "float32", ("N", "k")),
                TensorSpec(TOPK_OUTPUT_IDS, "int64", ("N", "k")),
            ]
        return [
            TensorSpec(ARGMAX_OUTPUT, "int64", ("N",)),
            TensorSpec(SOFTMAX_OUTPUT, "float32", ("N", self.classes.count)),
        ]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        name = UINT8_INPUT_NAME if self.native else INPUT_NAME
        array = feeds[name]
        top_k = int(np.asarray(feeds.get(TOPK_INPUT, [5])).ravel()[0])
        with self._lock:
            x = self._upload(array)
            out = self._infer_locked(x, top_k)
            return {k: v.cpu().numpy() for k, v in out.items()}

    def infer(self, x, top_k: int = 5) -> dict[str, Any]:
        """Run a torch tensor already on the device (uint8 crops, or float32 minus means); torch outputs.

        This is the entry point of GPU preprocessing: no trip through host memory.
        """
        with self._lock:
            out = self._infer_locked(x.to(self.device, non_blocking=True), top_k)
            return {k: v.clone() for k, v in out.items()}

    def describe(self) -> dict:
        torch = self.torch
        facts = {
            "backend": self.name,
            "backend_version": torch.__version__,
            "torch_device": str(self.device),
            "torch_precision": self.precision,
            "tf32": self.precision == "fp32" and self.device.type == "cuda",
            "channels_last": self.channels_last,
            "cuda_graphs": self.cuda_graphs,
            "cuda_graph_batch_sizes": sorted({key[0] for key in self._graphs}),
            "compile_mode": self.compile_mode,
            "compile_seconds": {str(k): round(v, 2) for k, v in sorted(self.compile_seconds.items())},
            "torch_weights_cached": self.from_cache,
            "threads": self.threads,
        }
        if self.device.type == "cuda":
            facts["gpu"] = torch.cuda.get_device_name(self.device)
            facts["cuda"] = torch.version.cuda
        return facts

    # -- internals ----------------------------------------------------------------------
    def _upload(self, array: np.ndarray):
        """numpy → device tensor through a reused pinned buffer (plain copy on CPU)."""
        torch = self.torch
        host = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type != "cuda":
            return host
        key = (host.dtype, tuple(host.shape[1:]))
        staging = self._staging.get(key)
        if staging is None or staging.shape[0] < host.shape[0]:
            staging = torch.empty((max(host.shape[0], 8), *host.shape[1:]), dtype=host.dtype, pin_memory=True)
            self._staging[key] = staging
        # The previous non-blocking copy out of this buffer finished: outputs were read back under the lock.
        part = staging[: host.shape[0]]
        part.copy_(host)
        return part.to(self.device, non_blocking=True)

    def _prepare(self, x):
        """uint8 crops or the float32 model input → the module's dtype and memory format; crops are
        normalized with the float32 operations of :func:`resnet50.processing.preprocess.normalize`."""
        if x.dtype == self.torch.uint8:
            x = x.float()
            if self.preprocessing.scale != 1.0:
                x = x / self.preprocessing.scale
            x = x - self.means
            if self.preprocessing.divides:
                x = x / self.stds
        x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=self.torch.channels_last)
        return x

    def _forward(self, x, top_k: int) -> dict[str, Any]:
        torch = self.torch
        logits = self.forward_fn(self._prepare(x)).float()
        scores = torch.softmax(logits, dim=1)
        if not self.native:
            return {ARGMAX_OUTPUT: scores.argmax(dim=1), SOFTMAX_OUTPUT: scores}
        # Stable descending sort: ties go to the lower class id, as in resnet50.processing.postprocess.
        values, order = torch.sort(scores[:, self.classes.first :], dim=1, descending=True, stable=True)
        return {TOPK_OUTPUT_SCORES: values[:, :top_k], TOPK_OUTPUT_IDS: order[:, :top_k] + 1}

    def _infer_locked(self, x, top_k: int) -> dict[str, Any]:
        if self.native and not 1 <= top_k <= self.classes.foreground:
            raise InvalidInputError(f"top_k must be in 1..{self.classes.foreground}, got {top_k}")
        batch = int(x.shape[0])
        torch = self.torch
        with torch.inference_mode():
            if self.compile_mode and batch not in self.compile_seconds:
                start = time.perf_counter()
                out = self._forward(x, top_k)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self.compile_seconds[batch] = time.perf_counter() - start
                if not self.cuda_graphs:
                    return out
            if not self.cuda_graphs:
                return self._forward(x, top_k)
            key = (batch, str(x.dtype), top_k if self.native else 0)
            graph = self._graphs.get(key)
            if graph is None:
                if len(self._graphs) >= MAX_GRAPHS:
                    return self._forward(x, top_k)
                graph = self._graphs[key] = self._capture(x, top_k)
            static_in, cuda_graph, static_out = graph
            static_in.copy_(x, non_blocking=True)
            cuda_graph.replay()
            return static_out

    def _capture(self, x, top_k: int):
        """Warm up on a side stream, then record one forward pass for this batch shape."""
        torch = self.torch
        static_in = torch.empty_like(x, device=self.device)
        static_in.copy_(x)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):
                self._forward(static_in, top_k)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self._forward(static_in, top_k)
        return static_in, graph, static_out
