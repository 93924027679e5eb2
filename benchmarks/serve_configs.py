"""Server configurations side by side: open-loop latency at one fixed request rate.

Each configuration is a full ``load_test.py`` run (local baseline, closed loop, then
``--duration`` s of Poisson arrivals at ``--rate`` req/s, the same rate for every one), and
the configurations run in interleaved rounds: the machines here are shared, so a noisy
minute moves one run, not the comparison. The baseline configuration is the server as it was
before model streams: one stream of all threads with batches of up to 8. Writes
``benchmarks/results/serve_configs.json`` and ``.png`` (or ``--out``).

    python benchmarks/serve_configs.py --rounds 3 --duration 30 --rate 36
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

import common
import load_test

CONFIGS = {  # name: load_test arguments
    "1 stream, batches up to 8 (before)": ["--streams", "1", "--max-batch", "8"],
    "2 streams, batch 1 (serve's default)": ["--streams", "2", "--max-batch", "1"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = common.parser(__doc__)
    p.add_argument("--rounds", type=common.positive_int, default=3)
    p.add_argument(
        "--duration", type=common.positive_float, default=30.0, help="open-loop seconds per run (default 30)"
    )
    p.add_argument(
        "--rate", type=common.positive_float, default=36.0, help="open-loop requests/s for every run (default 36)"
    )
    p.add_argument("--count", type=common.positive_int, default=200, help="images; closed-loop requests (default 200)")
    p.add_argument("--precision", default="int8", choices=("fp32", "int8"))
    p.add_argument("--backend", default="openvino", choices=("onnxruntime", "openvino"))
    common.add_out(p, "serve_configs")
    return p.parse_args(argv)


def one_run(args: argparse.Namespace, extra: list[str], out: Path) -> dict:
    common = ["--count", str(args.count), "--duration", str(args.duration), "--rate", str(args.rate)]
    common += ["--precision", args.precision, "--backend", args.backend, "--native", "--out", str(out)]
    common += ["--modes", "classify"]  # the /v1/classify closed and open loops, not the protocol comparison
    with contextlib.redirect_stdout(sys.stderr):  # its summary; ours is the one on stdout
        load_test.main([*common, *extra])
    result = json.loads(out.read_text())
    opened = result["open"]
    return {
        "weights": result["weights"],
        "baseline_images_per_s": round(result["baseline"]["images_per_s"], 2),
        "closed_images_per_s": round(result["closed"]["images_per_s"], 2),
        "closed_ratio": result["ratio"],
        **{k: opened[k] for k in ("sent", "ok", "error", "lost", "p50_ms", "p90_ms", "p99_ms")},
        "floor_p99_ms": opened["floor"]["p99_ms"],
        "server_cores": opened["cpu_share"]["server"],
        "mean_batch": opened["batching"]["mean_batch"],
    }


def plot(result: dict, path: Path) -> None:
    names = list(result["configs"])
    with common.figure(path, figsize=(9, 4.4)) as (_, ax):
        for i, name in enumerate(names):
            runs = result["configs"][name]["runs"]
            for key, marker, color in (("p99_ms", "o", "#3e6ae1"), ("p50_ms", "s", "#98a2b3")):
                ax.scatter([i] * len(runs), [r[key] for r in runs], marker=marker, color=color, zorder=3)
            floor = np.median([r["floor_p99_ms"] for r in runs])
            ax.scatter([i], [floor], marker="_", s=600, color="#12b76a", zorder=2)
        ax.scatter([], [], marker="o", color="#3e6ae1", label="p99 of a run")
        ax.scatter([], [], marker="s", color="#98a2b3", label="p50 of a run")
        ax.scatter([], [], marker="_", s=200, color="#12b76a", label="ideal-server p99 (median)")
        ax.axhline(load_test.GOAL_P99_MS, color="#b42318", ls="--", lw=1, label="goal p99")
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel("latency (ms)")
        ax.set_title(
            f"resnet50 serve, {result['config']['precision']} {result['config']['backend']}, "
            f"{result['config']['rate']:g} req/s Poisson for {result['config']['duration']:g} s, "
            f"{result['config']['rounds']} interleaved rounds ({result['weights']} weights)",
            fontsize=9,
        )
        ax.legend(fontsize=8)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configs = {name: {"args": extra, "runs": []} for name, extra in CONFIGS.items()}
    with tempfile.TemporaryDirectory() as tmp:
        for round_no in range(args.rounds):
            for name, extra in CONFIGS.items():
                common.log(f"round {round_no + 1}/{args.rounds}: {name} ...")
                configs[name]["runs"].append(one_run(args, extra, Path(tmp) / "run.json"))
    for entry in configs.values():
        entry["median_p99_ms"] = common.median(r["p99_ms"] for r in entry["runs"])
        entry["median_closed_ratio"] = common.median(r["closed_ratio"] for r in entry["runs"])
    result = {
        **common.header("serve_configs"),
        "weights": next(iter(configs.values()))["runs"][0]["weights"],
        "config": common.settings(args),
        "configs": configs,
    }
    common.save(args.out, result, plot)
    summary = {
        name: {"median_p99_ms": e["median_p99_ms"], "p99_ms": [r["p99_ms"] for r in e["runs"]]}
        for name, e in configs.items()
    }
    common.print_json({**summary, "json": str(args.out)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
