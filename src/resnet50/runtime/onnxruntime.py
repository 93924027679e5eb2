"""ONNX Runtime on CPU: the default backend."""

from __future__ import annotations

import numpy as np

from resnet50.core.cpu import physical_cores
from resnet50.core.errors import ModelFileError, first_line
from resnet50.graph.interface import TensorSpec
from resnet50.runtime.base import Backend, StreamPool

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(uint8)": "uint8",
    "tensor(int64)": "int64",
    "tensor(float16)": "float16",
}


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
        self.threads, self.streams = threads or physical_cores(), streams
        self.spin_wait = spin_wait
        # One session per stream; an uneven split gives the first sessions one thread more.
        shares = [max(1, self.threads // streams + (i < self.threads % streams)) for i in range(streams)]
        try:
            sessions = [
                ort.InferenceSession(model_path, self._options(share), providers=["CPUExecutionProvider"])
                for share in shares
            ]
        except Exception as exc:
            raise ModelFileError(
                f"{model_path}: not a readable ONNX model (truncated or not ONNX?): {first_line(exc)}"
            ) from None
        self.session = sessions[0]
        self._pool = StreamPool(sessions)
        self._outputs = [o.name for o in self.session.get_outputs()]

    def _options(self, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # By default idle inference threads sleep instead of spinning: spinning bought no
        # throughput but took the cores that decode threads and a server's event loop need
        # (a longer load-test tail). A process that only runs the model gains batch-1 latency
        # from it. Figures: docs/performance.md.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spin_wait else "0")
        return options

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
