"""Preprocessing cost per image on one core: the MLPerf reference against ours, same images.

Three timings over the built-in generated JPEGs (ImageNet sizes, mostly 500x375), one OpenCV
thread, interleaved rounds, median per image:

- ``reference``: the reference harness's ``cv2.imread`` + ``pre_process_vgg`` (float32 CHW);
- ``ours, float``: :func:`resnet50.processing.preprocess` (the same tensor, bit for bit);
- ``ours, uint8 crop``: ``preprocess(..., with_scaling=False)``, what the fused graph takes;

and, split by stage on decoded images, the full INTER_AREA resize + crop against our
crop-only resize (:func:`resnet50.processing.preprocess.center_crop_uint8`). Every output is checked
equal to the reference before anything is timed. Writes ``results/preprocess_bench.json``
and a PNG (or ``--out``).

    python benchmarks/preprocess_bench.py [--rounds 5] [--out PATH]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import common


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("--rounds", type=common.positive_int, default=5)
    parser.add_argument("--images", type=common.positive_int, help="use only the first N built-in images")
    common.add_out(parser, "preprocess_bench")
    args = parser.parse_args(argv)

    import cv2

    from resnet50.apps.bench import default_images
    from resnet50.processing.preprocess import center_crop_uint8, decode, preprocess

    ref = common.reference()
    center_crop, pre_process_vgg, resize_with_aspectratio = (
        ref.center_crop,
        ref.pre_process_vgg,
        ref.resize_with_aspectratio,
    )

    cv2.setNumThreads(1)  # one core, as the reference figure is quoted
    files = [str(p) for p in default_images()[: args.images]]
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
        timings["reference"].append(common.per_item_ms(reference, files))
        timings["ours_float"].append(common.per_item_ms(lambda p: preprocess(p), files))
        timings["ours_uint8"].append(common.per_item_ms(lambda p: preprocess(p, with_scaling=False), files))
        timings["full_resize_crop"].append(common.per_item_ms(full_resize_crop, decoded))
        timings["crop_only_resize"].append(common.per_item_ms(center_crop_uint8, decoded))
    medians = {name: common.median(values) for name, values in timings.items()}
    sizes = {f"{b.shape[1]}x{b.shape[0]}" for b in decoded}
    result = {
        **common.header("preprocess_bench"),
        "images": len(files),
        "image_sizes": sorted(sizes)[:12],
        "opencv_threads": 1,
        "ms_per_image": medians,
        "rounds_ms_per_image": timings,
        "speedup_vs_reference": round(medians["reference"] / medians["ours_uint8"], 2),
        "resize_speedup": round(medians["full_resize_crop"] / medians["crop_only_resize"], 2),
    }
    common.save(args.out, result, chart)
    common.print_json({k: v for k, v in result.items() if k not in ("machine", "rounds_ms_per_image")})
    return 0


def chart(result: dict, path: Path) -> None:
    medians = result["ms_per_image"]
    labels = {
        "reference": "MLPerf reference\nimread + pre_process_vgg",
        "ours_float": "resnet50.processing.preprocess\n(float32, identical)",
        "ours_uint8": "resnet50.processing.preprocess\n(uint8 crop, fused graph)",
        "full_resize_crop": "resize whole image\n+ crop (decoded)",
        "crop_only_resize": "crop-only resize\n(decoded, identical)",
    }
    names = list(labels)
    with common.figure(path, figsize=(9, 4)) as (_, ax):
        bars = ax.barh([labels[n] for n in names], [medians[n] for n in names],
                       color=["#98a2b3", "#3e6ae1", "#3e6ae1", "#98a2b3", "#3e6ae1"])  # fmt: skip
        ax.bar_label(bars, fmt=" %.2f ms")
        ax.invert_yaxis()
        ax.set_xlabel("ms per image, one core (lower is better)")
        ax.set_title("Preprocessing of generated ImageNet-size JPEGs, same images, same run")


if __name__ == "__main__":
    sys.exit(main())
