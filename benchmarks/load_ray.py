"""The ``ray`` mode of ``load_test.py``: ``resnet50 serve --engine ray`` on the same images.

Two measurements against a local Ray with ``--ray-replicas`` x ``--ray-threads`` (default 2 x 1):

1. ``rounds``: ``--ray-rounds`` pairs of closed loops (``--count`` requests at ``--concurrency``,
   the main run's loop) on a fresh single-process server (serve's defaults) and on Ray Serve,
   both up side by side, the order alternating round by round (ABBA): others' load on these
   shared cores weighs on both alike. Images/s, the cores each used (and the idle one's), and
   the ratio Ray / one process per round; goal: median ratio >= 0.7;
2. ``fault`` (with ``--ray-fault``, the single-process server stopped): the closed loop again
   while one replica is SIGKILLed after ``--fault-after`` s. A 503 (Retry-After) is retried by
   the client, at most 3 times. Goals: no accepted request without an answer (no timeout,
   dropped connection or other error; a refused connection is counted apart) and the
   replacement replica serving within 60 s of the kill. Bounded: the run ends 5 s after the
   replacement first answers, or after ``--fault-max-s``.

Everything is on loopback; the server's whole process tree (Ray included) is stopped with
SIGTERM at the end. The results go into the run's JSON (key ``ray_serve``) and two panels of its chart.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import common
import load_test  # (attributes looked up when used: load_test imports this module at its top)

HEADER = "x-resnet50-replica"
GOAL_RATIO, GOAL_REPLACEMENT_S, MAX_RETRIES = 0.7, 60.0, 3


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ray mode (resnet50 serve --engine ray)")
    g.add_argument("--ray-replicas", type=common.positive_int, default=2, help="replicas (default 2)")
    g.add_argument(
        "--ray-threads", type=common.positive_int, default=1, help="inference threads per replica (default 1)"
    )
    g.add_argument(
        "--ray-rounds", type=common.positive_int, default=3, help="paired closed loops, one process vs Ray (3)"
    )
    g.add_argument("--ray-fault", action="store_true", help="also kill a replica under load")
    g.add_argument("--fault-after", type=common.positive_float, default=5.0, help="seconds of load before the kill (5)")
    g.add_argument("--fault-max-s", type=common.positive_float, default=120.0, help="longest fault run, s (120)")


def server_args(args) -> argparse.Namespace:
    """The load test's options as ``resnet50 serve --engine ray`` takes them: each replica gets
    serve's own defaults for its thread count (1 thread: 1 stream, batches of up to 8)."""
    from resnet50.apps.serve.run import serving_defaults

    streams, max_batch = serving_defaults(None, None, args.ray_threads)
    return argparse.Namespace(
        **{**vars(args), "threads": args.ray_threads, "streams": streams, "max_batch": max_batch, "modes": ["ray"]}
    )


async def replica_pids(client, rounds: int = 40) -> dict[str, int]:
    """Replica id -> pid, from /metrics; concurrent GETs, since the router favours idle replicas."""
    pids: dict[str, int] = {}
    for _ in range(rounds):
        for response in await asyncio.gather(*(client.get("/metrics") for _ in range(16))):
            labels = dict(
                re.findall(
                    r'(\w+)="([^"]*)"', re.search(r"resnet50_model_info\{(.*)\}", response.content.decode()).group(1)
                )
            )
            pids[labels["replica"]] = int(labels["pid"])
        if len(pids) >= 2:
            break
    return pids


async def classify_retrying(client, body: bytes, timeout: float) -> tuple[str, str | None, int, int]:
    """One request, resent after a 503's Retry-After (at most MAX_RETRIES times):
    (outcome "ok" | "unavailable" (503s only) | "error" | "lost" (sent, no answer) | "refused"
    (no connection: not accepted), replica, attempts, 503s seen)."""
    unavailable = 0
    for attempt in range(1, MAX_RETRIES + 2):
        try:
            response = await asyncio.wait_for(client.post("/v1/classify", body), timeout)
        except ConnectionError as exc:  # refused: never reached the server (LoopbackClient says "cannot connect")
            if "cannot connect" in str(exc):
                await asyncio.sleep(0.1)
                return "refused", None, attempt, unavailable
            return "lost", None, attempt, unavailable
        except asyncio.TimeoutError:
            return "lost", None, attempt, unavailable
        if response.status_code == 200:
            return "ok", response.headers.get(HEADER), attempt, unavailable
        retry_after = response.headers.get("retry-after")
        if response.status_code != 503 or retry_after is None:
            return "error", response.headers.get(HEADER), attempt, unavailable
        unavailable += 1
        await asyncio.sleep(float(retry_after))
    return "unavailable", None, attempt, unavailable


async def fault_run(client, bodies: list[bytes], args) -> dict:
    """Closed loop at ``concurrency``; one replica SIGKILLed after ``fault_after`` s."""
    pids = await replica_pids(client)
    if len(pids) < 2:
        raise SystemExit(f"the fault run needs 2 replicas answering; saw {sorted(pids)}")
    victim = sorted(pids)[0]
    t0 = time.perf_counter()
    state = {"killed": None, "replacement": None, "replacement_id": None}
    records: list[tuple[float, float, str, str | None, int, int]] = []
    counter = iter(range(10**9))

    def over() -> bool:
        now = time.perf_counter()
        return now - t0 > args.fault_max_s or (state["replacement"] is not None and now > state["replacement"] + 5)

    async def client_loop():
        while not over():
            i = next(counter)
            sent = time.perf_counter()
            outcome, replica, attempts, unavailable = await classify_retrying(
                client, bodies[i % len(bodies)], args.timeout
            )
            done = time.perf_counter()
            records.append((sent - t0, done - sent, outcome, replica, attempts, unavailable))
            if state["killed"] and outcome == "ok" and replica not in pids and state["replacement"] is None:
                state["replacement"], state["replacement_id"] = done, replica

    async def killer():
        await asyncio.sleep(args.fault_after)
        os.kill(pids[victim], signal.SIGKILL)
        state["killed"] = time.perf_counter()
        print(f"fault: killed replica {victim} (pid {pids[victim]})", file=sys.stderr)

    await asyncio.gather(killer(), *(client_loop() for _ in range(args.concurrency)))
    outcomes = {k: sum(r[2] == k for r in records) for k in ("ok", "unavailable", "error", "lost", "refused")}
    replacement_s = state["replacement"] - state["killed"] if state["replacement"] else None
    return {
        "concurrency": args.concurrency,
        "killed_replica": victim,
        "killed_at_s": round(state["killed"] - t0, 3),
        "replacement_replica": state["replacement_id"],
        "replacement_serving_after_s": round(replacement_s, 2) if replacement_s is not None else None,
        "requests": len(records),
        **outcomes,
        "answers_503": sum(r[5] for r in records),
        "ok_after_retry": sum(r[2] == "ok" and r[4] > 1 for r in records),
        **load_test.percentiles([r[1] for r in records if r[2] == "ok"]),
        "timeline": [(round(a, 4), round(b * 1000, 2), o, rep) for a, b, o, rep, *_ in records],
    }


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and every process under it (Ray's included)."""
    import psutil

    total = 0.0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def _sender(client, bodies: list[bytes], timeout: float):
    """``send(i)`` for ``load_test.closed_loop``: request ``i`` posts image ``i`` (cycling)."""

    def send(i: int):
        return load_test.post(client, bodies[i % len(bodies)], timeout)

    return send


async def paired_rounds(single, ray, bodies: list[bytes], args) -> list[dict]:
    """Closed loops on both servers, alternating which goes first (ABBA), so that the other
    people's load on these shared cores weighs on both alike; the idle one's CPU is recorded."""
    rounds = []
    for r in range(args.ray_rounds):
        order = [("single", single), ("ray", ray)]
        result = {}
        for name, (client, proc) in order if r % 2 == 0 else order[::-1]:
            other = ray[1] if name == "single" else single[1]
            print(
                f"round {r + 1}: {name} closed loop, {args.count} requests at {args.concurrency} ...", file=sys.stderr
            )
            cpu0, idle0, wall0 = tree_cpu_seconds(proc.pid), tree_cpu_seconds(other.pid), time.perf_counter()
            run = await load_test.closed_loop(_sender(client, bodies, args.timeout), args)
            run.pop("latencies")
            wall = time.perf_counter() - wall0
            run["cores_used"] = round((tree_cpu_seconds(proc.pid) - cpu0) / wall, 3)
            run["idle_other_cores"] = round((tree_cpu_seconds(other.pid) - idle0) / wall, 3)
            result[name] = run
        result["ratio"] = round(result["ray"]["images_per_s"] / result["single"]["images_per_s"], 3)
        rounds.append(result)
    return rounds


async def load_ray(args, bodies: list[bytes], log_dir: Path) -> dict:
    """Both servers up side by side (one idle while the other is measured): paired closed loops,
    then (``--ray-fault``) the fault run with the single-process server stopped."""
    from http_client import LoopbackClient

    ray_args = server_args(args)
    extra = ("--engine", "ray", "--replicas", str(args.ray_replicas))
    (log_dir / "ray").mkdir(exist_ok=True)
    (log_dir / "single").mkdir(exist_ok=True)
    ray_server = load_test.Server(ray_args, log_dir / "ray", extra=extra)
    single_server = load_test.Server(argparse.Namespace(**{**vars(args), "modes": ["classify"]}), log_dir / "single")
    ray_client, single_client = LoopbackClient(ray_server.url), LoopbackClient(single_server.url)
    fault, single_code = None, None
    try:
        for client, batch in ((ray_client, 2 * ray_args.max_batch * args.ray_replicas), (single_client, 16)):
            await load_test.wait_ready(client)
            await asyncio.gather(*(load_test.post(client, body, args.timeout) for body in bodies[:batch]))
        rounds = await paired_rounds((single_client, single_server.proc), (ray_client, ray_server.proc), bodies, args)
        await single_client.aclose()
        single_code = single_server.stop()
        if args.ray_fault:
            print("ray serve fault run ...", file=sys.stderr)
            fault = await fault_run(ray_client, bodies, args)
    finally:
        await ray_client.aclose()
        await single_client.aclose()
        code = ray_server.stop()
        if single_code is None:
            single_code = single_server.stop()
    return {
        "replicas": args.ray_replicas,
        "threads_per_replica": args.ray_threads,
        "max_batch_per_replica": ray_args.max_batch,
        "rounds": rounds,
        "ratio_median": round(statistics.median(r["ratio"] for r in rounds), 3),
        **({"fault": fault} if fault else {}),
        "server_exit_codes": {"ray": code, "single": single_code},
        "server_log_tail": ray_server.log.read_text(errors="replace").strip().splitlines()[-4:],
    }


def summary(ray: dict) -> dict:
    """What main() prints: the result without the fault run's timeline."""
    return {**ray, **({"fault": {k: v for k, v in ray["fault"].items() if k != "timeline"}} if "fault" in ray else {})}


def goals(ray: dict) -> dict:
    out = {"ray_serve_ratio_at_least_0.7": ray["ratio_median"] >= GOAL_RATIO}
    if "fault" in ray:
        fault = ray["fault"]
        out["fault_every_request_answered"] = fault["lost"] == 0 and fault["error"] == 0
        seconds = fault["replacement_serving_after_s"]
        out["fault_replacement_within_60s"] = seconds is not None and seconds <= GOAL_REPLACEMENT_S
    return out


def rounds_panel(ax, result: dict) -> None:
    """The paired closed loops: one process against Ray Serve, round by round."""
    ray = result["ray_serve"]
    rounds = ray["rounds"]
    x = np.arange(len(rounds))
    single = [r["single"]["images_per_s"] for r in rounds]
    served = [r["ray"]["images_per_s"] for r in rounds]
    b1 = ax.bar(x - 0.2, single, 0.4, color="#3e6ae1", label="serve (one process)")
    label = f"--engine ray, {ray['replicas']} x {ray['threads_per_replica']} thread"
    b2 = ax.bar(x + 0.2, served, 0.4, color="#f79009", label=label)
    ax.bar_label(b1, fmt="%.0f", fontsize=7)
    ax.bar_label(b2, fmt="%.0f", fontsize=7)
    ax.scatter(x - 0.2, [GOAL_RATIO * v for v in single], marker="_", s=300, color="#b42318", label="0.7 x one process")
    ax.set_xticks(x, [f"round {i + 1}\nratio {r['ratio']:.2f}" for i, r in enumerate(rounds)])
    ax.margins(y=0.12)
    ax.set_ylabel("images/s")
    ax.set_title(f"Ray Serve vs one process (median ratio {ray['ratio_median']:.2f})")
    ax.legend(fontsize=7, loc="lower right")


def fault_panel(ax, result: dict) -> None:
    """The fault run: every request by send time and the replica that answered it."""
    fault = result["ray_serve"]["fault"]
    palette = ["#3e6ae1", "#12b76a", "#7a5af8", "#f79009"]
    colors: dict = {}
    for *_, outcome, replica in fault["timeline"]:
        if outcome == "ok":
            colors.setdefault(replica, palette[len(colors) % len(palette)])
    for replica, color in colors.items():
        points = [(at, ms) for at, ms, o, r in fault["timeline"] if o == "ok" and r == replica]
        ax.scatter(*zip(*points), s=5, color=color, label=f"replica {replica}")
    bad = [(at, ms) for at, ms, o, _ in fault["timeline"] if o != "ok"]
    if bad:
        ax.scatter(*zip(*bad), s=20, color="#b42318", marker="x", label="no answer")
    ax.axvline(fault["killed_at_s"], color="#b42318", lw=1, label="replica killed")
    if fault["replacement_serving_after_s"] is not None:
        after = fault["replacement_serving_after_s"]
        ax.axvline(fault["killed_at_s"] + after, color="#12b76a", ls="--", lw=1, label=f"replacement (+{after:.1f} s)")
    ax.set_xlabel("send time (s)")
    ax.set_ylabel("latency incl. retries (ms)")
    ax.set_title(
        f"replica killed: {fault['ok']} ok, {fault['answers_503']} x 503 retried, {fault['lost'] + fault['error']} lost"
    )
    ax.legend(fontsize=7, loc="upper right")
