"""Benchmark the MLPerf harness: LoadGen Offline samples/s and SingleStream p90 latency, each next
to the strongest baseline measured in the same run — ``resnet50 bench`` inference only
(:func:`resnet50.apps.bench.bench_infer`: one preprocessed batch run back to back, no LoadGen, no
sample library), at the same batch size (Offline) and at batch 1 (SingleStream). With
``--backend openvino`` the SingleStream model is compiled for batch 1, as ``resnet50 mlperf
--scenario SingleStream`` loads it, and the batch-1 baseline runs on that same model. Each
``--streams`` value gives an Offline row (``resnet50 mlperf --streams N``: N model streams, a
harness worker each) next to ``bench --streams N``; SingleStream runs with one stream.

The LoadGen runs use short settings (``min_duration`` = ``--duration``, ``min_query_count``
low) on generated JPEGs; Offline's ``target_qps`` is set 1.5x above the measured baseline so
the run is VALID. Weights: synthetic (same compute as MLPerf's) unless the MLPerf file is
fetched. Writes ``benchmarks/results/mlperf_offline.json`` and a PNG chart (or ``--out``).

    python benchmarks/mlperf_offline.py --precision fp32 int8 --backend onnxruntime openvino --duration 30
    python benchmarks/mlperf_offline.py --precision int8 --backend openvino --streams 1 2
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import common


def build_dataset(count: int, cache: Path):
    from resnet50.apps.imagenet import ImagenetDataset, write_val_map
    from resnet50.core.cache import cache_dir
    from resnet50.core.samples import write_jpegs

    root = cache_dir() / "bench_imagenet"
    paths = write_jpegs(root, count, seed=7000)
    write_val_map(root / "val_map.txt", [(p.name, 0) for p in paths])  # labels unused in performance mode
    dataset = ImagenetDataset.from_val_map(root, count=count, cache_dir=cache)
    dataset.prepare()
    return dataset


def bench_precision(precision: str, backend: str, streams: int, dataset, args, out_dir: Path) -> dict:
    from resnet50 import ResNet50
    from resnet50.apps.bench import bench_infer
    from resnet50.apps.mlperf.run import RunOptions, run

    name = f"{precision} {backend}" + (f" {streams} streams" if streams > 1 else "")
    logs = out_dir / name.replace(" ", "-")
    model = ResNet50.load(precision=precision, threads=args.threads, backend=backend, streams=streams)
    common.log(f"[{name}] baseline: bench_infer batch {args.batch} for {args.duration}s")
    baseline = bench_infer(model, batch=args.batch, duration=args.duration, warmup=1.0)
    common.log(f"[{name}]   {baseline.images_per_s} img/s")
    target_qps = max(1.0, 1.5 * baseline.images_per_s)
    offline = run(
        model, dataset,
        RunOptions(scenario="Offline", output=logs / "offline", target_qps=target_qps,
                   min_duration_ms=int(args.duration * 1000), min_query_count=1, batch_size=args.batch),
    )  # fmt: skip
    common.log(f"[{name}]   LoadGen Offline {offline['metrics']['samples_per_second']} samples/s")
    offline_sps = offline["metrics"]["samples_per_second"]
    row = {
        "name": name,
        "precision": precision,
        "backend": backend,
        "streams": streams,
        "baseline_infer": baseline.to_dict(),
        "offline": {
            "result": offline["result"],
            "samples_per_second": offline_sps,
            "target_qps": target_qps,
            "ratio_to_baseline": round(offline_sps / baseline.images_per_s, 3),
        },
        "singlestream": None,
    }
    if streams > 1:
        return row  # SingleStream has one query in flight: one stream
    if backend == "openvino":  # as `resnet50 mlperf --scenario SingleStream` loads it
        model = ResNet50.load(precision=precision, threads=args.threads, backend=backend, batch_size=1)
    baseline_b1 = bench_infer(model, batch=1, duration=args.duration, warmup=1.0)
    single = run(
        model, dataset,
        RunOptions(scenario="SingleStream", output=logs / "singlestream",
                   target_latency_ms=baseline_b1.latency_ms["p50"], min_duration_ms=int(args.duration * 1000),
                   min_query_count=64),
    )  # fmt: skip
    common.log(
        f"[{name}]   batch-1 p90 {baseline_b1.latency_ms['p90']} ms; "
        f"LoadGen SingleStream p90 {single['metrics']['percentile_latency_ms']:.3f} ms"
    )
    row["baseline_infer_batch1"] = baseline_b1.to_dict()
    row["singlestream"] = {
        "result": single["result"],
        "p90_latency_ms": single["metrics"]["percentile_latency_ms"],
        "baseline_batch1_p90_ms": baseline_b1.latency_ms["p90"],
    }
    return row


def chart(result: dict, path: Path) -> None:
    import numpy as np

    rows = result["results"]
    names = [r["name"].replace(" ", "\n") for r in rows]
    x = np.arange(len(names))
    with common.figure(path, 1, 2, figsize=(10, 4)) as (fig, (left, right)):
        left.bar(x - 0.2, [r["baseline_infer"]["images_per_s"] for r in rows], 0.4, label="resnet50 bench (infer)")
        left.bar(x + 0.2, [r["offline"]["samples_per_second"] for r in rows], 0.4, label="LoadGen Offline")
        left.set(xticks=x, xticklabels=names, ylabel="samples/s", title="Offline throughput")
        left.legend()
        single = [r for r in rows if r["singlestream"]]
        y = np.arange(len(single))
        right.bar(y - 0.2, [r["singlestream"]["baseline_batch1_p90_ms"] for r in single], 0.4, label="bench batch 1")
        right.bar(y + 0.2, [r["singlestream"]["p90_latency_ms"] for r in single], 0.4, label="LoadGen SingleStream")
        right.set(xticks=y, xticklabels=[r["name"].replace(" ", "\n") for r in single], ylabel="p90 latency (ms)",
                  title="SingleStream latency")  # fmt: skip
        right.legend()
        fig.suptitle(
            f"ResNet50 v1.5 MLPerf harness, {result['weights']} weights, {result['machine']['cpu']['cores']} CPUs"
        )


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=("fp32", "int8"))
    parser.add_argument("--backend", nargs="+", default=["onnxruntime"], choices=("onnxruntime", "openvino"))
    parser.add_argument(
        "--duration", type=common.positive_float, default=30.0, help="seconds per measurement (default 30)"
    )
    parser.add_argument("--batch", type=common.positive_int, default=8)
    parser.add_argument("--threads", type=common.positive_int)
    parser.add_argument(
        "--streams", type=common.positive_int, nargs="+", default=[1], help="Offline model streams (default 1)"
    )
    parser.add_argument("--count", type=common.positive_int, default=64, help="generated images in the sample library")
    common.add_out(parser, "mlperf_offline")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        dataset = build_dataset(args.count, Path(tmp) / "cache")
        rows = [
            bench_precision(p, b, n, dataset, args, Path(tmp) / "logs")
            for p in args.precision
            for b in args.backend
            for n in args.streams
        ]
    result = {
        **common.header("mlperf_offline"),
        "weights": rows[0]["baseline_infer"]["weights"],  # the same file for every row
        "settings": {k: v for k, v in common.settings(args).items() if k != "out"},
        "results": rows,
    }
    common.save(args.out, result, chart)
    common.print_json({r["name"]: {"offline": r["offline"], "singlestream": r["singlestream"]} for r in rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
