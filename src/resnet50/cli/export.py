"""``resnet50 export``: write the exact ONNX model that runs for these options."""

from __future__ import annotations

import argparse
import shutil

from resnet50.cli.common import add_json_option, add_model_options, load_model, print_json


def register(subparsers) -> None:
    parser = subparsers.add_parser("export", help="write the ONNX model that runs (precision/native variant)")
    parser.add_argument("path", help="output .onnx file")
    add_model_options(parser)
    add_json_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resnet50.core.errors import InvalidInputError

    model = load_model(args)
    try:
        shutil.copyfile(model.backend.model_path, args.path)
    except (OSError, shutil.SameFileError) as exc:
        raise InvalidInputError(
            f"{args.path}: cannot write the model ({getattr(exc, 'strerror', None) or exc})"
        ) from None
    payload = {"path": args.path, "weights": model.weights, "precision": model.precision, "native": model.use_native}
    if args.json:
        print_json(payload)
    else:
        print(f"wrote {args.path} ({model.precision}{', native' if model.use_native else ''}, {model.weights} weights)")
    return 0
