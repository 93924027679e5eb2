from __future__ import annotations

import asyncio

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from resnet50 import Classification, InvalidInputError, ModelFileError, ResNet50, postprocess, preprocess
from resnet50.core.samples import synthetic_batch
from resnet50.graph.spec import build_model
from resnet50.weights.source import resolve


@pytest.fixture(scope="module")
def varied_images():
    return synthetic_batch(12, seed=300)


def test_load_reports_synthetic_weights(model_fp32):
    assert model_fp32.weights == "synthetic"
    info = model_fp32.info()
    assert info["weights"] == "synthetic" and info["backend"] == "onnxruntime" and info["precision"] == "fp32"
    assert len(info["md5"]) == 32 and info["mlperf_release"] is None


def test_run_any_batch_size_matches_single_images(model_fp32, varied_images):
    tensor, _ = preprocess(varied_images[:5])
    batch = model_fp32.run(tensor)
    assert batch["softmax_tensor:0"].shape == (5, 1001) and batch["ArgMax:0"].shape == (5,)
    np.testing.assert_allclose(batch["softmax_tensor:0"].sum(axis=1), 1.0, rtol=1e-5)
    for i in range(5):
        single = model_fp32(tensor[i : i + 1])["softmax_tensor:0"][0]
        np.testing.assert_allclose(single, batch["softmax_tensor:0"][i], rtol=1e-4, atol=1e-6)


def test_predictions_vary_between_images(model_fp32, varied_images):
    results = model_fp32.classify(varied_images)
    assert len({r.class_id for r in results}) >= 6  # synthetic weights still separate images


def test_python_and_native_postprocessing_are_identical(model_fp32, model_native, varied_images, sample_photos):
    images = varied_images + [str(p) for p in sample_photos]
    python = model_fp32.classify(images, top_k=10)
    native = model_native.classify(images, top_k=10)
    assert python == native
    for result in python:
        assert all(1 <= p.class_id <= 1000 and p.label != "background" for p in result.predictions)
        assert [p.score for p in result.predictions] == sorted((p.score for p in result.predictions), reverse=True)


def test_native_takes_uint8_crop(model_native, sample_photos):
    tensor, ctx = model_native.preprocess(str(sample_photos[0]))
    assert tensor.dtype == np.uint8
    out = model_native.run(tensor, top_k=3)
    assert out["topk_class_ids"].shape == (1, 3)
    result = model_native.postprocess(out, ctx, top_k=3)
    assert isinstance(result, Classification) and len(result.predictions) == 3


def test_python_postprocess_never_reports_background():
    softmax = np.full((1, 1001), 1e-4, np.float32)
    softmax[0, 0] = 0.9  # background wins the raw argmax
    softmax[0, 7] = 0.05
    result = postprocess(softmax, top_k=2)[0]
    assert [p.class_id for p in result.predictions] == [7, 1]  # ties break to the lower id
    assert result.label == "stingray" and result.predictions[1].label == "tench"  # ImageNet index 6 and 0


def test_single_image_gives_single_result(model_fp32, sample_photos):
    result = model_fp32.classify(str(sample_photos[1]))
    assert isinstance(result, Classification) and result.source.endswith("coffee.png")
    assert len(result.predictions) == 5


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (np.zeros((1, 3, 224, 224), np.float64), "dtype float64, expected float32"),
        (np.zeros((1, 224, 224, 3), np.float32), r"shape \[1, 224, 224, 3\]"),
        (np.zeros((3, 224, 224), np.float32), r"shape \[3, 224, 224\]"),
        (np.zeros((0, 3, 224, 224), np.float32), r"shape \[0, 3, 224, 224\]"),
        ([[1.0]], "must be a numpy array"),
    ],
)
def test_bad_tensors_are_refused(model_fp32, tensor, message):
    with pytest.raises(InvalidInputError, match=message):
        model_fp32.run(tensor)


def test_native_refuses_float_tensor(model_native):
    with pytest.raises(InvalidInputError, match="use_native models take the uint8 crop"):
        model_native.run(np.zeros((1, 3, 224, 224), np.float32))


def test_bad_load_arguments():
    with pytest.raises(InvalidInputError, match="precision 'fp64'"):
        ResNet50.load(precision="fp64")
    with pytest.raises(InvalidInputError, match="threads must be at least 1"):
        ResNet50.load(threads=0)
    with pytest.raises(InvalidInputError, match="spin_wait applies to the onnxruntime backend on the CPU only"):
        ResNet50.load(backend="openvino", spin_wait=True)
    with pytest.raises(InvalidInputError, match=r"streams must be in 1..threads \(\d+\), got 0"):
        ResNet50.load(streams=0)
    with pytest.raises(InvalidInputError, match=r"streams must be in 1..threads \(\d+\), got 999"):
        ResNet50.load(streams=999)  # more than the cores, when threads are not given
    with pytest.raises(InvalidInputError, match=r"streams must be in 1..threads \(2\), got 3"):
        ResNet50.load(threads=2, streams=3)
    with pytest.raises(InvalidInputError, match="streams apply to the CPU backends only"):
        ResNet50.load(device="cuda", streams=2)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_streams_run_at_once_from_several_threads_with_the_same_answers(backend, precision, varied_images):
    """Two streams of one thread each: runs from two threads answer exactly as one stream of two."""
    import threading

    if backend == "openvino":
        pytest.importorskip("openvino")
    model = ResNet50.load(precision=precision, threads=2, streams=2, backend=backend)
    assert (model.info()["streams"], model.info()["threads"]) == (2, 2)
    if backend == "openvino":
        assert model.backend.compiled.get_property("NUM_STREAMS") == 2
    else:
        assert model.backend.session.get_session_options().intra_op_num_threads == 1
    tensor, _ = model.preprocess(varied_images[:4])
    one_stream = ResNet50.load(precision=precision, threads=2, backend=backend)
    alone = model.run(tensor)["softmax_tensor:0"]
    assert np.array_equal(alone, one_stream.run(tensor)["softmax_tensor:0"])  # bit-identical to 2 threads
    outputs = {}

    def worker(i):
        outputs[i] = [model.run(tensor[i : i + 2])["softmax_tensor:0"] for _ in range(3)]

    threads = [threading.Thread(target=worker, args=(i,)) for i in (0, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in (0, 2):
        for got in outputs[i]:
            assert np.array_equal(got, alone[i : i + 2])


@pytest.mark.parametrize("spin_wait,setting", [(False, "0"), (True, "1")])
def test_spin_wait_sets_the_session_and_keeps_outputs(model_fp32, sample_photos, spin_wait, setting):
    model = ResNet50.load(spin_wait=spin_wait)
    entry = model.backend.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
    assert entry == setting and model.backend.describe()["spin_wait"] is spin_wait
    tensor, _ = model.preprocess(sample_photos[:2])
    assert np.array_equal(model.run(tensor)["softmax_tensor:0"], model_fp32.run(tensor)["softmax_tensor:0"])


def test_async_load_and_run_do_not_block_the_loop(sample_photos):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        task = asyncio.create_task(ticker())
        model = await ResNet50.load_async()
        tensor, ctx = model.preprocess([str(p) for p in sample_photos])
        outputs = await model.run_async(tensor)
        task.cancel()
        return model.postprocess(outputs, ctx), ticks

    results, ticks = asyncio.run(main())
    assert len(results) == len(sample_photos) and ticks >= 3


# --- model files ---------------------------------------------------------------------------


def _interface_copy(tmp_path, opset: int):
    """A file with the MLPerf interface and the same weights, written independently of the cache."""
    source = onnx.load(str(resolve().path))
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in source.graph.initializer}
    path = tmp_path / f"mlperf_like_opset{opset}.onnx"
    onnx.save(build_model(weights, opset=opset), str(path))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("opset", [11, 8])
def test_file_with_mlperf_interface_gives_same_outputs(tmp_path, model_fp32, sample_photos, opset):
    path = _interface_copy(tmp_path, opset)
    other = ResNet50.load(model=path)
    assert other.weights == "custom"  # same interface, but neither the MLPerf checksum nor our marker
    tensor, _ = preprocess([str(p) for p in sample_photos])
    np.testing.assert_array_equal(other.run(tensor)["ArgMax:0"], model_fp32.run(tensor)["ArgMax:0"])
    np.testing.assert_allclose(
        other.run(tensor)["softmax_tensor:0"], model_fp32.run(tensor)["softmax_tensor:0"], rtol=1e-5, atol=1e-7
    )
    native = ResNet50.load(model=path, use_native=True)  # opset 8 is upgraded for the fused nodes
    assert native.classify([str(p) for p in sample_photos]) == model_fp32.classify([str(p) for p in sample_photos])


def test_model_from_environment_variable(tmp_path, monkeypatch, model_fp32):
    monkeypatch.setenv("RESNET50_MODEL", str(model_fp32.source.path))
    model = ResNet50.load()
    assert model.source.origin == "RESNET50_MODEL" and model.weights == "synthetic"
    monkeypatch.setenv("RESNET50_MODEL", str(tmp_path / "missing.onnx"))
    with pytest.raises(ModelFileError, match=r"missing.onnx: model file not found \(from RESNET50_MODEL\)"):
        ResNet50.load()


def test_truncated_model_file(tmp_path, model_fp32):
    data = model_fp32.source.path.read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelFileError, match=r"truncated.onnx: not a readable ONNX model"):
        ResNet50.load(model=path)


def test_non_onnx_file(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("hello, I am a text file\n" * 100)
    with pytest.raises(ModelFileError, match=r"notes.onnx: not a readable ONNX model"):
        ResNet50.load(model=path)


def test_random_onnx_model_is_refused(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 32, 32])],
    )
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    expected = (
        r"tiny.onnx: not a ResNet50 v1.5 model with the MLPerf interface: "
        r"it has no input 'input_tensor:0' \(inputs: x float32\[1,3,32,32\]\)"
    )
    with pytest.raises(ModelFileError, match=expected):
        ResNet50.load(model=path)
    with pytest.raises(ModelFileError, match=expected):
        ResNet50.load(model=path, use_native=True)


def test_wrong_class_count_is_refused(tmp_path):
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input_tensor:0"], ["p"]),
            helper.make_node("Flatten", ["p"], ["softmax_tensor:0"]),
        ],
        "wrong",
        [helper.make_tensor_value_info("input_tensor:0", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("softmax_tensor:0", TensorProto.FLOAT, ["N", 3])],
    )
    path = tmp_path / "wrong.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), str(path))
    with pytest.raises(ModelFileError, match=r"wrong\.onnx: the model has 3 classes, not ImageNet's 1000; name them"):
        ResNet50.load(model=path)


def test_native_top_k_is_checked(model_native, sample_photos):
    tensor, ctx = model_native.preprocess(str(sample_photos[0]))
    with pytest.raises(InvalidInputError, match=r"top_k must be in 1..1000, got 0"):
        model_native.run(tensor, top_k=0)
    with pytest.raises(InvalidInputError, match=r"top_k must be in 1..1000, got 1001"):
        model_native.run(tensor, top_k=1001)
    with pytest.raises(InvalidInputError, match=r"top_k 10 is outside 1..5, what the model ran with"):
        model_native.postprocess(model_native.run(tensor), ctx, top_k=10)


@pytest.mark.slow
def test_model_without_output_shapes_loads_for_every_variant(tmp_path, model_fp32, sample_photos):
    path = _interface_copy(tmp_path, 11)
    model = onnx.load(str(path))
    for output in model.graph.output:
        output.type.tensor_type.ClearField("shape")
    onnx.save(model, str(path))
    native = ResNet50.load(model=path, use_native=True)
    images = [str(p) for p in sample_photos[:2]]
    assert native.classify(images) == model_fp32.classify(images)


def test_stream_pool_lends_each_runner_to_one_caller_at_a_time():
    import threading

    from resnet50.runtime.base import StreamPool

    pool = StreamPool(["a", "b"])
    with pool.take() as first, pool.take() as second:
        assert {first, second} == {"a", "b"}  # two callers compute at once, each on its own runner
        third = []
        waiter = threading.Thread(target=lambda: third.append(pool.take().__enter__()))
        waiter.start()
        waiter.join(0.2)
        assert waiter.is_alive() and third == []  # a third caller waits for a free stream
    waiter.join(5)
    assert third and third[0] in ("a", "b")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_streams_report_the_threads_they_run(backend):
    """An uneven split keeps every thread (ONNX Runtime: sessions of 2 and 1); OpenVINO reports
    what it compiled, which it caps at the cores."""
    if backend == "openvino":
        pytest.importorskip("openvino")
    model = ResNet50.load(threads=3, streams=2, backend=backend)
    if backend == "onnxruntime":
        sessions = model.backend._pool.runners
        assert sorted(s.get_session_options().intra_op_num_threads for s in sessions) == [1, 2]
        assert model.info()["threads"] == 3
    else:
        compiled = model.backend.compiled
        assert model.info()["threads"] == compiled.get_property("INFERENCE_NUM_THREADS")
        assert model.info()["streams"] == compiled.get_property("NUM_STREAMS") == 2


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_openvino_compiles_for_the_batch_size_and_still_runs_any_other(precision, varied_images):
    """``batch_size=1``: OpenVINO runs batch 1 on a model compiled for exactly that shape, a
    batch of 3 on a second one compiled when it first comes; both answer bit-identically to
    the model compiled for any size, and the interface still says any batch."""
    pytest.importorskip("openvino")
    tensor, _ = ResNet50.load(precision=precision).preprocess(varied_images[:3])
    any_size = ResNet50.load(precision=precision, backend="openvino", threads=2)
    exact = ResNet50.load(precision=precision, backend="openvino", threads=2, batch_size=1)
    assert any_size.info()["compiled_for"] == "batch any"
    assert exact.info()["compiled_for"] == "batch 1"
    assert exact.info()["input"] == "input_tensor:0 float32[N,3,224,224]"
    assert exact.backend.inputs[0].shape == (None, 3, 224, 224)
    for rows in (1, 3, 1):
        want, got = any_size.run(tensor[:rows]), exact.run(tensor[:rows])
        assert want.keys() == got.keys()
        assert all(np.array_equal(want[name], got[name]) for name in want)
    assert exact.info()["compiled_for"] == "batch 1, any"


def test_openvino_exact_batch_on_two_streams_runs_mixed_sizes_at_once(varied_images):
    """Batches of 1 and 3 from two threads on two streams: the same answers as one model for
    any size, and both compiled models unpinned (pinned, each model put its stream threads on
    the same cores, and runs of the two shared a core)."""
    import threading

    pytest.importorskip("openvino")
    model = ResNet50.load(precision="int8", use_native=True, backend="openvino", threads=2, streams=2, batch_size=1)
    plain = ResNet50.load(precision="int8", use_native=True, backend="openvino", threads=2)
    crops, _ = model.preprocess(varied_images[:3])
    want = {rows: plain.run(crops[:rows])["topk_class_ids"] for rows in (1, 3)}
    got, failures = {1: [], 3: []}, []

    def caller(rows):
        try:
            got[rows].extend(model.run(crops[:rows])["topk_class_ids"] for _ in range(4))
        except Exception as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=caller, args=(rows,)) for rows in (1, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures and all(not t.is_alive() for t in threads)
    assert all(np.array_equal(answer, want[rows]) for rows in (1, 3) for answer in got[rows])
    assert model.info()["compiled_for"] == "batch 1, any"
    assert all(compiled.get_property("ENABLE_CPU_PINNING") is False for compiled, _ in model.backend._compiled.values())


def _tiny_classifier(path, inputs, image_shape):
    """A small ONNX model: the mean of the image's last two axes, then a 1001-class softmax."""
    weights = onnx.numpy_helper.from_array(np.eye(image_shape[1], 1001, dtype=np.float32), "W")
    nodes = [
        helper.make_node("ReduceMean", ["input_tensor:0"], ["pooled"], axes=[-2, -1], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["softmax_tensor:0"], axis=1),
    ]
    image = helper.make_tensor_value_info("input_tensor:0", TensorProto.FLOAT, image_shape)
    graph = helper.make_graph(
        nodes,
        "tiny",
        [image if name == "image" else helper.make_tensor_value_info(name, TensorProto.INT64, [1]) for name in inputs],
        [helper.make_tensor_value_info("softmax_tensor:0", TensorProto.FLOAT, ["N", 1001])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_openvino_exact_batch_still_refuses_a_model_without_the_mlperf_interface(tmp_path):
    """The exact-batch compile does not get ahead of the interface check (OpenVINO's shape
    inference would fail first, with an internal message)."""
    pytest.importorskip("openvino")
    path = _tiny_classifier(tmp_path / "nhwc.onnx", ["image"], ["N", 224, 224, 3])
    with pytest.raises(
        ModelFileError, match=r"its input input_tensor:0 float32\[\?,224,224,3\] is not \[N,3,224,224\]"
    ):
        ResNet50.load(model=path, backend="openvino", batch_size=1)


def test_openvino_exact_batch_finds_the_image_input_by_name(tmp_path):
    """A model whose ``top_k`` input comes before the image: the image is the one compiled
    for batch 1 (not ``top_k``), and batches of 1 and 2 answer as without ``batch_size``."""
    pytest.importorskip("openvino")
    path = _tiny_classifier(tmp_path / "topk_first.onnx", ["top_k", "image"], ["N", 3, 224, 224])
    exact = ResNet50.load(model=path, backend="openvino", batch_size=1)
    plain = ResNet50.load(model=path, backend="openvino")
    tensor = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
    for rows in (1, 2):
        assert np.array_equal(
            exact.run(tensor[:rows])["softmax_tensor:0"], plain.run(tensor[:rows])["softmax_tensor:0"]
        )
    assert exact.info()["compiled_for"] == "batch 1, any"


@pytest.mark.parametrize("bad", [0, 1.5])
def test_batch_size_must_be_a_positive_whole_number(bad):
    with pytest.raises(InvalidInputError, match=f"batch_size must be a whole number of at least 1, got {bad}"):
        ResNet50.load(batch_size=bad)


_FIRST_RUNS_AT_ONCE = """
import sys, threading
import numpy as np
from resnet50 import ResNet50
sys.setswitchinterval(1e-6)  # hand the GIL over as often as possible: the hang needs a switch
model = ResNet50.load(precision="int8", use_native=True, backend="openvino", threads=2, streams=2)
gate, answers = threading.Barrier(2), []
def first_run():
    gate.wait()
    answers.append(model.run(np.zeros((1, 3, 224, 224), np.uint8))["topk_class_ids"].tolist())
def busy():
    while True:
        pass
threading.Thread(target=busy, daemon=True).start()
runs = [threading.Thread(target=first_run) for _ in range(2)]
for t in runs:
    t.start()
for t in runs:
    t.join()
assert len(answers) == 2 and answers[0] == answers[1]
print("both answered")
"""


def test_openvino_streams_first_runs_at_once_do_not_hang(model_native):
    """Two streams' first runs in a fresh process: OpenVINO's first-infer initialisation hung
    4 times in 5 here before the first run of a process was made to run alone."""
    import subprocess
    import sys

    pytest.importorskip("openvino")
    proc = subprocess.run([sys.executable, "-c", _FIRST_RUNS_AT_ONCE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "both answered", proc.stderr[-2000:]
