"""Preprocessing cost per image on one core: the MLPerf reference against ours, same images.

Three timings over the built-in generated JPEGs (ImageNet sizes, mostly 500x375), one OpenCV
thread, interleaved rounds, median per image:

- ``reference``: the reference harness's ``cv2.imread`` + ``pre_process_vgg`` (float32 CHW);
- ``ours, float``: :func:`resnet50.processing.preprocess` (the same tensor, bit for bit);
- ``ours, uint8 crop``: ``preprocess(..., with_scaling=False)``, what the fused graph takes;

and, split by stage on decoded images, the full INTER_AREA resize + crop against our
crop-only resize (:func:`resnet50.processing.preprocess.center_crop_uint8`). Every output is checked
equal to the reference before anything is timed. Writes ``results/preprocess_bench.json``
and a PNG.

    python benchmarks/preprocess_bench.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def per_image_ms(func, items: list, rounds: int) -> float:
    """Median over ``rounds`` of the mean ms per item of ``func`` over all ``items``."""
    means = []
    for _ in range(rounds):
        start = time.perf_counter()
        for item in items:
            func(item)
        means.append((time.perf_counter() - start) / len(items) * 1000)
    return round(float(np.median(means)), 3)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "preprocess_bench.json")
    args = parser.parse_args(argv)

    import cv2

    from reference import center_crop, pre_process_vgg, resize_with_aspectratio
    from resnet50.apps.bench import default_images
    from resnet50.core.cpu import cpu_info
    from resnet50.processing.preprocess import center_crop_uint8, decode, preprocess

    cv2.setNumThreads(1)  # one core, as the reference figure is quoted
    files = [str(p) for p in default_images()]
    decoded = [decode(Path(f).read_bytes()) for f in files]

    def reference(path: str) -> np.ndarray:
        return pre_process_vgg(cv2.imread(path))

    def full_resize_crop(bgr: np.ndarray) -> np.ndarray:
        return center_crop(resize_with_aspectratio(bgr, 224, 224, inter_pol=cv2.INTER_AREA), 224, 224)[..., ::-1]

    for path, bgr in zip(files, decoded):  # same answers first
        assert np.array_equal(preprocess(path)[0][0], reference(path)), path
        assert np.array_equal(center_crop_uint8(bgr), full_resize_crop(bgr)), path

    timings = {name: [] for name in ("reference", "ours_float", "ours_uint8", "full_resize_crop", "crop_only_resize")}
    for _ in range(args.rounds):  # interleaved, so drift on a shared machine hits all alike
        timings["reference"].append(per_image_ms(reference, files, 1))
        timings["ours_float"].append(per_image_ms(lambda p: preprocess(p), files, 1))
        timings["ours_uint8"].append(per_image_ms(lambda p: preprocess(p, with_scaling=False), files, 1))
        timings["full_resize_crop"].append(per_image_ms(full_resize_crop, decoded, 1))
        timings["crop_only_resize"].append(per_image_ms(center_crop_uint8, decoded, 1))
    medians = {name: round(float(np.median(values)), 3) for name, values in timings.items()}
    sizes = {f"{b.shape[1]}x{b.shape[0]}" for b in decoded}
    result = {
        "benchmark": "preprocess_bench",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_info(),
        "images": len(files),
        "image_sizes": sorted(sizes)[:12],
        "opencv_threads": 1,
        "ms_per_image": medians,
        "rounds_ms_per_image": timings,
        "speedup_vs_reference": round(medians["reference"] / medians["ours_uint8"], 2),
        "resize_speedup": round(medians["full_resize_crop"] / medians["crop_only_resize"], 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    chart(medians, args.out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in result.items() if k not in ("cpu", "rounds_ms_per_image")}, indent=1))
    return 0


def chart(medians: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {
        "reference": "MLPerf reference\nimread + pre_process_vgg",
        "ours_float": "resnet50.processing.preprocess\n(float32, identical)",
        "ours_uint8": "resnet50.processing.preprocess\n(uint8 crop, fused graph)",
        "full_resize_crop": "resize whole image\n+ crop (decoded)",
        "crop_only_resize": "crop-only resize\n(decoded, identical)",
    }
    fig, ax = plt.subplots(figsize=(9, 4))
    names = list(labels)
    bars = ax.barh([labels[n] for n in names], [medians[n] for n in names],
                   color=["#98a2b3", "#3e6ae1", "#3e6ae1", "#98a2b3", "#3e6ae1"])  # fmt: skip
    ax.bar_label(bars, fmt=" %.2f ms")
    ax.invert_yaxis()
    ax.set_xlabel("ms per image, one core (lower is better)")
    ax.set_title("Preprocessing of generated ImageNet-size JPEGs, same images, same run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
