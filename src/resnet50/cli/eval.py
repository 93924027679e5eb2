"""``resnet50 eval``: top-1/top-5 against val_map.txt (no LoadGen), and precision-vs-precision fidelity."""

from __future__ import annotations

import argparse

from resnet50.cli.common import add_input_options, add_json_option, add_model_options, load_model, print_json, progress
from resnet50.core.files import expand_images


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="top-1/top-5 on an ImageNet-layout data set; --compare one precision against another",
        description="Score the model against DIR/val_map.txt (top-1, top-5), without LoadGen. With --compare P, "
        "also run precision P on the same preprocessed samples and report top-1 agreement, how often the "
        "model's top-1 is in P's top-5, and the mean cosine of the centred logits. --images compares on "
        "unlabelled images.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", metavar="DIR", help="folder of images with val_map.txt")
    source.add_argument("--images", nargs="+", metavar="PATH", help="unlabelled images or folders (needs --compare)")
    parser.add_argument("--val-map", metavar="FILE", help="labels file (default: DIR/val_map.txt)")
    parser.add_argument("--count", type=int, metavar="N", help="use the first N images")
    parser.add_argument("--compare", choices=("fp32", "int8"), metavar="PRECISION", help="reference precision")
    parser.add_argument("--batch", type=int, default=16, metavar="B", help="images per inference batch")
    parser.add_argument("--cache", metavar="DIR", help="preprocessed-sample cache (default: in $RESNET50_HOME)")
    add_input_options(parser)
    add_model_options(parser)
    add_json_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resnet50.api.model import ResNet50
    from resnet50.apps.evaluate import evaluate
    from resnet50.apps.imagenet import ImagenetDataset
    from resnet50.core.errors import InvalidInputError

    if args.images and not args.compare:
        raise InvalidInputError("--images has no labels to score against: add --compare PRECISION")
    if args.compare and args.native:
        raise InvalidInputError("--compare needs the softmax of both models; drop --native")
    if args.dataset:
        dataset = ImagenetDataset.from_val_map(
            args.dataset, count=args.count, val_map=args.val_map, cache_dir=args.cache, max_file_mb=args.max_file_mb
        )
    else:
        images = expand_images(args.images)  # an empty folder among them is refused by name
        if not images:
            raise InvalidInputError(f"no image files in {' '.join(args.images)}")
        dataset = ImagenetDataset.from_images(
            images, count=args.count, cache_dir=args.cache, max_file_mb=args.max_file_mb
        )
    with progress(args, len(dataset), "preprocess") as update:
        dataset.prepare(progress=update)
    model = load_model(args)
    reference = None
    if args.compare:
        reference = ResNet50.load(
            precision=args.compare,
            device=args.device,
            model=args.model,
            threads=args.threads,
            calibration=args.calibration,  # an int8 reference is calibrated like the model under test
        )
    with progress(args, len(dataset), "eval") as update:
        result = evaluate(model, dataset, reference=reference, batch_size=args.batch, progress=update)
    if args.json:
        print_json(result)
    else:
        _print_human(result)
    return 0


def _print_human(result: dict) -> None:
    what = "agreement with val_map.txt" if result.get("warning") else "accuracy"  # synthetic weights
    print(f"{result['count']} images, {result['weights']} weights")
    if result["labelled"]:
        print(
            f"{result['precision']}: top-1 {result['top1_percent']:.3f}%  top-5 {result['top5_percent']:.3f}%  ({what})"
        )
    compare = result.get("compare")
    if compare:
        ref = compare["reference_precision"]
        if result["labelled"]:
            print(
                f"{ref}: top-1 {compare['reference_top1_percent']:.3f}%  top-5 {compare['reference_top5_percent']:.3f}%"
            )
        print(f"{result['precision']} vs {ref}: top-1 agreement {compare['top1_agreement_percent']:.2f}%, "
              f"top-1 in {ref} top-5 {compare['top1_in_reference_top5_percent']:.2f}%, "
              f"mean centred-logit cosine {compare['mean_logit_cosine']:.5f}")  # fmt: skip
    if "warning" in result:
        print(f"WARNING: {result['warning']}")
