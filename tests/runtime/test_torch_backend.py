"""The PyTorch backend: ONNX → torch conversion, its cache, CPU parity with ONNX Runtime,
clean refusal without torch or CUDA, GPU preprocessing accuracy, and (with a GPU) CUDA runs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from mlperf_layout import folded_weights, tf_style_model
from resnet50.core.errors import BackendUnavailableError, InvalidInputError, ModelFileError

pytestmark = pytest.mark.slow  # ONNX -> torch conversions of the full model

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (pip install 'resnet50[cuda]')")


def _cuda() -> bool:
    if not HAS_TORCH:
        return False
    import torch

    return torch.cuda.is_available()


HAS_CUDA = _cuda()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs an NVIDIA GPU visible to torch (none here)")


@pytest.fixture(scope="module")
def varied(sample_photos, image_files):
    """Exact float32 inputs of 8 varied images: photos, gray, tiny, wide, tall."""
    from resnet50.processing.preprocess import preprocess

    images = [*sample_photos[:4], *(image_files[k] for k in ("gray_jpeg", "tiny", "wide", "tall"))]
    tensor, _ = preprocess(images)
    return tensor


def _ort(path, tensor: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["softmax_tensor:0"], {"input_tensor:0": tensor})[0]


def _torch_softmax(module, tensor: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return torch.softmax(module(torch.from_numpy(tensor)), dim=1).numpy()


# -- conversion ------------------------------------------------------------------------------


@needs_torch
def test_converted_module_equals_onnxruntime_opset11(model_fp32, varied):
    from resnet50.runtime.torch.convert import load_module

    expected = model_fp32.run(varied)["softmax_tensor:0"]
    got = _torch_softmax(load_module(model_fp32.source.path), varied)
    assert np.abs(got - expected).max() <= 1e-4
    assert np.array_equal(got.argmax(1), expected.argmax(1))
    assert len(set(expected.argmax(1).tolist())) > 1  # varied images, varied answers


@needs_torch
def test_opset8_build_converts_to_the_same_weights(model_fp32, varied, tmp_path, monkeypatch):
    import onnx

    from resnet50.graph.spec import build_model
    from resnet50.runtime.torch.convert import load_converted, load_module

    weights = folded_weights(model_fp32.source.path)
    monkeypatch.setenv("RESNET50_HOME", str(tmp_path / "cache"))  # a fresh cache: really convert
    path = tmp_path / "opset8.onnx"
    onnx.save(build_model(weights, opset=8), str(path))
    converted, from_cache = load_converted(path)
    assert not from_cache
    assert all(np.array_equal(converted.weights[name], value) for name, value in weights.items())
    assert converted.conv_pads["conv1"] == (3, 3, 3, 3) and converted.pool_pads == (1, 1, 1, 1)
    got = _torch_softmax(load_module(path), varied[:4])
    assert np.abs(got - _ort(path, varied[:4])).max() <= 1e-4


@needs_torch
@pytest.mark.parametrize("opset", [8, 11])
def test_tensorflow_style_graph_is_mapped_by_structure(model_fp32, varied, tmp_path, opset):
    import onnx

    from resnet50.runtime.torch.convert import build_module, convert

    model = tf_style_model(folded_weights(model_fp32.source.path), opset)
    path = tmp_path / f"tf{opset}.onnx"
    onnx.save(model, str(path))
    converted = convert(model, str(path))
    assert converted.conv_pads["conv1"] == (3, 3, 3, 3)
    assert converted.conv_pads["layer2.0.conv2"] == (1, 1, 1, 1)
    assert converted.pool_pads == (0, 0, 1, 1)  # TensorFlow SAME pads bottom/right only
    batch = varied[[0, 2, 5]]
    expected = _ort(path, batch)
    got = _torch_softmax(build_module(converted), batch)
    assert np.abs(got - expected).max() <= 1e-4
    assert np.array_equal(got.argmax(1), expected.argmax(1))


@needs_torch
def test_resnet_v1_layout_is_refused_naming_the_layer(model_fp32):
    import onnx

    from resnet50.runtime.torch.convert import convert

    model = onnx.load(str(model_fp32.source.path))
    for node in model.graph.node:  # ResNet v1 puts the stride on the first 1x1 conv
        for attr in node.attribute:
            if attr.name == "strides" and node.name in ("layer2.0.conv1.out", "layer2.0.conv2.out"):
                attr.ints[:] = [2, 2] if node.name == "layer2.0.conv1.out" else [1, 1]
    with pytest.raises(ModelFileError) as err:
        convert(model, "v1.onnx")
    assert str(err.value) == (
        "v1.onnx: cannot convert to torch: Conv 'layer2.0.conv1.out' (layer2.0.conv1) has strides [2, 2], expected 1"
    )


@needs_torch
def test_cache_is_keyed_by_md5_and_survives_corruption(model_fp32, tmp_path, monkeypatch):
    from resnet50.core.cache import file_md5
    from resnet50.runtime.torch import convert as torch_model

    monkeypatch.setenv("RESNET50_HOME", str(tmp_path))
    path = model_fp32.source.path
    first, from_cache = torch_model.load_converted(path)
    cached = torch_model.cache_path(file_md5(path))
    assert not from_cache and cached.is_file() and cached.parent == tmp_path / "torch"
    assert cached.name.startswith(file_md5(path)[:16])

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again although the cache holds the weights")

    monkeypatch.setattr(torch_model, "convert", no_conversion)
    second, from_cache = torch_model.load_converted(path)
    assert from_cache
    assert all(np.array_equal(first.weights[k], second.weights[k]) for k in first.weights)
    assert second.conv_pads == first.conv_pads and second.pool_pads == first.pool_pads

    monkeypatch.undo()
    monkeypatch.setenv("RESNET50_HOME", str(tmp_path))
    cached.write_bytes(b"not a torch file")
    third, from_cache = torch_model.load_converted(path)
    assert not from_cache
    assert np.array_equal(third.weights["fc.weight"], first.weights["fc.weight"])
    assert torch_model.load_converted(path)[1]  # rewritten


# -- the backend on CPU ------------------------------------------------------------------------


@needs_torch
def test_backend_on_cpu_equals_onnxruntime(model_fp32, varied):
    from resnet50.runtime.torch.backend import TorchBackend

    backend = TorchBackend(str(model_fp32.source.path), device="cpu")
    expected = model_fp32.run(varied[:4])
    got = backend.run({"input_tensor:0": varied[:4]})
    assert set(got) == {"softmax_tensor:0", "ArgMax:0"}
    assert got["softmax_tensor:0"].dtype == np.float32 and got["ArgMax:0"].dtype == np.int64
    assert np.abs(got["softmax_tensor:0"] - expected["softmax_tensor:0"]).max() <= 1e-4
    assert np.array_equal(got["ArgMax:0"], expected["ArgMax:0"])
    assert backend.describe()["backend"] == "torch" and backend.describe()["cuda_graphs"] is False


@needs_torch
def test_native_backend_on_cpu_equals_native_onnx_model(model_native, sample_photos):
    from resnet50.api.model import ResNet50
    from resnet50.runtime.torch.backend import TorchBackend

    backend = TorchBackend(str(model_native.source.path), device="cpu", native=True)
    torch_model = ResNet50(backend, model_native.source, precision="fp32", device="cpu", use_native=True)
    assert torch_model.input_dtype == np.uint8
    tensor, _ = model_native.preprocess(sample_photos[:3])
    expected = model_native.run(tensor, top_k=7)
    got = torch_model.run(tensor, top_k=7)
    assert np.array_equal(got["topk_class_ids"], expected["topk_class_ids"])
    assert np.abs(got["topk_scores"] - expected["topk_scores"]).max() <= 1e-4
    assert got["topk_class_ids"].min() >= 1  # background never reported
    ours = [c.class_id for c in torch_model.classify(sample_photos[:3], top_k=3)]
    assert ours == [c.class_id for c in model_native.classify(sample_photos[:3], top_k=3)]


@needs_torch
def test_backend_rejects_bad_options(model_fp32):
    from resnet50.runtime.torch.backend import TorchBackend

    path = str(model_fp32.source.path)
    with pytest.raises(
        InvalidInputError, match=r"^precision 'int8' is not one of fp32, fp16, bf16 for the torch backend$"
    ):
        TorchBackend(path, device="cpu", precision="int8")
    with pytest.raises(InvalidInputError, match=r"^compile mode 'fast' is not one of"):
        TorchBackend(path, device="cpu", compile_mode="fast")
    with pytest.raises(BackendUnavailableError, match=r"^CUDA graphs need device 'cuda'$"):
        TorchBackend(path, device="cpu", cuda_graphs=True)


# -- refusal without torch or CUDA -------------------------------------------------------------


def test_missing_torch_is_one_clear_line(model_fp32, monkeypatch):
    from resnet50.runtime.torch.backend import TorchBackend

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(BackendUnavailableError) as err:
        TorchBackend(str(model_fp32.source.path), device="cuda")
    assert str(err.value) == "device 'cuda' needs PyTorch, which is not installed (pip install 'resnet50[cuda]')"


@needs_torch
@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")
def test_no_cuda_device_is_one_clear_line(model_fp32):
    import torch

    from resnet50.runtime.torch.backend import TorchBackend
    from resnet50.runtime.torch.gpu_preprocess import GpuPreprocessor

    for make in (lambda: TorchBackend(str(model_fp32.source.path), device="cuda"), lambda: GpuPreprocessor("cuda")):
        with pytest.raises(BackendUnavailableError) as err:
            make()
        message = str(err.value)
        assert message.startswith(f"device 'cuda': no CUDA device available (torch {torch.__version__} has ")
        assert "\n" not in message


def test_import_stays_light():
    code = (
        "import sys, resnet50, resnet50.runtime.torch.convert, resnet50.runtime.torch.backend, "
        "resnet50.runtime.torch.gpu_preprocess; "
        "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- GPU preprocessing (resize/crop part, on CPU tensors) -------------------------------------


@needs_torch
def test_gpu_resize_crop_matches_opencv(image_files, sample_photos):
    from resnet50.runtime.torch.gpu_preprocess import compare_to_exact

    enlarged = compare_to_exact([image_files["small"], image_files["tiny"]])  # short side < 256: fixed point
    assert enlarged["max_abs_diff"] == 0
    kinds = ("wide", "tall", "odd", "png16", "exif_rotated")
    shrunk = compare_to_exact([*sample_photos, *(image_files[k] for k in kinds)])
    assert shrunk["max_abs_diff"] <= 1
    assert shrunk["fraction_exact"] > 0.999


@needs_torch
def test_gpu_resize_crop_integer_ratio_is_exact():
    import cv2

    from resnet50.core.samples import synthetic_image
    from resnet50.runtime.torch.gpu_preprocess import compare_to_exact

    ok, data = cv2.imencode(".png", synthetic_image(11, 512, 768))  # exactly 2x: OpenCV's fast path
    assert ok
    assert compare_to_exact([data.tobytes()])["max_abs_diff"] == 0


@needs_torch
def test_gpu_preprocessor_reports_bad_inputs_in_place(image_files, tmp_path):
    from resnet50.runtime.torch.gpu_preprocess import GpuPreprocessor

    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(image_files["jpeg"].read_bytes()[:2000])
    crops, ctx, errors = GpuPreprocessor("cpu")([image_files["jpeg"], truncated, tmp_path / "missing.png"])
    assert crops.shape == (1, 3, 224, 224)
    assert ctx.sources == [str(image_files["jpeg"])] and ctx.sizes == [(375, 500)]
    assert errors == [
        None,
        f"{truncated}: truncated JPEG (no end-of-image marker after the last scan)",
        f"{tmp_path / 'missing.png'}: no such file",
    ]


# -- CUDA (skipped without a GPU) ----------------------------------------------------------------


def _margins(softmax: np.ndarray) -> np.ndarray:
    top2 = np.sort(softmax[:, 1:], axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


@needs_cuda
@pytest.mark.parametrize("precision, tolerance", [("fp32", 2e-3), ("fp16", 2e-2), ("bf16", 6e-2)])
def test_cuda_precisions_agree_with_cpu_fp32(model_fp32, varied, precision, tolerance):
    from resnet50.runtime.torch.backend import TorchBackend

    backend = TorchBackend(str(model_fp32.source.path), device="cuda", precision=precision)
    expected = model_fp32.run(varied)["softmax_tensor:0"]
    got = backend.run({"input_tensor:0": varied})["softmax_tensor:0"]
    assert np.abs(got - expected).max() <= tolerance
    clear = _margins(expected) > 2 * tolerance
    assert np.array_equal(got.argmax(1)[clear], expected.argmax(1)[clear])


@needs_cuda
def test_cuda_graphs_equal_eager_for_every_batch_size(model_fp32, varied):
    from resnet50.runtime.torch.backend import TorchBackend

    path = str(model_fp32.source.path)
    graphs = TorchBackend(path, device="cuda", precision="fp16")
    eager = TorchBackend(path, device="cuda", precision="fp16", cuda_graphs=False)
    for batch in (1, 3, 8, 3):
        got = graphs.run({"input_tensor:0": varied[:batch]})
        want = eager.run({"input_tensor:0": varied[:batch]})
        assert np.abs(got["softmax_tensor:0"] - want["softmax_tensor:0"]).max() <= 1e-3
    assert graphs.describe()["cuda_graph_batch_sizes"] == [1, 3, 8]


@needs_cuda
def test_cuda_graphs_are_keyed_by_input_dtype(model_fp32, sample_photos):
    import torch

    from resnet50.processing.preprocess import normalize, preprocess
    from resnet50.runtime.torch.backend import TorchBackend

    backend = TorchBackend(str(model_fp32.source.path), device="cuda", precision="fp32")
    crops, _ = preprocess(sample_photos[:3], with_scaling=False)
    from_floats = backend.run({"input_tensor:0": normalize(crops)})["softmax_tensor:0"]
    from_uint8 = backend.infer(torch.from_numpy(crops).cuda())["softmax_tensor:0"].cpu().numpy()
    assert np.abs(from_floats - from_uint8).max() <= 1e-4


@needs_cuda
def test_cuda_native_top_k_equals_cpu_native(model_native, sample_photos):
    from resnet50.runtime.torch.backend import TorchBackend

    backend = TorchBackend(str(model_native.source.path), device="cuda", precision="fp32", native=True)
    tensor, _ = model_native.preprocess(sample_photos)
    expected = model_native.run(tensor, top_k=1)
    got = backend.run({"input_uint8": tensor, "top_k": np.array([1], np.int64)})
    assert np.array_equal(got["topk_class_ids"], expected["topk_class_ids"])


@needs_cuda
@pytest.mark.skipif(not HAS_TORCHVISION, reason="nvJPEG decoding needs torchvision")
def test_nvjpeg_pipeline_is_close_to_exact(image_files, sample_photos):
    from resnet50.processing.preprocess import preprocess_one
    from resnet50.runtime.torch.gpu_preprocess import GpuPreprocessor, compare_to_exact

    jpegs = [image_files[k] for k in ("jpeg", "small", "wide", "square", "odd", "gray_jpeg")]
    stats = compare_to_exact([*jpegs, sample_photos[3]], device="cuda", nvjpeg=True)
    assert stats["decoder"] == "nvjpeg" and stats["cpu_fallbacks"] < len(jpegs)
    assert stats["mean_abs_diff"] < 2.0
    print("nvJPEG vs exact:", stats)
    prep = GpuPreprocessor("cuda")
    crops, ctx, errors = prep([image_files["exif_rotated"]])
    assert prep.fallbacks == 1 and errors == [None]  # nvJPEG ignores EXIF: decoded exactly on the CPU
    assert ctx.sizes == [(400, 300)]  # 300x400 stored, shown rotated by 90 degrees
    exact = preprocess_one(image_files["exif_rotated"])[0].astype(np.int16)
    assert np.abs(crops[0].cpu().numpy().astype(np.int16) - exact).max() <= 1


@needs_cuda
def test_load_on_cuda_classifies_like_the_cpu(model_fp32, sample_photos):
    """Needs the model.py routing of device='cuda' to the torch backend (see the issue-7 report)."""
    from resnet50 import ResNet50

    gpu = ResNet50.load(device="cuda", precision="fp16")
    assert gpu.info()["backend"] == "torch" and gpu.weights == model_fp32.weights
    tensor, _ = model_fp32.preprocess(sample_photos)
    expected = model_fp32.run(tensor)["softmax_tensor:0"]
    clear = _margins(expected) > 0.05
    got = [c.class_id for c in gpu.classify(sample_photos, top_k=1)]
    assert np.array_equal(np.array(got)[clear], expected.argmax(1)[clear])
