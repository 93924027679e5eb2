"""Benchmark ``resnet50 batch``: local engine and Ray engine vs the ``classify_stream`` baseline.

All three run in the same process on the same generated JPEGs (weights: synthetic, same
compute as MLPerf's), one after another:

- ``baseline``: :func:`resnet50.apps.pipeline.classify_stream`, results thrown away (the overlapped
  pipeline ``resnet50 bench --mode e2e`` measures);
- ``local``: ``run_batch(engine="local")`` writing Parquet;
- ``ray``: ``run_batch(engine="ray")`` on a local Ray with ``--ray-cpus`` CPUs, writing Parquet
  (actor start and model load included; ``ray.init`` not).

With ``--repeat R`` the engines run interleaved R times and each reports its best round.

``--memory N [N ...]`` also checks that memory stays flat: the local engine on N images
(hard links to the generated set) with the model's compute replaced by a stub, so 20,000
images take a minute; it samples RSS as rows are written. Writes
``benchmarks/results/batch_bench.json`` and a PNG chart (or ``--out``).

    python benchmarks/batch_bench.py --count 2000 --repeat 2 --memory 2000 20000
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import common


class RssSampler(threading.Thread):
    """Peak resident memory of this process and its children (Ray workers), sampled every 0.1 s."""

    def __init__(self):
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process()
        self.peak = 0
        self.stop = threading.Event()

    def rss(self) -> int:
        total = self.proc.memory_info().rss
        for child in self.proc.children(recursive=True):
            with contextlib.suppress(Exception):  # a worker that just exited
                total += child.memory_info().rss
        return total

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.rss())
            self.stop.wait(0.1)

    def __enter__(self) -> RssSampler:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join()


def images(folder: Path, count: int) -> list[str]:
    from resnet50.core.samples import write_jpegs

    return [str(p) for p in write_jpegs(folder, count)]


def linked_set(folder: Path, base: list[str], count: int) -> Path:
    """``count`` distinct paths (hard links, else copies) cycling over ``base``."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        target = folder / f"img_{i:06d}.jpg"
        if not target.exists():
            try:
                os.link(base[i % len(base)], target)
            except OSError:
                shutil.copyfile(base[i % len(base)], target)
    return folder


def run_baseline(model, paths: list[str], batch: int) -> dict:
    from resnet50.apps.pipeline import classify_stream

    start = time.perf_counter()
    with RssSampler() as mem:
        n = sum(1 for _ in classify_stream(model, paths, batch_size=batch))
    seconds = time.perf_counter() - start
    return {"images": n, "seconds": seconds, "images_per_second": n / seconds, "peak_rss_mb": mem.peak / 2**20}


def run_engine(engine: str, model, paths: list[str], batch: int, out: Path, **options) -> dict:
    from resnet50.apps.batch import run_batch

    with RssSampler() as mem:
        summary = run_batch(paths, out, engine=engine, model=model, batch_size=batch, overwrite=True, **options)
    return {
        "images": summary.rows,
        "seconds": summary.seconds,
        "images_per_second": summary.images_per_second,
        "peak_rss_mb": mem.peak / 2**20,
    }


class StubBackend:
    """Stands in for ONNX Runtime in the memory check: a fixed softmax, no compute."""

    def __init__(self, real):
        self.inputs, self.outputs, self.model_path, self.threads = real.inputs, real.outputs, real.model_path, 1
        self.softmax = np.random.default_rng(0).dirichlet(np.ones(1001)).astype(np.float32)

    def run(self, feeds):
        n = next(iter(feeds.values())).shape[0]
        soft = np.broadcast_to(self.softmax, (n, 1001)).copy()
        return {"softmax_tensor:0": soft, "ArgMax:0": soft.argmax(1)}


def memory_check(model, folder: Path, count: int, batch: int, out: Path) -> dict:
    """Local engine on ``count`` images with stub compute; RSS sampled ~50 times as rows are written."""
    import psutil

    from resnet50.apps.batch import list_inputs
    from resnet50.apps.batch.writers import RowWriter

    real = model.backend
    model.backend = StubBackend(real)
    proc = psutil.Process()
    samples = []
    every = max(64, count // 50)
    original = RowWriter.write

    def write(self, table):
        original(self, table)
        if not samples or self.rows_written - samples[-1][0] >= every:
            samples.append((self.rows_written, proc.memory_info().rss / 2**20))

    RowWriter.write = write
    try:
        result = run_engine("local", model, list_inputs(folder), batch, out)
    finally:
        RowWriter.write, model.backend = original, real
    settled = [mb for rows, mb in samples if rows >= min(1000, count // 10)]  # after imports and the first parts
    result.update(
        {
            "count": count,
            "rss_samples": samples,
            "rss_growth_after_warmup_mb": (max(settled) - min(settled)) if settled else 0.0,
            "note": "model compute replaced by a stub: checks pipeline + writer memory, not speed",
        }
    )
    return result


def chart(result: dict, path: Path) -> None:
    runs = result["runs"]
    names = list(runs)
    panels = [p for p, wanted in (("speed", bool(runs)), ("memory", bool(result.get("memory")))) if wanted]
    if not panels:
        return
    with common.figure(path, 1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False) as (_, axes):
        if runs:
            ax = axes[0][0]
            speeds = [runs[n]["images_per_second"] for n in names]
            bars = ax.bar(names, speeds, color=["#888888", "#1f77b4", "#ff7f0e"][: len(names)])
            base = runs.get("baseline", {}).get("images_per_second")
            for bar, speed in zip(bars, speeds):
                label = f"{speed:.1f}" + (f"\n{speed / base:.0%} of baseline" if base else "")
                ax.annotate(label, (bar.get_x() + bar.get_width() / 2, speed), ha="center", va="bottom", fontsize=9)
            ax.set_ylabel("images/s, end to end (engines also write Parquet)")
            ax.set_title(
                f"{result['count']} JPEGs, {result['precision']}, batch {result['batch']}, {result['weights']} weights"
            )
            ax.set_ylim(0, max(speeds) * 1.3)
        if result.get("memory"):
            ax = axes[0][-1]
            for check in result["memory"]:
                rows, mb = zip(*check["rss_samples"]) if check["rss_samples"] else ((), ())
                ax.plot(rows, mb, marker=".", label=f"{check['count']} images (stub compute)")
            ax.set_xlabel("rows written")
            ax.set_ylabel("RSS (MiB)")
            ax.set_title("local engine memory")
            ax.legend()


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("--count", type=common.positive_int, default=2000, help="generated JPEGs (default 2000)")
    parser.add_argument("--batch", type=common.positive_int, default=8)
    parser.add_argument(
        "--repeat", type=common.positive_int, default=1, help="rounds; each engine reports its best (default 1)"
    )
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--engines", default="baseline,local,ray", help="comma list of baseline, local, ray")
    parser.add_argument("--ray-cpus", type=common.positive_int, default=os.cpu_count(), help="CPUs of the local Ray")
    parser.add_argument("--num-workers", type=common.positive_int, default=1, help="Ray model actors")
    parser.add_argument(
        "--memory", type=common.positive_int, nargs="*", default=[], metavar="N", help="memory checks on N images"
    )
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "resnet50-batch-bench")
    common.add_out(parser, "batch_bench")
    args = parser.parse_args(argv)

    from resnet50 import ResNet50

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    model = ResNet50.load(args.precision)
    paths = images(args.data / "jpegs", args.count)
    work = args.data / "out"
    work.mkdir(parents=True, exist_ok=True)
    result = {
        **common.header("batch_bench"),
        "count": args.count,
        "batch": args.batch,
        "precision": args.precision,
        "weights": model.weights,
        "runs": {},
    }
    model.classify(paths[: args.batch])  # warm-up, so the first engine does not pay for it
    for round_ in range(args.repeat):  # engines interleaved, so background load hits them alike
        for engine in engines:
            common.log(f"[{engine}] round {round_ + 1}: {args.count} images ...")
            if engine == "baseline":
                run = run_baseline(model, paths, args.batch)
            elif engine == "local":
                run = run_engine("local", model, paths, args.batch, work / "local.parquet")
            elif engine == "ray":
                import ray

                ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
                try:
                    run = run_engine(
                        "ray", model, paths, args.batch, work / "ray.parquet", num_workers=args.num_workers
                    )
                finally:
                    ray.shutdown()
                run.update({"ray_cpus": args.ray_cpus, "num_workers": args.num_workers})
            else:
                parser.error(f"unknown engine {engine!r}")
            common.log(f"[{engine}] {run['images_per_second']:.2f} images/s, peak RSS {run['peak_rss_mb']:.0f} MiB")
            best = result["runs"].get(engine)
            rounds = [*(best or {}).get("rounds_images_per_second", []), run["images_per_second"]]
            if best is None or run["images_per_second"] > best["images_per_second"]:
                best = run
            result["runs"][engine] = {**best, "rounds_images_per_second": rounds}
    base = result["runs"].get("baseline", {}).get("images_per_second")
    if base:
        for run in result["runs"].values():
            run["vs_baseline"] = run["images_per_second"] / base
    if "local" in result["runs"] and "ray" in result["runs"]:
        result["ray_vs_local"] = (
            result["runs"]["ray"]["images_per_second"] / result["runs"]["local"]["images_per_second"]
        )
    if {"local", "ray"} <= set(result["runs"]):
        import pyarrow.parquet as pq

        local, ray_rows = pq.read_table(work / "local.parquet"), pq.read_table(work / "ray.parquet")
        result["ray_rows_identical"] = local.equals(ray_rows)
    result["memory"] = []
    for count in args.memory:
        common.log(f"[memory] {count} images, stub compute ...")
        folder = linked_set(args.data / f"linked_{count}", paths, count)
        check = memory_check(model, folder, count, args.batch, work / f"memory_{count}.parquet")
        result["memory"].append(check)
        common.log(
            f"[memory] {count}: peak RSS {check['peak_rss_mb']:.0f} MiB, growth after warm-up "
            f"{check['rss_growth_after_warmup_mb']:.1f} MiB"
        )
    common.save(args.out, result, chart)
    summary = {k: v for k, v in result.items() if k not in ("machine", "memory")}
    summary["memory"] = [{k: v for k, v in m.items() if k != "rss_samples"} for m in result["memory"]]
    common.print_json(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
