"""torchvision checkpoints end to end: preprocessing against torchvision's own transforms, the
converted graph against ``torchvision.models.resnet50`` on the same (seeded, random) state dict,
fine-tunes with their own classes, and the errors for files that are not ResNet50 checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from resnet50 import InvalidInputError, ModelFileError, ResNet50
from resnet50.core.registry import get

torch = pytest.importorskip("torch", reason="converting torchvision checkpoints needs torch")
torchvision = pytest.importorskip("torchvision", reason="the reference model and transforms are torchvision's")
Image = pytest.importorskip("PIL.Image")

from torchvision.models import ResNet50_Weights, resnet18, resnet50  # noqa: E402

from resnet50.processing.preprocess import preprocess  # noqa: E402

pytestmark = pytest.mark.slow  # builds, saves and converts full torchvision models

PRESETS = {"torchvision-v1": ResNet50_Weights.IMAGENET1K_V1, "torchvision-v2": ResNet50_Weights.IMAGENET1K_V2}


def _random_resnet50(num_classes: int = 1000, seed: int = 0):
    """torchvision's ResNet50 with seeded random weights and batch-norm statistics gathered from
    random images (so eval-mode activations stay in a trained model's range)."""
    torch.manual_seed(seed)
    net = resnet50(num_classes=num_classes)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a plain average over the batches below
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.normal_(m.bias, 0.0, 0.1)
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(8, 3, 224, 224))
    return net.eval()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    net = _random_resnet50()
    path = tmp_path_factory.mktemp("tv") / "resnet50-finetune.pth"
    torch.save(net.state_dict(), path)
    return net, path


@pytest.fixture(scope="module")
def photos(sample_photos, tmp_path_factory):
    """Real photos plus generated ones of odd sizes (where torchvision's crop rounding matters)."""
    from resnet50.core.samples import synthetic_image

    folder = tmp_path_factory.mktemp("odd")
    extra = []
    for i, (h, w) in enumerate([(343, 500), (500, 343), (301, 301), (225, 999), (1000, 229)]):
        path = folder / f"odd_{i}.png"
        Image.fromarray(synthetic_image(50 + i, h, w)[..., ::-1]).save(path)
        extra.append(path)
    return [*sample_photos, *extra]


@pytest.mark.parametrize("name", PRESETS)
def test_preprocessing_equals_torchvision_transforms(name, photos):
    transform = PRESETS[name].transforms()
    preset = get(name).preprocessing
    for path in photos:
        expected = transform(Image.open(path).convert("RGB")).numpy()
        ours, _ = preprocess(str(path), preprocessing=preset)
        assert ours.shape == (1, 3, 224, 224) and ours.dtype == np.float32
        assert np.abs(ours[0] - expected).max() <= 1e-6, path.name


def test_preprocessing_takes_pil_images_and_bgr_arrays_like_files(photos):
    preset = get("torchvision-v2").preprocessing
    from_file, _ = preprocess(str(photos[0]), preprocessing=preset)
    pil = Image.open(photos[0])
    bgr = np.asarray(pil.convert("RGB"))[..., ::-1]
    for image in (pil, bgr, photos[0].read_bytes()):
        tensor, _ = preprocess(image, preprocessing=preset)
        assert np.array_equal(tensor, from_file)


def _logits_session(model_path: str):
    """Our converted ONNX model with its pre-softmax ``logits`` as an extra output."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    proto = onnx.load(model_path)
    proto.graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", None]))
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def test_converted_model_matches_torchvision(reference, photos):
    net, path = reference
    model = ResNet50.load(weights="torchvision-v2", model=path)
    assert model.weights == "custom" and model.weights_entry.name == "torchvision-v2"
    assert model.classes.count == 1000 and not model.classes.background
    tensor, _ = model.preprocess([str(p) for p in photos])
    with torch.no_grad():
        expected = net(torch.from_numpy(tensor)).numpy()
    session = _logits_session(model.backend.model_path)
    logits = session.run(["logits"], {"input_tensor:0": tensor})[0]
    assert np.abs(logits - expected).max() <= 1e-4
    top5 = np.argsort(-expected, axis=1, kind="stable")[:, :5] + 1
    results = model.postprocess(model.run(tensor), top_k=5)
    assert [[p.class_id for p in r.predictions] for r in results] == top5.tolist()
    assert [r.predictions[0].imagenet_index for r in results] == (top5[:, 0] - 1).tolist()


def test_conversion_is_cached_by_the_files_hash(reference):
    from resnet50.core.cache import file_sha256
    from resnet50.derived.torchvision import convert_checkpoint, converted_path

    _, path = reference
    out = convert_checkpoint(path)
    assert out == converted_path(file_sha256(path)) and out.is_file()
    before = out.stat().st_mtime_ns
    assert convert_checkpoint(path) == out and out.stat().st_mtime_ns == before


def test_native_int8_and_openvino_run_the_converted_model(reference, photos):
    _, path = reference
    images = [str(p) for p in photos]
    fp32 = ResNet50.load(weights="torchvision-v2", model=path, backend="onnxruntime")
    native = ResNet50.load(weights="torchvision-v2", model=path, backend="onnxruntime", use_native=True)
    exact = fp32.classify(images, top_k=5)
    fused = native.classify(images, top_k=5)
    assert [r.predictions for r in fused] == [r.predictions for r in exact]
    pytest.importorskip("openvino")
    vino = ResNet50.load(weights="torchvision-v2", model=path, backend="openvino")
    assert [r.class_id for r in vino.classify(images)] == [r.class_id for r in exact]


@pytest.mark.slow
def test_int8_of_a_checkpoint_calibrates_with_its_preprocessing(reference, photos):
    _, path = reference
    images = [str(p) for p in photos]
    fp32 = ResNet50.load(weights="torchvision-v1", model=path, backend="onnxruntime")
    int8 = ResNet50.load(weights="torchvision-v1", model=path, backend="onnxruntime", precision="int8")
    top5 = [{p.class_id for p in r.predictions} for r in fp32.classify(images)]
    agree = sum(r.class_id in s for r, s in zip(int8.classify(images), top5))
    assert agree >= len(images) - 1  # int8 top-1 lies in fp32's top-5


def test_finetune_with_its_own_classes(tmp_path, photos):
    net = _random_resnet50(num_classes=10, seed=3)
    path = tmp_path / "flowers.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)  # a training script's
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"flower {i}\n" for i in range(10)))
    model = ResNet50.load(weights="torchvision-v2", model=path, labels=labels)
    assert model.classes.foreground == 10 and model.weights_entry.classes.count == 10
    tensor, ctx = model.preprocess([str(p) for p in photos])
    with torch.no_grad():
        expected = np.argsort(-net(torch.from_numpy(tensor)).numpy(), axis=1, kind="stable")[:, :3] + 1
    results = model.postprocess(model.run(tensor, top_k=3), ctx, top_k=3)
    assert [[p.class_id for p in r.predictions] for r in results] == expected.tolist()
    assert results[0].label == f"flower {expected[0, 0] - 1}"
    with pytest.raises(InvalidInputError, match=r"top_k must be in 1\.\.10, got 11"):
        model.run(tensor, top_k=11)


def test_class_count_that_does_not_match_labels_is_refused(tmp_path):
    net = _random_resnet50(num_classes=10, seed=4)
    path = tmp_path / "ten.pth"
    torch.save(net.state_dict(), path)
    labels = tmp_path / "three.txt"
    labels.write_text("a\nb\nc\n")
    with pytest.raises(InvalidInputError, match=r"^.*three\.txt: names 3 classes, but the model has 10$"):
        ResNet50.load(weights="torchvision-v2", model=path, labels=labels)
    with pytest.raises(ModelFileError, match=r"ten\.pth: the model has 10 classes, not ImageNet's 1000; name them"):
        ResNet50.load(weights="torchvision-v2", model=path)


def test_state_dict_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18().state_dict(), path)
    with pytest.raises(
        ModelFileError, match=r"resnet18\.pth: not a ResNet50 state dict \(fc\.weight of shape \[1000, 512\]"
    ):
        ResNet50.load(weights="torchvision-v1", model=path)


def test_state_dict_with_a_wrong_layer_is_refused(tmp_path, reference):
    net, _ = reference
    state = dict(net.state_dict())
    del state["layer3.2.conv2.weight"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ModelFileError, match=r"broken\.pth: not a ResNet50 state dict: no layer3\.2\.conv2\.weight"):
        ResNet50.load(weights="torchvision-v1", model=path)


def test_truncated_checkpoint_is_refused_and_nothing_is_cached(tmp_path, reference):
    from resnet50.core.cache import file_sha256
    from resnet50.derived.torchvision import converted_path

    _, good = reference
    path = tmp_path / "cut.pth"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(
        ModelFileError, match=r"cut\.pth: not a readable PyTorch checkpoint \(truncated or not torch\.save\?\)"
    ):
        ResNet50.load(weights="torchvision-v2", model=path)
    assert not converted_path(file_sha256(path)).exists()


def test_checkpoint_needs_its_preprocessing_named(reference):
    _, path = reference
    with pytest.raises(
        InvalidInputError, match=r"a PyTorch checkpoint whose preprocessing is not known; name it with --weights"
    ):
        ResNet50.load(model=path)
    with pytest.raises(InvalidInputError, match=r"a PyTorch checkpoint, but weights 'mlperf-opset11' are an ONNX file"):
        ResNet50.load(weights="mlperf-opset11", model=path)


@pytest.mark.slow
def test_cli_classify_gives_torchvisions_top5(reference, sample_photos):
    net, path = reference
    photo = sample_photos[2]
    with torch.no_grad():
        batch = ResNet50_Weights.IMAGENET1K_V2.transforms()(Image.open(photo).convert("RGB"))[None]
        expected = (np.argsort(-net(batch).numpy()[0], kind="stable")[:5] + 1).tolist()
    argv = ["classify", "--weights", "torchvision-v2", "--model", str(path), str(photo), "--json"]
    out = subprocess.run([sys.executable, "-m", "resnet50", *argv], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert [p["class_id"] for p in result["results"][0]["predictions"]] == expected
    assert result["weights"] == "custom"


def test_without_torch_the_conversion_names_the_extra(tmp_path, monkeypatch):
    from resnet50 import BackendUnavailableError

    path = tmp_path / "needs-torch.pth"
    path.write_bytes(b"PK\x03\x04 never read")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    expected = r"needs-torch\.pth: reading a PyTorch checkpoint needs torch: pip install 'resnet50\[torch\]'$"
    with pytest.raises(BackendUnavailableError, match=expected):
        ResNet50.load(weights="torchvision-v2", model=path)
