"""The local engine: :func:`resnet50.apps.pipeline.classify_stream` (decode overlapped with
inference, bounded in flight) turned into result-row chunks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from resnet50.apps.batch.rows import make_row, to_table
from resnet50.apps.pipeline import classify_stream


def iter_tables(model, paths: Sequence[str], *, batch_size: int = 8, top_k: int = 5, chunk: int = 64) -> Iterator:
    """Yield ``pyarrow.Table`` chunks of result rows for ``paths``, in input order."""
    rows: list[dict] = []
    for result in classify_stream(model, paths, batch_size=batch_size, top_k=top_k):
        rows.append(make_row(paths[result.index], result.classification, result.error, model.weights))
        if len(rows) >= chunk:
            yield to_table(rows)
            rows = []
    if rows:
        yield to_table(rows)
