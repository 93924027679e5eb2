"""What to classify: a folder, a file list (.txt), a Parquet/CSV table with a path column,
a single image, or a Python list of paths → the list of image paths, in a stable order.

Paths come out absolute and normalized: they are the key ``--resume`` matches on, and Ray
workers may run in another directory. Relative paths inside a list or table are taken
relative to the folder that holds it, so a dataset can be moved with its index.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path

from resnet50.apps.batch.rows import import_pyarrow
from resnet50.core.errors import InputNotFoundError, InvalidInputError
from resnet50.core.files import (
    IMAGE_SUFFIXES,
    LIST_SUFFIXES,
    read_list_file,
    regular_file,
    resolve_relative,
    walk_images,
)

TABLE_SUFFIXES = {".parquet", ".pq", ".csv"}


def list_inputs(source: str | os.PathLike | Iterable[str | os.PathLike], path_column: str = "path") -> list[str]:
    """All image paths that ``source`` names, absolute (folders walked in sorted order)."""
    return list_sources(source, path_column)[0]


def list_sources(
    source: str | os.PathLike | Iterable[str | os.PathLike], path_column: str = "path"
) -> tuple[list[str], list[tuple[str, str]]]:
    """:func:`list_inputs`, and (path, message) for each subfolder of a folder source that could
    not be listed (its images are not classified; the job writes an error row saying so)."""
    problems: list[tuple[str, str]] = []
    paths = [os.path.abspath(p) for p in _list(source, path_column, problems)]
    if not paths and isinstance(source, (str, os.PathLike)):
        message = "; ".join(m for _, m in problems) or f"{os.fspath(source)}: no image files to classify"
        raise InvalidInputError(message)
    return paths, problems


def _list(source, path_column: str, problems: list[tuple[str, str]]) -> list[str]:
    if not isinstance(source, (str, os.PathLike)):
        return [os.fspath(item) for item in source]
    path = Path(source)
    if path.is_dir():
        return list(walk_images(os.path.abspath(path), problems))
    if not os.path.lexists(path):
        raise InputNotFoundError(f"{source}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix in LIST_SUFFIXES:
        return read_list_file(path)
    if suffix in (".parquet", ".pq"):
        return _read_parquet(path, path_column)
    if suffix == ".csv":
        return _read_csv(path, path_column)
    if suffix in IMAGE_SUFFIXES:
        return [os.fspath(path)]  # read (or refused, if not a regular file) as the job's one image
    raise InvalidInputError(
        f"{source}: not a folder, file list (.txt), table (.parquet, .csv) or image; cannot tell what to classify"
    )


def _read_parquet(path: Path, column: str) -> list[str]:
    pq = import_pyarrow("reading a .parquet table of paths", "pyarrow.parquet")
    regular_file(path, "a Parquet table")
    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError ...
        raise InvalidInputError(f"{path}: not a readable Parquet file: {exc}") from None
    names = table.schema_arrow.names
    if column not in names:
        raise InvalidInputError(f"{path}: no column {column!r} (columns: {', '.join(names)}); use --path-column")
    out: list[str] = []
    for batch in table.iter_batches(columns=[column]):
        out += [resolve_relative(path.parent, str(v)) for v in batch.column(0).to_pylist() if v]
    return out


def _read_csv(path: Path, column: str) -> list[str]:
    regular_file(path, "a CSV table")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if column not in (reader.fieldnames or []):
                names = ", ".join(reader.fieldnames or [])
                raise InvalidInputError(f"{path}: no column {column!r} (columns: {names}); use --path-column")
            return [resolve_relative(path.parent, row[column]) for row in reader if row.get(column)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInputError(f"{path}: not a readable CSV table ({exc})") from None
