"""The weights registry: the entries the issue names, their facts, and lookups by name and checksum."""

from __future__ import annotations

import json

import pytest

from resnet50 import InvalidInputError
from resnet50.cli import main
from resnet50.core import registry
from resnet50.core.registry import REGISTRY, ClassLayout, get, with_classes


def test_entries_and_their_published_facts():
    assert list(REGISTRY) == [
        "mlperf-opset11", "mlperf-opset8", "torchvision-v1", "torchvision-v2", "mlperf-pytorch", "synthetic"
    ]  # fmt: skip
    mlperf = get("mlperf-opset11")
    assert (mlperf.file.md5, mlperf.file.format) == ("f6a4da60cd5f084d97efc2c1ddb10beb", "onnx")
    assert get("mlperf-opset8").file.md5 == "a638cf028b5870da29e09ccc2f7182e7"
    assert mlperf.classes == ClassLayout(count=1001, background=True) and mlperf.classes.foreground == 1000
    assert (mlperf.metrics.top1, mlperf.mlperf_division) == (76.456, "closed")
    assert mlperf.preprocessing.mean == (123.68, 116.78, 103.94) and mlperf.preprocessing.resize == 256
    v1, v2 = get("torchvision-v1"), get("torchvision-v2")
    assert (v1.file.filename, v1.file.sha256_prefix, v1.metrics.top1, v1.metrics.top5) == (
        "resnet50-0676ba61.pth", "0676ba61", 76.130, 92.862
    )  # fmt: skip
    assert (v2.file.filename, v2.preprocessing.resize, v2.metrics.top1) == ("resnet50-11ad3fa6.pth", 232, 80.858)
    assert v1.preprocessing.resize == 256 and v2.preprocessing.interpolation == "bilinear"
    assert v2.preprocessing.std == (0.229, 0.224, 0.225) and v2.preprocessing.scale == 255.0
    assert v1.classes == ClassLayout(count=1000, background=False) and v1.params == 25_557_032
    assert get("mlperf-pytorch").file.filename == "resnet50-19c8e357.pth"
    assert get("mlperf-pytorch").metrics.top1 == 76.014 and get("mlperf-pytorch").mlperf_division == "closed"
    synthetic = get("synthetic")
    assert synthetic.synthetic and synthetic.file is None and synthetic.metrics is None
    assert not any(w.synthetic for name, w in REGISTRY.items() if name != "synthetic")


def test_lookups():
    assert registry.by_md5("a638cf028b5870da29e09ccc2f7182e7").name == "mlperf-opset8"
    assert registry.by_md5("0" * 32) is None
    assert registry.by_sha256("11ad3fa6" + "0" * 56).name == "torchvision-v2"
    assert registry.by_sha256("f" * 64) is None
    with pytest.raises(InvalidInputError, match=r"^weights 'resnet101' are not one of mlperf-opset11, mlperf-opset8"):
        get("resnet101")
    assert get(get("synthetic")) is get("synthetic")


def test_a_finetune_keeps_the_preprocessing_and_drops_the_published_facts():
    tuned = with_classes(get("torchvision-v2"), 10)
    assert tuned.preprocessing == get("torchvision-v2").preprocessing
    assert tuned.classes == ClassLayout(count=10, background=False) and tuned.categories == "user"
    assert tuned.metrics is None and tuned.mlperf_division is None
    assert tuned.params == 25_557_032 - 990 * 2049  # fc has 2048 weights + 1 bias per class
    assert with_classes(get("torchvision-v2"), 1000) is get("torchvision-v2")


def test_class_layout_columns():
    assert ClassLayout(1001, True).column(1) == 1 and ClassLayout(1000, False).column(1) == 0


def test_weights_command_lists_every_entry(capsys):
    assert main(["weights", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["weights"]
    assert [w["name"] for w in listed] == list(REGISTRY)
    v2 = next(w for w in listed if w["name"] == "torchvision-v2")
    assert v2["preprocessing"]["resize"] == 232 and v2["metrics"]["top1"] == 80.858
    assert v2["classes"] == {"count": 1000, "background": False, "foreground": 1000}
    assert main(["weights"]) == 0
    text = capsys.readouterr().out
    assert "torchvision-v2: torchvision ResNet50 checkpoint resnet50-11ad3fa6.pth" in text
    assert "bilinear resize to short side 232, center crop 224 (round)" in text
    assert "synthetic: the exact v1.5 graph with seeded synthetic weights" in text
