"""``resnet50 fetch``: download a registry entry's weights file into the cache (checksum-checked)."""

from __future__ import annotations

import argparse

from resnet50.cli.common import add_json_option, print_json, show_progress
from resnet50.core.registry import DEFAULT, REGISTRY

_LEGACY_RELEASES = {"opset11": "mlperf-opset11", "opset8": "mlperf-opset8"}


def register(subparsers) -> None:
    downloadable = tuple(name for name, w in REGISTRY.items() if w.file)
    parser = subparsers.add_parser("fetch", help="download a weights file (MLPerf ONNX or torchvision .pth), checked")
    parser.add_argument("--weights", choices=downloadable, default=DEFAULT, help="which file (default: %(default)s)")
    parser.add_argument("--release", choices=tuple(_LEGACY_RELEASES), help="old spelling of --weights mlperf-opsetN")
    parser.add_argument("--url", help="mirror URL (default: the entry's, or $RESNET50_MODEL_URL)")
    parser.add_argument("--md5", help="expected md5 (default: the entry's checksum)")
    parser.add_argument("--output", metavar="PATH", help="where to write (default: the cache, used automatically)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="S", help="network timeout in seconds")
    add_json_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resnet50.core.cache import file_md5
    from resnet50.weights.fetch import fetch

    weights = _LEGACY_RELEASES[args.release] if args.release else args.weights
    path = fetch(
        weights, url=args.url, md5=args.md5, dest=args.output, timeout=args.timeout, progress=show_progress(args)
    )
    if args.json:
        print_json({"path": str(path), "md5": file_md5(path), "weights": weights})
    else:
        print(f"{path} (md5 {file_md5(path)})")
    return 0
