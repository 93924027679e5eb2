"""Throughput and latency of the model, inference only or end to end from image files."""

from __future__ import annotations

import itertools
import os
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from resnet50.apps.pipeline import StageTimes, classify_stream
from resnet50.core.cache import cache_dir
from resnet50.core.samples import synthetic_batch, write_jpegs

DEFAULT_IMAGE_COUNT = 200


@dataclass
class BenchResult:
    mode: str
    precision: str
    backend: str
    batch: int
    threads: int
    streams: int
    weights: str
    native: bool
    spin_wait: bool
    images: int
    seconds: float
    images_per_s: float
    latency_ms: dict[str, float]  # per batch (infer) or per image, submission to result (e2e)
    stages_ms_per_image: dict[str, float] = field(default_factory=dict)
    load_s: float = 0.0
    first_result_s: float = 0.0
    peak_rss_mb: float = 0.0
    gmac_per_s: float = 0.0
    errors: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentiles(samples_s: list[float]) -> dict[str, float]:
    if not samples_s:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0}
    ms = np.asarray(samples_s) * 1000
    return {f"p{q}": round(float(np.percentile(ms, q)), 3) for q in (50, 90, 99)}


def default_images() -> list[Path]:
    """The built-in benchmark set: generated JPEGs of ImageNet-like sizes, cached."""
    return write_jpegs(cache_dir() / "bench_images", DEFAULT_IMAGE_COUNT)


def _result(model, mode: str, batch: int, images: int, seconds: float, latencies: list[float], **extra) -> BenchResult:
    return BenchResult(
        mode=mode,
        precision=model.precision,
        backend=model.backend.name,
        batch=batch,
        threads=getattr(model.backend, "threads", 0),
        streams=getattr(model.backend, "streams", 1),
        weights=model.weights,
        native=model.use_native,
        spin_wait=getattr(model.backend, "spin_wait", False),
        images=images,
        seconds=round(seconds, 3),
        images_per_s=round(images / seconds, 2) if seconds else 0.0,
        latency_ms=percentiles(latencies),
        peak_rss_mb=round(peak_rss_mb(), 1),
        gmac_per_s=round(images * model.weights_entry.gmac / seconds, 1) if seconds else 0.0,
        **extra,
    )


def bench_infer(model, batch: int = 8, duration: float = 10.0, warmup: float = 2.0) -> BenchResult:
    """Inference only on one fixed preprocessed batch, repeated for ``duration`` seconds; with
    several model streams, one calling thread per stream keeps them all busy."""
    import threading

    tensor, _ = model.preprocess(synthetic_batch(batch, seed=4242))
    streams = getattr(model.backend, "streams", 1)
    model.run(tensor)

    def keep_running(until: float, latencies: list[float]) -> None:
        while (now := time.perf_counter()) < until or not latencies:
            model.run(tensor)
            latencies.append(time.perf_counter() - now)

    def on_every_stream(seconds: float) -> list[float]:
        until = time.perf_counter() + seconds
        per_stream: list[list[float]] = [[] for _ in range(streams)]
        failures: list[BaseException] = []

        def caller(runs: list[float]) -> None:
            try:
                keep_running(until, runs)
            except BaseException as exc:  # raised again below: a failing stream fails the bench
                failures.append(exc)

        callers = [threading.Thread(target=caller, args=(runs,)) for runs in per_stream[1:]]
        for thread in callers:
            thread.start()
        try:
            keep_running(until, per_stream[0])
        finally:
            for thread in callers:
                thread.join()
        if failures:
            raise failures[0]
        return [latency for runs in per_stream for latency in runs]

    on_every_stream(warmup)
    start = time.perf_counter()
    latencies = on_every_stream(duration)
    seconds = time.perf_counter() - start
    return _result(model, "infer", batch, batch * len(latencies), seconds, latencies)


def bench_e2e(
    model,
    files: list[str | os.PathLike] | None = None,
    batch: int = 8,
    duration: float = 10.0,
    warmup: float = 2.0,
    workers: int | None = None,
    max_file_mb: float | None = None,
) -> BenchResult:
    """Files in, labels out through the overlapped pipeline, cycling the files for ``duration`` s.

    Latency is per image, from the moment the pipeline takes it to its result. Files over
    ``max_file_mb`` count as errors.
    """
    files = [os.fspath(f) for f in (files or default_images())]
    start = time.perf_counter()
    first_result = 0.0
    taken: dict[int, float] = {}

    def stamped():
        for i, path in enumerate(itertools.cycle(files)):
            taken[i] = time.perf_counter()
            yield path

    times = StageTimes()
    count = errors = 0
    latencies: list[float] = []
    measuring_since = None
    for result in classify_stream(
        model, stamped(), batch_size=batch, workers=workers, times=times, max_file_mb=max_file_mb
    ):
        now = time.perf_counter()
        if not first_result:
            first_result = now - start
        if measuring_since is None and now - start >= warmup:
            measuring_since, times_at_start = (
                now,
                StageTimes(times.decode, times.preprocess, times.infer, times.postprocess),
            )
        if measuring_since is not None:
            count += 1
            errors += not result.ok
            latencies.append(now - taken.pop(result.index))
            if now - measuring_since >= duration:
                break
        else:
            taken.pop(result.index, None)
    seconds = time.perf_counter() - measuring_since
    stages = {
        "decode": (times.decode - times_at_start.decode) / count * 1000,
        "preprocess": (times.preprocess - times_at_start.preprocess) / count * 1000,
        "infer": (times.infer - times_at_start.infer) / count * 1000,
        "postprocess": (times.postprocess - times_at_start.postprocess) / count * 1000,
    }
    return _result(
        model,
        "e2e",
        batch,
        count,
        seconds,
        latencies,
        stages_ms_per_image={k: round(v, 3) for k, v in stages.items()},
        first_result_s=round(first_result, 3),
        errors=errors,
    )
