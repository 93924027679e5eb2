"""Hostile inputs shared by tests: special files, decoder-noisy images, and a watchdog that
turns a call blocked on a FIFO into a test failure instead of a hung suite."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import zlib
from pathlib import Path

import cv2
import pytest

from resnet50.core.samples import synthetic_image, write_jpegs

WATCHDOG_S = 20  # far above any call it guards; only a hang reaches it


def release(fifo: str) -> None:
    """Open ``fifo`` for writing and close it: a reader blocked on it gets end-of-file."""
    with contextlib.suppress(OSError):  # nobody reads it any more
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def within(call, *args, fifos=(), **kwargs):
    """``call(*args, **kwargs)`` in a thread; a call still blocked after WATCHDOG_S fails the test
    (its FIFOs are then released, which lets a blocked reader go)."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = call(*args, **kwargs)
        except BaseException as exc:  # handed to the test below
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(WATCHDOG_S)
    if thread.is_alive():
        for fifo in fifos:
            release(fifo)
        thread.join(5)
        pytest.fail(f"{getattr(call, '__name__', call)} hung on a special file")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@contextlib.contextmanager
def special_files(root: Path):
    """Two good JPEGs, a FIFO named like an image, a symlink loop, a socket, and a folder holding a
    FIFO and a JPEG. /dev/zero is left to subprocesses with capped memory: code that reads it whole
    would take the machine's memory, not fail."""
    good = write_jpegs(root / "good", 2, seed=3)
    fifo = root / "x.jpg"
    os.mkfifo(fifo)
    loop = root / "loop.jpg"
    loop.symlink_to(loop)
    sock_path = root / "s.png"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(os.fspath(sock_path))
    inner = root / "folder"
    inner.mkdir()
    os.mkfifo(inner / "inner.png")
    write_jpegs(inner, 1, seed=4)
    try:
        yield {
            "good": [os.fspath(p) for p in good],
            "fifo": os.fspath(fifo),
            "loop": os.fspath(loop),
            "socket": os.fspath(sock_path),
            "folder": os.fspath(inner),
            "inner_fifo": os.fspath(inner / "inner.png"),
            "fifos": [os.fspath(fifo), os.fspath(inner / "inner.png")],
        }
    finally:
        sock.close()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def noisy_images() -> dict[str, bytes]:
    """Files whose decoding makes libpng, libjpeg, libtiff or OpenCV print to stderr."""
    image = synthetic_image(11, 48, 64)
    png = cv2.imencode(".png", image)[1].tobytes()
    jpeg = bytearray(cv2.imencode(".jpg", image)[1].tobytes())
    jpeg[-60:-10] = b"\x00" * 50  # data after the scan: "Corrupt JPEG data: extraneous bytes"
    tiff = bytearray(cv2.imencode(".tiff", image)[1].tobytes())
    tiff[len(tiff) // 2 : len(tiff) // 2 + 40] = b"\xff" * 40
    return {
        "iccp.png": png[:33] + _chunk(b"iCCP", b"x\x00") + png[33:],  # libpng warning, decodes
        "cut.png": png[: len(png) // 2] + png[-12:],  # libpng error: Not enough image data
        "ihdr.png": b"\x89PNG\r\n\x1a\n" + b"x" * 40 + _chunk(b"IEND", b""),  # OpenCV: IHDR chunk shall be first
        "extra.jpg": bytes(jpeg),
        "bad.tiff": bytes(tiff),
    }
