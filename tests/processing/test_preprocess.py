from __future__ import annotations

import cv2
import numpy as np
import pytest

from reference import pre_process_vgg, reference_tensor
from resnet50 import ImageDecodeError, InputNotFoundError, InvalidInputError, preprocess
from resnet50.processing import preprocess as preprocess_module
from resnet50.processing.preprocess import center_crop_uint8, normalize, resized_size

KINDS = [
    "jpeg", "png", "bmp", "webp", "gray", "gray_jpeg", "rgba", "png16", "small", "tiny",
    "wide", "tall", "square", "odd", "exif_rotated",
]  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_path_input_equals_mlperf_reference_bit_for_bit(image_files, kind):
    tensor, ctx = preprocess(str(image_files[kind]))
    expected = reference_tensor(image_files[kind])
    assert tensor.dtype == np.float32 and tensor.shape == (1, 3, 224, 224)
    assert np.array_equal(tensor, expected), f"max |diff| {np.abs(tensor - expected).max()}"
    assert ctx.sources == [str(image_files[kind])] and not ctx.batched


@pytest.mark.parametrize("kind", ["jpeg", "png16", "exif_rotated", "gray"])
def test_bytes_input_equals_path_input(image_files, kind):
    path = image_files[kind]
    assert np.array_equal(preprocess(path.read_bytes())[0], reference_tensor(path))


def test_exif_orientation_is_applied(image_files):
    # 300x400 stored with orientation 6 is shown (and decoded) as 400x300.
    _, ctx = preprocess(image_files["exif_rotated"])
    assert ctx.sizes == [(400, 300)]


def test_numpy_bgr_array_and_pil_image(image_files):
    from PIL import Image

    bgr = cv2.imread(str(image_files["png"]))
    expected = reference_tensor(image_files["png"])
    assert np.array_equal(preprocess(bgr)[0], expected)
    assert np.array_equal(preprocess(Image.open(image_files["png"]))[0], expected)
    gray = cv2.imread(str(image_files["gray"]), cv2.IMREAD_GRAYSCALE)
    assert np.array_equal(preprocess(gray)[0], reference_tensor(image_files["gray"]))


def test_list_gives_batch_in_order(image_files):
    files = [image_files[k] for k in ("jpeg", "tall", "small")]
    tensor, ctx = preprocess(files)
    assert tensor.shape == (3, 3, 224, 224) and ctx.batched
    for i, path in enumerate(files):
        assert np.array_equal(tensor[i : i + 1], reference_tensor(path))
    assert ctx.sizes == [(375, 500), (1999, 260), (100, 150)]


def test_without_scaling_gives_uint8_rgb_crop(image_files):
    crop, _ = preprocess(image_files["jpeg"], with_scaling=False)
    assert crop.dtype == np.uint8 and crop.shape == (1, 3, 224, 224)
    means = np.array([123.68, 116.78, 103.94], np.float32).reshape(1, 3, 1, 1)
    assert np.array_equal(crop.astype(np.float32) - means, reference_tensor(image_files["jpeg"]))


def _random_sizes(count: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    edges = [(256, 256), (256, 257), (257, 256), (375, 500), (500, 375), (224, 300), (255, 4000), (4000, 256)]
    edges += [(512, 700), (700, 512), (1024, 2048), (2048, 1024), (768, 768), (257, 8000), (8000, 257), (300, 9000)]
    return edges + [tuple(int(v) for v in rng.integers(200, 1400, 2)) for _ in range(count)]


@pytest.mark.parametrize("height,width", _random_sizes(240, seed=7))
def test_partial_resize_equals_reference_on_noise(height, width):
    # Noise makes every weight visible: the crop-only resize must match the full one exactly.
    bgr = np.random.default_rng(height * 10_000 + width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    ours = normalize(np.ascontiguousarray(center_crop_uint8(bgr).transpose(2, 0, 1))[None])
    assert np.array_equal(ours, pre_process_vgg(bgr)[None])


def test_partial_resize_is_the_path_taken_when_both_sides_shrink(monkeypatch):
    sources = []
    real_resize = cv2.resize
    monkeypatch.setattr(cv2, "resize", lambda src, *a, **kw: sources.append(src.shape) or real_resize(src, *a, **kw))
    center_crop_uint8(np.zeros((375, 500, 3), np.uint8))
    center_crop_uint8(np.zeros((200, 300, 3), np.uint8))  # grows: the whole image is resized
    assert sources[0][0] < 375 and sources[0][1] < 500  # only up to the crop's far edges
    assert sources[1] == (200, 300, 3)


def test_extreme_aspect_ratio_is_refused_not_resized_into_gigabytes():
    with pytest.raises(InvalidInputError) as info:
        preprocess(np.zeros((1, 100_000, 3), np.uint8))
    assert str(info.value) == (
        "<array 1x100000x3 uint8>: a 100000x1 image would be resized to 25600000x256 before the crop; "
        "aspect ratios beyond ~490:1 are refused"
    )
    assert preprocess(np.zeros((1, 400, 3), np.uint8))[0].shape == (1, 3, 224, 224)  # 400:1 still runs


def test_resize_geometry_matches_reference_arithmetic():
    assert resized_size(375, 500) == (256, 341)
    assert resized_size(500, 375) == (341, 256)
    assert resized_size(300, 300) == (256, 256)
    assert resized_size(7, 5) == (358, 256)


def test_missing_file(tmp_path):
    with pytest.raises(InputNotFoundError, match=r"nope\.jpg: no such file"):
        preprocess(tmp_path / "nope.jpg")


def test_corrupt_bytes_and_empty_input():
    with pytest.raises(ImageDecodeError, match="not a decodable image"):
        preprocess(b"this is not an image")
    with pytest.raises(ImageDecodeError, match="empty input"):
        preprocess(b"")


@pytest.mark.parametrize(
    ("kind", "what"),
    [("jpeg", "truncated JPEG"), ("png", "truncated PNG"), ("webp", "truncated WebP"), ("bmp", "truncated BMP")],
)
def test_truncated_files_are_refused(image_files, tmp_path, kind, what):
    data = image_files[kind].read_bytes()
    cut = tmp_path / f"cut.{kind}"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageDecodeError, match=f"cut.{kind}: {what}"):
        preprocess(cut)


def test_bad_arrays_name_the_problem():
    with pytest.raises(InvalidInputError, match="dtype float32"):
        preprocess(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(InvalidInputError, match=r"shape \(10, 10, 2\)"):
        preprocess(np.zeros((10, 10, 2), np.uint8))
    with pytest.raises(InvalidInputError, match="unsupported input type"):
        preprocess(42)
    with pytest.raises(InvalidInputError, match="empty list"):
        preprocess([])


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(InvalidInputError, match="is a directory"):
        preprocess(tmp_path)


def _png(width: int, height: int, bit_depth: int, color_type: int, idat: bytes) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(idat)) + chunk(b"IEND", b"")


def test_image_opencv_refuses_to_decode_is_our_error(monkeypatch):
    # A 60000x60000 header: OpenCV raises cv2.error (too many pixels) instead of returning None.
    monkeypatch.setattr(preprocess_module, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(ImageDecodeError, match=r"<\d+ bytes>: not a decodable image \("):
        preprocess(_png(60_000, 60_000, 8, 0, b"\x00" * 1000))


def test_a_header_declaring_too_many_pixels_is_refused_before_decoding():
    with pytest.raises(
        InvalidInputError,
        match=r"<\d+ bytes>: PNG header declares 60000x60000 \(3600\.0 megapixels\); at most 100 megapixels",
    ):
        preprocess(_png(60_000, 60_000, 8, 0, b"\x00" * 1000))


def test_pil_16bit_gray_equals_the_file(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    deep = rng.integers(0, 65536, (300, 400), dtype=np.uint16)
    path = tmp_path / "gray16.png"
    assert cv2.imwrite(str(path), deep)
    image = Image.open(path)
    assert image.mode.startswith("I")
    assert np.array_equal(preprocess(image)[0], reference_tensor(path))
