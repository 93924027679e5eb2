"""The row every engine writes: one per input image, the same columns in every format.

Both engines build rows with :func:`make_rows`, so a local and a Ray run of the same images
give the same values. Bad images keep their row: ``error`` says why, the result columns
are null. Rows are plain dicts; only Parquet and Ray need them as Arrow tables (``pyarrow``,
the ``parquet`` extra).
"""

from __future__ import annotations

from collections.abc import Sequence

from resnet50.core.extras import require
from resnet50.processing.postprocess import Classification

COLUMNS = ("path", "class_id", "label", "score", "top_k_ids", "top_k_scores", "error", "weights")


def import_pyarrow(what: str = "Parquet files", module: str = "pyarrow"):
    """``pyarrow`` (or its ``module``, e.g. ``pyarrow.parquet``), or one line naming the extra that installs it."""
    return require(module, "parquet", what)


def schema():
    """The Arrow schema of result rows (explicit, so all-error chunks keep their types)."""
    pa = import_pyarrow()

    return pa.schema(
        [
            ("path", pa.string()),
            ("class_id", pa.int32()),
            ("label", pa.string()),
            ("score", pa.float64()),
            ("top_k_ids", pa.list_(pa.int32())),
            ("top_k_scores", pa.list_(pa.float64())),
            ("error", pa.string()),
            ("weights", pa.string()),
        ]
    )


def make_row(path: str, classification: Classification | None, error: str | None, weights: str) -> dict:
    """One result row; ``error`` is "" when the image was classified."""
    if classification is None:
        message = error or "not classified"
        return dict(
            path=path,
            class_id=None,
            label=None,
            score=None,
            top_k_ids=[],
            top_k_scores=[],
            error=message,
            weights=weights,
        )
    preds = classification.predictions
    return {
        "path": path,
        "class_id": preds[0].class_id,
        "label": preds[0].label,
        "score": preds[0].score,
        "top_k_ids": [p.class_id for p in preds],
        "top_k_scores": [p.score for p in preds],
        "error": "",
        "weights": weights,
    }


def make_rows(
    paths: Sequence[str],
    classifications: Sequence[Classification | None],
    errors: Sequence[str | None],
    weights: str,
) -> list[dict]:
    return [make_row(p, c, e, weights) for p, c, e in zip(paths, classifications, errors)]


def to_table(rows: list[dict]):
    """Rows → a ``pyarrow.Table`` of :func:`schema`."""
    pa = import_pyarrow()

    return pa.Table.from_pylist(rows, schema=schema())
