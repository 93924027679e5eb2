"""OpenVINO compiled for one exact batch size against compiled for any: same runs, interleaved.

``ResNet50.load(batch_size=N, backend="openvino")`` compiles the model for exactly that
batch (static shapes); without it the model takes any batch (a dynamic dimension). Three
configurations, each timed as ``resnet50 bench --mode infer`` times it
(:func:`resnet50.apps.bench.bench_infer`: one caller thread per stream) on both models in
interleaved rounds (the machines here are shared: a noisy second moves one round, not the
comparison); images/s and latency percentiles are the medians of the rounds':

- batch 1, one stream of all threads: per-run latency (``bench``'s latency figure);
- batch 1, two streams, one caller thread each: images/s (``resnet50 serve``'s default);
- batch 8, one stream: images/s.

Every answer is checked bit-identical between the two models first. Writes
``results/ov_batch_shapes.json`` and ``.png`` (or ``--out``).

    python benchmarks/ov_batch_shapes.py [--rounds 10] [--seconds 3] [--out PATH]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import common

CONFIGS = {  # name: (batch, streams)
    "batch 1, 1 stream": (1, 1),
    "batch 1, 2 streams": (1, 2),
    "batch 8, 1 stream": (8, 1),
}


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("--rounds", type=common.positive_int, default=10)
    parser.add_argument("--seconds", type=common.positive_float, default=3.0, help="per configuration, model and round")
    parser.add_argument("--precision", default="int8", choices=("fp32", "int8", "bf16"))
    common.add_out(parser, "ov_batch_shapes")
    args = parser.parse_args(argv)

    from resnet50 import ResNet50
    from resnet50.apps.bench import bench_infer

    tensor = np.random.default_rng(0).integers(0, 256, (8, 3, 224, 224), dtype=np.uint8)
    pairs = {}
    for name, (batch, streams) in CONFIGS.items():
        load = dict(precision=args.precision, backend="openvino", use_native=True, threads=2, streams=streams)
        pair = {"any batch": ResNet50.load(**load), f"batch {batch} exactly": ResNet50.load(**load, batch_size=batch)}
        answers = [model.run(tensor[:batch]) for model in pair.values()]
        assert all(np.array_equal(answers[0][k], answers[1][k]) for k in answers[0]), name
        for model in pair.values():
            bench_infer(model, batch=batch, duration=0.5, warmup=0.0)
        pairs[name] = (batch, pair)

    rounds = {name: {label: [] for label in pair} for name, (_, pair) in pairs.items()}
    for _ in range(args.rounds):
        for name, (batch, pair) in pairs.items():
            for label, model in pair.items():
                rounds[name][label].append(bench_infer(model, batch=batch, duration=args.seconds, warmup=0.0))

    configs = {}
    for name, by_model in rounds.items():
        entry = {}
        for label, results in by_model.items():
            rates = [r.images_per_s for r in results]
            entry[label] = {
                "images_per_s": common.median(rates, 2),
                "images_per_s_range": [round(min(rates), 2), round(max(rates), 2)],
                "latency_ms": common.median_percentiles([r.latency_ms for r in results], 2),
            }
        any_size, exact = entry.values()
        entry["exact_over_any_images_per_s"] = round(exact["images_per_s"] / any_size["images_per_s"], 3)
        entry["exact_minus_any_p90_ms"] = round(exact["latency_ms"]["p90"] - any_size["latency_ms"]["p90"], 2)
        configs[name] = entry
    result = {
        **common.header("ov_batch_shapes"),
        "weights": next(iter(pairs.values()))[1]["any batch"].weights,
        "precision": args.precision,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "configs": configs,
    }
    common.save(args.out, result, plot)
    common.print_json({k: v for k, v in result.items() if k != "machine"})
    return 0


def plot(result: dict, path: Path) -> None:
    names = list(result["configs"])
    x = np.arange(len(names))
    with common.figure(path, 1, 2, figsize=(11, 4.2)) as (fig, (rate_ax, lat_ax)):
        for offset, label, color in ((-0.2, "any batch", "#98a2b3"), (0.2, "exactly", "#3e6ae1")):
            rates, p90s = [], []
            for name in names:
                entry = next(v for k, v in result["configs"][name].items() if isinstance(v, dict) and label in k)
                rates.append(entry["images_per_s"])
                p90s.append(entry["latency_ms"]["p90"])
            shown = "compiled for any batch" if label == "any batch" else "compiled for the exact batch"
            rate_ax.bar(x + offset, rates, 0.4, label=shown, color=color)
            lat_ax.bar(x + offset, p90s, 0.4, label=shown, color=color)
        for ax, title in ((rate_ax, "images/s (median of rounds)"), (lat_ax, "per-run latency p90, ms")):
            ax.set_xticks(x, names, fontsize=8)
            ax.set_title(title, fontsize=10)
            ax.legend(fontsize=8)
        cpu = result["machine"]["cpu"]
        fig.suptitle(
            f"OpenVINO {result['precision']}, static vs dynamic batch, {cpu['name']} "
            f"{cpu['cores']} cores, {result['weights']} weights, {result['machine']['date']}",
            fontsize=9,
        )


if __name__ == "__main__":
    sys.exit(main())
