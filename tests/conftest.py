"""Shared fixtures: an isolated model cache, loaded models, and image files of every kind."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# One cache for the whole run, so the synthetic model is built once; set before any import.
_CACHE = Path(os.environ.get("RESNET50_TEST_HOME", "/tmp/resnet50-test-cache"))
os.environ["RESNET50_HOME"] = str(_CACHE)
os.environ.pop("RESNET50_MODEL", None)


@pytest.fixture(scope="session")
def model_fp32():
    from resnet50 import ResNet50

    return ResNet50.load()


@pytest.fixture(scope="session")
def model_native():
    from resnet50 import ResNet50

    return ResNet50.load(use_native=True)


@pytest.fixture(scope="session")
def sample_photos() -> list[Path]:
    """Real photographs shipped with scikit-image."""
    data = Path(pytest.importorskip("skimage.data").__file__).parent
    return [data / name for name in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png")]


def _write(path: Path, image: np.ndarray, params: list[int] | None = None) -> Path:
    import cv2

    assert cv2.imwrite(str(path), image, params or [])
    return path


@pytest.fixture(scope="session")
def image_files(tmp_path_factory) -> dict[str, Path]:
    """One file per image kind the preprocessing must handle exactly."""
    import cv2
    from PIL import Image

    from resnet50.core.samples import synthetic_image

    root = tmp_path_factory.mktemp("images")
    base = synthetic_image(1, 375, 500)
    files = {
        "jpeg": _write(root / "photo.jpg", base, [cv2.IMWRITE_JPEG_QUALITY, 90]),
        "png": _write(root / "photo.png", base),
        "bmp": _write(root / "photo.bmp", base),
        "webp": _write(root / "photo.webp", base, [cv2.IMWRITE_WEBP_QUALITY, 90]),
        "gray": _write(root / "gray.png", cv2.cvtColor(base, cv2.COLOR_BGR2GRAY)),
        "gray_jpeg": _write(root / "gray.jpg", cv2.cvtColor(base, cv2.COLOR_BGR2GRAY)),
        "rgba": _write(root / "rgba.png", np.dstack([base, np.full(base.shape[:2], 128, np.uint8)])),
        "png16": _write(root / "deep.png", base.astype(np.uint16) * 257 + 3),
        "small": _write(root / "small.jpg", synthetic_image(2, 100, 150)),
        "tiny": _write(root / "tiny.png", synthetic_image(3, 7, 5)),
        "wide": _write(root / "wide.jpg", synthetic_image(4, 240, 2400)),
        "tall": _write(root / "tall.png", synthetic_image(5, 1999, 260)),
        "square": _write(root / "square.jpg", synthetic_image(6, 300, 300)),
        "odd": _write(root / "odd.jpg", synthetic_image(7, 333, 501)),
    }
    rotated = root / "exif_rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    Image.fromarray(synthetic_image(8, 300, 400)[..., ::-1]).save(rotated, exif=exif.tobytes(), quality=90)
    files["exif_rotated"] = rotated
    return files


def pytest_collection_modifyitems(items):
    """Tests that start Ray, a real server or another process are slow wherever they are (the
    inner loop, ``-m "not slow"``, skips them)."""
    import inspect

    heavy_fixtures = {"ray_local", "server", "page_server"}
    for item in items:
        if heavy_fixtures & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
            continue
        try:
            code = inspect.getsource(item.function)
        except (OSError, TypeError, AttributeError):
            continue
        if "ServerProcess(" in code or "subprocess." in code:
            item.add_marker(pytest.mark.slow)
