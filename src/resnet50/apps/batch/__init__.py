"""Classify whole datasets: a folder, a file list, or a Parquet/CSV table of paths, locally
(the overlapped CPU pipeline) or on a Ray cluster (Ray Data), with the same rows either way.

- :func:`classify_dataset` returns the rows: a ``pyarrow.Table`` (local) or a lazy Ray
  Dataset (``engine="ray"``) to consume or ``write_parquet`` where you like.
- :func:`run_batch` streams them into ``.parquet``, ``.csv`` or ``.jsonl`` with bounded
  memory, and with ``resume=True`` skips the paths the output already holds.

One row per image (see :data:`COLUMNS`); a missing or corrupt image gets a row whose
``error`` says why, and the job goes on.
"""

from resnet50.apps.batch.inputs import list_inputs
from resnet50.apps.batch.job import ENGINES, BatchSummary, classify_dataset, run_batch
from resnet50.apps.batch.rows import COLUMNS, schema

__all__ = ["COLUMNS", "ENGINES", "BatchSummary", "classify_dataset", "list_inputs", "run_batch", "schema"]
