"""Preprocessing that equals each weights entry's reference pipeline bit for bit.

The preset comes from the registry (:class:`resnet50.core.registry.Preprocessing`). The MLPerf
preset (the default) follows the MLPerf reference; the torchvision presets follow
``torchvision.transforms`` on PIL images (``ResNet50_Weights.*.transforms()``): PIL decode to
RGB, bilinear antialiased resize of the short side, center crop rounded as torchvision rounds,
``/255``, mean/std.

MLPerf reference (``mlcommons/inference`` ``pre_process_vgg``): ``cv2.imread`` → RGB → INTER_AREA
resize so the short side is 256 → center crop 224 → float32 minus the RGB means → CHW.
Two reorderings here are exact, not approximations: the colour swap happens after the
resize (INTER_AREA treats channels independently) and the crop happens on uint8 before
the float conversion, which is what makes this path faster than the reference.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from resnet50.core.constants import INPUT_SIZE
from resnet50.core.errors import ImageDecodeError, InvalidInputError, first_line
from resnet50.core.files import read_file
from resnet50.core.quiet import quiet_native
from resnet50.core.registry import MLPERF_PREPROCESSING, Preprocessing
from resnet50.processing.headers import declared_size, format_name

ImageInput = str | os.PathLike | bytes | bytearray | memoryview | np.ndarray | Any


@dataclass
class PreprocessContext:
    """What postprocessing needs to know about the images behind a tensor."""

    sources: list[str] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # original (height, width)
    batched: bool = True


def describe(image: ImageInput) -> str:
    """A short name for an input, used in error messages and results."""
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return f"<{len(image)} bytes>"
    if isinstance(image, np.ndarray):
        return f"<array {'x'.join(map(str, image.shape))} {image.dtype}>"
    if _is_pil(image):
        return f"<PIL image {image.mode} {image.width}x{image.height}>"
    return f"<{type(image).__name__}>"


def _is_pil(image: Any) -> bool:
    return type(image).__module__.startswith("PIL.") and hasattr(image, "convert")


def read_bytes(path: str | os.PathLike, max_bytes: int | None = None) -> bytes:
    """The bytes of an image file of at most ``max_bytes`` (default
    :data:`resnet50.core.files.DEFAULT_MAX_FILE_MB`), or an error naming it:
    :class:`InputNotFoundError` when absent, :class:`InvalidInputError` for a folder, FIFO, device,
    socket, symlink loop, unreadable or oversized file (special files are never opened)."""
    return read_file(path, max_bytes, "an image")


def _check_complete(data: bytes, source: str) -> None:
    """Refuse files cut short, which decoders would otherwise pad with gray silently."""
    if data[:3] == b"\xff\xd8\xff":
        # FF D9 cannot occur inside entropy-coded data, so a whole JPEG ends its last scan with EOI.
        if data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
            raise ImageDecodeError(f"{source}: truncated JPEG (no end-of-image marker after the last scan)")
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        if b"IEND" not in data[-16:]:
            raise ImageDecodeError(f"{source}: truncated PNG (no IEND chunk)")
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP" and int.from_bytes(data[4:8], "little") + 8 > len(data):
        raise ImageDecodeError(f"{source}: truncated WebP (file shorter than its RIFF header says)")
    elif data[:2] == b"BM" and len(data) >= 6 and int.from_bytes(data[2:6], "little") > len(data):
        raise ImageDecodeError(f"{source}: truncated BMP (file shorter than its header says)")


#: Most pixels an image may declare before it is decoded (like Pillow's ``Image.MAX_IMAGE_PIXELS``;
#: the server's --max-megapixels default). Set it higher for bigger photos, None for no limit.
MAX_IMAGE_PIXELS: int | None = 100_000_000


def _check_declared_size(data: bytes, source: str) -> None:
    """Refuse a header that declares no pixels or more than :data:`MAX_IMAGE_PIXELS`, before decoding."""
    size = declared_size(data)
    if size is None:
        return
    width, height = size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"{source}: {format_name(data)} header declares a {width}x{height} image")
    if MAX_IMAGE_PIXELS is not None and width * height > MAX_IMAGE_PIXELS:
        raise InvalidInputError(
            f"{source}: {format_name(data)} header declares {width}x{height} ({width * height / 1e6:.1f} "
            f"megapixels); at most {MAX_IMAGE_PIXELS / 1e6:g} megapixels are decoded"
        )


def _checked_bytes(data: bytes | bytearray | memoryview, source: str) -> bytes:
    """Encoded image bytes that are not empty, not cut short and do not declare a giant image."""
    data = bytes(data)
    if not data:
        raise ImageDecodeError(f"{source}: empty input, not an image")
    _check_complete(data, source)
    _check_declared_size(data, source)
    return data


def decode(data: bytes | bytearray | memoryview, source: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes like ``cv2.imread(path, IMREAD_COLOR)``: BGR uint8 HxWx3.

    Gray is expanded, alpha dropped, 16-bit reduced to 8, EXIF orientation applied. The decoders'
    own messages are silenced (:func:`resnet50.core.quiet.quiet_native`); a failure is one
    :class:`ImageDecodeError` naming ``source``.
    """
    import cv2

    data = _checked_bytes(data, source)
    try:
        with quiet_native():
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:  # OpenCV raises on some headers, e.g. more pixels than CV_IO_MAX_IMAGE_PIXELS
        raise ImageDecodeError(f"{source}: not a decodable image ({exc.err or 'OpenCV error'})") from None
    if image is None:
        kind = format_name(data)
        what = f"corrupt {kind} data" if kind else "JPEG, PNG, BMP, WebP, TIFF ..."
        raise ImageDecodeError(f"{source}: not a decodable image ({what})")
    return image


def to_bgr(image: ImageInput, source: str | None = None) -> np.ndarray:
    """Any supported input as a BGR uint8 HxWx3 array; ``source`` names it in errors
    (default: :func:`describe`)."""
    import cv2

    source = source or describe(image)
    if isinstance(image, (str, os.PathLike)):
        return decode(read_bytes(image), source)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode(image, source)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise InvalidInputError(f"{source}: expected a uint8 BGR image array, got dtype {image.dtype}")
        if image.ndim == 2:
            return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        if image.ndim == 3 and image.shape[2] == 3:
            return image
        if image.ndim == 3 and image.shape[2] == 4:
            return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        raise InvalidInputError(f"{source}: expected an HxWx3 BGR (or HxW gray) image array, got shape {image.shape}")
    if _is_pil(image):
        from PIL import ImageOps

        image = ImageOps.exif_transpose(image)
        if image.mode.startswith("I"):  # 16/32-bit gray: keep the high byte, as OpenCV reduces 16-bit
            gray = (np.asarray(image, np.uint32) >> 8).clip(0, 255).astype(np.uint8)
            return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
        return np.ascontiguousarray(np.asarray(image.convert("RGB"))[..., ::-1])
    raise InvalidInputError(
        f"{source}: unsupported input type; give a path, encoded bytes, a BGR uint8 array or a PIL image"
    )


def resized_size(height: int, width: int, short_side: int = MLPERF_PREPROCESSING.resize) -> tuple[int, int]:
    """(height, width) after the aspect-preserving resize, computed as the references do
    (MLPerf and torchvision alike truncate the long side: ``int(short_side * long / short)``)."""
    if height > width:
        return int(short_side * height / width), short_side
    return short_side, int(short_side * width / height)


#: Largest resized image (before the crop) preprocessing builds: 32 MP is 96 MB, an aspect
#: ratio of ~490:1. The reference would resize a 1x100000 strip to 256x25,600,000 (19.7 GB).
MAX_RESIZED_PIXELS = 32 * 1024 * 1024


def center_crop_uint8(bgr: np.ndarray, source: str = "image") -> np.ndarray:
    """INTER_AREA resize to short side 256 and center crop 224: RGB uint8 ``224x224x3``.

    When both sides shrink, only the rows and columns up to the crop's far edges are resized:
    an INTER_AREA output pixel depends only on its own source window, and giving OpenCV the
    reference's scale factors (instead of an output size) keeps every weight identical, so the
    crop is bit-identical to resizing the whole image (tested over hundreds of sizes) at less
    cost (``benchmarks/preprocess_bench.py``). ``source`` names the input in errors.
    """
    import cv2

    if bgr.shape[0] < 1 or bgr.shape[1] < 1:
        raise InvalidInputError(f"{source}: image of shape {bgr.shape} has no pixels")
    height, width = bgr.shape[:2]
    h, w = resized_size(height, width)
    if h * w > MAX_RESIZED_PIXELS:
        raise InvalidInputError(
            f"{source}: a {width}x{height} image would be resized to {w}x{h} before the crop; "
            f"aspect ratios beyond ~490:1 are refused"
        )
    top, left = int((h - INPUT_SIZE) / 2), int((w - INPUT_SIZE) / 2)
    resized = None
    if h <= height and w <= width:
        # Source rows/columns the crop needs, plus a margin so no kept pixel meets the border.
        rows = min(height, math.ceil((top + INPUT_SIZE) * height / h) + 2)
        cols = min(width, math.ceil((left + INPUT_SIZE) * width / w) + 2)
        # fx/fy are the exact doubles cv2.resize derives from (w, h), so the weights match.
        partial = cv2.resize(bgr[:rows, :cols], (0, 0), fx=w / width, fy=h / height, interpolation=cv2.INTER_AREA)
        if partial.shape[0] >= top + INPUT_SIZE and partial.shape[1] >= left + INPUT_SIZE:
            resized = partial
    if resized is None:
        resized = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA)
    return resized[top : top + INPUT_SIZE, left : left + INPUT_SIZE, ::-1]


def to_pil_rgb(image: ImageInput, source: str | None = None):
    """Any supported input as an RGB PIL image, decoded as torchvision's ``pil_loader`` does
    (``Image.open(...).convert("RGB")``); arrays are taken as BGR, like everywhere here."""
    from PIL import Image, UnidentifiedImageError

    source = source or describe(image)
    if isinstance(image, (str, os.PathLike)):
        image = read_bytes(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = _checked_bytes(image, source)
        try:
            with Image.open(io.BytesIO(data)) as opened:
                return opened.convert("RGB")
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
            raise ImageDecodeError(f"{source}: not a decodable image ({first_line(exc)})") from None
    if isinstance(image, np.ndarray):
        return Image.fromarray(np.ascontiguousarray(to_bgr(image, source)[..., ::-1]))
    if _is_pil(image):
        return image.convert("RGB")
    return to_bgr(image, source)  # raises the unsupported-type error


def pil_center_crop_uint8(image, preprocessing: Preprocessing, source: str = "image") -> np.ndarray:
    """torchvision's ``Resize(resize, BILINEAR, antialias=True)`` then ``CenterCrop(crop)`` on a
    PIL image: RGB uint8 ``crop x crop x 3``."""
    from PIL import Image

    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidInputError(f"{source}: image of size {width}x{height} has no pixels")
    h, w = resized_size(height, width, preprocessing.resize)
    if h * w > MAX_RESIZED_PIXELS:
        raise InvalidInputError(
            f"{source}: a {width}x{height} image would be resized to {w}x{h} before the crop; "
            f"aspect ratios beyond ~490:1 are refused"
        )
    resized = image.resize((w, h), Image.BILINEAR)
    size = preprocessing.crop
    top, left = round((h - size) / 2.0), round((w - size) / 2.0)  # torchvision's int(round(...))
    return np.asarray(resized.crop((left, top, left + size, top + size)), np.uint8)


def normalize(crops_nchw_uint8: np.ndarray, preprocessing: Preprocessing = MLPERF_PREPROCESSING) -> np.ndarray:
    """uint8 RGB ``[N,3,224,224]`` → the model's float32 input: ``(x / scale - mean) / std``, the
    float32 operations torchvision's ``ToTensor`` + ``Normalize`` do (the MLPerf preset only
    subtracts the means)."""
    x = crops_nchw_uint8.astype(np.float32)
    if preprocessing.scale != 1.0:
        x /= np.float32(preprocessing.scale)
    x -= np.asarray(preprocessing.mean, np.float32).reshape(1, 3, 1, 1)
    if any(s != 1.0 for s in preprocessing.std):
        x /= np.asarray(preprocessing.std, np.float32).reshape(1, 3, 1, 1)
    return x


def _opencv_crop(bgr: np.ndarray, preprocessing: Preprocessing, source: str) -> tuple[np.ndarray, tuple[int, int]]:
    return center_crop_uint8(bgr, source), (bgr.shape[0], bgr.shape[1])


def _pil_crop(image, preprocessing: Preprocessing, source: str) -> tuple[np.ndarray, tuple[int, int]]:
    return pil_center_crop_uint8(image, preprocessing, source), (image.size[1], image.size[0])


#: decoder name → (decode: input → decoded image, crop: decoded → (RGB HWC crop, original (h, w))).
DECODERS = {"opencv": (to_bgr, _opencv_crop), "pil": (to_pil_rgb, _pil_crop)}


def decode_image(image: ImageInput, source: str, preprocessing: Preprocessing = MLPERF_PREPROCESSING):
    """The decode stage of ``preprocessing``: a BGR array (OpenCV) or an RGB PIL image."""
    return DECODERS[preprocessing.decoder][0](image, source)


def crop_decoded(
    decoded, source: str, preprocessing: Preprocessing = MLPERF_PREPROCESSING
) -> tuple[np.ndarray, tuple[int, int]]:
    """The resize-and-crop stage: (uint8 RGB CHW crop ``[3,224,224]``, original (height, width))."""
    crop, size = DECODERS[preprocessing.decoder][1](decoded, preprocessing, source)
    return np.ascontiguousarray(crop.transpose(2, 0, 1)), size


def preprocess_one(
    image: ImageInput, source: str | None = None, preprocessing: Preprocessing = MLPERF_PREPROCESSING
) -> tuple[np.ndarray, tuple[int, int]]:
    """One input → (uint8 RGB CHW crop ``[3,224,224]``, original (height, width)); ``source``
    names it in errors (default: :func:`describe`)."""
    source = source or describe(image)
    return crop_decoded(decode_image(image, source, preprocessing), source, preprocessing)


def preprocess(
    image: ImageInput | list[ImageInput],
    with_scaling: bool = True,
    preprocessing: Preprocessing = MLPERF_PREPROCESSING,
) -> tuple[np.ndarray, PreprocessContext]:
    """Image(s) → (tensor ``[N,3,224,224]``, context), by a weights entry's ``preprocessing``
    (default: the exact MLPerf pipeline).

    ``with_scaling=True`` gives the exact float32 model input; ``False`` gives the uint8 RGB
    crop before normalization (what the fused-input graph takes). A single image gives a
    batch of one; a list gives a batch in the same order.
    """
    batched = isinstance(image, (list, tuple))
    images = list(image) if batched else [image]
    if not images:
        raise InvalidInputError("empty list of images")
    ctx = PreprocessContext(batched=batched)
    crops = np.empty((len(images), 3, INPUT_SIZE, INPUT_SIZE), np.uint8)
    for i, item in enumerate(images):
        crops[i], size = preprocess_one(item, preprocessing=preprocessing)
        ctx.sources.append(describe(item))
        ctx.sizes.append(size)
    return (normalize(crops, preprocessing) if with_scaling else crops), ctx
