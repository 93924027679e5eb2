"""``resnet50 mlperf``: an MLPerf Inference LoadGen run (any scenario, performance or accuracy)."""

from __future__ import annotations

import argparse
from pathlib import Path

from resnet50.cli.common import add_input_options, add_json_option, add_model_options, load_model, print_json, progress
from resnet50.core.errors import InvalidInputError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "mlperf",
        help="run MLPerf Inference (LoadGen) on an ImageNet-layout data set",
        description="Run one MLPerf LoadGen test. The output folder receives LoadGen's mlperf_log_summary.txt, "
        "mlperf_log_detail.txt, mlperf_log_accuracy.json and results.json. Settings: LoadGen's mlperf.conf, "
        "then --user-conf (default: the shipped user.conf), then the options below.",
    )
    parser.add_argument("--scenario", choices=("SingleStream", "MultiStream", "Server", "Offline"), default="Offline")
    parser.add_argument("--mode", choices=("performance", "accuracy"), default="performance")
    parser.add_argument("--dataset", required=True, metavar="DIR", help="folder of images with val_map.txt")
    parser.add_argument("--val-map", metavar="FILE", help="labels file (default: DIR/val_map.txt)")
    parser.add_argument("--count", type=int, metavar="N", help="use the first N entries of val_map.txt")
    parser.add_argument("--cache", metavar="DIR", help="preprocessed-sample cache (default: in $RESNET50_HOME)")
    parser.add_argument("--output", default="mlperf-results", metavar="DIR", help="log folder (default %(default)s)")
    parser.add_argument("--user-conf", metavar="FILE", help="LoadGen user.conf (default: the one shipped)")
    parser.add_argument("--target-qps", type=float, metavar="QPS", help="Offline expected / Server target QPS")
    parser.add_argument(
        "--target-latency",
        type=float,
        metavar="MS",
        help="Server latency bound, or SingleStream/MultiStream expected latency (a Server bound other "
        "than MLPerf's 15 ms is not a closed-division result)",
    )
    parser.add_argument("--min-duration", type=int, metavar="MS", help="override min_duration (short runs)")
    parser.add_argument("--min-query-count", type=int, metavar="N", help="override min_query_count (short runs)")
    parser.add_argument("--batch", type=int, default=8, metavar="B", help="largest inference batch (default 8)")
    parser.add_argument(
        "--audit-config",
        metavar="FILE",
        help="audit.config of an MLPerf compliance test (TEST01, TEST04); default: ./audit.config if present",
    )
    parser.add_argument(
        "--batch-timeout",
        type=float,
        default=0.0,
        metavar="MS",
        help="Server: longest wait for a batch to fill (default 0: run what has arrived)",
    )
    add_input_options(parser)
    add_model_options(parser, spin_wait=True, streams=True)
    add_json_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resnet50.apps.imagenet import ImagenetDataset
    from resnet50.apps.mlperf.run import RunOptions, loadgen
    from resnet50.apps.mlperf.run import run as run_test

    options = RunOptions(
        scenario=args.scenario,
        mode=args.mode,
        output=Path(args.output),
        user_conf=Path(args.user_conf) if args.user_conf else None,
        target_qps=args.target_qps,
        target_latency_ms=args.target_latency,
        min_duration_ms=args.min_duration,
        min_query_count=args.min_query_count,
        batch_size=args.batch,
        batch_timeout_ms=args.batch_timeout,
        audit_config=Path(args.audit_config) if args.audit_config else None,
    )
    options.check()
    if (args.streams or 1) > 1 and args.scenario not in ("Offline", "Server"):
        raise InvalidInputError(f"--streams applies to Offline and Server; {args.scenario} has one query in flight")
    loadgen()  # fail before loading anything when LoadGen is missing
    dataset = ImagenetDataset.from_val_map(
        args.dataset, count=args.count, val_map=args.val_map, cache_dir=args.cache, max_file_mb=args.max_file_mb
    )
    with progress(args, len(dataset), "preprocess") as update:
        dataset.prepare(progress=update)
    # SingleStream runs batches of one: OpenVINO compiles for that size. (Offline's last batch
    # can be smaller, and a batch of 8 gains nothing from it.)
    model = load_model(args, batch_size=1 if args.scenario == "SingleStream" else None)
    results = run_test(model, dataset, options)
    if args.json:
        print_json(results)
    else:
        _print_human(results)
    return 0


def _print_human(results: dict) -> None:
    print(f"{results['scenario']} {results['mode']}: {results['precision']} on {results['weights']} weights")
    if results["mode"] == "accuracy":
        acc = results["accuracy"]
        print(f"top-1 {acc['top1_percent']:.3f}% ({acc['good']}/{acc['total']}) vs val_map.txt; {acc['line']}")
        if "warning" in results:
            print(f"WARNING: {results['warning']}")
    else:
        m = results["metrics"]
        print(f"Result is : {results['result']}")
        if results["scenario"] == "Offline":
            print(f"samples/s : {m['samples_per_second']}")
        elif results["scenario"] == "Server":
            print(f"completed samples/s : {m['completed_samples_per_second']}")
        if "percentile_latency_ms" in m:
            print(f"p{m['percentile']:g} latency : {m['percentile_latency_ms']:.2f} ms")
        for line in results.get("advice", []):
            print(f"  {line}")
    if results.get("audit_config"):
        audit = results["audit_config"]
        print(f"audit : {audit['path']} ({audit['accuracy_log_entries']} responses in the accuracy log)")
    print(f"logs: {results['output']}/ ({', '.join(results['files'])})")
