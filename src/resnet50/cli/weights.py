"""``resnet50 weights``: the registry's entries with their files, preprocessing and published metrics."""

from __future__ import annotations

import argparse

from resnet50.cli.common import add_json_option, print_json
from resnet50.core.registry import REGISTRY, Weights


def register(subparsers) -> None:
    parser = subparsers.add_parser("weights", help="list the weights entries: file, preprocessing, classes, metrics")
    add_json_option(parser)
    parser.set_defaults(func=run)


def _describe(w: Weights) -> str:
    p = w.preprocessing
    source = f"{w.file.filename} ({w.file.format}) from {w.file.url}" if w.file else "built by the package"
    norm = f"mean {p.mean}" + (f", /{p.scale:g}, std {p.std}" if p.divides else "")
    metrics = f"top-1 {w.metrics.top1}%" if w.metrics else "none (labels meaningless)" if w.synthetic else "none"
    if w.metrics and w.metrics.top5:
        metrics += f", top-5 {w.metrics.top5}%"
    lines = [
        f"{w.name}: {w.summary}",
        f"  file:          {source}",
        f"  preprocessing: {p.decoder} decode, {p.interpolation} resize to short side {p.resize}, "
        f"center crop {p.crop} ({p.crop_rounding}), {p.color_order}, {norm}",
        f"  classes:       {w.classes.foreground}" + (" (+ background at index 0)" if w.classes.background else ""),
        f"  ImageNet val:  {metrics}" + (f" [{w.metrics.source}]" if w.metrics else ""),
        f"  size:          {w.gmac} GMAC, {w.params:,} parameters; MLPerf division: {w.mlperf_division or '-'}",
    ]
    if w.notes:
        lines.append(f"  note:          {w.notes}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.json:
        print_json({"weights": [w.to_dict() for w in REGISTRY.values()]})
    else:
        print("\n\n".join(_describe(w) for w in REGISTRY.values()))
    return 0
