"""A batch job: the rows of a dataset, classified locally or on Ray, streamed into an output file."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from resnet50.apps.batch.inputs import list_sources
from resnet50.apps.batch.rows import import_pyarrow, make_row, schema
from resnet50.apps.batch.writers import RowWriter, check_output, done_paths, drop_error_rows
from resnet50.core.errors import InvalidInputError
from resnet50.core.files import max_file_bytes

ENGINES = ("local", "ray")


@dataclass
class BatchSummary:
    """What a :func:`run_batch` call did."""

    output: str
    engine: str
    weights: str
    precision: str
    inputs: int  # paths the source names
    skipped: int  # already in the output (resume)
    classified: int  # rows written with a result
    errors: int  # rows written with an error
    seconds: float

    @property
    def rows(self) -> int:
        return self.classified + self.errors

    @property
    def images_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "rows": self.rows, "images_per_second": round(self.images_per_second, 2)}


def _check(engine: str, batch_size: int, top_k: int, ray_options: dict, max_file_mb: float | None) -> None:
    if engine not in ENGINES:
        raise InvalidInputError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
    max_file_bytes(max_file_mb)
    if engine == "local" and ray_options:
        raise InvalidInputError(f"options {', '.join(ray_options)} are for engine='ray' only")
    if batch_size < 1:
        raise InvalidInputError(f"batch size must be at least 1, got {batch_size}")
    if not 1 <= top_k <= 1000:
        raise InvalidInputError(f"top_k must be in 1..1000, got {top_k}")
    if engine == "ray":  # the extra is checked before anything is read, loaded or written
        from resnet50.apps.batch.ray_engine import import_ray

        import_ray()


def _load(model, load: dict):
    """A loaded model, or load one (a path or None → MLPerf/synthetic as ResNet50.load decides)."""
    from resnet50.api.model import ResNet50

    if isinstance(model, ResNet50):
        return model
    return ResNet50.load(model=model, **load)


def _chunks(
    paths: list[str], model, *, engine: str, batch_size: int, top_k: int, load: dict, ray_options: dict, max_file_mb
):
    """Lists of result row dicts, in input order."""
    if engine == "local":
        from resnet50.apps.batch.local import iter_chunks

        return iter_chunks(model, paths, batch_size=batch_size, top_k=top_k, max_file_mb=max_file_mb)
    from resnet50.apps.batch import ray_engine  # heavy: ray

    dataset = _ray_dataset(
        paths, model, batch_size=batch_size, top_k=top_k, load=load, max_file_mb=max_file_mb, **ray_options
    )
    return (table.to_pylist() for table in ray_engine.iter_tables(dataset))


def _ray_dataset(
    paths: list[str],
    model,
    *,
    batch_size: int,
    top_k: int,
    load: dict,
    max_file_mb=None,
    address=None,
    num_workers=None,
    cpus_per_worker=1.0,
    actor_class=None,
    max_restarts=None,
    preserve_order=True,
):
    from resnet50.apps.batch import ray_engine  # heavy: ray

    ray_engine.ensure_ray(address)
    options = {"actor_class": actor_class} if actor_class is not None else {}
    return ray_engine.build_dataset(
        paths,
        load={
            **load,
            "precision": model.precision,
            "device": model.device,
            "use_native": model.use_native,
            "backend": load.get("backend") or getattr(model.backend, "name", None),
            # A file the user named travels as a path; the default (fetched or synthetic) is
            # resolved on each node, and the checksum keeps every node on the driver's weights.
            "model": os.fspath(model.source.path) if model.source.origin in ("argument", "RESNET50_MODEL") else None,
        },
        md5=model.source.md5,
        preprocessing=model.preprocessing,
        batch_size=batch_size,
        top_k=top_k,
        num_workers=num_workers or 1,
        cpus_per_worker=cpus_per_worker,
        max_restarts=max_restarts,
        preserve_order=preserve_order,
        max_file_mb=max_file_mb,
        **options,
    )


@contextlib.contextmanager
def _ray_session(wanted: bool, address: str | None):
    """Connect to Ray for one job; shut it down after only if this job started it."""
    started = False
    if wanted:
        from resnet50.apps.batch.ray_engine import ensure_ray

        started = ensure_ray(address)
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


def _model_and_options(model, weights, labels, precision, device, use_native, threads, backend, calibration) -> tuple:
    """The loaded model for the driver, and the ``ResNet50.load`` arguments Ray actors reload it with."""
    load = {
        "weights": weights,
        "labels": labels,
        "precision": precision,
        "device": device,
        "use_native": use_native,
        "threads": threads,
        "backend": backend,
        "calibration": calibration,
    }
    return _load(model, load), load


def classify_dataset(
    source: str | os.PathLike | Iterable[str],
    *,
    engine: str = "local",
    precision: str = "fp32",
    device: str = "cpu",
    use_native: bool = False,
    model=None,
    weights: str | None = None,
    labels: str | os.PathLike | None = None,
    threads: int | None = None,
    backend: str | None = None,
    calibration: str | os.PathLike | None = None,
    batch_size: int = 8,
    top_k: int = 5,
    path_column: str = "path",
    max_file_mb: float | None = None,
    **ray_options,
):
    """Classify every image ``source`` names; return the rows.

    ``engine="local"`` gives a ``pyarrow.Table`` (``.to_pandas()`` for pandas) in input order;
    ``engine="ray"`` gives a lazy ``ray.data.Dataset`` (connects to ``address`` or starts a
    local Ray; ``num_workers`` model actors of ``cpus_per_worker`` CPUs each). ``model`` is a
    loaded :class:`~resnet50.ResNet50`, a model file, or None for the default. Both need
    ``pyarrow`` (the ``parquet`` extra; :func:`run_batch` writes CSV and JSONL without it).
    """
    _check(engine, batch_size, top_k, ray_options, max_file_mb)
    pa = import_pyarrow("classify_dataset (it returns a pyarrow.Table)")
    paths, problems = list_sources(source, path_column)
    loaded, load = _model_and_options(
        model, weights, labels, precision, device, use_native, threads, backend, calibration
    )
    if engine == "ray":
        return _ray_dataset(
            paths, loaded, batch_size=batch_size, top_k=top_k, load=load, max_file_mb=max_file_mb, **ray_options
        )
    rows = [make_row(path, None, message, loaded.weights) for path, message in problems]
    for chunk in _chunks(
        paths,
        loaded,
        engine="local",
        batch_size=batch_size,
        top_k=top_k,
        load=load,
        ray_options={},
        max_file_mb=max_file_mb,
    ):
        rows += chunk
    return pa.Table.from_pylist(rows, schema=schema())


def run_batch(
    source: str | os.PathLike | Iterable[str],
    output: str | os.PathLike,
    *,
    engine: str = "local",
    resume: bool = False,
    retry_errors: bool = False,
    overwrite: bool = False,
    precision: str = "fp32",
    device: str = "cpu",
    use_native: bool = False,
    model=None,
    weights: str | None = None,
    labels: str | os.PathLike | None = None,
    threads: int | None = None,
    backend: str | None = None,
    calibration: str | os.PathLike | None = None,
    batch_size: int = 8,
    top_k: int = 5,
    path_column: str = "path",
    progress: bool = False,
    max_file_mb: float | None = None,
    **ray_options,
) -> BatchSummary:
    """Classify every image ``source`` names into ``output`` (.parquet, .csv or .jsonl), streaming.

    ``resume=True`` keeps the rows already in ``output`` and classifies only the other paths;
    with ``retry_errors=True`` it also removes the error rows and classifies those paths again
    (after the files were fixed). ``progress=True`` shows a bar with images/s and ETA on stderr.
    Image files over ``max_file_mb`` (default 64), special files (FIFOs, devices), symlink loops
    and subfolders that cannot be listed get error rows; the job goes on.

    A damaged output given to ``resume`` is refused unchanged; an extra that the output format or
    engine needs (``parquet``, ``ray``) is checked before anything is written.
    """
    from tqdm import tqdm

    _check(engine, batch_size, top_k, ray_options, max_file_mb)
    if retry_errors and not resume:
        raise InvalidInputError("retry_errors (--retry-errors) needs resume (--resume)")
    check_output(output, resume=resume, overwrite=overwrite)
    paths, problems = list_sources(source, path_column)
    skipped = 0
    if retry_errors:
        drop_error_rows(output)
    if resume:
        done = done_paths(output)
        pending = [p for p in paths if p not in done]
        skipped = len(paths) - len(pending)
        paths = pending
        problems = [(path, message) for path, message in problems if path not in done]
    loaded, load = _model_and_options(
        model, weights, labels, precision, device, use_native, threads, backend, calibration
    )
    classified = errors = 0
    start = time.perf_counter()
    with (
        _ray_session(engine == "ray" and bool(paths), ray_options.get("address")),
        RowWriter(output, resume=resume, overwrite=overwrite) as writer,
        tqdm(total=len(paths), unit="img", disable=not progress, file=sys.stderr, smoothing=0.1) as bar,
    ):
        if problems:  # folders that could not be listed: a row each, so the output says so
            writer.write([make_row(path, None, message, loaded.weights) for path, message in problems])
            errors += len(problems)
        if paths:
            chunks = _chunks(
                paths,
                loaded,
                engine=engine,
                batch_size=batch_size,
                top_k=top_k,
                load=load,
                ray_options=ray_options,
                max_file_mb=max_file_mb,
            )
            for rows in chunks:
                writer.write(rows)
                bad = sum(1 for row in rows if row["error"])
                errors += bad
                classified += len(rows) - bad
                bar.update(len(rows))
    return BatchSummary(
        os.fspath(output),
        engine,
        loaded.weights,
        loaded.precision,
        len(paths) + len(problems) + skipped,
        skipped,
        classified,
        errors,
        time.perf_counter() - start,
    )
