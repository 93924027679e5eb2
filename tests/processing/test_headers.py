"""Image sizes read from headers, and images that declare too many pixels refused before decoding."""

from __future__ import annotations

import os
import struct

import cv2
import pytest

from resnet50 import InvalidInputError, preprocess
from resnet50.core.samples import synthetic_image
from resnet50.processing.headers import declared_size, format_name


@pytest.mark.parametrize(
    ("ext", "params", "name"),
    [
        (".jpg", [], "JPEG"),
        (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], "JPEG"),
        (".png", [], "PNG"),
        (".bmp", [], "BMP"),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80], "WebP"),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101], "WebP"),
        (".tiff", [], "TIFF"),
        (".ppm", [], "PNM"),
        (".pgm", [], "PNM"),
    ],
)
def test_declared_size_of_every_format(ext, params, name):
    image = synthetic_image(16, 37, 53)
    if ext == ".pgm":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    data = cv2.imencode(ext, image, params)[1].tobytes()
    assert declared_size(data) == (53, 37) and format_name(data) == name


def test_unknown_or_broken_headers_give_no_size():
    assert declared_size(b"GIF89a....") is None and format_name(b"GIF89a") is None
    assert declared_size(b"\x89PNG\r\n\x1a\n") is None  # cut before IHDR
    assert declared_size(b"II*\x00\xff\xff\xff\xff") is None  # first directory past the end
    assert declared_size(b"\xff\xd8\xff\xe0\x00") is None


def test_a_header_declaring_gigapixels_is_refused_before_decoding(tmp_path):
    jpeg = bytearray(cv2.imencode(".jpg", synthetic_image(12, 40, 40))[1].tobytes())
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 20_000, 20_000)  # libjpeg would fill 1.2 GB with gray
    path = tmp_path / "lie.jpg"
    path.write_bytes(jpeg)
    with pytest.raises(InvalidInputError) as info:
        preprocess(os.fspath(path))
    assert str(info.value) == f"{path}: JPEG header declares 20000x20000 (400.0 megapixels); at most 100 " \
        "megapixels are decoded"  # fmt: skip
