from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from hostile import special_files, within
from resnet50 import InvalidInputError
from resnet50.apps.pipeline import StageTimes, classify_stream
from resnet50.core.samples import write_jpegs


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    return [str(p) for p in write_jpegs(tmp_path_factory.mktemp("jpegs"), 21, seed=600)]


def test_results_in_input_order_equal_direct_classification(model_fp32, jpegs):
    times = StageTimes()
    results = list(classify_stream(model_fp32, jpegs, batch_size=4, workers=3, top_k=3, times=times))
    assert [r.index for r in results] == list(range(21)) and [r.source for r in results] == jpegs
    direct = model_fp32.classify(jpegs, top_k=3)
    assert [r.classification for r in results] == direct
    assert sum(times.batches) == 21 and max(times.batches) == 4
    assert times.decode > 0 and times.infer > 0


def test_corrupt_and_missing_files_become_error_rows(model_native, jpegs, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(Path(jpegs[0]).read_bytes()[:5000])
    inputs = [*jpegs[:5], str(broken), str(tmp_path / "missing.png"), *jpegs[5:9]]
    results = list(classify_stream(model_native, inputs, batch_size=4))
    assert [r.ok for r in results] == [True] * 5 + [False, False] + [True] * 4
    assert results[5].error == f"{broken}: truncated JPEG (no end-of-image marker after the last scan)"
    assert results[6].error == f"{tmp_path / 'missing.png'}: no such file"
    good = [r.classification for r in results if r.ok]
    assert good == model_native.classify(jpegs[:9])


def test_input_is_consumed_lazily(model_fp32, jpegs):
    consumed = 0

    def images():
        nonlocal consumed
        for i in range(10_000):
            consumed += 1
            yield jpegs[i % len(jpegs)]

    stream = classify_stream(model_fp32, images(), batch_size=2, workers=2, prefetch=6)
    next(stream)
    assert consumed <= 8  # prefetch + the items refilled while the first batch formed
    stream.close()


def test_fused_uint8_input_gives_the_same_results(model_fp32, model_native, jpegs):
    python = [r.classification for r in classify_stream(model_fp32, jpegs[:8])]
    native = [r.classification for r in classify_stream(model_native, jpegs[:8])]
    assert python == native


def test_bad_batch_size(model_fp32):
    with pytest.raises(InvalidInputError, match="batch size must be at least 1, got 0"):
        list(classify_stream(model_fp32, [], batch_size=0))


def test_error_rows_flow_without_waiting_for_good_images(model_fp32):
    consumed = 0

    def bad_images():
        nonlocal consumed
        for _ in range(1000):
            consumed += 1
            yield b"not an image"

    stream = classify_stream(model_fp32, bad_images(), batch_size=4, workers=2, prefetch=8)
    first = next(stream)
    assert first.error == "<12 bytes>: not a decodable image (JPEG, PNG, BMP, WebP, TIFF ...)"
    assert consumed <= 8 + 4  # rows come out as they are ready, not after the whole input
    stream.close()


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_stops_cleanly(model_fp32, tmp_path):
    files = write_jpegs(tmp_path, 400, seed=50)
    proc = subprocess.Popen(
        [sys.executable, "-m", "resnet50", "classify", str(tmp_path), "--top", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ,
    )  # fmt: skip
    assert proc.stdout.readline().strip() == str(files[0])  # it is classifying
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "resnet50 classify: interrupted" in err and "Traceback" not in err
    assert out.count("(class ") < 399  # it stopped before the end
    print(f"stopped {time.monotonic() - start:.2f}s after SIGINT")


def test_stage_times_are_per_stage(model_fp32, jpegs):
    times = StageTimes()
    list(classify_stream(model_fp32, jpegs[:4], times=times))
    assert np.all(np.array([times.decode, times.preprocess, times.infer, times.postprocess]) > 0)


@pytest.fixture
def hostile(tmp_path) -> dict:
    with special_files(tmp_path) as files:
        yield files


def test_pipeline_reports_special_files_and_classifies_the_rest(model_fp32, hostile):
    inputs = [hostile["fifo"], hostile["good"][0], hostile["loop"], "/dev/null", hostile["good"][1]]
    results = within(lambda: list(classify_stream(model_fp32, inputs, batch_size=2)), fifos=hostile["fifos"])
    assert [r.ok for r in results] == [False, True, False, False, True]
    assert results[0].error.startswith(f"{hostile['fifo']}: is a FIFO")
    assert results[2].error.startswith(f"{hostile['loop']}: symbolic link loop")
    assert results[3].error.startswith("/dev/null: is a character device")
    assert [r.classification for r in results if r.ok] == model_fp32.classify(hostile["good"])


def test_pipeline_size_cap(model_fp32, tmp_path):
    big = tmp_path / "big.png"
    assert cv2.imwrite(os.fspath(big), np.random.default_rng(0).integers(0, 256, (800, 800, 3), np.uint8))
    small = write_jpegs(tmp_path / "s", 1, seed=7)[0]
    results = list(classify_stream(model_fp32, [big, small], max_file_mb=1.0))
    assert results[0].error == f"{big}: {big.stat().st_size:,} bytes, more than the 1 MB limit for input " \
        "files (raise it with --max-file-mb)"  # fmt: skip
    assert results[1].ok
