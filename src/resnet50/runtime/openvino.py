"""OpenVINO on CPU: bf16 (AVX512-BF16/AMX) and int8 from the same ONNX files. Optional extra."""

from __future__ import annotations

import threading

import numpy as np

from resnet50.core.cache import cache_dir
from resnet50.core.constants import INPUT_SIZE
from resnet50.core.cpu import physical_cores
from resnet50.core.errors import BackendUnavailableError, ModelFileError, first_line
from resnet50.graph.interface import TensorSpec, has_image_shape, image_input
from resnet50.runtime.base import Backend, StreamPool

# OpenVINO's Python layer initialises C++ function statics on the first infer of the process
# (Type.to_dtype), running Python code inside them. Two threads doing their first infer at
# once can deadlock there (one holds the static, the other the GIL): a server's two streams
# did. So the process's first infer runs alone.
_FIRST_INFER = threading.Lock()
_warmed_up = threading.Event()

_OV_TYPES = {"f32": "float32", "u8": "uint8", "i64": "int64", "f16": "float16"}


def _dims(partial_shape) -> tuple:
    return tuple(d.get_length() if d.is_static else None for d in partial_shape)


class OpenVinoBackend(Backend):
    name = "openvino"

    def __init__(
        self,
        model_path: str,
        *,
        threads: int | None = None,
        streams: int = 1,
        precision: str = "fp32",
        batch_size: int | None = None,
    ):
        try:
            import openvino as ov
        except ImportError:
            raise BackendUnavailableError("backend 'openvino' needs: pip install 'resnet50[openvino]'") from None
        super().__init__(model_path)
        self.precision = precision
        self._core = ov.Core()
        self._config = {
            "INFERENCE_NUM_THREADS": max(threads or physical_cores(), streams),
            "NUM_STREAMS": streams,  # OpenVINO splits the threads between the streams
            "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "CACHE_DIR": str(cache_dir() / "openvino"),
        }
        if (batch_size is not None and streams > 1) or self._config["INFERENCE_NUM_THREADS"] < physical_cores():
            # OpenVINO pins each compiled model's stream threads to cores on its own, so runs of
            # the exact-batch and the any-batch model at once shared a core (a large loss of
            # throughput). Unpinned, the OS spreads them; one model alone runs as fast either way.
            # A model on fewer threads than the cores is pinned to the first ones, the very cores
            # every other such process takes too: two 1-thread Ray Serve replicas ran on one core.
            self._config["ENABLE_CPU_PINNING"] = False
        if precision == "bf16" and "BF16" not in self._core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise BackendUnavailableError("precision 'bf16' needs a CPU with AVX512-BF16 or AMX; this one has neither")
        try:
            self._model = self._core.read_model(model_path)
        except RuntimeError as exc:
            raise ModelFileError(f"{model_path}: OpenVINO could not read the model: {first_line(exc)}") from None
        self._outputs = [port.get_any_name() for port in self._model.outputs]
        image = image_input(self.inputs)
        self._image_input = image.name if image else None
        if image is None or not has_image_shape(image):
            batch_size = None  # not the MLPerf interface: compiled as it is, for the interface check to refuse
        self.batch_size = batch_size
        # One compiled model per batch size: `batch_size` exactly (static shapes: a little faster
        # at batch 1, see benchmarks/ov_batch_shapes.py), and None for any other size, compiled
        # when the first one comes.
        self._compiled: dict[int | None, tuple] = {}
        self._compile_lock = threading.Lock()
        self.compiled = self._compile(batch_size)[0]
        # OpenVINO caps both at what the CPU has: report what it actually runs.
        self.streams = int(self.compiled.get_property("NUM_STREAMS"))
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        self._pool = StreamPool(range(self.streams))  # stream i runs on each compiled model's request i

    def _compile(self, batch_size: int | None) -> tuple:
        """The compiled model for ``batch_size`` (None: any size) and one infer request per stream."""
        compiled = self._compiled.get(batch_size)
        if compiled is not None:
            return compiled
        with self._compile_lock:
            if batch_size not in self._compiled:
                try:
                    model = self._model
                    if batch_size is not None:
                        model = model.clone()
                        model.reshape({self._image_input: [batch_size, 3, INPUT_SIZE, INPUT_SIZE]})
                    compiled = self._core.compile_model(model, "CPU", self._config)
                except RuntimeError as exc:
                    raise ModelFileError(
                        f"{self.model_path}: OpenVINO could not compile the model: {first_line(exc)}"
                    ) from None
                # Same config, so the same number of streams as the first model: one request each.
                streams = int(compiled.get_property("NUM_STREAMS"))
                self._compiled[batch_size] = (compiled, [compiled.create_infer_request() for _ in range(streams)])
            return self._compiled[batch_size]

    @staticmethod
    def _specs(ports) -> list[TensorSpec]:
        return [
            TensorSpec(
                p.get_any_name(), _OV_TYPES.get(p.get_element_type().get_type_name(), "?"), _dims(p.get_partial_shape())
            )
            for p in ports
        ]

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._specs(self._model.inputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._specs(self._model.outputs)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        exact = self.batch_size is not None and len(feeds[self._image_input]) == self.batch_size
        compiled, requests = self._compile(self.batch_size if exact else None)
        with self._pool.take() as stream:
            request = requests[stream]
            if _warmed_up.is_set():
                results = request.infer(feeds, share_inputs=True)
            else:
                with _FIRST_INFER:
                    results = request.infer(feeds, share_inputs=True)
                    _warmed_up.set()
            return {name: np.array(results[port]) for name, port in zip(self._outputs, compiled.outputs)}

    def describe(self) -> dict:
        import openvino as ov

        compiled_for = ", ".join("any" if size is None else str(size) for size in list(self._compiled))
        return {**self._cpu_facts(ov.__version__), "compiled_for": f"batch {compiled_for}"}
