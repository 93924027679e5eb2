from __future__ import annotations

import numpy as np
import onnx
import pytest

from resnet50.core.constants import ARGMAX_OUTPUT, INPUT_NAME, SOFTMAX_OUTPUT
from resnet50.graph.spec import build_model, conv_specs, weight_shapes
from resnet50.weights.synthetic import synthetic_weights


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
    weights["fc.weight"] = weights["fc.weight"][:1000]  # the classifier's rows set the class count: 1000
    with pytest.raises(ValueError, match=r"weight fc.bias has shape \(1001,\), expected \(1000,\)"):
        build_model(weights)


def test_synthetic_weights_are_deterministic():
    a, b = synthetic_weights(0), synthetic_weights(0)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["conv1.weight"], synthetic_weights(1)["conv1.weight"])


@pytest.mark.parametrize("opset", [8, 11])
def test_pads_fold_into_the_convolutions_with_identical_output(model_fp32, opset):
    import onnxruntime as ort

    from mlperf_layout import folded_weights, tf_style_model
    from resnet50.core.samples import synthetic_batch
    from resnet50.graph.rewrite import fold_pads_into_convs
    from resnet50.processing.preprocess import preprocess

    model = tf_style_model(folded_weights(model_fp32.source.path), opset)
    explicit = model.SerializeToString()
    folded = fold_pads_into_convs(model)
    assert not any(n.op_type == "Pad" for n in folded.graph.node)
    used = {name for node in folded.graph.node for name in node.input}
    assert all(t.name in used for t in folded.graph.initializer)  # the Pads' amounts went with them
    pads = {
        n.name: list(next(a.ints for a in n.attribute if a.name == "pads"))
        for n in folded.graph.node
        if n.op_type == "Conv" and any(a.name == "pads" for a in n.attribute)
    }
    # The stem's 7x7 and the three strided 3x3s had their Pad; the rest keep SAME_UPPER.
    assert sorted(pads.values()) == [[1, 1, 1, 1]] * 3 + [[3, 3, 3, 3]]
    tensor = preprocess(synthetic_batch(3, seed=12))[0]

    def softmax(proto: bytes) -> np.ndarray:
        session = ort.InferenceSession(proto, providers=["CPUExecutionProvider"])
        return session.run([SOFTMAX_OUTPUT], {INPUT_NAME: tensor})[0]

    np.testing.assert_allclose(softmax(folded.SerializeToString()), softmax(explicit), rtol=1e-6, atol=1e-7)


def _pad_then_conv(pad: onnx.NodeProto, *, conv_attrs: dict | None = None, opset: int = 8, extra=()):
    """A Pad feeding a 3x3 Conv, with the Pad's amounts/fill as initializers when given as inputs."""
    from onnx import helper

    inits = [onnx.numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")]
    inits += [onnx.numpy_helper.from_array(np.asarray(v), k) for k, v in {"amounts": [0, 0, 1, 1, 0, 0, 1, 1]}.items()]
    conv = helper.make_node("Conv", ["padded", "w"], ["y"], name="conv", **(conv_attrs or {}))
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    graph = helper.make_graph([pad, conv, *extra], "g", [x], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _ops_after_folding(model) -> list[str]:
    from resnet50.graph.rewrite import fold_pads_into_convs

    return [n.op_type for n in fold_pads_into_convs(model).graph.node]


def test_pads_that_are_not_plain_zero_padding_stay():
    from onnx import helper

    zero = {"pads": [0, 0, 1, 1, 0, 0, 1, 1]}
    kept = [
        _pad_then_conv(helper.make_node("Pad", ["x"], ["padded"], pads=[0, 0, 1, 1, 0, 0, 1, 1], mode="reflect")),
        _pad_then_conv(helper.make_node("Pad", ["x"], ["padded"], pads=[0, 0, 1, 1, 0, 0, 1, 1], value=1.0)),
        _pad_then_conv(helper.make_node("Pad", ["x"], ["padded"], pads=[0, 1, 1, 1, 0, 0, 1, 1])),  # a channel
        _pad_then_conv(helper.make_node("Pad", ["x"], ["padded"], pads=[0, 0, -1, 1, 0, 0, 1, 1])),  # a crop
        _pad_then_conv(helper.make_node("Pad", ["x"], ["padded"], **zero), conv_attrs={"auto_pad": "SAME_UPPER"}),
        # a second reader of the padded map
        _pad_then_conv(
            helper.make_node("Pad", ["x"], ["padded"], **zero), extra=[helper.make_node("Relu", ["padded"], ["r"])]
        ),
        # the fill is a graph input, not a constant: unknown until run time
        _pad_then_conv(helper.make_node("Pad", ["x", "amounts", "fill"], ["padded"]), opset=11),
    ]
    for model in kept:
        assert _ops_after_folding(model)[:2] == ["Pad", "Conv"]
    weight_padded = _pad_then_conv(helper.make_node("Pad", ["x"], ["padded"], **zero))
    weight_padded.graph.node[1].input[:] = ["x", "padded"]  # the Pad feeds the weight, not the data
    assert _ops_after_folding(weight_padded) == ["Pad", "Conv"]


def test_plain_zero_pads_add_to_the_convolution_pads():
    from onnx import helper

    from resnet50.graph.rewrite import fold_pads_into_convs

    attribute = helper.make_node("Pad", ["x"], ["padded"], pads=[0, 0, 1, 2, 0, 0, 1, 2])
    (conv,) = fold_pads_into_convs(_pad_then_conv(attribute, conv_attrs={"pads": [1, 0, 0, 1]})).graph.node
    assert conv.input[0] == "x" and [(a.name, list(a.ints)) for a in conv.attribute] == [("pads", [2, 2, 1, 3])]
    as_input = _pad_then_conv(helper.make_node("Pad", ["x", "amounts"], ["padded"]), opset=11)
    folded = fold_pads_into_convs(as_input).graph
    assert [n.op_type for n in folded.node] == ["Conv"] and [t.name for t in folded.initializer] == ["w"]
