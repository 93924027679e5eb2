"""The MLPerf ImageNet layout (a folder of images + ``val_map.txt``) and its preprocessed cache.

Each image is preprocessed once, exactly as :func:`resnet50.processing.preprocess.preprocess_one`
does, and its uint8 224x224 crop saved as ``.npy`` under a folder named after the
preprocessing version; the file name hashes the image's path, size and mtime, so an edited
image is decoded again and a rerun decodes nothing. uint8 crops are 4x smaller than the
float tensors and :func:`resnet50.processing.preprocess.normalize` turns them into those exactly.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from resnet50.core.cache import cache_dir
from resnet50.core.errors import InputNotFoundError, InvalidInputError, ResNet50Error
from resnet50.core.files import max_file_bytes, regular_file
from resnet50.core.registry import MLPERF_PREPROCESSING, Preprocessing
from resnet50.processing.preprocess import normalize, preprocess_one, read_bytes

#: Bump when the preprocessed crop of an image would change; old cache entries are then ignored.
PREPROCESS_VERSION = "mlperf-vgg-crop-u8-v1"  # the MLPerf preset's; other presets add their name
NUM_LABELS = 1000
MAX_LISTED = 20


class DatasetError(InvalidInputError):
    """A data set with missing, unreadable or corrupt files, or a malformed ``val_map.txt``."""

    def __init__(self, message: str, problems: Sequence[str] = ()):
        self.problems = list(problems)
        shown = "; ".join(self.problems[:MAX_LISTED])
        more = f"; and {len(self.problems) - MAX_LISTED} more" if len(self.problems) > MAX_LISTED else ""
        super().__init__(f"{message}: {shown}{more}" if self.problems else message)


def preprocess_version(preprocessing: Preprocessing = MLPERF_PREPROCESSING) -> str:
    """The cache key of crops made by ``preprocessing``."""
    return PREPROCESS_VERSION if preprocessing == MLPERF_PREPROCESSING else f"{preprocessing.name}-crop-u8-v1"


def default_cache_dir(preprocessing: Preprocessing = MLPERF_PREPROCESSING) -> Path:
    """``$RESNET50_HOME/preprocessed/<version>`` (the model cache, see :func:`resnet50.core.cache.cache_dir`)."""
    return cache_dir() / "preprocessed" / preprocess_version(preprocessing)


def read_val_map(path: str | os.PathLike) -> list[tuple[str, int]]:
    """``<file> <label 0..999>`` per line → [(file, label)]; a bad line is an error naming it."""
    path = Path(path)
    try:
        regular_file(path, "a labels file")
    except InputNotFoundError:
        raise InputNotFoundError(f"{path}: no such file (the MLPerf ImageNet layout needs val_map.txt)") from None
    entries, problems = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        cols = line.split()
        if not cols:
            continue
        if len(cols) != 2 or not cols[1].lstrip("-").isdigit() or not 0 <= int(cols[1]) < NUM_LABELS:
            problems.append(f"line {number}: {line.strip()!r}")
            continue
        entries.append((cols[0], int(cols[1])))
    if problems:
        raise DatasetError(f"{path}: lines not of the form '<file> <label 0..{NUM_LABELS - 1}>'", problems)
    if not entries:
        raise DatasetError(f"{path}: no entries")
    return entries


def write_val_map(path: str | os.PathLike, entries: Sequence[tuple[str, int]]) -> Path:
    """Write ``<file> <label>`` lines (the inverse of :func:`read_val_map`)."""
    path = Path(path)
    path.write_text("".join(f"{name} {label}\n" for name, label in entries))
    return path


class ImagenetDataset:
    """Images in a fixed order, with 0..999 labels when read from ``val_map.txt``.

    Sample ``i`` is line ``i`` of ``val_map.txt``, which is also LoadGen's ``qsl_idx`` in
    the accuracy log, as in the MLPerf reference harness.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        labels: Sequence[int] | None = None,
        *,
        root: str | os.PathLike | None = None,
        val_map: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        preprocessing: Preprocessing = MLPERF_PREPROCESSING,
        max_file_mb: float | None = None,
    ):
        if not paths:
            raise DatasetError(f"{root or 'data set'}: no images")
        self.paths = [Path(p) for p in paths]
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.root = Path(root) if root is not None else None
        self.val_map = Path(val_map) if val_map is not None else None
        self.preprocessing = preprocessing
        self.max_file_mb = max_file_mb
        self.max_file_bytes = max_file_bytes(max_file_mb)
        self._cache_root = Path(cache_dir) if cache_dir is not None else None
        if self._cache_root is None:
            self.cache_dir = default_cache_dir(preprocessing)
        elif preprocessing == MLPERF_PREPROCESSING:
            self.cache_dir = self._cache_root
        else:
            self.cache_dir = self._cache_root / preprocess_version(preprocessing)

    def for_preprocessing(self, preprocessing: Preprocessing) -> ImagenetDataset:
        """The same samples, cropped by another weights entry's ``preprocessing`` (in their own cache)."""
        if preprocessing == self.preprocessing:
            return self
        return type(self)(
            self.paths,
            self.labels,
            root=self.root,
            val_map=self.val_map,
            cache_dir=self._cache_root,
            preprocessing=preprocessing,
            max_file_mb=self.max_file_mb,
        )

    @classmethod
    def from_val_map(
        cls,
        root: str | os.PathLike,
        *,
        count: int | None = None,
        val_map: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        max_file_mb: float | None = None,
    ) -> ImagenetDataset:
        """The first ``count`` entries (all when None) of ``root/val_map.txt``."""
        root = Path(root)
        if not root.is_dir():
            raise InputNotFoundError(f"{root}: no such data set folder")
        val_map = Path(val_map) if val_map is not None else root / "val_map.txt"
        entries = read_val_map(val_map)
        entries = entries[: _check_count(count, len(entries), val_map)]
        return cls(
            [root / name for name, _ in entries],
            [label for _, label in entries],
            root=root,
            val_map=val_map,
            cache_dir=cache_dir,
            max_file_mb=max_file_mb,
        )

    @classmethod
    def from_images(
        cls,
        images: Sequence[str | os.PathLike],
        *,
        count: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        max_file_mb: float | None = None,
    ) -> ImagenetDataset:
        """Unlabelled images (for comparing precisions): the first ``count`` of them."""
        images = list(images)
        if not images:
            raise DatasetError("no image files given")
        chosen = images[: _check_count(count, len(images), "the images")]
        return cls(chosen, cache_dir=cache_dir, max_file_mb=max_file_mb)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def name(self, index: int) -> str:
        """The file as ``val_map.txt`` names it (relative to the root), for messages."""
        path = self.paths[index]
        if self.root is not None and path.is_relative_to(self.root):
            return os.fspath(path.relative_to(self.root))
        return os.fspath(path)

    def cache_path(self, index: int) -> Path:
        path = self.paths[index]
        stat = path.stat()
        key = f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()
        return self.cache_dir / f"{hashlib.sha1(key).hexdigest()[:20]}.npy"

    def check_files(self) -> None:
        """Raise :class:`DatasetError` listing every listed image that is missing or not a regular
        file (a FIFO, device, folder or symlink loop is refused without being opened)."""
        problems, all_missing = [], True
        for i, path in enumerate(self.paths):
            try:
                regular_file(path, "an image")
            except ResNet50Error as exc:
                all_missing &= isinstance(exc, InputNotFoundError)
                problems.append(f"{self.name(i)} ({str(exc).removeprefix(f'{path}: ')})")
        if problems:
            what = "are missing" if all_missing else "are missing or cannot be read"
            raise DatasetError(f"{len(problems)} of {len(self)} data set files {what}", problems)

    def prepare(self, workers: int | None = None, progress: Callable[[int], None] | None = None) -> int:
        """Preprocess every image not yet cached; return how many were decoded.

        Every file is tried; then :class:`DatasetError` lists all that failed, so nothing
        is silently dropped and one run shows every problem.
        """
        self.check_files()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        todo = [i for i in range(len(self)) if not self.cache_path(i).is_file()]
        if progress:
            progress(len(self) - len(todo))
        problems: list[str] = []
        workers = workers or max(1, min(4, os.cpu_count() or 1))
        with ThreadPoolExecutor(workers, thread_name_prefix="resnet50-dataset") as pool:
            for index, error in pool.map(self._build, todo):
                if error:
                    problems.append(f"{self.name(index)} ({error})")
                if progress:
                    progress(1)
        if problems:
            raise DatasetError(f"{len(problems)} of {len(self)} data set files could not be read", problems)
        return len(todo)

    def _build(self, index: int) -> tuple[int, str | None]:
        try:
            self._store(index)
            return index, None
        except ResNet50Error as exc:
            # the preprocessing error starts with the path; the list names the file already
            return index, str(exc).removeprefix(f"{self.paths[index]}: ")

    def _store(self, index: int) -> np.ndarray:
        path = self.paths[index]
        data = read_bytes(path, self.max_file_bytes)
        crop, _ = preprocess_one(data, os.fspath(path), preprocessing=self.preprocessing)
        crop = np.ascontiguousarray(crop)
        target = self.cache_path(index)
        tmp = target.with_name(f"{target.stem}.{os.getpid()}.{id(crop)}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, crop, allow_pickle=False)
        tmp.replace(target)
        return crop

    def crop(self, index: int) -> np.ndarray:
        """The uint8 RGB ``[3,224,224]`` crop of sample ``index`` (from the cache when there)."""
        try:
            crop = np.load(self.cache_path(index), allow_pickle=False)
            if crop.shape == (3, 224, 224) and crop.dtype == np.uint8:
                return crop
        except (OSError, ValueError):
            pass  # absent or damaged cache entry: rebuild it from the image
        return self._store(index)

    def crops(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 ``[N,3,224,224]`` crops of ``indices``."""
        return np.stack([self.crop(i) for i in indices])

    def tensor(self, indices: Sequence[int], dtype: np.dtype) -> np.ndarray:
        """The model input for ``indices``: float32 normalized, or the uint8 crops for native models."""
        crops = self.crops(indices)
        return crops if np.dtype(dtype) == np.uint8 else normalize(crops, self.preprocessing)

    def describe(self) -> dict:
        return {
            "root": os.fspath(self.root) if self.root else None,
            "val_map": os.fspath(self.val_map) if self.val_map else None,
            "count": len(self),
            "labelled": self.labelled,
            "preprocess_version": preprocess_version(self.preprocessing),
            "cache": os.fspath(self.cache_dir),
        }


def _check_count(count: int | None, available: int, where: object) -> int:
    if count is None:
        return available
    if count < 1:
        raise InvalidInputError(f"--count must be at least 1, got {count}")
    if count > available:
        raise InvalidInputError(f"--count {count} is more than the {available} images in {where}")
    return count
