"""ONNX Runtime on CPU: the default backend."""

from __future__ import annotations

import os

import numpy as np

from ..errors import ModelFileError
from .base import Backend, StreamPool, TensorSpec

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(uint8)": "uint8",
    "tensor(int64)": "int64",
    "tensor(float16)": "float16",
}


def physical_cores() -> int:
    """Cores this process may use (affinity-aware); ONNX Runtime's default is the same count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(
        self,
        model_path: str,
        *,
        threads: int | None = None,
        streams: int = 1,
        spin_wait: bool = False,
    ):
        import onnxruntime as ort

        super().__init__(model_path)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        per_stream = max(1, (threads or physical_cores()) // streams)  # one session per stream
        self.threads, self.streams = per_stream * streams, streams
        options.intra_op_num_threads = per_stream
        options.inter_op_num_threads = 1
        # By default idle inference threads sleep instead of spinning: spinning bought no
        # throughput (int8 batch 8: 85-88 img/s either way) but took the cores that decode
        # threads and a server's event loop need (open-loop p99 236 -> 135 ms in one load test).
        # A process that only runs the model gains batch-1 latency from it (int8 p50 16.6 -> 15.3 ms).
        self.spin_wait = spin_wait
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_wait else "0")
        try:
            sessions = [
                ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"]) for _ in range(streams)
            ]
        except Exception as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelFileError(
                f"{model_path}: not a readable ONNX model (truncated or not ONNX?): {first_line}"
            ) from None
        self.session = sessions[0]
        self._pool = StreamPool(sessions)
        self._outputs = [o.name for o in self.session.get_outputs()]

    @staticmethod
    def _specs(values) -> list[TensorSpec]:
        return [TensorSpec(v.name, _ORT_TYPES.get(v.type, v.type), tuple(v.shape)) for v in values]

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._specs(self.session.get_inputs())

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._specs(self.session.get_outputs())

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._pool.take() as session:
            return dict(zip(self._outputs, session.run(self._outputs, feeds)))

    def describe(self) -> dict:
        import onnxruntime as ort

        return {**self._cpu_facts(ort.__version__), "spin_wait": self.spin_wait}
