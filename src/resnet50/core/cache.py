"""The package's cache folder, and file checksums remembered there."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path


def cache_dir() -> Path:
    """``$RESNET50_HOME``, else ``$XDG_CACHE_HOME/resnet50``, else ``~/.cache/resnet50``."""
    if os.environ.get("RESNET50_HOME"):
        return Path(os.environ["RESNET50_HOME"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "resnet50"


def file_md5(path: str | os.PathLike) -> str:
    """md5 of a file, remembered in a side file keyed by size and mtime."""
    path = Path(path)
    stat = path.stat()
    key = f"{stat.st_size}:{stat.st_mtime_ns}"
    memo = path.with_name(path.name + ".md5.json")
    try:
        saved = json.loads(memo.read_text())
        if saved.get("key") == key:
            return saved["md5"]
    except (OSError, ValueError, KeyError):
        pass
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    md5 = digest.hexdigest()
    with contextlib.suppress(OSError):  # a read-only folder only costs a rehash next time
        memo.write_text(json.dumps({"key": key, "md5": md5}))
    return md5


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file (torchvision names its files by the first 8 hex digits)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()
