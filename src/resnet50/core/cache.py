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


def md5_memo_path(path: str | os.PathLike) -> Path:
    """Where the md5 of ``path`` is remembered: in the cache, named by a hash of its real path
    (never beside the file: a user's model folder is not ours to write in)."""
    real = os.fsencode(Path(path).resolve())
    return cache_dir() / "md5" / f"{hashlib.sha1(real).hexdigest()[:24]}.json"


def file_md5(path: str | os.PathLike) -> str:
    """md5 of a file, remembered in the cache keyed by its path, size and mtime."""
    path = Path(path)
    stat = path.stat()
    key = f"{os.fspath(path.resolve())}:{stat.st_size}:{stat.st_mtime_ns}"
    memo = md5_memo_path(path)
    try:
        saved = json.loads(memo.read_text())
        if saved.get("key") == key:
            return saved["md5"]
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    md5 = digest.hexdigest()
    with contextlib.suppress(OSError):  # a read-only cache only costs a rehash next time
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f".{memo.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "md5": md5}))
        tmp.replace(memo)
    return md5


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file (torchvision names its files by the first 8 hex digits)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()
