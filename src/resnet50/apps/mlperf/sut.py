"""The LoadGen system under test: a sample library in RAM and batching inference workers.

One worker thread per model stream takes samples from a shared queue; LoadGen's issue thread
only enqueues them, so:
- Offline: the one big query is cut into batches of ``batch_size``;
- Server: whatever queued while the last batch ran forms the next batch (up to
  ``batch_size``), and the worker waits at most ``batch_timeout_ms`` for a batch to
  fill, which bounds the latency it adds;
- SingleStream / MultiStream: each query (1 or N samples) is one batch.
With several streams, one worker's stacking, labelling and LoadGen calls overlap another's
inference instead of leaving the cores idle between batches.
Each response is the float32 0..999 label, as the reference harness writes it.
"""

from __future__ import annotations

import queue
import threading
import time

import numpy as np

from resnet50.apps.imagenet import ImagenetDataset
from resnet50.apps.mlperf.accuracy import encode_labels
from resnet50.core.constants import ARGMAX_OUTPUT, TOPK_OUTPUT_IDS
from resnet50.core.registry import MLPERF_CLASSES, ClassLayout


def labels_from_outputs(outputs: dict[str, np.ndarray], classes: ClassLayout = MLPERF_CLASSES) -> np.ndarray:
    """0..999 labels as the reference harnesses compute them: ``ArgMax:0 - 1`` for MLPerf's 1001
    classes (background → -1), ``ArgMax:0`` itself for 1000 (PyTorch's reference, offset 0).

    Native models have no ArgMax; their top-1 foreground class id minus 1 is used.
    """
    if ARGMAX_OUTPUT in outputs:
        return np.asarray(outputs[ARGMAX_OUTPUT]).reshape(-1) - classes.first
    return np.asarray(outputs[TOPK_OUTPUT_IDS])[:, 0] - 1


class SampleLibrary:
    """LoadGen's QSL: loads the requested samples' model inputs into RAM."""

    def __init__(self, dataset: ImagenetDataset, dtype: np.dtype, performance_count: int = 1024):
        self.dataset = dataset
        self.dtype = np.dtype(dtype)
        self.performance_count = min(performance_count, len(dataset))
        self.samples: dict[int, np.ndarray] = {}

    def load(self, indices: list[int]) -> None:
        for index in indices:
            if index not in self.samples:
                self.samples[index] = self.dataset.tensor([index], self.dtype)[0]

    def unload(self, indices: list[int]) -> None:
        for index in indices:
            self.samples.pop(index, None)

    def batch(self, indices: list[int]) -> np.ndarray:
        return np.stack([self.samples[i] for i in indices])

    def construct(self):
        import mlperf_loadgen as lg

        return lg.ConstructQSL(len(self.dataset), self.performance_count, self.load, self.unload)


class ResNet50SUT:
    """Runs issued queries on ``model`` in batches; see the module docstring for the policy."""

    def __init__(
        self,
        model,
        library: SampleLibrary,
        *,
        scenario: str,
        batch_size: int = 8,
        batch_timeout_ms: float = 0.0,
        workers: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.library = library
        self.scenario = scenario
        self.batch_size = batch_size
        self.batch_timeout_s = batch_timeout_ms / 1000.0
        self.error: BaseException | None = None
        self.batches: list[int] = []
        self._queue: queue.Queue = queue.Queue()
        self._collecting = threading.Lock()
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self._workers = [
            threading.Thread(target=self._work, name=f"resnet50-sut-{i}", daemon=True) for i in range(workers)
        ]

    def __enter__(self) -> ResNet50SUT:
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc) -> None:
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            worker.join()

    def construct(self):
        import mlperf_loadgen as lg

        return lg.ConstructSUT(self.issue_queries, self.flush_queries)

    def issue_queries(self, samples) -> None:
        if self.scenario in ("SingleStream", "MultiStream"):
            self._queue.put(list(samples))  # one query is one batch, whatever its size
        else:
            for sample in samples:
                self._queue.put(sample)

    def flush_queries(self) -> None:
        pass

    def _next_batch(self, first) -> list:
        if isinstance(first, list):
            return first
        batch = [first]
        deadline = time.monotonic() + self.batch_timeout_s
        while len(batch) < self.batch_size:
            try:
                wait = deadline - time.monotonic()
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None or isinstance(item, list):
                self._queue.put(item)  # not a single sample: leave it for the next round (or worker)
                break
            batch.append(item)
        return batch

    def _work(self) -> None:
        while True:
            # One worker collects at a time, so a batch can fill for batch_timeout_ms without the
            # idle workers taking its samples away.
            with self._collecting:
                first = self._queue.get()
                if first is None:
                    return
                batch = self._next_batch(first)
            self._complete(batch)

    def _complete(self, samples: list) -> None:
        import mlperf_loadgen as lg

        if self.error is not None:  # after a failure, answer the rest at once: the run reports it
            lg.QuerySamplesComplete([lg.QuerySampleResponse(s.id, 0, 0) for s in samples])
            return
        try:
            tensor = self.library.batch([s.index for s in samples])
            labels = encode_labels(labels_from_outputs(self.model.run(tensor, 1), self.model.classes))
            self.batches.append(len(samples))
        except Exception as exc:
            # LoadGen waits for every sample, so a failure must not kill this thread: answer with
            # nothing, and the run reports the error when LoadGen returns
            self.error = self.error or exc
            lg.QuerySamplesComplete([lg.QuerySampleResponse(s.id, 0, 0) for s in samples])
            return
        address = labels.ctypes.data
        lg.QuerySamplesComplete(
            [
                lg.QuerySampleResponse(s.id, address + i * labels.itemsize, labels.itemsize)
                for i, s in enumerate(samples)
            ]
        )
