"""Options and output helpers that several subcommands share."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def add_model_options(
    parser: argparse.ArgumentParser,
    precisions: tuple[str, ...] = ("fp32", "int8", "bf16", "fp16"),
    spin_wait: bool = False,
    streams: bool = False,
) -> None:
    """The model options; ``spin_wait`` adds ``--spin-wait`` (commands that only run the model),
    ``streams`` adds ``--streams`` (commands that run the model from several threads)."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model", metavar="PATH", help="ONNX model file (default: $RESNET50_MODEL, fetched, else synthetic)"
    )
    group.add_argument(
        "--precision",
        choices=precisions,
        default="fp32",
        help="bf16 runs on OpenVINO (CPU) or torch (cuda); fp16 needs --device cuda",
    )
    group.add_argument(
        "--backend",
        choices=("onnxruntime", "openvino", "torch"),
        help="default: onnxruntime (bf16: openvino; cuda: torch)",
    )
    group.add_argument(
        "--calibration",
        metavar="PATH",
        help="int8: calibrate on the first 64 images of a folder or list file (.txt, paths relative to it; "
        "default: generated photos)",
    )
    group.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    group.add_argument("--threads", type=int, metavar="N", help="inference threads (default: all cores)")
    group.add_argument("--native", action="store_true", help="fuse mean subtraction and top-k into the graph")
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


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def model_options(args: argparse.Namespace) -> dict:
    """The ``ResNet50.load`` keyword arguments that :func:`add_model_options` collected."""
    return {
        "precision": args.precision,
        "device": args.device,
        "use_native": args.native,
        "model": args.model,
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
