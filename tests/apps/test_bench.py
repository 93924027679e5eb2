from __future__ import annotations

import json
import os
import subprocess
import sys


def _bench(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "resnet50", "bench", *args, "--duration", "1", "--warmup", "0.2", "--json"],
        capture_output=True, text=True, timeout=300, env=os.environ,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_bench_infer_reports_throughput_latency_and_memory(model_fp32):
    result = _bench("--mode", "infer", "--precision", "fp32", "--batch", "2")
    assert result["mode"] == "infer" and result["precision"] == "fp32" and result["weights"] == "synthetic"
    assert result["images"] % 2 == 0 and result["images"] >= 2
    assert result["images_per_s"] > 0 and result["peak_rss_mb"] > 50
    assert set(result["latency_ms"]) == {"p50", "p90", "p99"}
    assert result["spin_wait"] is False


def test_bench_spin_wait_reaches_the_onnxruntime_session(model_fp32):
    assert _bench("--mode", "infer", "--precision", "fp32", "--batch", "1", "--spin-wait")["spin_wait"] is True


def test_bench_e2e_reports_stages(model_fp32, tmp_path):
    from resnet50.core.samples import write_jpegs

    write_jpegs(tmp_path, 6)
    result = _bench("--mode", "e2e", "--precision", "fp32", "--images", str(tmp_path), "--batch", "2")
    assert result["mode"] == "e2e" and result["native"] is True and result["errors"] == 0
    assert set(result["stages_ms_per_image"]) == {"decode", "preprocess", "infer", "postprocess"}
    assert result["stages_ms_per_image"]["infer"] > 0 and result["first_result_s"] > 0


def test_bench_bad_arguments():
    proc = subprocess.run([sys.executable, "-m", "resnet50", "bench", "--batch", "0"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--batch must be >= 1" in proc.stderr
    cmd = [sys.executable, "-m", "resnet50", "bench", "--precision", "bf16", "--spin-wait"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith("spin_wait applies to the onnxruntime backend on the CPU only")


def test_bench_infer_keeps_every_stream_busy():
    """With two streams, two threads call the model at once; a failing stream fails the bench."""
    import threading
    import time

    import numpy as np
    import pytest

    from fakes import FakeModel
    from resnet50.apps.bench import bench_infer

    class TwoStreams(FakeModel):
        backend = type("Backend", (), {"streams": 2, "threads": 2, "name": "stub"})()

        def __init__(self, fail_after: int | None = None):
            self.runs = self.running = self.most_at_once = 0
            self.fail_after = fail_after
            self.lock = threading.Lock()

        def preprocess(self, images):
            return np.zeros((len(images), 3, 224, 224), np.float32), None

        def run(self, tensor, top_k=5):
            with self.lock:
                self.runs += 1
                if self.fail_after is not None and self.runs > self.fail_after:
                    raise RuntimeError("stream broke")
                self.running += 1
                self.most_at_once = max(self.most_at_once, self.running)
            time.sleep(0.01)
            with self.lock:
                self.running -= 1

    model = TwoStreams()
    result = bench_infer(model, batch=3, duration=0.3, warmup=0.05)
    assert result.streams == 2 and result.threads == 2
    assert model.most_at_once == 2  # both streams computed at the same time
    timed = result.images // 3
    assert result.images % 3 == 0 and 2 <= timed < model.runs  # warm-up runs are not counted
    with pytest.raises(RuntimeError, match="stream broke"):
        bench_infer(TwoStreams(fail_after=20), batch=1, duration=0.5, warmup=0.0)


def test_bench_streams_are_for_inference_only():
    cmd = [sys.executable, "-m", "resnet50", "bench", "--mode", "e2e", "--streams", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "resnet50 bench: error: --streams is for --mode infer; the e2e pipeline runs one batch at a time"
    ]
