"""First runs: building the synthetic model and quantizing to int8 say what they do, stay light
on memory, and give the same files and ranges as before."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from resnet50.core.progress import progress_mode

BUILD_LINE = "resnet50: building the synthetic-weights model (first run only)"
QUANTIZE_LINE = "resnet50: quantizing to int8, calibrated on 64 images (first run only)"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_write_model_writes_the_bytes_of_onnx_save(model_fp32, tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from resnet50.graph.io import write_model

    tiny = helper.make_model(
        helper.make_graph(
            [helper.make_node("Add", ["x", "w"], ["y"])],
            "tiny",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
            initializer=[numpy_helper.from_array(np.arange(2, dtype=np.float32), "w")],
            doc_string="a graph",
        ),
        producer_name="test",
    )
    tiny.metadata_props.add(key="k", value="v")
    for model, name in ((tiny, "tiny.onnx"), (onnx.load(model_fp32.source.path), "synthetic.onnx")):
        write_model(model, tmp_path / name)
        assert (tmp_path / name).read_bytes() == model.SerializeToString()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["bar", "line", "off"])
def test_synthetic_build_says_what_it_does_and_writes_the_same_file(mode, model_fp32, tmp_path, capsys):
    from resnet50.weights.synthetic import build_synthetic

    with progress_mode(mode):
        path = build_synthetic(tmp_path / "synthetic.onnx")
    err = capsys.readouterr().err
    assert _md5(path) == model_fp32.source.md5  # memory-light, and still the same bytes
    if mode == "bar":
        assert BUILD_LINE in err and "49/49" in err
    else:
        assert err == ("" if mode == "off" else BUILD_LINE + " ...\n")


@pytest.mark.slow
def test_streamed_calibration_equals_onnxruntime_calibrator(model_fp32, tmp_path):
    """The ranges are those ONNX Runtime's MinMaxCalibrater computes on the same graph and images
    (same tensors, same values), computed one image at a time instead of keeping every output."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    from resnet50.core.constants import INPUT_NAME
    from resnet50.core.samples import synthetic_batch
    from resnet50.derived.quantize import QUANTIZED_OPS, _optimized_file, calibrate
    from resnet50.processing.preprocess import preprocess

    (tmp_path / "ours").mkdir()
    prepared = _optimized_file(model_fp32.source.path, tmp_path / "ours")
    images = synthetic_batch(6, seed=123)
    ours = calibrate(prepared, images)

    class Batches:  # two batches of three, as ONNX Runtime's calibrator reads them
        def __init__(self):
            self.batches = [{INPUT_NAME: preprocess(images[i : i + 3])[0]} for i in (0, 3)]

        def get_next(self):
            return self.batches.pop(0) if self.batches else None

    calibrator = create_calibrator(
        prepared,
        QUANTIZED_OPS,
        augmented_model_path=tmp_path / "augmented.onnx",
        calibrate_method=CalibrationMethod.MinMax,
    )
    calibrator.collect_data(Batches())
    theirs = calibrator.compute_data()
    assert set(ours.data) == set(theirs.data) and len(ours.data) > 100
    for name, theirs_range in theirs.data.items():
        low, high = ours.data[name].range_value
        assert (low.dtype, low.shape) == (theirs_range.range_value[0].dtype, theirs_range.range_value[0].shape)
        assert (low, high) == theirs_range.range_value, name  # exactly


def _peak_rss_mb(argv: list[str], env: dict) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``argv`` under a parent that reports the peak RSS of its only child, in MB."""
    probe = (
        "import resource, subprocess, sys; "
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "sys.stdout.write(p.stdout); sys.stderr.write(p.stderr); "
        "sys.stderr.write('PEAK %d\\n' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
        "sys.exit(p.returncode)"
    )
    proc = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, env=env, timeout=600)
    peak = next(line for line in proc.stderr.splitlines() if line.startswith("PEAK "))
    proc.stderr = proc.stderr.replace(peak + "\n", "")
    return proc, int(peak.split()[1]) / 1024


@pytest.mark.slow
def test_first_int8_run_is_quiet_under_json_and_light_on_memory(tmp_path):
    """An empty cache: build the synthetic model, quantize, benchmark. It peaked at 2,251 MB
    (ONNX Runtime's calibrator kept every batch's outputs); now it stays under 600 MB, and --json
    adds nothing to stderr beyond the synthetic-weights notice."""
    env = {**os.environ, "RESNET50_HOME": os.fspath(tmp_path / "home")}
    argv = [sys.executable, "-m", "resnet50", "bench", "--precision", "int8", "--duration", "0.5", "--warmup", "0"]
    proc, peak_mb = _peak_rss_mb([*argv, "--json"], env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["precision"] == "int8"
    assert [line.split(" (")[0] for line in proc.stderr.splitlines()] == ["resnet50: running on SYNTHETIC weights"]
    print(f"first int8 run: peak RSS {peak_mb:.0f} MB")
    assert peak_mb < 600
    # Without --json (and not on a terminal) each one-off step is one line saying what it does.
    other = tmp_path / "other"
    other.mkdir()
    for name in os.listdir(tmp_path / "home"):
        if name.endswith(".onnx"):
            (other / name).write_bytes((tmp_path / "home" / name).read_bytes())
    proc = subprocess.run([*argv], capture_output=True, text=True, env={**env, "RESNET50_HOME": os.fspath(other)})
    assert proc.returncode == 0 and proc.stderr.splitlines()[0] == QUANTIZE_LINE + " ..."
