"""Options and output helpers that several subcommands share."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from resnet50.core.options import (
    BACKENDS,
    DEFAULT_BACKEND,
    DEFAULT_DEVICE,
    DEFAULT_PRECISION,
    DEVICES,
    MEASURED_ON,
    PRECISIONS,
    table,
)
from resnet50.core.registry import REGISTRY


def add_model_options(
    parser: argparse.ArgumentParser,
    precisions: tuple[str, ...] = PRECISIONS,
    spin_wait: bool = False,
    streams: bool = False,
) -> None:
    """The model options, their choices taken from the registry and the options table;
    ``spin_wait`` adds ``--spin-wait`` (commands that only run the model), ``streams`` adds
    ``--streams`` (commands that run the model from several threads)."""
    group = parser.add_argument_group("model", description=f"supported combinations ({MEASURED_ON}):\n{table()}")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    group.add_argument(
        "--weights",
        choices=tuple(REGISTRY),
        metavar="NAME",
        help=f"weights entry: {', '.join(REGISTRY)} (default: the fetched MLPerf file, else synthetic; "
        "`resnet50 weights` lists them)",
    )
    group.add_argument(
        "--model", metavar="PATH", help="the weights file: ONNX, or a torchvision .pth (default: $RESNET50_MODEL)"
    )
    group.add_argument("--labels", metavar="FILE", help="class names, one per line (a fine-tune's own classes)")
    group.add_argument("--precision", choices=precisions, default=DEFAULT_PRECISION, help="default: %(default)s")
    group.add_argument(
        "--backend",
        choices=(DEFAULT_BACKEND, *BACKENDS),
        default=DEFAULT_BACKEND,
        help="default: auto, the fastest installed backend for the precision (table above)",
    )
    group.add_argument(
        "--calibration",
        metavar="PATH",
        help="int8: calibrate on the first 64 images of a folder or list file (.txt, paths relative to it; "
        "default: generated photos)",
    )
    group.add_argument("--device", choices=DEVICES, default=DEFAULT_DEVICE)
    group.add_argument("--threads", type=int, metavar="N", help="inference threads (default: all cores)")
    group.add_argument("--native", action="store_true", help="fuse normalization and top-k into the graph")
    if streams:
        group.add_argument(
            "--streams",
            type=int,
            metavar="N",
            help="split the threads into N model runs that proceed at once (default: 1; serve: 2)",
        )
    if spin_wait:
        group.add_argument(
            "--spin-wait",
            action="store_true",
            help="onnxruntime: idle inference threads busy-wait (lower batch-1 latency when nothing else runs)",
        )


def add_input_options(parser: argparse.ArgumentParser) -> None:
    """``--max-file-mb``: the size limit on image files (commands that read them)."""
    from resnet50.core.files import DEFAULT_MAX_FILE_MB

    parser.add_argument(
        "--max-file-mb",
        type=float,
        default=DEFAULT_MAX_FILE_MB,
        metavar="MB",
        help=f"largest image file read; bigger ones are refused by name (default {DEFAULT_MAX_FILE_MB:g})",
    )


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def model_options(args: argparse.Namespace) -> dict:
    """The ``ResNet50.load`` keyword arguments that :func:`add_model_options` collected."""
    return {
        "precision": args.precision,
        "device": args.device,
        "use_native": args.native,
        "weights": args.weights,
        "model": args.model,
        "labels": args.labels,
        "threads": args.threads,
        "backend": args.backend,
        "calibration": args.calibration,
        **({"spin_wait": args.spin_wait} if hasattr(args, "spin_wait") else {}),
        **({"streams": args.streams} if getattr(args, "streams", None) is not None else {}),
    }


def load_model(args: argparse.Namespace, **overrides):
    """``ResNet50.load`` with the command's model options, and ``overrides`` (e.g. ``batch_size``)."""
    from resnet50.api.model import ResNet50

    return ResNet50.load(**{**model_options(args), **overrides})


def print_json(payload: dict) -> None:
    json.dump(payload, sys.stdout, indent=2)
    sys.stdout.write("\n")


@contextmanager
def progress(args: argparse.Namespace, total: int, desc: str | None = None) -> Iterator[Callable[[int], object]]:
    """A tqdm bar on stderr, shown only where :func:`show_progress` allows; yields its update."""
    from tqdm import tqdm

    with tqdm(total=total, unit="img", desc=desc, disable=not show_progress(args), file=sys.stderr) as bar:
        yield bar.update


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal and never under --json."""
    return not getattr(args, "json", False) and sys.stderr.isatty() and sys.stdout.isatty()
