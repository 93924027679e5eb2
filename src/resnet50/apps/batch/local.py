"""The local engine: :func:`resnet50.apps.pipeline.classify_stream` (decode overlapped with
inference, bounded in flight) turned into result-row chunks (plain dicts: no pyarrow needed)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from resnet50.apps.batch.rows import make_row
from resnet50.apps.pipeline import classify_stream


def iter_chunks(
    model,
    paths: Sequence[str],
    *,
    batch_size: int = 8,
    top_k: int = 5,
    chunk: int = 64,
    max_file_mb: float | None = None,
) -> Iterator[list[dict]]:
    """Yield lists of result rows for ``paths``, in input order."""
    rows: list[dict] = []
    stream = classify_stream(model, paths, batch_size=batch_size, top_k=top_k, max_file_mb=max_file_mb)
    for result in stream:
        rows.append(make_row(paths[result.index], result.classification, result.error, model.weights))
        if len(rows) >= chunk:
            yield rows
            rows = []
    if rows:
        yield rows
