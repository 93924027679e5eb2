"""Image files in, labels out: decoding overlapped with batched inference, in input order.

Decode and resize run in a thread pool (OpenCV releases the GIL) while the calling thread
runs the model (ONNX Runtime releases it too). At most ``prefetch`` images are in flight,
so memory stays flat on any number of inputs. A bad image becomes an error row in its
place; the rest go on.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from resnet50.core.errors import InvalidInputError, ResNet50Error
from resnet50.core.files import max_file_bytes
from resnet50.core.registry import Preprocessing
from resnet50.processing.postprocess import Classification
from resnet50.processing.preprocess import PreprocessContext, crop_decoded, decode_image, describe, read_bytes


@dataclass
class Result:
    """One input's outcome: a classification, or the error that stopped it."""

    index: int
    source: str
    classification: Classification | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        if self.classification is None:
            return {"source": self.source, "error": self.error}
        return {**self.classification.to_dict(), "source": self.source}


@dataclass
class StageTimes:
    """Seconds spent per stage, summed over all images (decode and resize summed over workers)."""

    decode: float = 0.0
    preprocess: float = 0.0
    infer: float = 0.0
    postprocess: float = 0.0
    batches: list[int] = field(default_factory=list)


@dataclass
class _Prepared:
    index: int
    source: str
    crop: np.ndarray | None = None  # uint8 RGB CHW
    size: tuple[int, int] | None = None
    error: str | None = None
    decode_s: float = 0.0
    preprocess_s: float = 0.0


def _prepare(index: int, image, preprocessing: Preprocessing, max_bytes: int) -> _Prepared:
    item = _Prepared(index, describe(image))
    start = time.perf_counter()
    try:
        if isinstance(image, (str, os.PathLike)):
            image = read_bytes(image, max_bytes)
        image = decode_image(image, item.source, preprocessing)
        decoded = time.perf_counter()
        item.decode_s = decoded - start
        item.crop, item.size = crop_decoded(image, item.source, preprocessing)
        item.preprocess_s = time.perf_counter() - decoded
    except ResNet50Error as exc:
        item.error = str(exc)
    return item


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def classify_stream(
    model,
    images: Iterable,
    *,
    batch_size: int = 8,
    top_k: int = 5,
    workers: int | None = None,
    prefetch: int | None = None,
    times: StageTimes | None = None,
    max_file_mb: float | None = None,
) -> Iterator[Result]:
    """Classify ``images`` (paths, bytes, arrays) with ``model``; yield :class:`Result` in order.

    Image files over ``max_file_mb`` (default :data:`resnet50.core.files.DEFAULT_MAX_FILE_MB`) and
    anything but regular files become error rows without being read.
    """
    if batch_size < 1:
        raise InvalidInputError(f"batch size must be at least 1, got {batch_size}")
    max_bytes = max_file_bytes(max_file_mb)
    workers = workers or default_workers()
    prefetch = prefetch or max(2 * batch_size, 4 * workers)
    times = times if times is not None else StageTimes()
    numbered = enumerate(images)
    with ThreadPoolExecutor(workers, thread_name_prefix="resnet50-prep") as pool:
        inflight: deque[Future] = deque(
            pool.submit(_prepare, i, img, model.preprocessing, max_bytes)
            for i, img in itertools.islice(numbered, prefetch)
        )
        try:
            batch: list[tuple] = []
            while inflight:
                item = inflight.popleft().result()
                for i, img in itertools.islice(numbered, 1):
                    inflight.append(pool.submit(_prepare, i, img, model.preprocessing, max_bytes))
                times.decode += item.decode_s
                times.preprocess += item.preprocess_s
                batch.append(item)
                # Counting error rows too keeps them flowing when many inputs in a row are bad.
                if len(batch) >= batch_size or not inflight:
                    yield from _finish(model, batch, top_k, times)
                    batch = []
        finally:
            for future in inflight:
                future.cancel()


def _finish(model, batch: list[_Prepared], top_k: int, times: StageTimes) -> Iterator[Result]:
    good = [entry for entry in batch if entry.crop is not None]
    classified: dict[int, Classification] = {}
    if good:
        crops = np.stack([entry.crop for entry in good])
        tensor = model.input_from_crops(crops)
        start = time.perf_counter()
        outputs = model.run(tensor, top_k)
        times.infer += time.perf_counter() - start
        times.batches.append(len(good))
        start = time.perf_counter()
        ctx = PreprocessContext([e.source for e in good], [e.size for e in good], batched=True)
        for entry, result in zip(good, model.postprocess(outputs, ctx, top_k)):
            classified[entry.index] = result
        times.postprocess += time.perf_counter() - start
    for entry in batch:
        yield Result(entry.index, entry.source, classified.get(entry.index), entry.error)
