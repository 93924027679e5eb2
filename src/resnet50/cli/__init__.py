"""The ``resnet50`` command: one module per subcommand, each with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import sys

from resnet50.core.errors import ResNet50Error

COMMANDS = ("classify", "info", "weights", "fetch", "export", "bench", "eval", "mlperf", "serve", "batch")


def build_parser() -> argparse.ArgumentParser:
    from resnet50 import __version__

    parser = argparse.ArgumentParser(
        prog="resnet50",
        description="MLPerf ResNet50 v1.5 image classification (ONNX Runtime on CPU by default).",
    )
    parser.add_argument("--version", action="version", version=f"resnet50 {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f".{name}", __package__).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 on success, 2 on bad input (one line on stderr), 130 on Ctrl-C."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ResNet50Error as exc:
        print(f"resnet50 {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"resnet50 {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
