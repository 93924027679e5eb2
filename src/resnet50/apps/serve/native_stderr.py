"""Keep native libraries' stderr lines (libpng, libjpeg, OpenCV, ONNX Runtime) out of the server log.

C libraries write to file descriptor 2 directly, naming no request: ``libpng error: Not enough
image data`` for a client's broken PNG, ``libpng warning: iCCP: ...`` for an odd but valid
one. The client already gets our own 400 naming its input, so those lines are only noise in
the log. :func:`filter_native_stderr` points descriptor 2 at a pipe that a thread reads:
lines known as library noise are dropped (shown, prefixed, under ``--log-level debug``), any
other line is passed on prefixed with ``resnet50 serve: native:``. Python's ``sys.stderr``
(our messages, uvicorn's log, tracebacks) keeps writing to the original stream directly.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import warnings

NOISE = re.compile(
    rb"^(libpng (error|warning)|libtiff|TIFF\w*:|Corrupt JPEG data|Premature end of JPEG file|Invalid SOS "
    rb"parameters|Unsupported marker|Bogus |JPEG datastream|Warning: unknown JFIF|"
    rb"\[\s*(WARN|ERROR|INFO|DEBUG|FATAL|VERBOSE)\w*:\d+@[\d.]+\]"  # OpenCV's logger
    rb")"
    rb"|\[[VIWEF]:onnxruntime:"  # ONNX Runtime's logger, after its timestamp
)
_MAX_LINE = 64 * 1024
_installed: list[threading.Thread] = []


def is_noise(line: bytes) -> bool:
    """Whether a line written to descriptor 2 is a native library's own message."""
    return NOISE.search(line.strip()) is not None


def filter_native_stderr(show_noise: bool = False, prefix: str = "resnet50 serve: ") -> None:
    """Filter what native code writes to descriptor 2 for the rest of this process (once).

    ``show_noise`` keeps library lines too, prefixed. Pillow's warnings about a client's image
    (``DecompressionBombWarning``, corrupt EXIF) are silenced the same way: the request gets
    its own answer."""
    warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
    if _installed:
        return
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    # Lives as long as the process, like the stderr it replaces.
    sys.stderr = open(original, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    thread = threading.Thread(
        target=_pump, args=(read_end, original, show_noise, prefix.encode()), name="resnet50-stderr", daemon=True
    )
    thread.start()
    _installed.append(thread)


def _pump(read_end: int, original: int, show_noise: bool, prefix: bytes) -> None:
    pending = b""
    while chunk := os.read(read_end, 65536):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if len(pending) > _MAX_LINE:  # no newline in sight: pass it on as one line
            lines.append(pending)
            pending = b""
        for line in lines:
            text = line.rstrip(b"\r").strip()
            if not text:
                continue
            if not is_noise(text):
                os.write(original, prefix + b"native: " + text + b"\n")
            elif show_noise:
                os.write(original, prefix + b"native library: " + text + b"\n")
