"""The ``resnet50`` command: one module per subcommand, each with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import os
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
    from resnet50.cli.common import show_progress
    from resnet50.core.progress import progress_mode

    args = build_parser().parse_args(argv)
    # One-off builds (synthetic model, int8) show a bar on a terminal, a line otherwise, nothing under --json.
    mode = "off" if getattr(args, "json", False) else "bar" if show_progress(args) else "line"
    try:
        with progress_mode(mode):
            code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, so a closed pipe is caught below and not reported at exit
        return code
    except ResNet50Error as exc:
        print(f"resnet50 {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"resnet50 {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``resnet50 weights | head``): stop quietly, as cat and ls do. Python
        # would report the pipe again when it flushes stdout at exit, so point stdout at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
