"""int8 and bf16 agree with fp32 within the fidelity goals; the int8 model is cached."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from resnet50 import InvalidInputError, ResNet50
from resnet50.core.samples import synthetic_batch
from resnet50.derived.quantize import ranges_path
from resnet50.processing.preprocess import preprocess

pytestmark = pytest.mark.slow  # every test builds or runs an int8 or bf16 model


@pytest.fixture(scope="module")
def model_int8():
    return ResNet50.load(precision="int8")


@pytest.fixture(scope="module")
def fidelity_batch():
    # Seeds apart from those that fitted the synthetic classifier and calibrated int8.
    return preprocess(synthetic_batch(200, seed=70_000))[0]  # 200: one flip moves top-5 containment by 0.5%


def _softmax(model, tensor):
    return np.concatenate([model.run(tensor[i : i + 16])["softmax_tensor:0"] for i in range(0, len(tensor), 16)])


def fidelity(reference: np.ndarray, other: np.ndarray) -> dict:
    """Top-1 agreement, top-1 within the reference top-5, mean cosine of the centred logits."""
    ref_logits, other_logits = np.log(reference[:, 1:]), np.log(other[:, 1:])
    ref_logits -= ref_logits.mean(axis=1, keepdims=True)
    other_logits -= other_logits.mean(axis=1, keepdims=True)
    cosine = (
        (ref_logits * other_logits).sum(1) / np.linalg.norm(ref_logits, axis=1) / np.linalg.norm(other_logits, axis=1)
    )
    top5 = np.argsort(-reference[:, 1:], axis=1)[:, :5]
    top1 = other[:, 1:].argmax(axis=1)
    return {
        "top1": float((reference[:, 1:].argmax(axis=1) == top1).mean()),
        "in_top5": float(np.mean([t in row for t, row in zip(top1, top5)])),
        "cosine": float(cosine.mean()),
    }


def test_int8_meets_fidelity_goals(model_fp32, model_int8, fidelity_batch):
    result = fidelity(_softmax(model_fp32, fidelity_batch), _softmax(model_int8, fidelity_batch))
    print("int8 vs fp32", result)
    assert result["in_top5"] >= 0.99 and result["cosine"] >= 0.99
    assert result["top1"] >= 0.85  # 0.875 here; an int8 classifier gave 0.845


def test_int8_is_really_quantized_and_cached(model_int8):
    import onnx

    graph = onnx.load(model_int8.backend.model_path).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") >= 50 and ops.count("Conv") == 53
    weight_types = {t.data_type for t in graph.initializer if t.name.endswith("weight_quantized")}
    assert weight_types == {onnx.TensorProto.INT8}
    ranges = json.loads(ranges_path(model_int8.backend.model_path).read_text())
    assert len(ranges["data"]) > 100 and ranges["calibration_method"]["value"] == "CalibrationMethod.MinMax"
    again = ResNet50.load(precision="int8")
    assert again.backend.model_path == model_int8.backend.model_path


def _producers(graph) -> dict:
    return {name: node for node in graph.node for name in node.output}


def test_int8_classifier_and_logits_stay_float(model_int8):
    import onnx

    graph = onnx.load(model_int8.backend.model_path).graph
    made_by = _producers(graph)
    softmax = next(n for n in graph.node if n.op_type == "Softmax")
    classifier = made_by[softmax.input[0]]
    assert classifier.op_type == "Gemm"  # no QuantizeLinear between the logits and the softmax
    weights = {t.name: t for t in graph.initializer}
    assert weights[classifier.input[1]].data_type == onnx.TensorProto.FLOAT


def test_nothing_after_a_tf2onnx_classifier_is_quantized(model_fp32):
    """Unfused, tf2onnx's classifier is MatMul + bias Add: the Add (a quantized op type) and all
    after it are excluded, so the logits are never rounded to 8 bits."""
    from mlperf_layout import folded_weights, tf_style_model
    from resnet50.derived.quantize import _after_classifier, _name_nodes

    model = tf_style_model(folded_weights(model_fp32.source.path), 11)
    _name_nodes(model)
    by_name = {n.name: n.op_type for n in model.graph.node}
    assert len(by_name) == len(model.graph.node)  # every node has a name of its own
    assert sorted(by_name[name] for name in _after_classifier(model)) == ["Add", "ArgMax", "Identity", "Softmax"]


def test_int8_of_the_mlperf_file_layout_is_the_same_fused_graph(
    tmp_path, capfd, monkeypatch, model_fp32, model_int8, fidelity_batch
):
    """The real file's layout (batch norm unfolded, explicit Pads, MatMul + Add classifier) is
    optimized before quantization: quantized as written, it ran at half speed, with 8-bit logits."""
    import collections

    import onnx

    from mlperf_layout import folded_weights, tf_style_model

    source = tmp_path / "resnet50_v1.onnx"
    onnx.save(tf_style_model(folded_weights(model_fp32.source.path), 8), str(source))
    monkeypatch.setenv("RESNET50_HOME", str(tmp_path / "cache"))  # a fresh cache: really quantize
    capfd.readouterr()
    int8 = ResNet50.load(model=source, precision="int8")
    assert "onnxruntime" not in capfd.readouterr().err  # no warnings from the sessions that quantize
    graph = onnx.load(int8.backend.model_path).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    ours = collections.Counter(n.op_type for n in onnx.load(model_int8.backend.model_path).graph.node)
    assert ops["BatchNormalization"] == ops["Pad"] == ops["MatMul"] == 0
    assert [ops[op] for op in ("Conv", "QuantizeLinear", "DequantizeLinear", "Add", "Gemm")] == [
        ours[op] for op in ("Conv", "QuantizeLinear", "DequantizeLinear", "Add", "Gemm")
    ]
    made_by = _producers(graph)
    assert all(made_by[n.input[0]].op_type == "DequantizeLinear" for n in graph.node if n.op_type == "Conv")
    logits = made_by[next(n for n in graph.node if n.op_type == "Softmax").input[0]]
    while logits.op_type == "Identity":
        logits = made_by[logits.input[0]]
    assert logits.op_type == "Gemm"  # tf2onnx's MatMul + Add, folded, with float output
    result = fidelity(_softmax(ResNet50.load(model=source), fidelity_batch), _softmax(int8, fidelity_batch))
    print("int8 vs fp32, MLPerf layout", result)
    assert result["in_top5"] >= 0.99 and result["cosine"] >= 0.99


def test_int8_refuses_a_graph_whose_batch_norm_was_not_folded(tmp_path, monkeypatch, model_fp32):
    """An optimizer that leaves batch norm unfolded is caught; quantizing on would give half speed."""
    import onnx

    from mlperf_layout import folded_weights, tf_style_model
    from resnet50.core.errors import ModelFileError
    from resnet50.derived import quantize as quantize_module
    from resnet50.derived.quantize import quantize

    source = tmp_path / "resnet50_v1.onnx"
    onnx.save(tf_style_model(folded_weights(model_fp32.source.path), 8), str(source))
    rewrite = quantize_module._ort_rewrite
    monkeypatch.setattr(quantize_module, "_ort_rewrite", lambda *a, **k: rewrite(*a, **{**k, "optimize": False}))
    with pytest.raises(ModelFileError, match=r"resnet50_v1\.onnx: ONNX Runtime could not fold batch norm"):
        quantize(source, tmp_path / "int8.onnx", count=8)
    assert not (tmp_path / "int8.onnx").exists()


def test_int8_native_equals_int8_python(model_int8):
    native = ResNet50.load(precision="int8", use_native=True)
    images = synthetic_batch(10, seed=71_000)
    assert native.classify(images) == model_int8.classify(images)


def test_bf16_openvino_meets_fidelity_goals(model_fp32, fidelity_batch):
    pytest.importorskip("openvino")
    from resnet50.core.cpu import cpu_info

    if "avx512_bf16" not in cpu_info()["features"] and "amx_bf16" not in cpu_info()["features"]:
        pytest.skip("this CPU has no bf16 instructions")
    bf16 = ResNet50.load(precision="bf16")
    assert bf16.backend.name == "openvino"
    result = fidelity(_softmax(model_fp32, fidelity_batch), _softmax(bf16, fidelity_batch))
    print("bf16 vs fp32", result)
    assert result["in_top5"] >= 0.99 and result["cosine"] >= 0.99


def test_openvino_fp32_matches_onnxruntime(model_fp32, fidelity_batch):
    pytest.importorskip("openvino")
    ov = ResNet50.load(backend="openvino")
    np.testing.assert_allclose(_softmax(ov, fidelity_batch[:8]), _softmax(model_fp32, fidelity_batch[:8]), atol=2e-4)


def test_bf16_needs_openvino():
    expected = (
        r"backend 'onnxruntime' does not run precision 'bf16' on device 'cpu'; "
        r"supported: cpu onnxruntime: fp32/int8; cpu openvino: fp32/bf16/int8"
    )
    with pytest.raises(InvalidInputError, match=expected):
        ResNet50.load(precision="bf16", backend="onnxruntime")


def test_calibration_folder_gives_its_own_cached_model(tmp_path, model_int8):
    from resnet50.core.samples import write_jpegs

    write_jpegs(tmp_path / "cal", 8, seed=90_000)
    custom = ResNet50.load(precision="int8", calibration=tmp_path / "cal")
    assert custom.backend.model_path != model_int8.backend.model_path
    assert custom.classify(synthetic_batch(2, seed=5))[0].predictions  # runs
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="empty: no calibration images found"):
        ResNet50.load(precision="int8", calibration=tmp_path / "empty")


def test_calibration_list_names_its_images_relative_to_itself(tmp_path):
    """MLPerf's calibration list holds bare file names of the validation folder: placed there, it
    selects those images, in its order, and calibrates exactly like a folder of just them."""
    from resnet50.core.samples import write_jpegs
    from resnet50.derived.quantize import _calibration_images

    val = write_jpegs(tmp_path / "val", 6, seed=91_000)
    chosen = [val[4], val[1], val[2]]
    listed = tmp_path / "val" / "cal_image_list_option_1.txt"
    listed.write_text("".join(f"{p.name}\n" for p in chosen) + "\n")
    assert _calibration_images(listed, 64) == [str(p) for p in chosen]
    assert _calibration_images(listed, 2) == [str(p) for p in chosen[:2]]  # the first `count`
    (tmp_path / "blank.txt").write_text("\n\n")
    with pytest.raises(InvalidInputError, match=r"blank\.txt: no calibration images found"):
        _calibration_images(tmp_path / "blank.txt", 64)


def test_calibration_list_runs_through_the_cli(tmp_path, capsys, monkeypatch):
    from resnet50.cli import main
    from resnet50.core.samples import write_jpegs

    monkeypatch.setenv("RESNET50_HOME", str(tmp_path / "cache"))  # calibrate for real, not from cache
    images = write_jpegs(tmp_path / "val", 4, seed=92_000)
    (tmp_path / "val" / "cal.txt").write_text("\n".join(p.name for p in images[:3]))
    assert (
        main(["classify", str(images[3]), "--precision", "int8", "--calibration", str(tmp_path / "val" / "cal.txt")])
        == 0
    )
    assert "img_00003.jpg" in capsys.readouterr().out
    (tmp_path / "val" / "missing.txt").write_text("nope.jpg\n")
    assert (
        main(
            ["classify", str(images[3]), "--precision", "int8", "--calibration", str(tmp_path / "val" / "missing.txt")]
        )
        == 2
    )
    assert "nope.jpg" in capsys.readouterr().err


QUANTIZE_LINE = "resnet50: quantizing to int8, calibrated on 64 images (first run only)"


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
