"""``resnet50 serve`` under hostile clients: stalled uploads, one huge request, a 256-part body.

Three scenarios, each on a fresh server (``python -m resnet50 serve`` on 127.0.0.1, a free
port, serve's defaults, synthetic fp32 weights unless a model is configured):

1. ``stall``: ``--stalled`` raw connections send the headers and 1 kB of a 1 MB upload to
   ``/v1/classify``, then wait; meanwhile ``--normal`` ordinary classify requests run one after
   another. Reports their status codes and p50/p99 latency, and ``/v2/health/ready`` latency.
2. ``fairness``: single-image latency alone, then the same request sent while a 128-image
   multipart request (tiny PNGs) is being served: its p50/max, and the big request's time.
3. ``memory``: the server's peak RSS (``VmHWM``) before and after one 256-part request.

The server's code is whatever ``PYTHONPATH`` gives (so ``PYTHONPATH=/path/to/other/src``
measures another checkout the same way). Everything is bounded in count and time. Writes
``benchmarks/results/serve_hostile[-LABEL].json``.

    PYTHONPATH=src python benchmarks/serve_hostile.py --label after
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import httpx
import numpy as np

HERE = Path(__file__).resolve().parent


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--label", default="", help="suffix of the result file, e.g. before/after")
    p.add_argument("--stalled", type=int, default=64, help="stalled uploads held open (default 64)")
    p.add_argument("--normal", type=int, default=20, help="normal requests during the stall (default 20)")
    p.add_argument("--big", type=int, default=128, help="images in the large multipart request (default 128)")
    p.add_argument("--singles", type=int, default=5, help="single-image requests next to it (default 5)")
    p.add_argument("--parts", type=int, default=256, help="parts of the memory scenario's request (default 256)")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request client timeout, s (default 120)")
    p.add_argument("--only", choices=("stall", "fairness", "memory"), action="append", help="run only these")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


class Server:
    """``resnet50 serve --port 0`` with stderr in a temp file; its URL and pid."""

    def __init__(self, log_dir: Path, *args: str):
        self.log = log_dir / f"serve-{time.monotonic_ns()}.log"
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "resnet50", "serve", "--port", "0", *args],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        deadline = time.monotonic() + 300
        while not (match := re.search(r"listening on (http://127\.0\.0\.1:(\d+))", self.log.read_text())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise SystemExit(f"server did not start:\n{self.log.read_text()}")
            time.sleep(0.1)
        self.url, self.port = match.group(1), int(match.group(2))
        while True:
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"server never became ready:\n{self.log.read_text()}")
            time.sleep(0.1)

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def tiny_png(seed: int, size: int = 32) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ms = np.asarray(values) * 1000
    return {k: round(float(np.percentile(ms, q)), 1) for k, q in (("p50_ms", 50), ("p99_ms", 99), ("max_ms", 100))}


def timed_post(client: httpx.Client, url: str, **kwargs) -> tuple[int | str, float]:
    start = time.perf_counter()
    try:
        code = client.post(url, **kwargs).status_code
    except httpx.TimeoutException:
        code = "timeout"
    except httpx.TransportError as exc:
        code = type(exc).__name__
    return code, time.perf_counter() - start


def stall(args, log_dir: Path) -> dict:
    srv = Server(log_dir)
    body = tiny_png(1)
    stalled = []
    try:
        for _ in range(args.stalled):
            sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            sock.sendall(
                b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                b"Content-Length: 1000000\r\n\r\n" + b"\0" * 1000
            )
            stalled.append(sock)
        time.sleep(1.0)
        codes, latencies, health = [], [], []
        with httpx.Client(base_url=srv.url, timeout=args.timeout) as client:
            for _ in range(args.normal):
                code, seconds = timed_post(client, "/v1/classify", content=body)
                codes.append(code)
                if code == 200:
                    latencies.append(seconds)
                start = time.perf_counter()
                try:
                    ok = client.get("/v2/health/ready", timeout=10).status_code == 200
                except httpx.TransportError:
                    ok = False
                health.append(time.perf_counter() - start if ok else float("inf"))
        still_open = sum(1 for s in stalled if _open(s))
    finally:
        for sock in stalled:
            sock.close()
        srv.stop()
    return {
        "stalled_uploads": args.stalled,
        "normal_requests": args.normal,
        "codes": {str(c): codes.count(c) for c in sorted(set(codes), key=str)},
        "normal_ok": percentiles(latencies),
        "health_ready": percentiles([h for h in health if h != float("inf")]),
        "health_failures": sum(1 for h in health if h == float("inf")),
        "stalled_still_open_after": still_open,
    }


def _open(sock: socket.socket) -> bool:
    """Whether the server still holds this connection (no FIN or answer arrived yet)."""
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)  # an answer or the end of the connection
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False


def fairness(args, log_dir: Path) -> dict:
    srv = Server(log_dir)
    single = tiny_png(2)
    big_files = [("file", (f"p{i}.png", tiny_png(100 + i), "image/png")) for i in range(args.big)]
    try:
        with httpx.Client(base_url=srv.url, timeout=args.timeout) as client:
            alone = [timed_post(client, "/v1/classify", content=single) for _ in range(args.singles + 1)][1:]
            big_result = {}

            def send_big():
                with httpx.Client(base_url=srv.url, timeout=args.timeout) as big_client:
                    big_result["code"], big_result["seconds"] = timed_post(big_client, "/v1/classify", files=big_files)

            images_before = _images_total(client)
            thread = threading.Thread(target=send_big)
            thread.start()
            deadline = time.monotonic() + args.timeout
            while _images_total(client) < images_before + 2 and time.monotonic() < deadline:
                time.sleep(0.02)  # the big request is now being run
            beside = []
            for _ in range(args.singles):
                if not thread.is_alive():
                    break
                beside.append(timed_post(client, "/v1/classify", content=single))
            thread.join(args.timeout)
    finally:
        srv.stop()
    return {
        "big_images": args.big,
        "big": {"code": big_result.get("code"), "seconds": round(big_result.get("seconds", float("nan")), 2)},
        "single_alone": {"codes": [c for c, _ in alone], **percentiles([s for c, s in alone if c == 200])},
        "single_beside_big": {"codes": [c for c, _ in beside], **percentiles([s for c, s in beside if c == 200])},
    }


def _images_total(client: httpx.Client) -> float:
    text = client.get("/metrics").text
    match = re.search(r"^resnet50_images_total (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def memory(args, log_dir: Path) -> dict:
    srv = Server(log_dir)
    files = [("file", (f"p{i}.png", tiny_png(1000 + i), "image/png")) for i in range(args.parts)]
    try:
        with httpx.Client(base_url=srv.url, timeout=args.timeout * 4) as client:
            timed_post(client, "/v1/classify", content=tiny_png(3))  # warm
            before = srv.peak_rss_mb()
            code, seconds = timed_post(client, "/v1/classify", files=files)
            after = srv.peak_rss_mb()
    finally:
        srv.stop()
    return {
        "parts": args.parts,
        "code": code,
        "seconds": round(seconds, 2),
        "peak_rss_mb": {"before": round(before), "after": round(after)},
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    scenarios = {"stall": stall, "fairness": fairness, "memory": memory}
    result = {"label": args.label, "pythonpath": os.environ.get("PYTHONPATH", ""), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        for name, run in scenarios.items():
            if args.only and name not in args.only:
                continue
            print(f"serve_hostile: {name} ...", file=sys.stderr, flush=True)
            result[name] = run(args, Path(tmp))
            print(json.dumps(result[name]), file=sys.stderr, flush=True)
    out = args.out or HERE / "results" / f"serve_hostile{'-' + args.label if args.label else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
