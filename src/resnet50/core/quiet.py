"""Native library noise kept off the terminal: wrap decoder calls in :func:`quiet_native`.

libpng and libjpeg print warnings and errors (``libpng error: Not enough image data``,
``Corrupt JPEG data: ...``) through C stdio's ``stderr``, and OpenCV's logger prints its own
lines (``[ERROR:1@0.033] global loadsave.cpp ... imdecode_``). None of them names the file. While
any thread is inside :func:`quiet_native`, C stdio's ``stderr`` points at ``/dev/null`` and
OpenCV's log level is silent; on the way out of the last one both are restored. File
descriptor 2 itself is never touched, so Python's own writes to ``sys.stderr`` (progress bars,
error lines, logs from other threads) are neither lost nor delayed. What matters about a failed
decode is said by the caller, in one line naming the input.

Thread-safe and re-entrant (a count of the threads inside). Where the C library's ``stderr``
cannot be found (not glibc or macOS), only OpenCV's log is silenced.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_inside = 0
_saved: tuple[int | None, int | None] = (None, None)  # (C stderr pointer, OpenCV log level) while inside
#: (C ``stderr`` variable, FILE* on /dev/null) once looked up; False until then, None if not found.
_stdio: tuple[ctypes.c_void_p, int] | bool | None = False


def _c_stderr() -> tuple[ctypes.c_void_p, int] | None:
    """The C library's ``stderr`` variable and a ``FILE*`` on /dev/null, found once."""
    global _stdio
    if _stdio is False:
        _stdio = None
        try:
            libc = ctypes.CDLL(None)
            libc.fopen.restype = ctypes.c_void_p
            libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
            for name in ("stderr", "__stderrp"):  # glibc/musl, macOS
                try:
                    variable = ctypes.c_void_p.in_dll(libc, name)
                except ValueError:
                    continue
                null = libc.fopen(os.devnull.encode(), b"w")
                if variable.value and null:
                    _stdio = (variable, null)
                break
        except (OSError, AttributeError):
            pass
    return _stdio or None


def _opencv_logging():
    try:
        import cv2.utils.logging as cv_logging
    except ImportError:
        return None
    return cv_logging


@contextmanager
def quiet_native() -> Iterator[None]:
    """Silence libpng/libjpeg (C stdio ``stderr``) and OpenCV's log while the block runs."""
    global _inside, _saved
    with _lock:
        if _inside == 0:
            stdio, cv_logging = _c_stderr(), _opencv_logging()
            pointer = level = None
            if stdio is not None:
                pointer = stdio[0].value
                stdio[0].value = stdio[1]
            if cv_logging is not None:
                level = cv_logging.getLogLevel()
                cv_logging.setLogLevel(cv_logging.LOG_LEVEL_SILENT)
            _saved = (pointer, level)
        _inside += 1
    try:
        yield
    finally:
        with _lock:
            _inside -= 1
            if _inside == 0:
                pointer, level = _saved
                stdio = _c_stderr()
                if stdio is not None and pointer is not None:
                    stdio[0].value = pointer
                if level is not None:
                    _opencv_logging().setLogLevel(level)
                _saved = (None, None)
