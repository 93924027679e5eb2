"""Streaming result writers (.parquet, .csv, .jsonl) that survive being killed.

Memory stays flat: rows are written as they come. CSV and JSONL are appended and flushed
per chunk. Parquet cannot be appended to, so finished rows go to small part files in a
hidden ``.NAME.parts`` folder next to the output and are merged into ``NAME`` at the end
(also on Ctrl-C); a killed run leaves its parts, and ``--resume`` picks them up.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path

from resnet50.apps.batch.rows import COLUMNS, import_pyarrow, schema, to_table
from resnet50.core.errors import InvalidInputError, first_line
from resnet50.core.files import regular_file

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_LIST_COLUMNS = ("top_k_ids", "top_k_scores")


def output_format(path: str | os.PathLike) -> str:
    """ "parquet", "csv" or "jsonl" from the file name, or a clear error."""
    kind = FORMATS.get(Path(path).suffix.lower())
    if kind is None:
        raise InvalidInputError(f"{os.fspath(path)}: unknown output format; name it .parquet, .csv or .jsonl")
    return kind


def parts_dir(path: Path) -> Path:
    return path.with_name(f".{path.name}.parts")


def _parquet_files(path: Path) -> list[Path]:
    """The Parquet output (if any) and then a killed run's leftover parts, in write order."""
    files = [path] if path.exists() else []
    return files + (sorted(parts_dir(path).glob("part-*.parquet")) if parts_dir(path).is_dir() else [])


def done_paths(path: str | os.PathLike) -> set[str]:
    """Paths that already have a row in the output (and, for Parquet, in leftover parts).

    A damaged or foreign output (bad JSON line, CSV without our header, unreadable Parquet) is an
    :class:`InvalidInputError` naming it, and nothing is changed: the file stays byte-identical.
    A half-written last line (a killed run) is ignored here and cut when writing resumes.
    """
    path = Path(path)
    kind = output_format(path)
    if kind == "parquet":
        pq = import_pyarrow("resuming a .parquet output", "pyarrow.parquet")
        done: set[str] = set()
        for file in _parquet_files(path):
            regular_file(file, "a results file")
            try:
                table = pq.ParquetFile(file)
                if table.schema_arrow.names != list(COLUMNS):
                    raise _foreign(file, f"its columns are {', '.join(table.schema_arrow.names)}")
                for batch in table.iter_batches(columns=["path"]):
                    done.update(batch.column(0).to_pylist())
            except InvalidInputError:
                raise
            except Exception as exc:  # pyarrow raises ArrowInvalid, OSError ...
                raise _foreign(file, f"not a readable Parquet file ({first_line(exc)})") from None
        return done
    return {row[0] for row in _text_rows(path, kind)}


def _foreign(path: Path, why: str) -> InvalidInputError:
    return InvalidInputError(
        f"{path}: cannot resume it: {why}; it is not a results file of resnet50 batch, or it is damaged "
        "(left as it is; use another --output, or --overwrite to replace it)"
    )


def _complete_lines(path: Path) -> list[str]:
    """The text of a CSV/JSONL output up to its last newline (a killed run's partial line left out)."""
    regular_file(path, "a results file")
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
    try:
        return data.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError as exc:
        raise _foreign(path, f"byte {exc.start} is not UTF-8") from None


def _text_rows(path: Path, kind: str) -> list[list]:
    """Every complete row of a CSV/JSONL output as a list in :data:`COLUMNS` order, checked."""
    if not path.exists():
        return []
    lines = _complete_lines(path)
    rows: list[list] = []
    if kind == "csv":
        reader = csv.reader(lines)
        header = next(reader, None)
        if header is None:
            return rows
        if header != list(COLUMNS):
            raise _foreign(path, f"its header is {','.join(header)!r}, not {','.join(COLUMNS)!r}")
        for number, row in enumerate(reader, 2):
            if len(row) != len(COLUMNS) or not row[0]:
                raise _foreign(path, f"row {number} has {len(row)} fields, not {len(COLUMNS)}")
            rows.append(row)
        return rows
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise _foreign(path, f"line {number} is not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("path"), str) or set(row) != set(COLUMNS):
            raise _foreign(path, f"line {number} is not a result row")
        rows.append([row[c] for c in COLUMNS])
    return rows


def drop_error_rows(path: str | os.PathLike) -> int:
    """Remove the error rows from an existing output (and a Parquet run's leftover parts), so
    those paths can be classified again; how many were removed. Each file is replaced
    atomically, so an interruption leaves either the old or the new rows."""
    path = Path(path)
    kind = output_format(path)
    done_paths(path)  # a damaged output is refused before anything is rewritten
    removed = 0
    if kind == "parquet":
        import_pyarrow("resuming a .parquet output")
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        for file in _parquet_files(path):
            table = pq.read_table(file)
            kept = table.filter(pc.equal(pc.fill_null(table.column("error"), ""), ""))
            if kept.num_rows < table.num_rows:
                removed += table.num_rows - kept.num_rows
                tmp = file.with_name(f".{file.name}.retry")
                pq.write_table(kept, tmp)
                tmp.replace(file)
        return removed
    if not path.exists():
        return 0
    _drop_partial_line(path)
    tmp = path.with_name(f".{path.name}.retry")
    with open(path, newline="", encoding="utf-8") as src, open(tmp, "w", newline="", encoding="utf-8") as dst:
        if kind == "csv":
            reader = csv.reader(src)
            header = next(reader, None)
            writer = csv.writer(dst)
            if header is not None:
                writer.writerow(header)
                error_at = header.index("error")
                for row in reader:
                    if row[error_at]:
                        removed += 1
                    else:
                        writer.writerow(row)
        else:
            for line in src:
                if line.strip() and json.loads(line).get("error"):
                    removed += 1
                else:
                    dst.write(line)
    tmp.replace(path)
    return removed


def _drop_partial_line(path: Path) -> None:
    """A run killed mid-write can leave half a line at the end: cut it so the file stays valid."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        block = min(size, 1 << 20)
        f.seek(size - block)
        tail = f.read(block)
        f.truncate(size - block + tail.rfind(b"\n") + 1)


def check_output(path: str | os.PathLike, *, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse an output that cannot be written, before any work starts (and before anything is deleted)."""
    path = Path(path)
    kind = output_format(path)
    if kind == "parquet":
        import_pyarrow("writing .parquet")  # before any work, and before anything is written
    if not path.parent.is_dir():
        raise InvalidInputError(f"{path}: folder {path.parent} does not exist")
    if os.path.lexists(path):
        regular_file(path, "a results file")  # a FIFO, device or folder is never opened or replaced
    leftovers = parts_dir(path)
    if not resume and not overwrite and (path.exists() or leftovers.exists()):
        what = "an interrupted run's parts of it exist" if leftovers.exists() else "it exists"
        raise InvalidInputError(f"{path}: {what}; use --resume to continue it or --overwrite to replace it")
    if resume:
        done_paths(path)  # a damaged output is refused now, untouched, before the model loads


class RowWriter:
    """Append result chunks (lists of :func:`rows.make_row` dicts) to ``path``.

    ``resume=False`` refuses an existing output unless ``overwrite``, so finished work is never
    replaced by accident.
    """

    def __init__(self, path: str | os.PathLike, *, resume: bool = False, overwrite: bool = False, flush_rows=512):
        self.path = Path(path)
        self.kind = output_format(self.path)
        self.flush_rows = flush_rows
        self.rows_written = 0
        leftovers = parts_dir(self.path)
        check_output(self.path, resume=resume, overwrite=overwrite)
        if not resume:
            self.path.unlink(missing_ok=True)
            shutil.rmtree(leftovers, ignore_errors=True)
        self._pending: list = []
        self._pending_rows = 0
        self._last_flush = time.monotonic()
        self._file = None
        if self.kind == "parquet":
            leftovers.mkdir(exist_ok=True)
            self._next_part = 1 + max((int(p.stem.split("-")[1]) for p in leftovers.glob("part-*.parquet")), default=0)
        else:
            if resume and self.path.exists():
                _drop_partial_line(self.path)
            fresh = not self.path.exists() or self.path.stat().st_size == 0
            self._file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115 (closed in close())
            if self.kind == "csv":
                self._csv = csv.writer(self._file)
                if fresh:
                    self._csv.writerow(COLUMNS)
                    self._file.flush()

    def write(self, rows) -> None:
        """Write one chunk: a list of row dicts, or a ``pyarrow.Table`` of :func:`rows.schema`
        (kept in memory only until the next part file for Parquet)."""
        is_table = hasattr(rows, "to_pylist")
        self.rows_written += rows.num_rows if is_table else len(rows)
        if self.kind == "parquet":
            self._pending.append(rows if is_table else to_table(rows))
            self._pending_rows += self._pending[-1].num_rows
            if self._pending_rows >= self.flush_rows or time.monotonic() - self._last_flush > 30:
                self._flush_part()
            return
        for row in rows.to_pylist() if is_table else rows:
            if self.kind == "csv":
                self._csv.writerow([json.dumps(row[c]) if c in _LIST_COLUMNS else row[c] for c in COLUMNS])
            else:
                self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def _flush_part(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._pending:
            part = parts_dir(self.path) / f"part-{self._next_part:06d}.parquet"
            tmp = part.with_suffix(".tmp")
            pq.write_table(pa.concat_tables(self._pending), tmp)
            tmp.replace(part)
            self._next_part += 1
        self._pending, self._pending_rows, self._last_flush = [], 0, time.monotonic()

    def close(self) -> None:
        """Flush and, for Parquet, merge the earlier output and all parts into one file."""
        if self.kind != "parquet":
            if self._file is not None:
                self._file.close()
                self._file = None
            return
        self._flush_part()
        import pyarrow.parquet as pq

        tmp = self.path.with_name(f".{self.path.name}.merging")
        with pq.ParquetWriter(tmp, schema()) as out:
            for source in _parquet_files(self.path):
                for batch in pq.ParquetFile(source).iter_batches(batch_size=8192):
                    out.write_batch(batch)
        tmp.replace(self.path)
        shutil.rmtree(parts_dir(self.path), ignore_errors=True)

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
