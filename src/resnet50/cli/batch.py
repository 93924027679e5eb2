"""``resnet50 batch``: classify a folder, file list or Parquet/CSV table into .parquet/.csv/.jsonl,
locally or on Ray."""

from __future__ import annotations

import argparse
import sys

from resnet50.cli.common import (
    add_input_options,
    add_json_option,
    add_model_options,
    model_options,
    print_json,
    show_progress,
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "batch",
        help="classify a whole dataset into a Parquet/CSV/JSONL file, locally or on Ray",
        description="One row per image: path, class_id, label, score, top_k_ids, top_k_scores, error, weights. "
        "Missing or corrupt images get a row with the error; the job goes on.",
    )
    parser.add_argument(
        "input", metavar="INPUT", help="folder of images, file list (.txt), or table (.parquet, .csv) of paths"
    )
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="results file: .parquet, .csv or .jsonl")
    parser.add_argument("--resume", action="store_true", help="keep the rows already in FILE; classify the rest")
    parser.add_argument(
        "--retry-errors", action="store_true", help="with --resume: classify the paths of error rows again"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    parser.add_argument("--path-column", default="path", metavar="NAME", help="path column of a table (default path)")
    parser.add_argument("--top", type=int, default=5, metavar="K", help="top-k per image (default 5)")
    parser.add_argument("--batch", type=int, default=8, metavar="B", help="images per inference batch (default 8)")
    parser.add_argument("--engine", choices=("local", "ray"), default="local", help="where to run (default local)")
    ray = parser.add_argument_group("ray engine")
    ray.add_argument("--address", metavar="ADDR", help="Ray cluster to join, e.g. auto or HOST:6379 (default: local)")
    ray.add_argument("--num-workers", type=int, metavar="N", help="model actors (default 1)")
    ray.add_argument("--cpus-per-worker", type=float, default=1.0, metavar="C", help="CPUs reserved per actor")
    add_input_options(parser)
    add_model_options(parser)
    add_json_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resnet50.apps.batch import run_batch
    from resnet50.core.errors import InvalidInputError

    if args.resume and args.overwrite:
        raise InvalidInputError("--resume and --overwrite contradict each other; pick one")
    ray_options = {}
    if args.engine == "ray":
        if args.num_workers is not None and args.num_workers < 1:
            raise InvalidInputError(f"--num-workers must be at least 1, got {args.num_workers}")
        if args.cpus_per_worker <= 0:
            raise InvalidInputError(f"--cpus-per-worker must be positive, got {args.cpus_per_worker}")
        ray_options = {
            "address": args.address,
            "num_workers": args.num_workers,
            "cpus_per_worker": args.cpus_per_worker,
        }
        _quiet_ray_logs()
    elif args.address or args.num_workers:
        raise InvalidInputError("--address and --num-workers need --engine ray")
    summary = run_batch(
        args.input,
        args.output,
        engine=args.engine,
        resume=args.resume,
        retry_errors=args.retry_errors,
        overwrite=args.overwrite,
        **model_options(args),
        batch_size=args.batch,
        top_k=args.top,
        path_column=args.path_column,
        progress=show_progress(args),
        max_file_mb=args.max_file_mb,
        **ray_options,
    )
    if args.json:
        print_json(summary.to_dict())
    else:
        resumed = f", {summary.skipped} already done" if summary.skipped else ""
        print(
            f"{summary.output}: {summary.rows} rows ({summary.classified} classified, {summary.errors} errors"
            f"{resumed}) in {summary.seconds:.1f} s, {summary.images_per_second:.1f} images/s, "
            f"{summary.weights} weights",
            file=sys.stderr,
        )
    return 0


def _quiet_ray_logs() -> None:
    """Ray's INFO lines would drown the progress bar and the summary; keep its warnings."""
    import logging

    try:
        import ray.data  # noqa: F401  (configures its loggers on import; then we adjust them)
    except ImportError:
        return  # run_batch says how to install it
    for name in ("ray", "ray.data"):
        for handler in logging.getLogger(name).handlers:
            if not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.WARNING)
