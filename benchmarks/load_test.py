"""Load test of ``resnet50 serve`` on loopback, against the local end-to-end baseline of the same run.

Measurements one after another, on the same generated JPEGs (weights: synthetic, the same
compute as MLPerf's), so the ratios hold on any machine:

1. ``baseline``: :func:`resnet50.apps.pipeline.classify_stream` in this process (file read, decode
   overlapped with batched inference: what ``resnet50 bench --mode e2e`` measures), images/s;
2. ``closed``: ``--concurrency`` clients posting to ``/v1/classify`` back to back, ``--count``
   requests; throughput and its ratio to the baseline (goal ≥ 0.8);
3. ``open``: requests sent on a Poisson schedule at ``--load`` x the server's closed-loop
   throughput (its measured capacity), or at a fixed ``--rate`` (to compare configurations),
   for ``--duration`` s, whatever the server does; latency from the scheduled send time (no
   coordinated omission), p50/p90/p99, errors, and lost requests (goal: p99 ≤ 60 ms, 0, 0);
4. ``open_local`` (with ``--also-local-rate``): the same at ``--load`` x the local baseline,
   the stricter reading of the goal;
5. ``protocols``: the same closed loop with the first ``--tensor-images`` of those images sent
   preprocessed, one per request, over KServe v2 HTTP with JSON ``data`` (``http-json``), over
   v2 HTTP with binary tensor data (``http-binary``) and over gRPC with ``raw_input_contents``
   (``grpc-raw``), every answer checked against ``ResNet50.run``; the modes alternate order over
   ``--protocol-rounds`` rounds, and each mode's ratio to HTTP binary is the median of the
   rounds' ratios, so drift on a shared machine does not favour one (the pooled ratio and each
   round's are kept too), with the ratio of images per CPU second (server and load generator),
   which a shared machine moves far less. Goal: gRPC raw at least 0.95x the throughput of HTTP
   binary (``protocol_clients.py`` holds these clients);
6. ``ray``: ``resnet50 serve --engine ray`` (2 replicas x 1 thread) against a fresh single-process
   server, paired closed loops on the same images, and with ``--ray-fault`` a replica killed
   under load (``load_ray.py``). Goals: >= 0.7x the single-process server; every accepted
   request answered; the replacement serving within 60 s.

``--modes`` picks the measurements (default: all); ``--duration 0`` skips the open loops.

Each open-loop result also carries ``floor``: the p50/p90/p99 that an ideal server (zero
overhead, FIFO, the batcher's rules, as many model streams) would reach on that very arrival
schedule with the model's own per-batch run times, measured here in isolation. It shows how
much of the tail is queueing that no server code can remove on these cores.

The server is started here (``python -m resnet50 serve`` on 127.0.0.1, a free port) with the
same model options and serve's own defaults for ``--streams`` and ``--max-batch`` unless they
are given, and stopped with SIGTERM at the end. Everything is bounded: request
count, duration, per-request timeout. Writes ``benchmarks/results/load_test.json`` and a PNG.

    python benchmarks/load_test.py --count 400 --duration 60 --also-local-rate   # docs/performance.md figures
    python benchmarks/load_test.py --count 48 --duration 10             # a quick check
    python benchmarks/load_test.py --modes http-json,http-binary,grpc-raw --duration 0   # protocols only
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import common
import load_ray

GOAL_RATIO, GOAL_P99_MS = 0.8, 60.0
GOAL_GRPC_RATIO = 0.95  # gRPC raw against HTTP binary, images/s at the same concurrency
TENSOR_MODES = ("http-json", "http-binary", "grpc-raw")
MODES = ("classify", *TENSOR_MODES, "ray")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=400, help="images in the set; closed-loop requests (default 400)")
    p.add_argument("--concurrency", type=int, default=16, help="closed-loop clients (default 16)")
    p.add_argument("--duration", type=float, default=60.0, help="open-loop seconds (default 60; 0: none)")
    p.add_argument("--load", type=float, default=0.5, help="open-loop rate as a fraction of capacity (0.5)")
    p.add_argument("--rate", type=float, help="open-loop requests/s, fixed (A/B runs); replaces --load x capacity")
    p.add_argument(
        "--also-local-rate", action="store_true", help="a second open loop at --load x the local e2e baseline"
    )
    p.add_argument("--baseline-batch", type=int, default=8, help="batch of the local baseline (bench's default 8)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, s; later counts as lost")
    p.add_argument("--precision", default="fp32", choices=("fp32", "int8"))
    p.add_argument("--native", action="store_true", help="fused mean subtraction and top-k")
    p.add_argument("--backend", choices=("onnxruntime", "openvino"), help="default: onnxruntime")
    p.add_argument("--threads", type=int, help="inference threads (default: all cores)")
    p.add_argument("--streams", type=int, help="server model streams (default: the server's, 2)")
    p.add_argument("--max-batch", type=int, help="default: the server's (8 with one stream, 1 with several)")
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--workers", type=int, help="server decode threads (default: the server's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)} (default all)")
    p.add_argument(
        "--tensor-images", type=common.positive_int, default=32, help="images the tensor modes cycle through (32)"
    )
    p.add_argument(
        "--protocol-rounds", type=common.positive_int, default=2, help="rounds of the tensor modes, order alternating"
    )
    common.add_out(p, "load_test")
    load_ray.add_args(p)
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or any(m not in MODES for m in args.modes):
        p.error(f"--modes must name some of {', '.join(MODES)}, got {','.join(args.modes)!r}")
    if args.ray_fault and "ray" not in args.modes:
        p.error("--ray-fault needs the ray mode")
    from resnet50.apps.serve.run import serving_defaults

    args.streams, args.max_batch = serving_defaults(args.streams, args.max_batch, args.threads)
    if args.count < 1 or args.concurrency < 1 or args.duration < 0 or not 0 < args.load <= 2:
        p.error("--count and --concurrency must be >= 1, --duration >= 0, --load in (0, 2]")
    if (args.rate is not None and args.rate <= 0) or args.streams < 1 or args.max_batch < 1:
        p.error("--rate must be > 0, --streams and --max-batch >= 1")
    return args


def model_options(args) -> list[str]:
    opts = ["--precision", args.precision] + (["--backend", args.backend] if args.backend else [])
    if args.native:
        opts.append("--native")
    if args.threads:
        opts += ["--threads", str(args.threads)]
    return opts


def server_options(args) -> list[str]:
    return [*model_options(args), "--streams", str(args.streams)]


def load_model(args, streams: int = 1, batch_size: int | None = None):
    """The model as the server (or, with one stream, ``bench --mode e2e``) loads it."""
    from resnet50 import ResNet50

    return ResNet50.load(
        precision=args.precision,
        use_native=args.native,
        threads=args.threads,
        backend=args.backend,
        streams=streams,
        batch_size=batch_size,
    )


def baseline(args, paths: list[str]) -> dict:
    """In-process end-to-end throughput: files in, labels out, decode overlapped with inference."""
    from resnet50.apps.pipeline import classify_stream

    model = load_model(args)  # as bench --mode e2e loads it: a last smaller batch compiles nothing new
    batch = args.baseline_batch
    list(classify_stream(model, paths[:batch], batch_size=batch))  # warm-up
    start = time.perf_counter()
    results = list(classify_stream(model, paths, batch_size=batch))
    seconds = time.perf_counter() - start
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    return {
        "images": len(paths),
        "batch": batch,
        "seconds": seconds,
        "images_per_s": len(paths) / seconds,
        "weights": model.weights,
        "service_ms": service_times(model, paths, args.max_batch),
        **({"stream_service_ms": stream_service_times(args, paths)} if args.streams > 1 else {}),
        "prepare_ms": prepare_ms(paths),
    }


def service_times(model, paths: list[str], max_batch: int, repeats: int = 8) -> dict[int, float]:
    """Median ms of one model run per batch size 1..max_batch, alone on the machine."""
    from resnet50.processing.preprocess import preprocess

    chosen = [paths[i % len(paths)] for i in range(max_batch)]  # a full batch even when --count is smaller
    tensor, _ = preprocess(chosen, with_scaling=model.input_dtype != np.uint8)
    times = {}
    for size in range(1, max_batch + 1):
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.run(tensor[:size])
            runs.append((time.perf_counter() - start) * 1000)
        times[size] = round(float(np.median(runs)), 3)
    return times


def stream_service_times(args, paths: list[str]) -> dict[int, float]:
    """Per-batch ms of one of the server's streams (``--streams``), the others idle."""
    return service_times(
        load_model(args, args.streams, batch_size=1 if args.max_batch == 1 else None), paths, args.max_batch
    )


def prepare_ms(paths: list[str]) -> float:
    """Median ms to decode and crop one of the test JPEGs (what the server does before queueing)."""
    from resnet50.processing.preprocess import preprocess

    runs = []
    for path in paths[:64]:
        start = time.perf_counter()
        preprocess(path)
        runs.append((time.perf_counter() - start) * 1000)
    return round(float(np.median(runs)), 3)


def queue_floor(
    arrivals_s: np.ndarray, service_ms: dict[int, float], max_batch: int, prepare: float, lanes: int = 1
) -> dict:
    """Latency percentiles of an ideal server on these arrivals: each request is ready ``prepare``
    ms after it arrives; ``lanes`` model streams each run FIFO batches of what is ready by the
    batcher's rule (one stream: up to ``max_batch``; N streams: 1/N of what waits), taking
    ``service_ms[size]``; nothing else costs time."""
    ready = np.sort(arrivals_s) * 1000 + prepare
    latency = np.empty(len(ready))
    free, i = [0.0] * lanes, 0
    while i < len(ready):
        lane = int(np.argmin(free))
        start = max(free[lane], ready[i])
        waiting = int(np.searchsorted(ready, start, side="right")) - i
        j = i + min(max_batch, math.ceil(waiting / lanes))
        free[lane] = start + service_ms[j - i]
        latency[i:j] = free[lane] - ready[i:j] + prepare
        i = j
    return {k: v for k, v in percentiles(list(latency / 1000)).items() if k != "max_ms"}


def use_uvloop() -> None:
    """uvloop when installed (the serve extra brings it): less load-generator CPU per request."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


class Server:
    """``resnet50 serve`` on 127.0.0.1 and a free port, stderr in a temp file."""

    def __init__(self, args, log_dir: Path, extra: tuple[str, ...] = ()):
        cmd = [sys.executable, "-m", "resnet50", "serve", "--host", "127.0.0.1", "--port", "0", *extra]
        cmd += ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), "--max-queue", "4096"]
        if args.workers:
            cmd += ["--workers", str(args.workers)]
        if "grpc-raw" in args.modes:
            cmd += ["--grpc-port", "0"]
        self.log = log_dir / "serve.log"
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen([*cmd, *server_options(args)], stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 300
        while not (match := re.search(r"listening on (http://127\.0\.0\.1:\d+)", self.log.read_text())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise SystemExit(f"server did not start:\n{self.log.read_text()}")
            time.sleep(0.1)
        self.url = match.group(1)
        self.grpc_address = None
        while "grpc-raw" in args.modes and not (found := re.search(r"gRPC listening on (\S+) ", self.log.read_text())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise SystemExit(f"gRPC did not start:\n{self.log.read_text()}")
            time.sleep(0.1)
        if "grpc-raw" in args.modes:
            self.grpc_address = found.group(1)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


async def wait_ready(client) -> None:
    for _ in range(600):
        try:
            if (await client.get("/v2/health/ready")).status_code == 200:
                return
        except ConnectionError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("server never became ready")


async def post(client, body: bytes, timeout: float) -> tuple[str, dict | None]:
    """One classify request: ("ok"|"error"|"lost", the JSON answer)."""
    try:
        response = await asyncio.wait_for(client.post("/v1/classify", body), timeout)
    except (asyncio.TimeoutError, ConnectionError):
        return "lost", None
    try:
        answer = json.loads(response.content)
    except ValueError:  # not JSON: a server fault, counted as an error, never an aborted run
        return "error", None
    ok = response.status_code == 200 and "predictions" in answer
    if ok:
        answer["timing"] = parse_server_timing(response.headers.get("server-timing", ""))
    return ("ok" if ok else "error"), answer


def parse_server_timing(header: str) -> dict[str, float]:
    """``read;dur=0.31, prepare;dur=2.02, ...`` -> {"read": 0.31, "prepare": 2.02, ...} (ms)."""
    found = {name: float(ms) for name, ms in re.findall(r"(\w+);dur=([\d.]+)", header)}
    batch = re.search(r'desc="batch of (\d+)"', header)
    return {**found, **({"batch": int(batch.group(1))} if batch else {})}


async def closed_loop(send, args) -> dict:
    """``concurrency`` clients, each sending its next request (``await send(i)``) when the last
    one is answered; ``--count`` requests."""
    latencies: list[float] = []
    outcomes: dict[str, int] = {"ok": 0, "wrong": 0, "error": 0, "lost": 0}
    next_index = iter(range(args.count))

    async def client_loop():
        for i in next_index:
            start = time.perf_counter()
            outcome, _ = await send(i)
            latencies.append(time.perf_counter() - start)
            outcomes[outcome] += 1

    start = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(args.concurrency)))
    seconds = time.perf_counter() - start
    return {
        "requests": args.count,
        "concurrency": args.concurrency,
        "seconds": seconds,
        "images_per_s": outcomes["ok"] / seconds,
        **outcomes,
        **percentiles(latencies),
        "latencies": latencies,
    }


async def open_loop(send, rate: float, args) -> dict:
    """Poisson arrivals at ``rate``/s for ``duration`` s; latency counted from the scheduled time."""
    rng = np.random.default_rng(args.seed)
    schedule = np.cumsum(rng.exponential(1.0 / rate, size=int(rate * args.duration * 1.5) + 16))
    schedule = schedule[schedule < args.duration]
    records: list[tuple[float, float, str]] = []  # (scheduled offset, latency s, outcome)
    server_side: list[float] = []  # the latency_ms the server reports: handler entry to answer
    stages: list[dict[str, float]] = []  # its Server-Timing header

    async def one(i: int, at: float, t0: float):
        outcome, answer = await send(i)
        records.append((at, time.perf_counter() - (t0 + at), outcome))
        if outcome == "ok":
            server_side.append(answer["latency_ms"] / 1000)
            stages.append(answer["timing"])

    gc.collect()
    gc.disable()  # a collection here would delay sends by up to ~45 ms and count against the server
    t0 = time.perf_counter()
    tasks = []
    for i, at in enumerate(schedule):
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, float(at), t0)))
    await asyncio.gather(*tasks)
    gc.enable()
    ok = [lat for _, lat, outcome in records if outcome == "ok"]
    outcomes = {k: sum(o == k for *_, o in records) for k in ("ok", "error", "lost")}
    return {
        "rate_per_s": rate,
        "duration_s": args.duration,
        "sent": len(schedule),
        **outcomes,
        "achieved_per_s": outcomes["ok"] / args.duration,
        **percentiles(ok),
        "server_side": percentiles(server_side),
        "server_stages_ms": stage_summary(stages),
        "stages": stages,
        "schedule": schedule,
        "timeline": sorted((round(at, 4), round(lat * 1000, 3), o) for at, lat, o in records),
    }


def inference_slowdown(stages: list[dict[str, float]], service_ms: dict[int, float]) -> dict:
    """Mean ms of one model run under load against the same batch sizes run alone. A request
    in a batch of k reports that batch's run time, so each request weighs 1/k: one per batch."""
    runs = [(stage["infer"], int(stage["batch"])) for stage in stages if "infer" in stage and "batch" in stage]
    if not runs:
        return {}
    weights = np.array([1.0 / batch for _, batch in runs])
    loaded = float(np.sum([ms / batch for ms, batch in runs]) / weights.sum())
    alone = float(np.sum([service_ms[batch] / batch for _, batch in runs]) / weights.sum())
    return {"under_load_ms": round(loaded, 2), "alone_ms": round(alone, 2), "slowdown": round(loaded / alone, 2)}


def stage_summary(stages: list[dict[str, float]]) -> dict:
    """Mean and p99 ms of each Server-Timing stage over the answered requests."""
    names = sorted({name for stage in stages for name in stage} - {"batch"})
    summary = {}
    for name in names:
        values = np.array([stage.get(name, 0.0) for stage in stages])
        summary[name] = {"mean": round(float(values.mean()), 2), "p99": round(float(np.percentile(values, 99)), 2)}
    return summary


def percentiles(latencies: list[float]) -> dict:
    if not latencies:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    p50, p90, p99 = np.percentile(np.asarray(latencies) * 1000, [50, 90, 99])
    return {
        "p50_ms": round(float(p50), 2),
        "p90_ms": round(float(p90), 2),
        "p99_ms": round(float(p99), 2),
        "max_ms": round(max(latencies) * 1000, 2),
    }


def batch_stats(metrics_text: str) -> dict:
    def value(name: str) -> float:
        match = re.search(rf"^{name} (\S+)$", metrics_text, re.M)
        return float(match.group(1)) if match else 0.0

    return {"batches": int(value("resnet50_batch_size_count")), "images": int(value("resnet50_batch_size_sum"))}


async def serve_and_load(args, bodies: list[bytes], base: dict, images, log_dir: Path) -> dict:
    """Start the server, run the chosen measurements against it, stop it (SIGTERM)."""
    from http_client import LoopbackClient

    server = Server(args, log_dir)
    client = LoopbackClient(server.url)
    results: dict = {}
    try:
        await wait_ready(client)
        if "classify" in args.modes:
            results.update(await classify_runs(server, client, bodies, base, args))
        tensor_modes = [m for m in TENSOR_MODES if m in args.modes]
        if tensor_modes:
            results["protocols"] = await protocol_runs(server, client, images, tensor_modes, args)
    finally:
        await client.aclose()
        code = server.stop()
    return {**results, "server_exit_code": code, "server_url": server.url}


async def classify_runs(server, client, bodies: list[bytes], base: dict, args) -> dict:
    """``/v1/classify``: the closed loop (capacity), then the open loops at a share of it."""

    def send(i: int):
        return post(client, bodies[i % len(bodies)], args.timeout)

    warm = range(2 * max(args.max_batch, args.streams))  # concurrent, so every stream runs
    await asyncio.gather(*(send(i) for i in warm))
    print(f"closed loop: {args.count} requests at concurrency {args.concurrency} ...", file=sys.stderr)
    closed = await closed_loop(send, args)
    closed.pop("latencies")
    rates = {"open": args.rate or args.load * closed["images_per_s"]} if args.duration > 0 else {}
    if args.also_local_rate and args.duration > 0:
        rates["open_local"] = args.load * base["images_per_s"]
    opened = {}
    for name, rate in rates.items():
        print(f"{name}: {rate:.1f} req/s for {args.duration:g} s ...", file=sys.stderr)
        before = batch_stats((await client.get("/metrics")).content.decode())
        cpu_before = cpu_seconds(server.proc.pid), time.process_time(), time.perf_counter()
        result = await open_loop(send, rate, args)
        cpu_after = cpu_seconds(server.proc.pid), time.process_time(), time.perf_counter()
        after = batch_stats((await client.get("/metrics")).content.decode())
        result["batching"] = batch_delta(before, after)
        result["cpu_share"] = cpu_share(cpu_before, cpu_after)
        schedule = result.pop("schedule")
        service = base.get("stream_service_ms", base["service_ms"])
        result["floor"] = queue_floor(schedule, service, args.max_batch, base["prepare_ms"], args.streams)
        result["inference_per_batch"] = inference_slowdown(result.pop("stages"), service)
        opened[name] = result
    return {"closed": closed, **opened}


async def protocol_runs(server, client, images, modes: list[str], args) -> dict:
    """The same closed loop per protocol on the same tensors, in rounds of alternating order;
    per mode: images/s over all its rounds, each round's, latency, outcomes, CPU per request."""
    from protocol_clients import grpc_channel, grpc_raw_sender, http_v2_sender

    channel = grpc_channel(server.grpc_address) if "grpc-raw" in modes else None
    senders = {
        "http-json": lambda: http_v2_sender(client, images, binary=False, timeout=args.timeout),
        "http-binary": lambda: http_v2_sender(client, images, binary=True, timeout=args.timeout),
        "grpc-raw": lambda: grpc_raw_sender(channel, images, timeout=args.timeout),
    }
    senders = {mode: senders[mode]() for mode in modes}
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    try:
        for send in senders.values():  # warm-up: connections, and every stream runs once
            await asyncio.gather(*(send(i) for i in range(2 * max(args.max_batch, args.streams, 2))))
        for round_ in range(args.protocol_rounds):
            for mode in modes if round_ % 2 == 0 else modes[::-1]:
                print(f"{mode}: {args.count} requests at concurrency {args.concurrency} ...", file=sys.stderr)
                cpu_before = cpu_seconds(server.proc.pid), time.process_time()
                result = await closed_loop(senders[mode], args)
                cpu_after = cpu_seconds(server.proc.pid), time.process_time()
                result["cpu_ms_per_request"] = {
                    side: round((after - before) * 1000 / args.count, 3)
                    for side, before, after in zip(("server", "load generator"), cpu_before, cpu_after)
                }
                runs[mode].append(result)
    finally:
        if channel is not None:
            await channel.close()
    return {mode: merge_runs(mode_runs) for mode, mode_runs in runs.items()}


def merge_runs(runs: list[dict]) -> dict:
    """Closed-loop runs of one mode as one: totals, images/s over their summed time, each run's."""
    seconds = sum(r["seconds"] for r in runs)
    outcomes = {k: sum(r[k] for r in runs) for k in ("ok", "wrong", "error", "lost")}
    cpu = {
        side: round(float(np.mean([r["cpu_ms_per_request"][side] for r in runs])), 3)
        for side in runs[0]["cpu_ms_per_request"]
    }
    return {
        "requests": sum(r["requests"] for r in runs),
        "concurrency": runs[0]["concurrency"],
        "seconds": seconds,
        "images_per_s": outcomes["ok"] / seconds,
        "rounds_images_per_s": [round(r["images_per_s"], 2) for r in runs],
        **outcomes,
        **percentiles([lat for r in runs for lat in r["latencies"]]),
        "cpu_ms_per_request": cpu,
    }


def cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by process ``pid`` (all its threads)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_share(before: tuple, after: tuple) -> dict[str, float]:
    """Cores used on average, between two (server CPU s, load generator CPU s, wall s) samples."""
    (server0, client0, wall0), (server1, client1, wall1) = before, after
    seconds = wall1 - wall0
    server, client = (server1 - server0) / seconds, (client1 - client0) / seconds
    return {"server": round(server, 3), "load generator": round(client, 3)}


def batch_delta(before: dict, after: dict) -> dict:
    batches, images = after["batches"] - before["batches"], after["images"] - before["images"]
    return {"batches": batches, "images": images, "mean_batch": round(images / batches, 2) if batches else 0}


OPEN_RUNS = ("open", "open_local")


def plot(result: dict, path: Path) -> None:
    """One PNG: the panels of the measurements this run made, side by side."""
    plt = common.pyplot()
    panels = [(_throughput_panel, 1.0)] if "closed" in result else []
    if "open" in result:
        panels += [(_timeline_panel, 2.2), (_cdf_panel, 1.4)]
    if result.get("protocols"):
        panels.append((_protocols_panel, 1.2))
    if result.get("ray_serve"):
        panels.append((load_ray.rounds_panel, 1.3))
        if "fault" in result["ray_serve"]:
            panels.append((load_ray.fault_panel, 2.0))
    widths = [w for _, w in panels]
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(max(8.5, 2.7 * sum(widths) + 1), 4.6),
        squeeze=False,
        gridspec_kw={"width_ratios": widths},
    )
    for (draw, _), ax in zip(panels, axes[0]):
        draw(ax, result)
    cfg = result["config"]
    fig.suptitle(
        f"resnet50 serve on {result['machine']['cpu']['cores']} CPUs, "
        f"{cfg['precision']} {cfg['backend'] or 'onnxruntime'}, "
        f"weights: {result['weights']}, {cfg['streams']} model streams, max batch {cfg['max_batch']}, "
        f"max wait {cfg['max_wait_ms']:g} ms",
        fontsize=9,
    )
    common.save_figure(fig, path)


def _throughput_panel(ax, result: dict) -> None:
    closed, base = result["closed"], result["baseline"]
    names = ["local e2e\n(classify_stream)", f"serve, closed loop\nconcurrency {closed['concurrency']}"]
    bars = ax.bar(names, [base["images_per_s"], closed["images_per_s"]], color=["#98a2b3", "#3e6ae1"])
    ax.bar_label(bars, fmt="%.1f")
    ax.margins(y=0.12)
    ax.axhline(GOAL_RATIO * base["images_per_s"], color="#b42318", ls="--", lw=1, label="80% of local")
    ax.set_ylabel("images/s")
    ax.set_title(f"throughput (ratio {result['ratio']:.2f})")
    ax.legend(fontsize=8)


def _timeline_panel(ax, result: dict) -> None:
    opened = result["open"]
    timeline = opened["timeline"]
    ok = [(t, lat) for t, lat, o in timeline if o == "ok"]
    if ok:
        ax.scatter(*zip(*ok), s=6, color="#3e6ae1", label="answered")
    bad = [(t, 0) for t, _, o in timeline if o != "ok"]
    if bad:
        ax.scatter(*zip(*bad), s=18, color="#b42318", marker="x", label="error / lost")
    ax.axhline(GOAL_P99_MS, color="#b42318", ls="--", lw=1, label=f"goal p99 {GOAL_P99_MS:g} ms")
    if opened["p99_ms"] is not None:
        ax.axhline(opened["p99_ms"], color="#101828", ls=":", lw=1, label=f"p99 {opened['p99_ms']:.1f} ms")
    ax.set_xlabel("scheduled send time (s)")
    ax.set_ylabel("latency (ms)")
    how = "fixed --rate" if result["config"]["rate"] else f"{result['config']['load']:g} x serve capacity"
    ax.set_title(f"open loop, {opened['rate_per_s']:.1f} req/s Poisson ({how})")
    ax.legend(fontsize=8, loc="upper right")


def _cdf_panel(ax, result: dict) -> None:
    colors = {"open": "#3e6ae1", "open_local": "#f79009"}
    for name in OPEN_RUNS:
        if name not in result:
            continue
        run = result[name]
        lats = np.sort([lat for _, lat, o in run["timeline"] if o == "ok"])
        if len(lats):
            label = f"{run['rate_per_s']:.1f} req/s: p99 {run['p99_ms']:.0f} ms (ideal {run['floor']['p99_ms']:.0f})"
            ax.plot(lats, np.arange(1, len(lats) + 1) / len(lats), color=colors[name], label=label)
    ax.axvline(GOAL_P99_MS, color="#b42318", ls="--", lw=1)
    ax.axhline(0.99, color="#667085", ls=":", lw=1)
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("open-loop latency CDF")
    ax.legend(fontsize=7, loc="lower right")


def _protocols_panel(ax, result: dict) -> None:
    protocols, ratios = result["protocols"], result.get("protocol_ratios", {})
    names = list(protocols)
    bars = ax.bar(names, [protocols[n]["images_per_s"] for n in names], color="#3e6ae1")
    labels = [
        f"{protocols[n]['images_per_s']:.1f}" + (f"\n{ratios[n + '/http-binary']['median']:.2f}x" if ratios else "")
        for n in names
    ]
    ax.bar_label(bars, labels=labels, fontsize=8, label_type="center", color="white")
    for i, name in enumerate(names):  # each round's images/s: how much the machine moved them
        rounds = protocols[name]["rounds_images_per_s"]
        ax.scatter([i + 0.3] * len(rounds), rounds, s=9, color="#101828", zorder=3, label="a round" if i == 0 else None)
    ax.margins(y=0.18)
    if "http-binary" in protocols:
        goal = GOAL_GRPC_RATIO * protocols["http-binary"]["images_per_s"]
        ax.axhline(goal, color="#b42318", ls="--", lw=1, label=f"{GOAL_GRPC_RATIO:g}x HTTP binary")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_ylabel("images/s")
    concurrency = protocols[names[0]]["concurrency"]
    rounds = len(protocols[names[0]]["rounds_images_per_s"])
    ax.set_title(
        f"tensors in, closed loop, concurrency {concurrency}\n(x HTTP binary: median of {rounds} rounds)", fontsize=9
    )
    ax.tick_params(axis="x", labelsize=8)


def protocol_ratios(protocols: dict) -> dict[str, dict]:
    """Each tensor mode's images/s against HTTP binary's, measured in the same run: the median
    of the rounds' ratios (each round measures the modes back to back, so a shared machine's
    drift between rounds cancels out), each round's, and the ratio of the pooled totals; and
    ``per_cpu``, images per CPU second of server and load generator together against HTTP
    binary's (what the throughput ratio tends to on cores that nothing else uses)."""
    reference = protocols.get("http-binary")
    if not reference or not reference["images_per_s"]:
        return {}

    def cpu_ms(run: dict) -> float:
        return sum(run["cpu_ms_per_request"].values())

    ratios = {}
    for mode, run in protocols.items():
        rounds = [a / b if b else 0.0 for a, b in zip(run["rounds_images_per_s"], reference["rounds_images_per_s"])]
        ratios[f"{mode}/http-binary"] = {
            "median": round(float(np.median(rounds)), 3),
            "rounds": [round(r, 3) for r in rounds],
            "pooled": round(run["images_per_s"] / reference["images_per_s"], 3),
            "per_cpu": round(cpu_ms(reference) / cpu_ms(run), 3) if cpu_ms(run) else None,
        }
    return ratios


def main(argv=None) -> int:
    args = parse_args(argv)
    from protocol_clients import TensorSet
    from resnet50.core.cache import cache_dir
    from resnet50.core.samples import write_jpegs

    folder = cache_dir() / "bench-images"
    paths = [str(p) for p in write_jpegs(folder, args.count)]
    bodies = [Path(p).read_bytes() for p in paths]
    print(f"baseline: classify_stream over {len(paths)} images ...", file=sys.stderr)
    base = baseline(args, paths)
    print(f"baseline: {base['images_per_s']:.1f} images/s", file=sys.stderr)
    images = TensorSet(load_model(args), paths[: args.tensor_images]) if set(TENSOR_MODES) & set(args.modes) else None
    use_uvloop()
    with tempfile.TemporaryDirectory() as tmp:
        served = asyncio.run(serve_and_load(args, bodies, base, images, Path(tmp))) if set(args.modes) - {"ray"} else {}
        if "ray" in args.modes:
            served["ray_serve"] = asyncio.run(load_ray.load_ray(args, bodies, Path(tmp)))
    goals, extra = {}, {}
    if "closed" in served:
        ratio = served["closed"]["images_per_s"] / base["images_per_s"]
        extra["ratio"] = round(ratio, 3)
        goals["closed_ratio_at_least_0.8"] = ratio >= GOAL_RATIO
        goals["open_at_least_60s"] = args.duration >= 60
    for name in OPEN_RUNS:
        if name in served and not (name == "open" and args.rate):  # a fixed --rate is not the goal's load
            run = served[name]
            goals[f"{name}_p99_at_most_60ms"] = run["p99_ms"] is not None and run["p99_ms"] <= GOAL_P99_MS
            goals[f"{name}_zero_errors_and_lost"] = run["error"] == 0 and run["lost"] == 0
    if "protocols" in served:
        ratios = extra["protocol_ratios"] = protocol_ratios(served["protocols"])
        if "grpc-raw/http-binary" in ratios:
            goals["grpc_raw_at_least_0.95x_http_binary"] = ratios["grpc-raw/http-binary"]["median"] >= GOAL_GRPC_RATIO
        goals["protocols_all_answers_right"] = all(
            run["wrong"] == run["error"] == run["lost"] == 0 for run in served["protocols"].values()
        )
    if "ray_serve" in served:
        goals.update(load_ray.goals(served["ray_serve"]))
    result = {
        **common.header("load_test"),
        "weights": base["weights"],
        "config": common.settings(args),
        "baseline": base,
        **extra,
        **{k: v for k, v in served.items() if k != "server_url"},
        "goals": goals,
    }
    png = common.save(args.out, result, plot)
    summary = {
        "weights": result["weights"],
        "baseline_images_per_s": round(base["images_per_s"], 2),
        "service_ms": base["service_ms"],
        "prepare_ms": base["prepare_ms"],
        **{k: served[k] for k in ("closed", "protocols") if k in served},
        **({"ray_serve": load_ray.summary(served["ray_serve"])} if "ray_serve" in served else {}),
        **extra,
        **{name: {k: v for k, v in served[name].items() if k != "timeline"} for name in OPEN_RUNS if name in served},
        "goals": goals,
        "server_exit_code": served.get("server_exit_code"),
        "json": str(args.out),
        "png": str(png),
    }
    common.print_json(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
