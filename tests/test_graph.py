from __future__ import annotations

import numpy as np
import onnx
import pytest

from resnet50.constants import ARGMAX_OUTPUT, INPUT_NAME, SOFTMAX_OUTPUT
from resnet50.graph import build_model, conv_specs, weight_shapes
from resnet50.weights import synthetic_weights


def test_v15_has_53_convs_with_stride_on_the_3x3():
    specs = conv_specs()
    assert len(specs) == 53
    assert sum(s.role == "shortcut" for s in specs) == 4
    strided = [s for s in specs if s.stride == 2]
    # stem + (3x3 conv and projection) of the first block of stages 2, 3, 4
    assert [(s.name, s.kernel) for s in strided] == [
        ("conv1", 7),
        ("layer2.0.conv2", 3), ("layer2.0.downsample", 1),
        ("layer3.0.conv2", 3), ("layer3.0.downsample", 1),
        ("layer4.0.conv2", 3), ("layer4.0.downsample", 1),
    ]  # fmt: skip


def test_parameter_count_and_macs():
    params = sum(int(np.prod(s)) for s in weight_shapes().values())
    # torchvision's resnet50 has 23,454,912 conv weights and 26,560 BN channels; folded, each
    # channel keeps one bias; the classifier is 2048x1001 + 1001.
    assert params == 23_454_912 + 26_560 + 2048 * 1001 + 1001
    macs, block_in, out = 0, 56, 56  # spatial size after the stem and max pool
    for spec in conv_specs():
        if spec.role == "stem":
            out = 112
        elif spec.role == "reduce":
            block_in = out
        elif spec.role in ("spatial", "shortcut"):
            out = block_in // spec.stride
        macs += spec.out_channels * spec.in_channels * spec.kernel**2 * out * out
        if spec.role == "stem":
            out = 56
    macs += 2048 * 1001
    assert round(macs / 1e9, 2) == 4.09


def test_model_has_mlperf_interface_and_dynamic_batch():
    model = build_model(synthetic_weights(), opset=11)
    onnx.checker.check_model(model)
    (inp,) = model.graph.input
    assert inp.name == INPUT_NAME
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["N", 3, 224, 224]
    assert [o.name for o in model.graph.output] == [ARGMAX_OUTPUT, SOFTMAX_OUTPUT]
    assert sum(n.op_type == "Conv" for n in model.graph.node) == 53
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)


def test_wrong_weights_are_refused():
    weights = synthetic_weights()
    weights["fc.weight"] = weights["fc.weight"][:1000]
    with pytest.raises(ValueError, match=r"fc.weight has shape \(1000, 2048\)"):
        build_model(weights)


def test_synthetic_weights_are_deterministic():
    a, b = synthetic_weights(0), synthetic_weights(0)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["conv1.weight"], synthetic_weights(1)["conv1.weight"])
