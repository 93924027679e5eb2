"""``resnet50 fetch``: download the MLPerf weights into the cache."""

from __future__ import annotations

import argparse

from resnet50.cli.common import add_json_option, print_json, show_progress
from resnet50.core.constants import MLPERF_FILES


def register(subparsers) -> None:
    parser = subparsers.add_parser("fetch", help="download the MLPerf ResNet50 v1.5 ONNX file (md5-checked)")
    parser.add_argument("--release", choices=tuple(MLPERF_FILES), default="opset11")
    parser.add_argument("--url", help="mirror URL (default: the MLPerf release, or $RESNET50_MODEL_URL)")
    parser.add_argument("--md5", help="expected md5 (default: the release's)")
    parser.add_argument("--output", metavar="PATH", help="where to write (default: the cache, used automatically)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="S", help="network timeout in seconds")
    add_json_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resnet50.core.cache import file_md5
    from resnet50.weights.fetch import fetch

    path = fetch(
        args.release, url=args.url, md5=args.md5, dest=args.output, timeout=args.timeout, progress=show_progress(args)
    )
    if args.json:
        print_json({"path": str(path), "md5": file_md5(path), "weights": "mlperf"})
    else:
        print(f"{path} (md5 {file_md5(path)})")
    return 0
