"""Finding and reading input files: one walk and one ordering for every command that takes a
folder, list files, and the one way input files are opened.

Only regular files are read. A FIFO, device or socket is refused from its ``stat`` before it is
opened (a FIFO would block the reader forever, ``/dev/zero`` never ends), and what is read is
capped, so no input can hang a command or exhaust its memory.
"""

from __future__ import annotations

import errno
import os
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path

from resnet50.core.errors import InputNotFoundError, InvalidInputError

LIST_SUFFIXES = {".txt", ".lst"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jpe", ".pgm", ".ppm"}

#: Largest input file read by default (``--max-file-mb``): a 100-megapixel JPEG is ~30-50 MB.
DEFAULT_MAX_FILE_MB = 64.0

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


def max_file_bytes(max_file_mb: float | None) -> int:
    """``max_file_mb`` (default :data:`DEFAULT_MAX_FILE_MB`) in bytes; refuses a size that is not positive."""
    mb = DEFAULT_MAX_FILE_MB if max_file_mb is None else max_file_mb
    if not mb > 0:
        raise InvalidInputError(f"the input file size limit must be positive, got {mb} MB (--max-file-mb)")
    return round(mb * (1 << 20))


def _os_error(path: str, exc: OSError) -> Exception:
    if exc.errno == errno.ENOENT:
        return InputNotFoundError(f"{path}: no such file")
    if exc.errno == errno.ELOOP:
        return InvalidInputError(f"{path}: symbolic link loop (too many levels of symbolic links)")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return InvalidInputError(f"{path}: permission denied")
    if exc.errno == errno.ENOTDIR:
        return InputNotFoundError(f"{path}: no such file (a part of the path is not a folder)")
    return InvalidInputError(f"{path}: cannot read it ({exc.strerror or exc})")


def _check_regular(path: str, info: os.stat_result, what: str) -> None:
    for test, kind in _KINDS:
        if test(info.st_mode):
            raise InvalidInputError(f"{path}: is {kind}, not {what}; only regular files are read")
    if not stat.S_ISREG(info.st_mode):
        raise InvalidInputError(f"{path}: not a regular file, not {what}; only regular files are read")


def regular_file(path: str | os.PathLike, what: str = "a file") -> int:
    """The size of ``path`` if it is a regular file (symlinks followed), else an error naming it:
    :class:`InputNotFoundError` when absent, :class:`InvalidInputError` for a FIFO, device, socket,
    folder, symlink loop or unreadable path. Nothing is opened."""
    name = os.fspath(path)
    try:
        info = os.stat(name)
    except OSError as exc:
        raise _os_error(name, exc) from None
    _check_regular(name, info, what)
    return info.st_size


def read_file(path: str | os.PathLike, max_bytes: int | None = None, what: str = "an image") -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (default :data:`DEFAULT_MAX_FILE_MB`),
    or an error naming it (see :func:`regular_file`).

    The file is checked by ``stat`` before it is opened, opened non-blocking, and checked again on
    the open descriptor, so a path swapped for a FIFO in between cannot block the reader either.
    """
    name = os.fspath(path)
    limit = max_file_bytes(None) if max_bytes is None else max_bytes
    size = regular_file(name, what)
    _check_size(name, size, limit)
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise _os_error(name, exc) from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        _check_regular(name, info, what)
        _check_size(name, info.st_size, limit)
        try:
            data = f.read(limit + 1)  # a file growing while it is read stops at the limit too
        except OSError as exc:
            raise _os_error(name, exc) from None
    _check_size(name, len(data), limit)
    return data


def _check_size(path: str, size: int, limit: int) -> None:
    if size > limit:
        raise InvalidInputError(
            f"{path}: {size:,} bytes, more than the {limit / (1 << 20):.3g} MB limit for input files "
            "(raise it with --max-file-mb)"
        )


def walk_images(folder: str | os.PathLike, problems: list[tuple[str, str]] | None = None) -> Iterator[str]:
    """Image files under ``folder``, recursively: each folder's files sorted, then its subfolders
    sorted. A subfolder that cannot be listed is added to ``problems`` as (its path, a message
    naming it) when a list is given; symlinked folders are not followed, so a link loop cannot recurse."""

    def failed(exc: OSError) -> None:
        if problems is not None:
            name = os.fspath(exc.filename)
            problems.append((name, f"{name}: cannot list the folder ({exc.strerror or exc})"))

    for root, dirs, files in os.walk(folder, onerror=failed):
        dirs.sort()
        for name in sorted(files):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield os.path.join(root, name)


def expand_inputs(items: list[str | os.PathLike]) -> tuple[list[str], list[str]]:
    """Paths as given, with folders replaced by the image files inside them; and one message per
    folder that holds no image file or cannot be listed (the caller reports them by name)."""
    out: list[str] = []
    problems: list[str] = []
    for item in items:
        if not Path(item).is_dir():
            out.append(os.fspath(item))
            continue
        unlisted: list[tuple[str, str]] = []
        found = list(walk_images(item, unlisted))
        problems += [message for _, message in unlisted]
        if not found and not unlisted:
            problems.append(f"{os.fspath(item)}: folder holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        out += found
    return out, problems


def expand_images(items: list[str | os.PathLike]) -> list[str]:
    """Paths as given, with folders replaced by the image files inside them; a folder among them
    that holds no image file (or cannot be listed) is an :class:`InvalidInputError` naming it."""
    paths, problems = expand_inputs(items)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InvalidInputError(problems[0] + more)
    return paths


def resolve_relative(base: str | os.PathLike, item: str) -> str:
    """``item`` as given when absolute, else relative to ``base``."""
    return item if os.path.isabs(item) else os.path.join(base, item)


def read_list_file(path: str | os.PathLike) -> list[str]:
    """The paths a list file names, one a line (``#`` comments and blank lines skipped),
    relative paths taken from the list's own folder, as MLPerf's calibration lists are."""
    path = Path(path)
    regular_file(path, "a list file")
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except UnicodeDecodeError:
        raise InvalidInputError(f"{path}: not a text list of paths (not UTF-8)") from None
    except OSError as exc:
        raise _os_error(os.fspath(path), exc) from None
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
