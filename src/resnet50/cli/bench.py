"""``resnet50 bench``: images/s, latency percentiles, per-stage time and peak memory."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from resnet50.cli.common import add_input_options, add_json_option, add_model_options, model_options, print_json
from resnet50.core.files import expand_images, max_file_bytes


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="measure throughput and latency (inference only or end to end)")
    parser.add_argument("--mode", choices=("infer", "e2e"), default="infer", help="inference only, or files to labels")
    parser.add_argument("--batch", type=int, default=8, metavar="B")
    parser.add_argument("--workers", type=int, metavar="N", help="decode threads in e2e mode")
    parser.add_argument("--images", metavar="DIR", help="image folder for e2e (default: generated ImageNet-like JPEGs)")
    parser.add_argument("--duration", type=float, default=10.0, metavar="S", help="seconds measured")
    parser.add_argument("--warmup", type=float, default=2.0, metavar="S", help="seconds run before measuring")
    parser.add_argument(
        "--python-post",
        action="store_true",
        help="e2e: float input and Python postprocessing instead of the fused graph (the e2e default)",
    )
    add_input_options(parser)
    add_model_options(parser, spin_wait=True, streams=True)
    parser.set_defaults(precision="int8")  # bench measures the fast path unless told otherwise
    add_json_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resnet50.api.model import ResNet50
    from resnet50.apps.bench import bench_e2e, bench_infer
    from resnet50.core.errors import InvalidInputError

    if args.batch < 1 or args.duration <= 0 or args.warmup < 0:
        raise InvalidInputError("--batch must be >= 1, --duration > 0 and --warmup >= 0")
    files = None
    if args.images:
        if args.mode != "e2e":
            raise InvalidInputError("--images is for --mode e2e; inference-only mode times a fixed batch")
        if not Path(args.images).exists():
            raise InvalidInputError(f"{args.images}: no such file or folder")
        files = expand_images([args.images])  # an empty folder is refused by name
    if args.streams not in (None, 1) and args.mode != "infer":
        raise InvalidInputError("--streams is for --mode infer; the e2e pipeline runs one batch at a time")
    max_file_bytes(args.max_file_mb)  # a bad limit is refused before the model loads
    start = time.perf_counter()
    options = model_options(args)
    if args.mode == "e2e":  # uint8 in, top-k out: no float tensor built in Python
        options["use_native"] = not args.python_post
    else:  # one fixed batch: OpenVINO compiles for exactly it (e2e's last batch of a folder may be smaller)
        options["batch_size"] = args.batch
    model = ResNet50.load(**options)
    load_s = time.perf_counter() - start
    if not args.json:
        print(
            f"benchmarking {args.mode} {args.precision} on {model.backend.name}, batch {args.batch} ...",
            file=sys.stderr,
        )
    if args.mode == "infer":
        result = bench_infer(model, args.batch, args.duration, args.warmup)
    else:
        result = bench_e2e(model, files, args.batch, args.duration, args.warmup, args.workers, args.max_file_mb)
    result.load_s = round(load_s, 3)
    if args.json:
        print_json(result.to_dict())
        return 0
    lat = result.latency_ms
    what = f"{result.mode}, {result.precision}, {result.backend}, batch {result.batch}, {result.threads} threads"
    if result.streams > 1:
        what += f" in {result.streams} streams"
    print(f"{result.images_per_s:.1f} images/s  ({what}, {result.weights} weights)")
    print(
        f"latency ms  p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}"
        f"  ({'per batch' if result.mode == 'infer' else 'per image'})"
    )
    if result.stages_ms_per_image:
        print("stage ms/image  " + "  ".join(f"{k} {v:.2f}" for k, v in result.stages_ms_per_image.items()))
    print(f"load {result.load_s:.2f}s  peak RSS {result.peak_rss_mb:.0f} MB  {result.gmac_per_s:.0f} GMAC/s")
    return 0
