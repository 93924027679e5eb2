"""``resnet50 classify``: top-k labels for image files (folders are expanded)."""

from __future__ import annotations

import argparse
import sys

from resnet50.cli.common import add_input_options, add_json_option, add_model_options, load_model, print_json, progress
from resnet50.core.files import expand_inputs, max_file_bytes


def register(subparsers) -> None:
    parser = subparsers.add_parser("classify", help="classify image files and print the top-k labels")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    parser.add_argument("--top", type=int, default=5, metavar="K", help="how many labels per image (default 5)")
    parser.add_argument("--batch", type=int, default=8, metavar="B", help="images per inference batch")
    add_input_options(parser)
    add_model_options(parser)
    add_json_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resnet50.apps.pipeline import classify_stream
    from resnet50.core.errors import InvalidInputError

    if not 1 <= args.top <= 1000:
        raise InvalidInputError(f"--top must be in 1..1000, got {args.top}")
    max_file_bytes(args.max_file_mb)  # a bad limit is refused before the model loads
    images, problems = expand_inputs(args.images)
    if not images:
        raise InvalidInputError("; ".join(problems) or f"no image files in {' '.join(args.images)}")
    for problem in problems:  # empty or unlistable folders are named, and the rest still runs
        print(f"resnet50 classify: error: {problem}", file=sys.stderr)
    model = load_model(args)
    results = []
    with progress(args, len(images)) as update:
        stream = classify_stream(model, images, batch_size=args.batch, top_k=args.top, max_file_mb=args.max_file_mb)
        for result in stream:
            results.append(result)
            update(1)
            if not result.ok:
                print(f"resnet50 classify: error: {result.error}", file=sys.stderr)
            elif not args.json:
                _print_human(result)
    failed = sum(not r.ok for r in results) + len(problems)
    if args.json:
        print_json(
            {
                "weights": model.weights,
                "model": str(model.source.path),
                "precision": model.precision,
                "results": [r.to_dict() for r in results],
                "problems": problems,
                "errors": failed,
            }
        )
    return 2 if failed else 0


def _print_human(result) -> None:
    print(result.source)
    for p in result.classification.predictions:
        print(f"  {p.score:7.4f}  {p.label} (class {p.class_id})")
