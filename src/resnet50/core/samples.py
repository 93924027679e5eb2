"""Deterministic generated photos: smooth colour fields, shapes, texture and noise.

They stand in for ImageNet where no data set can be downloaded: they calibrate the
synthetic weights and int8 ranges, and feed benchmarks and tests. Same seed, same pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: (height, width) of the generated benchmark set: ImageNet's common sizes.
IMAGENET_LIKE_SIZES: tuple[tuple[int, int], ...] = ((375, 500), (333, 500), (500, 375), (500, 333), (400, 600))


def synthetic_image(seed: int, height: int = 375, width: int = 500) -> np.ndarray:
    """A BGR uint8 ``height x width x 3`` image that looks roughly like a photo."""
    import cv2

    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, size=(rng.integers(2, 6), rng.integers(2, 6), 3)).astype(np.float32)
    img = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(2, 7))):
        color = tuple(float(c) for c in rng.integers(0, 256, 3))
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        if rng.random() < 0.5:
            axes = (int(rng.integers(10, max(11, width // 2))), int(rng.integers(10, max(11, height // 2))))
            cv2.ellipse(img, center, axes, float(rng.uniform(0, 180)), 0, 360, color, -1)
        else:
            corner = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.rectangle(img, center, corner, color, -1)
    period = rng.uniform(3, 40)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period))
    img += (rng.uniform(0, 40) * stripes)[..., None]
    img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.5, 2.0)))
    img += rng.normal(0, rng.uniform(2, 12), img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def synthetic_batch(count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` generated images of ImageNet-like sizes."""
    return [synthetic_image(seed + i, *IMAGENET_LIKE_SIZES[i % len(IMAGENET_LIKE_SIZES)]) for i in range(count)]


def write_jpegs(folder: str | Path, count: int, seed: int = 0, quality: int = 90) -> list[Path]:
    """Write ``count`` generated JPEGs (``img_00000.jpg`` ...) into ``folder``; return their paths.

    Files that already exist with the right name are kept, so a rerun costs nothing.
    """
    import cv2

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img_{i:05d}.jpg"
        if not path.exists():
            h, w = IMAGENET_LIKE_SIZES[i % len(IMAGENET_LIKE_SIZES)]
            _, buf = cv2.imencode(".jpg", synthetic_image(seed + i, h, w), [cv2.IMWRITE_JPEG_QUALITY, quality])
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(buf.tobytes())
            tmp.replace(path)
        paths.append(path)
    return paths
