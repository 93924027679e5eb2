"""Download the MLPerf model file: progress, timeout, resume, md5 check, atomic move."""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from resnet50.core.cache import file_md5
from resnet50.core.constants import MLPERF_FILES
from resnet50.core.errors import ChecksumError, DownloadError, InvalidInputError
from resnet50.weights.source import mlperf_path

_CHUNK = 1 << 20


def _md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _progress(total: int | None, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
        desc="resnet50_v1.onnx", disable=not enabled, file=sys.stderr,
    )  # fmt: skip


def fetch(
    release: str = "opset11",
    *,
    url: str | None = None,
    md5: str | None = None,
    dest: str | os.PathLike | None = None,
    timeout: float = 30.0,
    progress: bool | None = None,
) -> Path:
    """Download an MLPerf release of the model into the cache (or ``dest``) and verify it.

    A partial download (``dest.part``) is resumed with an HTTP range request when the
    server supports it, else restarted. The file only appears at ``dest`` once its md5
    matches. ``url`` (or ``$RESNET50_MODEL_URL``) points at a mirror.
    """
    if release not in MLPERF_FILES:
        raise DownloadError(f"unknown release {release!r}; choose one of {', '.join(MLPERF_FILES)}")
    default_url, default_md5 = MLPERF_FILES[release]
    url = url or os.environ.get("RESNET50_MODEL_URL") or default_url
    md5 = (md5 or default_md5).lower()
    dest = Path(dest) if dest else mlperf_path()
    if dest.is_file() and file_md5(dest) == md5:
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(f"{dest.parent}: cannot create the download folder ({exc.strerror or exc})") from None
    part = dest.with_name(dest.name + ".part")
    if progress is None:
        progress = sys.stderr.isatty()
    try:
        _download(url, part, timeout, progress)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(
            f"could not download {url}: {reason}. Offline? Get the file (md5 {md5}) on a machine with "
            f"internet and put it at {dest}, or run with --model PATH / RESNET50_MODEL=PATH"
        ) from None
    actual = _md5_of(part)
    if actual != md5:
        part.unlink(missing_ok=True)
        raise ChecksumError(f"{url}: downloaded file has md5 {actual}, expected {md5}; deleted it, try again")
    part.replace(dest)
    return dest


def _download(url: str, part: Path, timeout: float, progress: bool) -> None:
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
        total = (int(length) + (have if resumed else 0)) if length else None
        with open(part, mode) as out, _progress(total, have if resumed else 0, progress) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
        if total is not None and part.stat().st_size < total:
            raise OSError(f"connection closed after {part.stat().st_size} of {total} bytes (rerun to resume)")
