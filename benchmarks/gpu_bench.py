"""GPU benchmark of the torch backend: every configuration and the PyTorch eager baseline, one run.

Measured one after another in the same process on the same GPU (weights: synthetic unless
the MLPerf file is fetched; same compute either way):

- **inference only** (input already on the GPU), images/s per batch size, for: eager fp16
  channels-last (the baseline: plain PyTorch as most people run it), eager fp32 with TF32,
  eager bf16, eager fp16 NCHW, CUDA graphs fp16 and bf16, and ``torch.compile``
  (``max-autotune-no-cudagraphs``, then our CUDA graphs) with its compile time;
- **batch-1 latency** p50/p90/p99 from a host numpy array to host outputs, and on-device;
- **end to end from JPEG bytes**: nvJPEG decode + GPU resize/crop + CUDA graphs fp16, and the
  exact CPU preprocessing (``classify_stream``, all cores) feeding the same backend;
- **top-1 agreement** of fp32(TF32)/fp16/bf16 and of the GPU-preprocessed path with ONNX
  Runtime fp32 on the CPU (on synthetic weights this is agreement between precisions, not
  ImageNet accuracy);
- **GPU preprocessing vs exact**: pixel differences of nvJPEG+GPU resize, and of GPU resize alone.

Writes ``benchmarks/results/gpu_bench.json`` (``gpu_bench_cpu_smoke.json`` with ``--device
cpu``) and a PNG chart, or ``--out``. One command, under 8 minutes on an H100 (``--budget``
seconds bounds the optional parts)::

    python benchmarks/gpu_bench.py
    python benchmarks/gpu_bench.py --device cpu --quick   # proves the script runs; numbers meaningless
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import common

BASELINE = "eager_fp16_cl"

CONFIGS = {
    BASELINE: {"precision": "fp16", "channels_last": True, "cuda_graphs": False},
    "eager_fp32_tf32_cl": {"precision": "fp32", "channels_last": True, "cuda_graphs": False},
    "eager_bf16_cl": {"precision": "bf16", "channels_last": True, "cuda_graphs": False},
    "eager_fp16_nchw": {"precision": "fp16", "channels_last": False, "cuda_graphs": False},
    "graphs_fp16_cl": {"precision": "fp16", "channels_last": True, "cuda_graphs": True},
    "graphs_bf16_cl": {"precision": "bf16", "channels_last": True, "cuda_graphs": True},
}
CPU_CONFIGS = {
    "eager_fp32_cpu": {"precision": "fp32", "channels_last": False, "cuda_graphs": False},
    "eager_bf16_cpu": {"precision": "bf16", "channels_last": True, "cuda_graphs": False},
}


class Clock:
    """Seconds left of the run's budget."""

    def __init__(self, budget: float):
        self.start = time.perf_counter()
        self.budget = budget

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)


def sync(torch, device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def throughput(backend, torch, device: str, batch: int, seconds: float) -> dict:
    """Images/s of ``backend.infer`` on a device-resident batch (first calls: capture/compile, untimed)."""
    x = torch.randn(batch, 3, 224, 224, device=device) * 60
    start = time.perf_counter()
    backend.infer(x)
    sync(torch, device)
    first = time.perf_counter() - start
    for _ in range(2):
        backend.infer(x)
    sync(torch, device)
    start = time.perf_counter()
    backend.infer(x)
    sync(torch, device)
    per_call = max(time.perf_counter() - start, 1e-6)
    calls = max(3, int(seconds / per_call))
    start = time.perf_counter()
    for _ in range(calls):
        backend.infer(x)
    sync(torch, device)
    elapsed = time.perf_counter() - start
    return {
        "batch": batch,
        "images_per_s": round(calls * batch / elapsed, 1),
        "calls": calls,
        "first_call_s": round(first, 3),
    }


def latency(backend, torch, device: str, iterations: int) -> dict:
    """Batch-1 latency (ms): host numpy in → host numpy out, and device tensor in → synced device out."""
    from resnet50.apps.bench import percentiles

    host = (np.random.default_rng(0).standard_normal((1, 3, 224, 224)) * 60).astype(np.float32)
    dev = torch.from_numpy(host).to(device)
    for _ in range(20):
        backend.run({"input_tensor:0": host})
        backend.infer(dev)
    host_s, dev_s = [], []
    for _ in range(iterations):
        start = time.perf_counter()
        backend.run({"input_tensor:0": host})
        host_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        backend.infer(dev)
        sync(torch, device)
        dev_s.append(time.perf_counter() - start)
    return {"iterations": iterations, "host_to_host_ms": percentiles(host_s), "on_device_ms": percentiles(dev_s)}


def make_backend(path: str, device: str, options: dict):
    from resnet50.runtime.torch.backend import TorchBackend

    return TorchBackend(path, device=device, **options)


def release(torch, device: str) -> None:
    import gc

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def exact_inputs(images: list, workers: int) -> np.ndarray:
    from resnet50.processing.preprocess import normalize, preprocess_one

    with ThreadPoolExecutor(workers) as pool:
        crops = np.stack([crop for crop, _ in pool.map(preprocess_one, images)])
    return normalize(crops)


def e2e_gpu(backend, blobs: list[bytes], batch: int, seconds: float, device: str, nvjpeg: bool) -> dict:
    """Images/s from JPEG bytes: GPU decode + GPU resize/crop + inference, ids copied back to the host."""
    from resnet50.runtime.torch.gpu_preprocess import GpuPreprocessor

    prep = GpuPreprocessor(device, nvjpeg=nvjpeg)

    def one_pass() -> int:
        done = 0
        for i in range(0, len(blobs), batch):
            crops, _, _ = prep(blobs[i : i + batch])
            backend.infer(crops)["ArgMax:0"].cpu()
            done += crops.shape[0]
        return done

    one_pass()  # warm-up: graph capture for the batch sizes used, nvJPEG handles
    timed = common.run_for(one_pass, seconds)
    return {
        "images": timed.items,
        "batch": batch,
        "images_per_s": round(timed.per_s, 1),
        "decoder": "nvjpeg" if prep.nvjpeg else "opencv",
        "cpu_fallbacks": prep.fallbacks,
    }


def e2e_exact(model, paths: list[str], batch: int, workers: int) -> dict:
    """Images/s of the exact CPU preprocessing (all workers) feeding the same backend, overlapped."""
    from resnet50.apps.pipeline import classify_stream

    start = time.perf_counter()
    count = sum(1 for r in classify_stream(model, paths, batch_size=batch, workers=workers) if r.ok)
    return {
        "images": count,
        "batch": batch,
        "workers": workers,
        "images_per_s": round(count / (time.perf_counter() - start), 1),
    }


def agreement(reference: np.ndarray, scores: np.ndarray) -> dict:
    return {
        "images": len(reference),
        "top1_agreement_pct": round(100.0 * float(np.mean(scores.argmax(1) == reference.argmax(1))), 3),
        "max_abs_softmax_diff": float(np.abs(scores - reference).max()),
    }


def chart(result: dict, path: Path) -> None:
    best = {name: max(r["images_per_s"] for r in runs) for name, runs in result["inference"].items() if runs}
    names = list(best)
    with common.figure(path, 1, 3, figsize=(16, 4.8)) as (fig, axes):
        axes[0].barh(
            names,
            [best[n] for n in names],
            color=["tab:gray" if n == result["baseline"] else "tab:blue" for n in names],
        )
        axes[0].set_xlabel("images/s (best batch, inference only)")
        axes[0].set_title("throughput (gray: eager baseline)")
        lat = result.get("latency_batch1", {})
        axes[1].barh(list(lat), [v["host_to_host_ms"]["p90"] for v in lat.values()], color="tab:orange")
        axes[1].set_xlabel("p90 ms, batch 1, host to host")
        axes[1].set_title("latency")
        e2e = {k: v["images_per_s"] for k, v in result.get("end_to_end", {}).items() if "images_per_s" in v}
        axes[2].barh(list(e2e), list(e2e.values()), color="tab:green")
        axes[2].set_xlabel("images/s from JPEG bytes")
        axes[2].set_title("end to end")
        meta, machine = result["meta"], result["machine"]
        fig.suptitle(
            f"ResNet50 v1.5 on {meta['gpu']} — torch {machine['versions'].get('torch')} — {machine['date']} — "
            f"weights: {meta['weights']}"
        )


def goals(result: dict) -> dict:
    """The issue's targets next to what this run measured."""
    agree = result["agreement_vs_onnxruntime_fp32_cpu"]
    best_fp16 = max(
        (r["images_per_s"] for n, runs in result["inference"].items() if "fp16" in n for r in runs), default=None
    )
    p90s = [v["host_to_host_ms"]["p90"] for v in result["latency_batch1"].values()]
    e2e_gpu_rate = next(
        (v["images_per_s"] for k, v in result["end_to_end"].items() if k.startswith("gpu_decode")), None
    )
    low_precision = [
        agree[k]["top1_agreement_pct"] for k in ("fp16_exact_preprocessing", "bf16_exact_preprocessing") if k in agree
    ]
    base = max(r["images_per_s"] for r in result["inference"][result["baseline"]])
    table = {
        "inference_fp16_best_images_per_s": {"target": 30000, "measured": best_fp16},
        "speedup_over_eager_baseline": {"measured": round((best_fp16 or base) / base, 2)},
        "batch1_p90_ms": {"target": 0.6, "measured": min(p90s) if p90s else None},
        "end_to_end_gpu_decode_images_per_s": {"target": 15000, "measured": e2e_gpu_rate},
        "fp16_bf16_top1_agreement_pct": {"target": 99.5, "measured": min(low_precision) if low_precision else None},
    }
    for goal in table.values():
        if "target" in goal and goal["measured"] is not None:
            lower_is_better = goal["target"] < 1
            goal["met"] = goal["measured"] <= goal["target"] if lower_is_better else goal["measured"] >= goal["target"]
    return table


def save(result: dict, out: Path, clock: Clock) -> None:
    """Write the JSON and chart so far: a run cut short still leaves what it measured."""
    result["goals"] = goals(result)
    result["meta"]["elapsed_s"] = round(time.perf_counter() - clock.start, 1)
    result["machine"]["date"] = common.utc_now()
    common.save(out, result, chart)


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: proves the script runs (CPU smoke test)")
    parser.add_argument(
        "--batches", type=common.positive_int, nargs="+", help="inference batch sizes (default 64 128 256 512)"
    )
    parser.add_argument("--seconds", type=common.positive_float, default=1.0, help="timed seconds per measurement")
    parser.add_argument(
        "--compile-mode", default="max-autotune-no-cudagraphs", help="torch.compile mode; 'none' skips it"
    )
    parser.add_argument(
        "--images", type=common.positive_int, default=1024, help="generated JPEGs for end to end and agreement"
    )
    parser.add_argument(
        "--budget", type=common.positive_float, default=420, help="seconds; optional parts are skipped past it"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="result JSON (default: benchmarks/results/gpu_bench.json, gpu_bench_cpu_smoke.json with --device cpu);"
        " a chart is written beside it as .png",
    )
    args = parser.parse_args(argv)

    import torch

    from resnet50.api.model import ResNet50
    from resnet50.core.samples import write_jpegs
    from resnet50.runtime.torch.backend import require_cuda
    from resnet50.weights.source import resolve, warn_if_synthetic

    device = args.device
    if device == "cuda":
        require_cuda()
    quick = args.quick
    clock = Clock(args.budget)
    batches = args.batches or ([2] if quick else [64, 128, 256, 512])
    seconds = 0.3 if quick else args.seconds
    workers = os.cpu_count() or 1
    e2e_batch = 4 if quick else 256
    source = resolve()
    warn_if_synthetic(source)
    path = str(source.path)
    configs = CPU_CONFIGS if device == "cpu" else CONFIGS
    out = args.out or common.default_out("gpu_bench" if device == "cuda" else "gpu_bench_cpu_smoke")

    head = common.header("gpu_bench")
    result: dict = {
        **head,
        "meta": {
            "device": device,
            "gpu": torch.cuda.get_device_name() if device == "cuda" else f"CPU ({head['machine']['cpu']['name']})",
            "cuda": torch.version.cuda,
            "weights": source.kind,
            "model_md5": source.md5,
            "quick": quick,
            "cpu_workers": workers,
            "command": " ".join([sys.executable, *sys.argv]),
            "note": "synthetic weights: agreement is between precisions, not ImageNet accuracy"
            if source.weights.synthetic
            else "",
        },
        "baseline": BASELINE if device == "cuda" else "eager_fp32_cpu",
        "inference": {},
        "latency_batch1": {},
        "compile": {},
        "end_to_end": {},
        "agreement_vs_onnxruntime_fp32_cpu": {},
        "preprocessing_vs_exact": {},
        "skipped": [],
    }

    # Inference only, every configuration, the eager baseline first.
    for name, options in configs.items():
        backend = make_backend(path, device, options)
        result["inference"][name] = [throughput(backend, torch, device, b, seconds) for b in batches]
        if name in (BASELINE, "graphs_fp16_cl", "eager_fp32_cpu"):
            result["latency_batch1"][name] = latency(backend, torch, device, 20 if quick else 300)
        common.log(f"{name}: {[r['images_per_s'] for r in result['inference'][name]]} img/s")
        del backend
        release(torch, device)
    save(result, out, clock)

    # End to end and agreement on generated JPEGs (ImageNet-like sizes).
    count = 16 if quick else args.images
    with tempfile.TemporaryDirectory() as tmp:
        paths = [str(p) for p in write_jpegs(tmp, count, seed=123)]
        blobs = [Path(p).read_bytes() for p in paths]
        best = "graphs_fp16_cl" if device == "cuda" else "eager_fp32_cpu"
        backend = make_backend(path, device, configs[best])
        nvjpeg = device == "cuda"
        result["end_to_end"][f"gpu_decode_{best}"] = e2e_gpu(backend, blobs, e2e_batch, seconds * 2, device, nvjpeg)
        model = ResNet50(backend, source, precision=configs[best]["precision"], device=device, use_native=False)
        result["end_to_end"][f"exact_cpu_preprocess_{best}"] = e2e_exact(model, paths, e2e_batch, workers)

        from resnet50.runtime.onnxruntime import OnnxRuntimeBackend
        from resnet50.runtime.torch.gpu_preprocess import GpuPreprocessor, compare_to_exact

        images = paths[: min(count, 512)]
        with contextlib.suppress(ImportError):
            import skimage.data

            folder = Path(skimage.data.__file__).parent
            images += [str(folder / n) for n in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg")]
        x = exact_inputs(images, workers)
        reference = OnnxRuntimeBackend(path, threads=workers).run({"input_tensor:0": x})["softmax_tensor:0"]
        agree = result["agreement_vs_onnxruntime_fp32_cpu"]
        for precision in ("fp32", "fp16", "bf16") if device == "cuda" else ("fp32", "bf16"):
            options = {**configs[best], "precision": precision}
            scorer = backend if options == configs[best] else make_backend(path, device, options)
            scores = np.concatenate(
                [
                    scorer.run({"input_tensor:0": x[i : i + e2e_batch]})["softmax_tensor:0"]
                    for i in range(0, len(x), e2e_batch)
                ]
            )
            agree[f"{precision}_exact_preprocessing"] = agreement(reference, scores)
        prep = GpuPreprocessor(device, nvjpeg=nvjpeg)
        gpu_scores = []
        for i in range(0, len(images), e2e_batch):
            crops, _, _ = prep(images[i : i + e2e_batch])
            gpu_scores.append(backend.infer(crops)["softmax_tensor:0"].float().cpu().numpy())
        agree[f"{configs[best]['precision']}_gpu_preprocessing"] = agreement(reference, np.concatenate(gpu_scores))
        sample = images[: min(len(images), 128)]
        result["preprocessing_vs_exact"]["resize_crop_only"] = compare_to_exact(sample, device=device, nvjpeg=False)
        if nvjpeg:
            result["preprocessing_vs_exact"]["nvjpeg_and_resize_crop"] = compare_to_exact(
                sample, device=device, nvjpeg=True
            )

    save(result, out, clock)

    # torch.compile: compile time per batch size (Inductor's cache makes a second run faster).
    compile_batch = max(batches) if quick else 256
    if device == "cuda" and args.compile_mode != "none" and clock.left() > 180:
        options = {"precision": "fp16", "channels_last": True, "cuda_graphs": True, "compile_mode": args.compile_mode}
        backend = make_backend(path, device, options)
        name = "compile_fp16_cl"
        result["inference"][name] = [throughput(backend, torch, device, compile_batch, seconds)]
        if clock.left() > 90:
            result["latency_batch1"][name] = latency(backend, torch, device, 300)
        result["compile"] = {"mode": args.compile_mode, "seconds_by_batch": backend.describe()["compile_seconds"]}
        del backend
        release(torch, device)
        save(result, out, clock)
    else:
        result["skipped"].append("torch.compile (cpu, --compile-mode none, or budget)")

    save(result, out, clock)
    common.print_json({"goals": result["goals"], "out": str(out), "elapsed_s": result["meta"]["elapsed_s"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
