"""Download a registry entry's weights file: progress, timeout, resume, size cap, checksum check, atomic move."""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from resnet50.core import registry
from resnet50.core.cache import file_sha256
from resnet50.core.errors import ChecksumError, DownloadError, InvalidInputError
from resnet50.core.registry import Weights
from resnet50.weights.source import fetched_path

_CHUNK = 1 << 20
#: Most bytes a weights download may grow to: every registry file is ~98 MB (102 million bytes).
MAX_DOWNLOAD_BYTES = 112 << 20
_MODEL_LIMIT = "the {:,} bytes a weights file may have (the registry's files are about 100 MB)"


def _md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _progress(total: int | None, initial: int, enabled: bool, name: str):
    from tqdm import tqdm

    return tqdm(
        total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
        desc=name, disable=not enabled, file=sys.stderr,
    )  # fmt: skip


def _expected(entry: Weights, md5: str | None) -> str:
    """The checksum a file must have, in words."""
    if md5 or entry.file.md5:
        return f"md5 {(md5 or entry.file.md5).lower()}"
    return f"sha256 {entry.file.sha256_prefix}..."


def _checksum(path: Path, entry: Weights, md5: str | None) -> tuple[bool, str]:
    """Whether a file is the one expected, and what it was compared by (for the error)."""
    if md5 or entry.file.md5:
        actual = _md5_of(path)
        return actual == (md5 or entry.file.md5).lower(), f"md5 {actual}, expected {(md5 or entry.file.md5).lower()}"
    actual = file_sha256(path)
    prefix = entry.file.sha256_prefix
    return actual.startswith(prefix), f"sha256 {actual[:16]}..., expected {prefix}..."


def fetch(
    weights: str | Weights = registry.DEFAULT,
    *,
    url: str | None = None,
    md5: str | None = None,
    dest: str | os.PathLike | None = None,
    timeout: float = 30.0,
    progress: bool | None = None,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
) -> Path:
    """Download a registry entry's file into the cache (or ``dest``) and verify it.

    A partial download (``dest.part``) is resumed with an HTTP range request when the
    server supports it, else restarted. The file only appears at ``dest`` once its checksum
    (md5, or the sha256 prefix torchvision names its files by) matches. ``url`` (or
    ``$RESNET50_MODEL_URL``) points at a mirror. A server that announces or sends more than
    ``max_bytes`` (or more than its Content-Length) is cut off and the partial file deleted:
    nothing unbounded is written before the checksum can refuse it.
    """
    entry = registry.get(weights)
    if entry.file is None:
        raise InvalidInputError(f"weights {entry.name!r} have no file to download (the package builds them)")
    url = url or os.environ.get("RESNET50_MODEL_URL") or entry.file.url
    dest = Path(dest) if dest else fetched_path(entry)
    if dest.is_file() and _checksum(dest, entry, md5)[0]:
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(f"{dest.parent}: cannot create the download folder ({exc.strerror or exc})") from None
    part = dest.with_name(dest.name + ".part")
    if progress is None:
        progress = sys.stderr.isatty()
    try:
        _download(url, part, timeout, progress, entry.file.filename, max_bytes)
    except DownloadError:
        raise
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(
            f"could not download {url}: {reason}. Offline? Get {entry.file.filename} ({_expected(entry, md5)}) on a "
            f"machine with internet and put it at {dest}, or run with --model PATH / RESNET50_MODEL=PATH"
        ) from None
    matches, compared = _checksum(part, entry, md5)
    if not matches:
        part.unlink(missing_ok=True)
        raise ChecksumError(f"{url}: downloaded file has {compared}; deleted it, try again")
    part.replace(dest)
    return dest


def _too_big(url: str, part: Path, what: str) -> DownloadError:
    part.unlink(missing_ok=True)
    return DownloadError(f"{url}: {what}; stopped and deleted the partial download. Is the URL right?")


def _download(url: str, part: Path, timeout: float, progress: bool, name: str, max_bytes: int) -> None:
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "resnet50-fetch"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part file is already complete
            return
        raise
    with response:
        resumed = have and response.status == 206
        mode = "ab" if resumed else "wb"
        length = response.headers.get("Content-Length")
        start = have if resumed else 0
        total = (int(length) + start) if length and length.isdigit() else None
        if total is not None and total > max_bytes:
            announced = f"the server announces {total:,} bytes, more than {_MODEL_LIMIT.format(max_bytes)}"
            raise _too_big(url, part, announced)
        limit = min(max_bytes, total) if total is not None else max_bytes
        written = start
        with open(part, mode) as out, _progress(total, start, progress, name) as bar:
            while chunk := response.read(_CHUNK):
                written += len(chunk)
                if written > limit:
                    out.close()
                    if limit == total:
                        raise _too_big(url, part, f"the server sent more than the {total:,} bytes it announced")
                    raise _too_big(url, part, f"the download grew past {_MODEL_LIMIT.format(max_bytes)}")
                out.write(chunk)
                bar.update(len(chunk))
        if total is not None and part.stat().st_size < total:
            raise OSError(f"connection closed after {part.stat().st_size} of {total} bytes (rerun to resume)")
