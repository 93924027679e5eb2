"""Opt-in GPU preprocessing: nvJPEG decode, then resize and center crop as two matrix products.

Not the default, and not exact. The exact path (:mod:`resnet50.processing.preprocess`) stays the
default and can feed the GPU through the backend's pinned staging buffer.

How close it is:

* **Resize and crop** reproduce OpenCV's ``INTER_AREA`` tables (fractional pixel-area
  weights when shrinking; its 11-bit fixed-point area-mode linear taps and SIMD rounding
  when enlarging), restricted to the 224 rows and columns of the center crop, in float64.
  Enlarging is bit-exact; shrinking rounds float64 sums where OpenCV rounds float32 ones,
  so about 1 pixel value in 10,000 is off by one (never more), measured on CPU tensors
  against ``cv2.resize`` with :func:`compare_to_exact`.
* **nvJPEG decode** (``torchvision.io.decode_jpeg(device="cuda")``) uses its own IDCT and
  chroma upsampling, so decoded pixels differ from libjpeg-turbo's by a few levels. JPEGs
  with an EXIF orientation, non-JPEG files and anything nvJPEG refuses are decoded on
  the CPU exactly (OpenCV) and uploaded.

torch is needed for resizing; torchvision only for nvJPEG decoding. Both are imported lazily.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from resnet50.core.constants import INPUT_SIZE
from resnet50.core.errors import BackendUnavailableError, ResNet50Error
from resnet50.processing.preprocess import (
    PreprocessContext,
    _check_complete,
    decode,
    describe,
    preprocess_one,
    read_bytes,
    resized_size,
)
from resnet50.runtime.torch.backend import import_torch, require_cuda


def _is_integer_ratio(src: int, dst: int) -> bool:
    return src > dst and src % dst == 0


@functools.lru_cache(maxsize=4096)
def area_weights(src: int, dst: int) -> np.ndarray:
    """``[dst, src]`` float64 matrix of OpenCV ``INTER_AREA`` weights along one axis.

    Shrinking: OpenCV's area table (``computeResizeAreaTab``: covered fraction of each source
    pixel, slivers under 1e-3 dropped). Enlarging: OpenCV's area-mode linear weights,
    quantised to its 11 fractional bits.
    """
    weights = np.zeros((dst, src), np.float64)
    if src == dst:
        np.fill_diagonal(weights, 1.0)
        return weights
    scale = src / dst
    if src > dst:
        for d in range(dst):
            fsx1 = d * scale
            fsx2 = fsx1 + scale
            cell = min(scale, src - fsx1)
            sx2 = min(int(np.floor(fsx2)), src - 1)
            sx1 = min(int(np.ceil(fsx1)), sx2)
            if sx1 - fsx1 > 1e-3:
                weights[d, sx1 - 1] += (sx1 - fsx1) / cell
            weights[d, sx1:sx2] += 1.0 / cell
            if fsx2 - sx2 > 1e-3:
                weights[d, sx2] += min(fsx2 - sx2, 1.0, cell) / cell
        return weights
    first, second, alpha = linear_taps(src, dst)
    weights[np.arange(dst), first] += (2048 - alpha) / 2048
    weights[np.arange(dst), second] += alpha / 2048
    return weights


@functools.lru_cache(maxsize=4096)
def linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's area-mode enlarging taps: source indices (first, second) and the second's weight in 1/2048ths."""
    scale, inv = src / dst, dst / src
    first = np.zeros(dst, np.int64)
    alpha = np.zeros(dst, np.int64)
    for d in range(dst):
        sx = int(np.floor(d * scale))
        fx = float(np.float32((d + 1) - (sx + 1) * inv))
        fx = 0.0 if fx <= 0 else fx - np.floor(fx)
        if sx >= src - 1:
            sx, fx = src - 1, 0.0
        first[d], alpha[d] = sx, round(fx * 2048)  # INTER_RESIZE_COEF_BITS = 11
    return first, np.minimum(first + 1, src - 1), alpha


def crop_weights(height: int, width: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Row weights ``[224, height]``, column weights ``[224, width]`` of resize+crop, and the rounding rule.

    The third value is True where OpenCV rounds half up (its integer-ratio fast path and its
    fixed-point enlarging path) and False where it rounds float sums half to even. Both axes
    always shrink together or enlarge together: the long side follows the short one.
    """
    h, w = resized_size(height, width)
    top, left = int((h - INPUT_SIZE) / 2), int((w - INPUT_SIZE) / 2)
    rows = area_weights(height, h)[top : top + INPUT_SIZE]
    cols = area_weights(width, w)[left : left + INPUT_SIZE]
    half_up = height < h or (_is_integer_ratio(height, h) and _is_integer_ratio(width, w))
    return rows, cols, half_up


def resize_crop(images: Sequence[Any], device: Any = None) -> Any:
    """RGB uint8 ``[3,H,W]`` torch tensors (any sizes) → uint8 ``[N,3,224,224]`` on ``device``.

    Images of the same size are done together in one batched product.
    """
    torch = import_torch()
    if not images:
        raise ValueError("no images to resize")
    device = torch.device(device) if device is not None else images[0].device
    out = torch.empty((len(images), 3, INPUT_SIZE, INPUT_SIZE), dtype=torch.uint8, device=device)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
            raise ValueError(f"image {i}: expected a uint8 [3,H,W] tensor, got {image.dtype} {list(image.shape)}")
        groups.setdefault((int(image.shape[1]), int(image.shape[2])), []).append(i)
    for (height, width), index in groups.items():
        batch = torch.stack([images[i].to(device, non_blocking=True) for i in index]).to(torch.float64)
        if height < resized_size(height, width)[0]:
            values = _enlarge_crop(batch, height, width, torch)
        else:
            rows, cols, half_up = crop_weights(height, width)
            values = torch.from_numpy(rows).to(device) @ batch @ torch.from_numpy(cols).to(device).T
            values = torch.floor(values + 0.5) if half_up else torch.round(values)
        out[torch.as_tensor(index, device=device)] = values.clamp_(0, 255).to(torch.uint8)
    return out


def _enlarge_crop(batch, height: int, width: int, torch):
    """OpenCV's fixed-point enlarging (horizontal taps, then its SIMD vertical pass), crop only.

    Every value is an integer below 2**53, so float64 holds the fixed-point arithmetic exactly.
    """
    h, w = resized_size(height, width)
    top, left = int((h - INPUT_SIZE) / 2), int((w - INPUT_SIZE) / 2)
    crop = slice(top, top + INPUT_SIZE), slice(left, left + INPUT_SIZE)
    c0, c1, ca = (torch.from_numpy(t[crop[1]]).to(batch.device) for t in linear_taps(width, w))
    r0, r1, ra = (torch.from_numpy(t[crop[0]]).to(batch.device) for t in linear_taps(height, h))
    rows = batch[:, :, :, c0] * (2048 - ca).double() + batch[:, :, :, c1] * ca.double()  # [n,3,H,224]
    s0, s1 = torch.floor(rows[:, :, r0] / 16), torch.floor(rows[:, :, r1] / 16)
    b0, b1 = (2048 - ra).double().view(-1, 1), ra.double().view(-1, 1)
    return torch.floor((torch.floor(b0 * s0 / 65536) + torch.floor(b1 * s1 / 65536) + 2) / 4)


def _has_exif_orientation(data: bytes) -> bool:
    """Whether a JPEG carries an EXIF orientation other than 1 (nvJPEG would ignore it)."""
    if b"Exif" not in data[:65536]:
        return False
    import io

    from PIL import Image

    try:
        return Image.open(io.BytesIO(data)).getexif().get(0x0112, 1) != 1
    except Exception:
        return True  # unreadable EXIF: let the exact decoder decide


def _cpu_rgb(data: bytes, source: str, torch) -> Any:
    bgr = decode(data, source)
    return torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1].transpose(2, 0, 1)))


class GpuPreprocessor:
    """Paths or encoded bytes → uint8 crops ``[N,3,224,224]`` on the GPU (decode with nvJPEG).

    Feed the result to :meth:`resnet50.runtime.torch.backend.TorchBackend.infer`.
    """

    def __init__(self, device: str = "cuda", nvjpeg: bool = True):
        torch = require_cuda() if str(device).startswith("cuda") else import_torch()
        self.torch = torch
        self.device = torch.device(device)
        self.nvjpeg = nvjpeg and self.device.type == "cuda"
        if self.nvjpeg:
            try:
                from torchvision.io import ImageReadMode, decode_jpeg
            except ImportError:
                raise BackendUnavailableError(
                    "GPU JPEG decoding needs torchvision, which is not installed (pip install 'resnet50[cuda]')"
                ) from None
            self._decode_jpeg, self._rgb = decode_jpeg, ImageReadMode.RGB
        self.fallbacks = 0  # images decoded on the CPU instead of nvJPEG

    def decode(self, images: Sequence[Any]) -> tuple[list[Any], list[str | None]]:
        """Decoded RGB ``[3,H,W]`` tensors (None where it failed) and per-image errors."""
        torch = self.torch
        sources = [describe(image) for image in images]
        decoded: list[Any] = [None] * len(images)
        errors: list[str | None] = [None] * len(images)
        blobs: list[bytes | None] = [None] * len(images)
        gpu: list[int] = []
        for i, image in enumerate(images):
            try:
                data = read_bytes(image) if not isinstance(image, (bytes, bytearray, memoryview)) else bytes(image)
                _check_complete(data, sources[i])
                blobs[i] = data
                if self.nvjpeg and data[:3] == b"\xff\xd8\xff" and not _has_exif_orientation(data):
                    gpu.append(i)
                else:
                    decoded[i] = _cpu_rgb(data, sources[i], torch).to(self.device, non_blocking=True)
                    self.fallbacks += self.nvjpeg
            except ResNet50Error as exc:
                errors[i] = str(exc)
        if gpu:
            tensors = [torch.frombuffer(bytearray(blobs[i]), dtype=torch.uint8) for i in gpu]
            try:
                results = self._decode_jpeg(tensors, mode=self._rgb, device=self.device)
            except RuntimeError:  # nvJPEG refuses the whole batch for one file: retry one by one
                results = [self._decode_one(t) for t in tensors]
            for i, result in zip(gpu, results):
                if result is not None:
                    decoded[i] = result
                    continue
                self.fallbacks += 1
                try:
                    decoded[i] = _cpu_rgb(blobs[i], sources[i], torch).to(self.device, non_blocking=True)
                except ResNet50Error as exc:
                    errors[i] = str(exc)
        return decoded, errors

    def _decode_one(self, data) -> Any:
        try:
            return self._decode_jpeg(data, mode=self._rgb, device=self.device)
        except RuntimeError:
            return None  # decoded exactly on the CPU instead

    def __call__(self, images: Sequence[Any]) -> tuple[Any, PreprocessContext, list[str | None]]:
        """Crops of the images that decoded (in order), their context, and an error (or None) per input."""
        decoded, errors = self.decode(images)
        good = [i for i, image in enumerate(decoded) if image is not None]
        ctx = PreprocessContext(
            [describe(images[i]) for i in good], [(int(decoded[i].shape[1]), int(decoded[i].shape[2])) for i in good]
        )
        if not good:
            return None, ctx, errors
        return resize_crop([decoded[i] for i in good], self.device), ctx, errors


def compare_to_exact(images: Sequence[Any], device: str = "cpu", nvjpeg: bool = False) -> dict:
    """How far GPU preprocessing is from the exact path on ``images``: pixel difference statistics.

    With ``nvjpeg=False`` decoding is exact (OpenCV) and only resize/crop is compared.
    """
    prep = GpuPreprocessor(device, nvjpeg=nvjpeg)
    crops, _, errors = prep(images)
    if any(errors):
        raise ValueError(f"images failed to decode: {[e for e in errors if e]}")
    exact = np.stack([preprocess_one(image)[0] for image in images]).astype(np.int16)
    diff = np.abs(crops.cpu().numpy().astype(np.int16) - exact)
    return {
        "images": len(images),
        "decoder": "nvjpeg" if prep.nvjpeg else "opencv",
        "cpu_fallbacks": prep.fallbacks,
        "max_abs_diff": int(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "fraction_exact": float((diff == 0).mean()),
        "fraction_within_1": float((diff <= 1).mean()),
    }
