"""``resnet50 info``: which model file, weights, checksum, backend and CPU features."""

from __future__ import annotations

import argparse

from resnet50.cli.common import add_json_option, add_model_options, load_model, print_json
from resnet50.core.options import MEASURED_ON, OPTIONS, table


def register(subparsers) -> None:
    parser = subparsers.add_parser("info", help="show the model file, weights kind, backend and CPU features")
    add_model_options(parser)
    add_json_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    info = load_model(args).info()
    if args.json:
        print_json({**info, "options": [o.to_dict() for o in OPTIONS]})
        return 0
    cpu = info.pop("cpu")
    for key, value in info.items():
        print(f"{key:>15}: {value}")
    print(f"{'cpu':>15}: {cpu['name']} ({cpu['cores']} cores; {' '.join(cpu['features']) or 'no AVX2'})")
    installed = ", ".join(f"{o.device}/{o.backend}/{o.precision}" for o in OPTIONS if o.installed)
    print(f"{'installed':>15}: {installed}")
    print(f"\nsupported combinations ({MEASURED_ON}):\n{table()}")
    return 0
