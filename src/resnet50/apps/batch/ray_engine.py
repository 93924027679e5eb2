"""The Ray engine: Ray Data reads the paths, decodes and preprocesses them in CPU tasks,
and runs the model in an actor pool (one model load per actor).

Imported only when ``engine="ray"`` is asked for, so ``ray`` stays an optional extra. Ray
restarts an actor that dies (``max_restarts``) and reruns its batch (``max_task_retries``);
a rerun batch replaces the lost one, so every row arrives exactly once.
"""

from __future__ import annotations

import numpy as np

from resnet50.apps import ray_cluster
from resnet50.apps.batch.rows import make_rows, schema
from resnet50.apps.ray_cluster import check_same_model, failure_reason
from resnet50.core.constants import INPUT_SIZE
from resnet50.core.errors import BackendUnavailableError, ResNet50Error
from resnet50.core.files import max_file_bytes
from resnet50.core.registry import MLPERF_PREPROCESSING, Preprocessing
from resnet50.processing.preprocess import PreprocessContext, preprocess_one, read_bytes

DECODE_WORKER_MEMORY = 160 << 20  # a Ray worker with numpy, OpenCV and pyarrow loaded
DECODE_MEMORY = 4 << 20  # bytes a decode task may hold per image


def import_ray():
    """``ray`` (with Ray Data), or a clear error saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise BackendUnavailableError(
            "the ray engine needs Ray Data: pip install 'resnet50[ray]' (or use --engine local)"
        ) from None
    return ray


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` (or start a local Ray); return True when this call started it."""
    import_ray()
    return ray_cluster.ensure_ray(address, num_cpus)


def decode_batch(
    batch: dict, preprocessing: Preprocessing = MLPERF_PREPROCESSING, max_bytes: int | None = None
) -> dict:
    """Paths → uint8 RGB crops (CPU task). A bad image keeps its row with an error and a zero crop;
    files over ``max_bytes`` and special files are refused unread."""
    paths = [str(p) for p in batch["path"]]
    crops = np.zeros((len(paths), 3, INPUT_SIZE, INPUT_SIZE), np.uint8)
    heights = np.zeros(len(paths), np.int32)
    widths = np.zeros(len(paths), np.int32)
    errors = []
    for i, path in enumerate(paths):
        try:
            data = read_bytes(path, max_bytes)
            crops[i], (heights[i], widths[i]) = preprocess_one(data, path, preprocessing=preprocessing)
            errors.append("")
        except ResNet50Error as exc:
            errors.append(str(exc))
    return {
        "path": np.array(paths, dtype=object),
        "crop": crops,
        "height": heights,
        "width": widths,
        "error": np.array(errors, dtype=object),
    }


class RayClassifier:
    """The model in a Ray actor: loaded once in ``__init__``, one batch of crops per call.

    ``load`` holds the :meth:`ResNet50.load` arguments. ``md5`` is the driver's model file
    checksum: a worker node that resolves a different file (no fetched MLPerf file there,
    say) refuses to run rather than mix weights.
    """

    def __init__(self, load: dict | None = None, top_k: int = 5, md5: str | None = None):
        from resnet50.api.model import ResNet50

        self.model = ResNet50.load(**(load or {}))
        self.top_k = top_k
        check_same_model(self.model.source, md5)

    def __call__(self, batch: dict):
        import pyarrow as pa

        paths = [str(p) for p in batch["path"]]
        errors = [str(e) or None for e in batch["error"]]
        good = [i for i, e in enumerate(errors) if e is None]
        classifications: list = [None] * len(paths)
        if good:
            crops = np.ascontiguousarray(batch["crop"][good])
            tensor = self.model.input_from_crops(crops)
            outputs = self.model.run(tensor, self.top_k)
            sizes = [(int(batch["height"][i]), int(batch["width"][i])) for i in good]
            ctx = PreprocessContext([paths[i] for i in good], sizes, batched=True)
            for i, result in zip(good, self.model.postprocess(outputs, ctx, self.top_k)):
                classifications[i] = result
        rows = make_rows(paths, classifications, errors, self.model.weights)
        return pa.Table.from_pylist(rows, schema=schema())


def build_dataset(
    paths: list[str],
    *,
    load: dict | None = None,
    md5: str | None = None,
    preprocessing: Preprocessing = MLPERF_PREPROCESSING,
    batch_size: int = 8,
    top_k: int = 5,
    num_workers: int = 1,
    cpus_per_worker: float = 1.0,
    max_restarts: int | None = None,
    preserve_order: bool = True,
    actor_class: type = RayClassifier,
    max_file_mb: float | None = None,
):
    """A lazy Ray Dataset of result rows for ``paths`` (runs when consumed or written).

    Each actor calls ``ResNet50.load(**load)`` once (default: fp32, default model file).
    ``max_restarts=None`` keeps Ray Data's default: a dead actor is restarted and its batch
    retried without limit. A number caps both.
    """
    ray = import_ray()
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = preserve_order
    context.enable_progress_bars = False
    blocks = max(1, min(len(paths) // (4 * batch_size), 10_000))
    ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks)
    # The memory request (a worker plus ~0.5-4 MB per decoded photo) also keeps Ray from fusing decoding
    # into the model actors, which it does for maps with equal resource requests: separate,
    # decoding runs in parallel tasks and overlaps inference.
    ds = ds.map_batches(
        decode_batch,
        fn_kwargs={"preprocessing": preprocessing, "max_bytes": max_file_bytes(max_file_mb)},
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=1,
        memory=DECODE_WORKER_MEMORY + batch_size * DECODE_MEMORY,
    )
    restarts = {} if max_restarts is None else {"max_restarts": max_restarts, "max_task_retries": max_restarts}
    return ds.map_batches(
        actor_class,
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_workers),
        num_cpus=cpus_per_worker,
        fn_constructor_kwargs={"load": load, "top_k": top_k, "md5": md5},
        **restarts,
    )


def iter_tables(dataset):
    """Consume ``dataset`` into ``pyarrow.Table`` chunks of :func:`rows.schema` on the driver.

    A job Ray gives up on (an actor that cannot start, retries spent) becomes one
    :class:`BackendUnavailableError` naming the cause, not a page of remote tracebacks.
    """
    import ray

    target = schema()
    try:
        for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield table.select(list(target.names)).cast(target)
    except ray.exceptions.RayError as exc:
        raise BackendUnavailableError(f"the Ray job failed: {failure_reason(exc)}") from None
