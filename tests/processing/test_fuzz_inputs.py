"""Fuzzing ``preprocess()`` and ``resnet50 classify`` with hostile images (hypothesis, seeded).

Image bytes are cut, flipped, spliced, or given lying headers (PNG IHDR size, JPEG SOF
dimensions, BMP header fields, WebP RIFF size and frame size, TIFF width and length). Every
input must give either a proper tensor or one of the package's own errors naming it: no other
exception (a crash), no call that outlasts the deadline (a hang). The CLI cases add special
entries (FIFO, symlink loop, empty folder, missing path, /dev/null) and run in-process.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import struct
import tempfile
import zlib
from datetime import timedelta
from pathlib import Path
from unittest import mock

import cv2
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz suite needs hypothesis (the test extra)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from hostile import within  # noqa: E402
from resnet50 import preprocess  # noqa: E402
from resnet50.core.errors import ResNet50Error  # noqa: E402
from resnet50.core.samples import synthetic_image  # noqa: E402
from resnet50.processing.preprocess import describe  # noqa: E402

pytestmark = pytest.mark.slow

#: Seeded (derandomize), bounded in examples, and a deadline far above a decode: only a hang reaches it.
FUZZ = {
    "derandomize": True,
    "database": None,
    "deadline": timedelta(seconds=10),
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
}
COUNTS: collections.Counter = collections.Counter()


def _bases() -> dict[str, bytes]:
    """Small valid images of every format the package decodes, by file name."""
    color = synthetic_image(21, 40, 56)
    gray = cv2.cvtColor(color, cv2.COLOR_BGR2GRAY)
    encoded = {
        "base.jpg": cv2.imencode(".jpg", color, [cv2.IMWRITE_JPEG_QUALITY, 90]),
        "progressive.jpg": cv2.imencode(".jpg", color, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
        "gray.jpg": cv2.imencode(".jpg", gray),
        "color.png": cv2.imencode(".png", color),
        "gray.png": cv2.imencode(".png", gray),
        "deep.png": cv2.imencode(".png", color.astype(np.uint16) * 257),
        "color.bmp": cv2.imencode(".bmp", color),
        "lossy.webp": cv2.imencode(".webp", color, [cv2.IMWRITE_WEBP_QUALITY, 80]),
        "lossless.webp": cv2.imencode(".webp", color, [cv2.IMWRITE_WEBP_QUALITY, 101]),
        "color.tiff": cv2.imencode(".tiff", color),
        "color.ppm": cv2.imencode(".ppm", color),
        "gray.pgm": cv2.imencode(".pgm", gray),
    }
    return {name: buf.tobytes() for name, (ok, buf) in encoded.items() if ok}


BASES = _bases()

# A declared size is small enough to decode for real, or past the 100-megapixel cap (never a
# legitimately huge image: a JPEG that declares one is decoded whole, gray where data is missing).
SMALL = st.integers(1, 4096)
DIMENSION = st.one_of(
    st.sampled_from([0, 1, 2, 224, 256, 65535, 2**31 - 1, 2**32 - 1]), SMALL, st.integers(4097, 1 << 20)
)


def _bounded(width: int, height: int) -> tuple[int, int]:
    if 4096 * 4096 < width * height <= 100_000_000:
        return width, 100_000_000 // max(width, 1) + 1  # just past the cap
    return width, height


def _png_lie(data: bytearray, width: int, height: int, fix_crc: bool) -> None:
    data[16:24] = struct.pack(">II", width & 0xFFFFFFFF, height & 0xFFFFFFFF)
    if fix_crc:  # else libpng refuses the CRC before it reads the size
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)


def _jpeg_lie(data: bytearray, width: int, height: int) -> None:
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at > 0:
            data[at + 5 : at + 9] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)


BMP_FIELDS = {
    "bfSize": 2,
    "bfOffBits": 10,
    "biSize": 14,
    "biWidth": 18,
    "biHeight": 22,
    "biBitCount": 28,
    "biSizeImage": 34,
}


def _bmp_lie(data: bytearray, field: str, value: int) -> None:
    at = BMP_FIELDS[field]
    if field == "biBitCount":
        data[at : at + 2] = struct.pack("<H", value & 0xFFFF)
    else:
        data[at : at + 4] = struct.pack("<I", value & 0xFFFFFFFF)


def _webp_lie(data: bytearray, riff_size: int | None, width: int, height: int) -> None:
    if riff_size is not None:
        data[4:8] = struct.pack("<I", riff_size & 0xFFFFFFFF)
    if data[12:16] == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        data[26:30] = struct.pack("<HH", width & 0x3FFF, height & 0x3FFF)
    elif data[12:16] == b"VP8L":
        bits = (
            ((width - 1) & 0x3FFF)
            | (((height - 1) & 0x3FFF) << 14)
            | (int.from_bytes(data[21:25], "little") & ~0xFFFFFFF)
        )
        data[21:25] = (bits & 0xFFFFFFFF).to_bytes(4, "little")


def _tiff_lie(data: bytearray, width: int, height: int) -> None:
    order = "<" if data[:2] == b"II" else ">"
    offset = struct.unpack(order + "I", data[4:8])[0]
    count = struct.unpack(order + "H", data[offset : offset + 2])[0]
    for i in range(count):
        at = offset + 2 + 12 * i
        tag, kind = struct.unpack(order + "HH", data[at : at + 4])
        if tag in (256, 257):
            value = width if tag == 256 else height
            if kind == 3:
                data[at + 8 : at + 10] = struct.pack(order + "H", value & 0xFFFF)
            else:
                data[at + 8 : at + 12] = struct.pack(order + "I", value & 0xFFFFFFFF)


@st.composite
def hostile_image(draw) -> tuple[str, bytes, str]:
    """(base file name, hostile bytes, what was done)."""
    name = draw(st.sampled_from(sorted(BASES)))
    data = bytearray(BASES[name])
    done = []
    if draw(st.booleans()):  # a lying header
        width, height = _bounded(draw(DIMENSION), draw(DIMENSION))
        if name.endswith(".png"):
            _png_lie(data, width, height, draw(st.booleans()))
        elif name.endswith(".jpg"):
            _jpeg_lie(data, width, height)
        elif name.endswith(".bmp"):
            field = draw(
                st.sampled_from(["bfSize", "bfOffBits", "biSize", "biWidth", "biHeight", "biSizeImage", "biBitCount"])
            )
            value = draw(st.one_of(DIMENSION, st.integers(-(2**31), -1)))
            if field in ("biWidth", "biHeight"):
                other = struct.unpack("<i", data[22:26] if field == "biWidth" else data[18:22])[0]
                value = _bounded(abs(value), abs(other))[0] * (1 if value >= 0 else -1)
            _bmp_lie(data, field, value)
        elif name.endswith(".webp"):
            _webp_lie(data, draw(st.one_of(st.none(), DIMENSION)), min(width, 16383) or 1, min(height, 16383) or 1)
        elif name.endswith(".tiff"):
            _tiff_lie(data, width, height)
        else:  # PNM: the size is text
            magic, rest = bytes(data[:2]), bytes(data[2:]).split(maxsplit=2)
            data = bytearray(magic + b"\n%d %d\n" % (width, height) + rest[2])
        done.append("lie")
    for op in draw(st.lists(st.sampled_from(["cut", "flip", "splice", "zeros"]), max_size=3)):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if op == "cut":
            data = data[:at]
        elif op == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif op == "splice":  # a run of bytes copied from elsewhere in the file
            src = draw(st.integers(0, len(data) - 1))
            data[at:at] = data[src : src + draw(st.integers(1, 64))]
        else:
            data[at : at + draw(st.integers(1, 256))] = b"\x00" * len(data[at : at + 256])
        done.append(op)
    return name, bytes(data), "+".join(done) or "intact"


def _check(outcome: str, call, name: str) -> str:
    """Run ``call``: a (1,3,224,224) finite float32 tensor, or our error starting with ``name``."""
    try:
        tensor, _ = call()
    except ResNet50Error as exc:
        assert str(exc).startswith(f"{name}: "), str(exc)
        COUNTS[f"{outcome}: refused ({type(exc).__name__})"] += 1
        return "refused"
    assert tensor.shape == (1, 3, 224, 224) and tensor.dtype == np.float32 and np.isfinite(tensor).all()
    COUNTS[f"{outcome}: decoded"] += 1
    return "decoded"


def test_preprocess_bytes_never_crashes(capfd):
    @settings(max_examples=450, **FUZZ)
    @given(hostile_image())
    def run(case):
        _, data, _ = case
        _check("preprocess(bytes)", lambda: preprocess(data), describe(data))

    run()
    assert capfd.readouterr().err == ""  # no decoder's own line reached file descriptor 2


def test_preprocess_files_never_crash(capfd):
    @settings(max_examples=150, **FUZZ)
    @given(hostile_image())
    def run(case):
        name, data, _ = case
        with tempfile.TemporaryDirectory(prefix="resnet50-fuzz-") as folder:
            path = os.path.join(folder, name)
            Path(path).write_bytes(data)
            _check("preprocess(path)", lambda: preprocess(path), path)

    run()
    assert capfd.readouterr().err == ""


SPECIALS = ["fifo", "loop", "empty folder", "missing", "/dev/null", "folder of hostile files"]


@st.composite
def cli_case(draw):
    return draw(st.lists(hostile_image(), min_size=1, max_size=4)), draw(
        st.lists(st.sampled_from(SPECIALS), max_size=2, unique=True)
    )


def _lay_out(folder: Path, images: list, specials: list[str]) -> list[str]:
    args = []
    for i, (name, data, _) in enumerate(images):
        path = folder / f"{i}-{name}"
        path.write_bytes(data)
        args.append(os.fspath(path))
    for special in specials:
        path = folder / special.replace(" ", "-").replace("/", "")
        if special == "fifo":
            path = path.with_suffix(".jpg")
            os.mkfifo(path)
        elif special == "loop":
            path = path.with_suffix(".png")
            path.symlink_to(path)
        elif special == "empty folder":
            path.mkdir()
        elif special == "/dev/null":
            path = Path("/dev/null")
        elif special == "folder of hostile files":
            path.mkdir()
            for j, (name, data, _) in enumerate(images):
                (path / f"{j}-{name}").write_bytes(data)
        args.append(os.fspath(path))
    return args


def test_classify_cli_never_crashes(model_fp32, capfd):
    from resnet50.cli import main

    @settings(max_examples=60, **FUZZ)
    @given(cli_case())
    def run(case):
        images, specials = case
        with tempfile.TemporaryDirectory(prefix="resnet50-fuzz-cli-") as folder:
            args = _lay_out(Path(folder), images, specials)
            out, err = io.StringIO(), io.StringIO()
            fifos = [a for a in args if a.endswith("fifo.jpg")]
            with (
                mock.patch("resnet50.cli.classify.load_model", return_value=model_fp32),
                contextlib.redirect_stdout(out),
                contextlib.redirect_stderr(err),
            ):
                code = within(main, ["classify", *args, "--top", "1", "--json"], fifos=fifos)
            errors = [line for line in err.getvalue().splitlines() if "error:" in line]
            assert all(line.startswith("resnet50 classify: error: ") for line in errors), errors
            assert all(any(line.split("error: ", 1)[1].startswith(a) for a in args) for line in errors), errors
            if code == 2 and not out.getvalue():  # every input refused before the model ran
                assert len(errors) == 1
                COUNTS["classify: inputs"] += len(args)
                return
            payload = json.loads(out.getvalue())
            failed = [r for r in payload["results"] if "error" in r]
            assert all(r["error"].startswith(f"{r['source']}: ") for r in failed)
            assert len(errors) == len(failed) + len(payload["problems"]) == payload["errors"]
            assert code == (2 if payload["errors"] else 0)
            COUNTS["classify: inputs"] += len(payload["results"]) + len(payload["problems"])
            COUNTS["classify: refused"] += payload["errors"]

    run()
    assert capfd.readouterr().err == ""  # our lines went to the redirected sys.stderr; nothing else came


def test_fuzz_counts():
    """The suite's size: at least 600 generated hostile inputs (run with -s to see the tally)."""
    if not COUNTS:
        pytest.skip("run with the fuzz tests above")
    total = sum(v for k, v in COUNTS.items() if k.startswith("preprocess")) + COUNTS["classify: inputs"]
    print("\nfuzz tally:", dict(sorted(COUNTS.items())), "total inputs", total)
    assert total >= 600
