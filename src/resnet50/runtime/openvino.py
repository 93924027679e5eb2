"""OpenVINO on CPU: bf16 (AVX512-BF16/AMX) and int8 from the same ONNX files. Optional extra."""

from __future__ import annotations

import threading

import numpy as np

from ..cpu import physical_cores
from ..errors import BackendUnavailableError, ModelFileError
from .base import Backend, StreamPool, TensorSpec

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

    def __init__(self, model_path: str, *, threads: int | None = None, streams: int = 1, precision: str = "fp32"):
        try:
            import openvino as ov
        except ImportError:
            raise BackendUnavailableError("backend 'openvino' needs: pip install 'resnet50[openvino]'") from None
        from ..weights import cache_dir

        super().__init__(model_path)
        self.precision = precision
        core = ov.Core()
        config = {
            "INFERENCE_NUM_THREADS": max(threads or physical_cores(), streams),
            "NUM_STREAMS": streams,  # OpenVINO splits the threads between the streams
            "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "CACHE_DIR": str(cache_dir() / "openvino"),
        }
        if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise BackendUnavailableError("precision 'bf16' needs a CPU with AVX512-BF16 or AMX; this one has neither")
        try:
            self.compiled = core.compile_model(core.read_model(model_path), "CPU", config)
        except RuntimeError as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelFileError(f"{model_path}: OpenVINO could not read the model: {first_line}") from None
        # OpenVINO caps both at what the CPU has: report what it actually runs.
        self.streams = int(self.compiled.get_property("NUM_STREAMS"))
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        self._pool = StreamPool([self.compiled.create_infer_request() for _ in range(self.streams)])
        self._outputs = [port.get_any_name() for port in self.compiled.outputs]

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
        return self._specs(self.compiled.inputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._specs(self.compiled.outputs)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._pool.take() as request:
            if _warmed_up.is_set():
                results = request.infer(feeds, share_inputs=True)
            else:
                with _FIRST_INFER:
                    results = request.infer(feeds, share_inputs=True)
                    _warmed_up.set()
            return {name: np.array(results[port]) for name, port in zip(self._outputs, self.compiled.outputs)}

    def describe(self) -> dict:
        import openvino as ov

        return self._cpu_facts(ov.__version__)
