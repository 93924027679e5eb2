"""Finding image files: one walk and one ordering for every command that takes a folder, and list files."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

LIST_SUFFIXES = {".txt", ".lst"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jpe", ".pgm", ".ppm"}


def walk_images(folder: str | os.PathLike) -> Iterator[str]:
    """Image files under ``folder``, recursively: each folder's files sorted, then its subfolders sorted."""
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield os.path.join(root, name)


def expand_images(items: list[str | os.PathLike]) -> list[str]:
    """Paths as given, with folders replaced by the image files inside them."""
    out: list[str] = []
    for item in items:
        out += list(walk_images(item)) if Path(item).is_dir() else [os.fspath(item)]
    return out


def resolve_relative(base: str | os.PathLike, item: str) -> str:
    """``item`` as given when absolute, else relative to ``base``."""
    return item if os.path.isabs(item) else os.path.join(base, item)


def read_list_file(path: str | os.PathLike) -> list[str]:
    """The paths a list file names, one a line (``#`` comments and blank lines skipped),
    relative paths taken from the list's own folder, as MLPerf's calibration lists are."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        lines = (line.strip() for line in f)
        return [resolve_relative(path.parent, line) for line in lines if line and not line.startswith("#")]


def is_torch_checkpoint(path: str | os.PathLike) -> bool:
    """Whether a file is a PyTorch checkpoint (torch.save's zip format, or a legacy pickle)."""
    path = Path(path)
    if path.suffix.lower() in (".pth", ".pt", ".ckpt", ".bin"):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head == b"PK\x03\x04" and zipfile.is_zipfile(path) and _zip_has_pickle(path)


def _zip_has_pickle(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(name.endswith("data.pkl") for name in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
