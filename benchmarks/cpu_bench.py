"""CPU comparison in one run: our configurations against a reference-style pipeline.

The baseline is what the MLPerf reference harness does per image: ``cv2.imread`` +
``pre_process_vgg`` (the reference's own code) and a default ONNX Runtime fp32 session,
one image at a time. Every other row is ``resnet50 bench`` in its own process (so peak RSS
is per configuration). With ``--repeat N`` every configuration runs N times in interleaved
rounds and a row reports the run with the median images/s (all runs are kept in the JSON):
the machines here are shared, and a noisy minute then moves one run, not the comparison.
Writes ``benchmarks/results/cpu_bench.json`` and ``cpu_bench.png`` (or ``--out``).

    python benchmarks/cpu_bench.py [--duration 10] [--repeat 3] [--quick] [--out PATH]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import common

CONFIGS = [  # (name, bench arguments)
    ("ORT fp32 infer b8", ["--mode", "infer", "--precision", "fp32"]),
    ("ORT int8 infer b8", ["--mode", "infer", "--precision", "int8"]),
    ("OpenVINO bf16 infer b8", ["--mode", "infer", "--precision", "bf16", "--backend", "openvino"]),
    ("OpenVINO int8 infer b8", ["--mode", "infer", "--precision", "int8", "--backend", "openvino"]),
    (
        "OpenVINO int8 infer b8 2 streams",
        ["--mode", "infer", "--precision", "int8", "--backend", "openvino", "--streams", "2"],
    ),
    ("ORT int8 infer b1", ["--mode", "infer", "--precision", "int8", "--batch", "1"]),
    ("ORT int8 infer b1 spin-wait", ["--mode", "infer", "--precision", "int8", "--batch", "1", "--spin-wait"]),
    ("OpenVINO int8 infer b1", ["--mode", "infer", "--precision", "int8", "--batch", "1", "--backend", "openvino"]),
    ("e2e ORT fp32 b8", ["--mode", "e2e", "--precision", "fp32"]),
    ("e2e ORT int8 b8", ["--mode", "e2e", "--precision", "int8"]),
    ("e2e OpenVINO int8 b8", ["--mode", "e2e", "--precision", "int8", "--backend", "openvino"]),
]


def reference_baseline(files: list[str], duration: float, warmup: float) -> dict:
    """Reference-style pipeline: per image, imread + pre_process_vgg + default ORT session."""
    import cv2
    import onnxruntime as ort

    from resnet50.apps.bench import percentiles
    from resnet50.weights.source import resolve

    pre_process_vgg = common.reference().pre_process_vgg
    session = ort.InferenceSession(str(resolve().path), providers=["CPUExecutionProvider"])
    done = 0

    def one_image() -> int:
        nonlocal done
        tensor = pre_process_vgg(cv2.imread(files[done % len(files)]))[None]
        session.run(["ArgMax:0"], {"input_tensor:0": tensor})
        done += 1
        return 1

    timed = common.run_for(one_image, duration, warmup)
    return {"images_per_s": round(timed.per_s, 2), "latency_ms": percentiles(timed.latencies_s), "images": timed.items}


def run_bench(args: list[str], duration: float, warmup: float) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "resnet50",
        "bench",
        *args,
        "--duration",
        str(duration),
        "--warmup",
        str(warmup),
        "--json",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout)


def median_run(results: list[dict]) -> dict:
    """The run with the median images/s (the lower middle one of an even count), with the median
    of each latency percentile and the largest peak RSS over all runs; an error if all failed."""
    good = sorted((r for r in results if "images_per_s" in r), key=lambda r: r["images_per_s"])
    if not good:
        return results[-1]
    chosen = dict(good[(len(good) - 1) // 2])
    chosen["images_per_s_range"] = [good[0]["images_per_s"], good[-1]["images_per_s"]]
    latencies = [r["latency_ms"] for r in good if r.get("latency_ms")]
    if latencies:
        chosen["latency_ms"] = common.median_percentiles(latencies)
    if any("peak_rss_mb" in r for r in good):
        chosen["peak_rss_mb"] = max(r.get("peak_rss_mb", 0.0) for r in good)
    return chosen


def cold_start() -> float:
    """Seconds from a new process to the first label, with the model already cached."""
    from resnet50.apps.bench import default_images

    image = str(default_images()[0])
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "resnet50", "classify", image, "--precision", "int8", "--top", "1"],
                   capture_output=True, check=True, timeout=120)  # fmt: skip
    return round(time.perf_counter() - start, 3)


def chart(result: dict, path: Path) -> None:
    rows = [r for r in result["rows"] if r.get("images_per_s")]
    with common.figure(path, figsize=(9, 0.45 * len(rows) + 1.5)) as (_, ax):
        names = [r["name"] for r in rows]
        values = [r["images_per_s"] for r in rows]
        colors = [
            "#999999" if r["name"].startswith("baseline") else "#1f77b4" if "e2e" in r["name"] else "#ff7f0e"
            for r in rows
        ]
        low = [v - r.get("images_per_s_range", [v, v])[0] for v, r in zip(values, rows)]
        high = [r.get("images_per_s_range", [v, v])[1] - v for v, r in zip(values, rows)]
        ax.barh(names, values, color=colors, xerr=[low, high], ecolor="#333333", capsize=3)
        for y, v in enumerate(values):
            ax.text(v + high[y], y, f" {v:.1f}", va="center")
        ax.invert_yaxis()
        ax.set_xlabel("images/s (higher is better)")
        ax.set_title(
            f"ResNet50 v1.5 on this CPU, {result['weights']} weights, one run\n"
            "(bar: median round; whiskers: range of the rounds)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("--duration", type=common.positive_float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument(
        "--repeat", type=common.positive_int, default=1, help="interleaved rounds; rows give the median run"
    )
    parser.add_argument("--quick", action="store_true", help="3 s per configuration, to check the script works")
    common.add_out(parser, "cpu_bench")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 3.0, 1.0
    from resnet50.apps.bench import default_images
    from resnet50.weights.source import resolve

    files = [str(p) for p in default_images()]
    for precision in ("fp32", "int8"):  # build and cache every model before anything is timed
        subprocess.run(
            [sys.executable, "-m", "resnet50", "info", "--precision", precision], capture_output=True, check=True
        )
    baseline_name = "baseline: reference pipeline, ORT fp32, 1 image at a time"
    runs: dict[str, list[dict]] = {baseline_name: [], **{name: [] for name, _ in CONFIGS}}
    for round_no in range(1, args.repeat + 1):
        runs[baseline_name].append(reference_baseline(files, args.duration, args.warmup))
        for name, bench_args in CONFIGS:
            runs[name].append(run_bench(bench_args, args.duration, args.warmup))
        done = {name: r[-1].get("images_per_s", r[-1].get("error")) for name, r in runs.items()}
        common.log(f"round {round_no}/{args.repeat}: " + "; ".join(f"{k}: {v}" for k, v in done.items()))
    rows = [{"name": name, **median_run(results), "runs": results} for name, results in runs.items()]
    by_name = {r["name"]: r for r in rows}
    baseline = rows[0]["images_per_s"]
    e2e_int8 = by_name["e2e ORT int8 b8"].get("images_per_s", 0)
    summary = {
        "e2e_int8_vs_reference": round(e2e_int8 / baseline, 2),
        "e2e_fp32_vs_infer_fp32": round(
            by_name["e2e ORT fp32 b8"].get("images_per_s", 0) / by_name["ORT fp32 infer b8"].get("images_per_s", 1), 3
        ),
        "int8_b1_p90_ms": by_name["ORT int8 infer b1"].get("latency_ms", {}).get("p90"),
        "int8_b1_spin_wait_p90_ms": by_name["ORT int8 infer b1 spin-wait"].get("latency_ms", {}).get("p90"),
        "openvino_int8_b1_p90_ms": by_name["OpenVINO int8 infer b1"].get("latency_ms", {}).get("p90"),
        "cold_start_s": cold_start(),
        "max_peak_rss_mb": max(r.get("peak_rss_mb", 0) for row in rows for r in row["runs"]),
    }
    payload = {
        **common.header("cpu_bench"),
        "weights": resolve().kind,
        "duration_s": args.duration,
        "repeat": args.repeat,
        "rows": rows,
        "summary": summary,
    }
    common.save(args.out, payload, chart)
    common.print_json(summary)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
